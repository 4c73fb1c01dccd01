"""`--vnc` on the fake QEMU: the `-vnc` argument, the printed address, the cases without a
display, and the flag's parsing. The real display (RFB on 127.0.0.1) is tests/e2e/test_vnc.py."""

from __future__ import annotations

import re
import subprocess

import pytest
from nixos_test_ng import _native
from support.driver import driver_command

VNC_ARGS = ["-vnc", "127.0.0.1:0,to=99,password=on"]

# The address is printed once QMP answers; a monitor command waits for that.
BOTH = """
start_all()
alpha.send_monitor_command("info status")
beta.send_monitor_command("info status")
"""


def test_each_vm_gets_a_loopback_display_and_its_address_is_printed(
    run_driver, fake_vm, write_script
):
    alpha, beta = fake_vm("alpha"), fake_vm("beta")
    t = write_script("t.py", BOTH)
    args = ["--vm-start-scripts", alpha.script, beta.script, "--", t]

    plain = run_driver(args)
    assert plain.returncode == 0, plain
    assert "display on VNC" not in plain.stderr
    without = {vm.name: vm.records("start")[0]["argv"] for vm in (alpha, beta)}
    assert not any("-vnc" in argv for argv in without.values())

    r = run_driver(["--vnc", *args])
    assert r.returncode == 0, r
    for vm in (alpha, beta):
        # after upstream's arguments, in their order
        assert vm.records("start")[-1]["argv"] == [*without[vm.name], *VNC_ARGS]
        line = f"{vm.name}: display on VNC 127.0.0.1:5900 (vncviewer 127.0.0.1::5900)"
        assert line in r.stderr.splitlines(), r
    # each display has its own password, set over QMP and said in the log
    passwords = {}
    for vm in (alpha, beta):
        shown = re.findall(rf"^{vm.name}: VNC password: (\w{{8}})$", r.stderr, re.M)
        assert len(shown) == 1, r.stderr
        sets = [q for q in vm.records("qmp") if q["execute"] == "change-vnc-password"]
        assert [q["arguments"] for q in sets[-1:]] == [{"password": shown[0]}], sets
        passwords[vm.name] = shown[0]
    assert passwords["alpha"] != passwords["beta"]


def test_interactive_session_prints_the_address(driver_env, fake_vm):
    vm = fake_vm("alpha")
    p = subprocess.run(
        [*driver_command(), "--interactive", "--vnc", "--vm-start-scripts", vm.script],
        input='alpha.start()\nalpha.send_monitor_command("info status")\n',
        capture_output=True,
        text=True,
        env=driver_env.env,
        cwd=driver_env.work,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert vm.records("start")[0]["argv"][-2:] == VNC_ARGS
    assert "alpha: display on VNC 127.0.0.1:5900 (vncviewer 127.0.0.1::5900)" in p.stderr


def test_a_qemu_without_vnc_is_a_log_line_not_a_failure(run_driver, fake_vm, write_script):
    vm = fake_vm("alpha", vnc=False)
    t = write_script("t.py", 'alpha.start()\nalpha.send_monitor_command("info status")\n')
    r = run_driver(["--vnc", "--vm-start-scripts", vm.script, "--", t])
    assert r.returncode == 0, r
    assert (
        "alpha: no display over VNC: QEMU has no VNC display (does the start script pass its"
        " arguments to QEMU?)" in r.stderr
    ), r


def test_a_container_has_no_display(driver_env, run_driver, write_script):
    script = write_script(
        "run-box-nspawn",
        '#!/bin/bash\necho "systemd-nspawn\'s PID is $$"\nsleep 600 &\nwait\n',
        True,
    )
    t = write_script("t.py", "box.start()\n")
    r = run_driver(["--vnc", "--container-start-scripts", script, "--", t])
    assert r.returncode == 0, r
    assert "box: no display over VNC: a container has no screen" in r.stderr, r


# -- the flag ---------------------------------------------------------------------------------


def test_flag_parses_with_or_without_interactive(write_script):
    t = str(write_script("t.py", "pass\n"))
    assert _native.parse_args([t], {}).vnc is False
    config = _native.parse_args(["--vnc", t], {})
    assert config.vnc is True and config.interactive is False
    config = _native.parse_args(["-I", "--vnc"], {})
    assert config.vnc is True and config.interactive is True


@pytest.mark.parametrize("arg", ["--vnc=1", "--vnc=yes"])
def test_flag_takes_no_value(run_driver, write_script, arg):
    t = write_script("t.py", "pass\n")
    r = run_driver([arg, t])
    assert r.returncode == 2, r
    assert "--vnc" in r.stderr and "unexpected value" in r.stderr, r


def test_help_names_the_flag(run_driver):
    r = run_driver(["--help"])
    assert r.returncode == 0, r
    assert "--vnc" in r.stdout and "127.0.0.1" in r.stdout, r


@pytest.mark.parametrize(
    ("argv", "forwarded"),
    [
        (["--vnc", "t.py"], ["--vnc"]),
        (["-I", "--vnc", "t.py"], ["--interactive", "--vnc"]),
        (
            ["--interactive", "t.py", "--", "--vnc", "-o", "out"],
            ["--interactive", "--vnc", "-o", "out"],
        ),
        (["t.py"], []),
    ],
)
def test_nixos_test_ng_run_passes_the_flags_to_the_driver(monkeypatch, tmp_path, argv, forwarded):
    from nixos_test_ng import guest, run

    calls: list[list[str]] = []
    monkeypatch.setattr(guest, "ensure_built", lambda: tmp_path)
    monkeypatch.setattr(
        guest,
        "write_start_scripts",
        lambda out, nodes, **_: {n: out / f"run-{n}-vm" for n in nodes},
    )
    monkeypatch.setattr(run, "run_driver", lambda args: calls.append(args) or 0)
    assert run.main(argv) == 0
    (args,) = calls
    i = args.index("--")
    assert args[i - len(forwarded) : i] == forwarded, args
    assert args[i + 1 :] == ["t.py"]
