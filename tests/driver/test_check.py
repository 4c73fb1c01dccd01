"""`nixos-test-ng check`, `nixos-test-ng stubs`, and the driver's name check before booting."""

from __future__ import annotations

import subprocess
import sys

from support.driver import driver_command

GOOD = """\
start_all()
server.wait_for_unit("multi-user.target")
with subtest("reach the server"):
    client.succeed("curl http://server/")
    t.assertIn("x", "xyz")
vlan1.nr
"""


def ng(*args: str, cwd=None) -> subprocess.CompletedProcess[str]:
    exe = [sys.executable, "-c", "from nixos_test_ng.cli import ng_main; ng_main()"]
    return subprocess.run([*exe, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_a_correct_script_passes(tmp_path):
    script = tmp_path / "t.py"
    script.write_text(GOOD)
    r = ng("check", str(script), "--machines", "server", "client:nspawn", "--vlans", "1")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_mistakes_are_reported_at_their_lines(tmp_path):
    # a 500-line script with three seeded mistakes
    lines = [f'server.succeed("echo {i}")' for i in range(500)]
    lines[120] = "servr.succeed('true')"  # unknown name
    lines[250] = "client.succed('true')"  # misspelled method
    lines[410] = "server.wait_for_open_port('80')"  # wrong type
    script = tmp_path / "big.py"
    script.write_text("\n".join(lines) + "\n")
    r = ng("check", str(script), "--machines", "server", "client:nspawn")
    assert r.returncode == 1, r
    assert r.stdout.splitlines() == [
        f"{script}:121:1: undefined name 'servr'",
        f"{script}:251:1: `client` (NspawnMachine) has no attribute `succed`;"
        " did you mean `succeed`?",
        f"{script}:411:27: `server.wait_for_open_port()`: argument `port` expects int,"
        " got str '80'",
    ]


def test_machines_from_start_scripts_and_config(tmp_path):
    script = tmp_path / "t.py"
    script.write_text("alpha.succeed('x')\nbox.fail('y')\nvlan2\n")
    r = ng(
        "check",
        str(script),
        "--vm-start-scripts",
        "/nix/store/x-nixos-vm/bin/run-alpha-vm",
        "--container-start-scripts",
        "/x/run-box-nspawn",
        "--vlans",
        "2",
    )
    assert r.returncode == 0, r
    config = tmp_path / "c.json"
    config.write_text(
        '{"vms": {"alpha": {"start_script": "/x/bin/run-alpha-vm"}},'
        ' "containers": {"b": {"name": "box", "start_script": "/x/bin/run-box-nspawn"}},'
        ' "vlans": [2]}'
    )
    r = ng("check", str(script), "--config", str(config))
    assert r.returncode == 0, r
    r = ng("check", str(script), "--machines", "alpha")
    assert r.returncode == 1 and "undefined name 'box'" in r.stdout


def test_stubs_are_written(tmp_path):
    out = tmp_path / "__builtins__.pyi"
    r = ng("stubs", "--machines", "server", "box:nspawn", "--vlans", "1", "-o", str(out))
    assert r.returncode == 0, r
    text = out.read_text()
    assert "server: QemuMachine" in text and "box: NspawnMachine" in text
    assert "vlan1: VLan" in text and "def start_all() -> None: ..." in text
    compile(text, str(out), "exec")


def test_the_driver_checks_names_before_booting(driver_env, fake_vm, write_script):
    vm = fake_vm("alpha")
    test = write_script("t.py", "alpha.succeed('true')\nalpah.succeed('true')\n")
    r = subprocess.run(
        [*driver_command(), "--vm-start-scripts", vm.script, "--", test],
        capture_output=True,
        text=True,
        env=driver_env.env,
        cwd=driver_env.work,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    assert f"{test}:2:1: undefined name 'alpah'" in r.stderr
    assert "starting vm" not in r.stderr and not vm.record.exists()  # nothing booted
    r = subprocess.run(
        [*driver_command(), "--skip-check", "--vm-start-scripts", vm.script, "--", test],
        capture_output=True,
        text=True,
        env=driver_env.env,
        cwd=driver_env.work,
        timeout=60,
    )
    assert r.returncode == 1 and "NameError: name 'alpah' is not defined" in r.stderr, r.stderr


def test_config_is_read_as_the_driver_reads_it(tmp_path):
    """`check --config` takes the machines and errors of the driver's own parser."""
    script = tmp_path / "t.py"
    script.write_text("alpha.succeed('x')\n")
    config = tmp_path / "c.json"
    config.write_text('{"vms": {"alpha": {}}}')
    r = ng("check", str(script), "--config", str(config))
    driver = subprocess.run(
        [*driver_command(), "--config", str(config), str(script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (r.returncode, driver.returncode) == (2, 2), (r, driver)
    message = "`vms.alpha.start_script` is missing or not a string"
    assert message in r.stderr and message in driver.stderr, (r.stderr, driver.stderr)
    assert r.stderr.startswith("nixos-test-ng check: error: invalid --config file")


def test_vmm_metrics_is_a_firecracker_machine_method(tmp_path):
    script = tmp_path / "t.py"
    script.write_text("fc.vmm_metrics()['vcpu']\nserver.vmm_metrics()\n")
    r = ng("check", str(script), "--machines", "fc:firecracker", "server")
    assert r.returncode == 1, r
    assert r.stdout.splitlines() == [
        f"{script}:2:1: `server` (QemuMachine) has no attribute `vmm_metrics`",
    ]


def test_network_conditions_and_partitions_are_known_names(tmp_path):
    script = tmp_path / "t.py"
    script.write_text(
        'a.set_network_conditions(vlan=1, delay="200ms", jitter=0.01, loss="5%", rate="1mbit")\n'
        "a.clear_network_conditions()\n"
        "driver.partition([[a], [b]], vlan=1)\n"
        "driver.heal()\n"
        "vlan1.partition([[a], [b]])\n"
        "vlan1.heal()\n"
    )
    r = ng("check", str(script), "--machines", "a", "b:nspawn", "--vlans", "1")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    script.write_text(
        "a.set_network_condition(delay=0.1)\n"
        "b.set_network_conditions(latency=0.1)\n"
        'b.clear_network_conditions(vlan="1")\n'
    )
    r = ng("check", str(script), "--machines", "a", "b:nspawn", "--vlans", "1")
    assert r.returncode == 1, r
    assert r.stdout.splitlines() == [
        f"{script}:1:1: `a` (QemuMachine) has no attribute `set_network_condition`;"
        " did you mean `set_network_conditions`?",
        f"{script}:2:1: `b.set_network_conditions()`: got an unexpected keyword argument 'latency'",
        f"{script}:3:33: `b.clear_network_conditions()`: argument `vlan` expects int | None,"
        " got str '1'",
    ], r.stdout
