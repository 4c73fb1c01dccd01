"""The `nixos-test-driver` command line: bad input gets a clear message and exit status 2
before any machine starts; good input in every upstream spelling works (flags anywhere,
environment defaults, generation C's `--config`, argparse-style prefixes)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

USAGE = 2


def assert_usage_error(result, *fragments: str) -> None:
    assert result.returncode == USAGE, result
    assert "nixos-test-driver: error:" in result.stderr, result
    for fragment in fragments:
        assert fragment in result.stderr, f"{fragment!r} missing\n{result}"
    assert "Traceback" not in result.output, result


@pytest.fixture
def script(write_script):
    return write_script("t.py", "print('SCRIPT RAN')\n")


def test_unknown_flag_is_named(run_driver, script):
    r = run_driver(["--bogus-flag", script])
    assert_usage_error(r, "--bogus-flag")
    assert "SCRIPT RAN" not in r.stdout


def test_usage_errors_have_one_error_prefix(run_driver, script):
    # clap renders "error: ..." itself; the CLI adds "nixos-test-driver: error: " again.
    r = run_driver(["--bogus-flag", script])
    assert r.returncode == USAGE, r
    assert "error: error:" not in r.stderr, r


def test_missing_start_script(run_driver, driver_env, script):
    missing = driver_env.work / "run-ghost-vm"
    r = run_driver(["--vm-start-scripts", missing, "--", script])
    assert_usage_error(r, f"start script `{missing}`", "machine `ghost`", "does not exist")


def test_non_executable_start_script(run_driver, write_script, script):
    plain = write_script("run-plain-vm", "#!/bin/sh\nexit 0\n", executable=False)
    r = run_driver(["--vm-start-scripts", plain, "--", script])
    assert_usage_error(r, f"start script `{plain}`", "machine `plain`", "not an executable")


def test_directory_as_start_script(run_driver, driver_env, script):
    d = driver_env.work / "run-dir-vm"
    d.mkdir()
    r = run_driver(["--vm-start-scripts", d, "--", script])
    assert_usage_error(r, f"`{d}`", "not an executable")


def test_two_misnamed_scripts_collide(run_driver, fake_vm, script):
    a = fake_vm("x", script_name="qemu-first")
    b = fake_vm("y", script_name="qemu-second")
    r = run_driver(["--vm-start-scripts", a.script, b.script, "--", script])
    assert_usage_error(
        r, "both called `machine`", str(a.script), str(b.script), "--vm-names", "run-<name>-vm"
    )
    assert a.start_count == 0 and b.start_count == 0


def test_pythonized_names_collide(run_driver, fake_vm, script):
    a = fake_vm("my-box")
    b = fake_vm("my_box")
    r = run_driver(["--vm-start-scripts", a.script, b.script, "--", script])
    assert_usage_error(r, "both called `my_box`", str(a.script), str(b.script))


def test_vm_names_length_mismatch(run_driver, fake_vm, script):
    a, b = fake_vm("a"), fake_vm("b")
    r = run_driver(["--vm-names", "only", "--vm-start-scripts", a.script, b.script, "--", script])
    assert_usage_error(r, "--vm-names lists 1 names", "--vm-start-scripts lists 2 scripts")


@pytest.mark.parametrize(
    ("config", "fragments"),
    [
        pytest.param('{"vms": {', ["EOF while parsing"], id="invalid-json"),
        pytest.param("[1, 2]", ["top level must be a JSON object"], id="not-an-object"),
        pytest.param('{"vms": []}', ["`vms` must be an object of machines"], id="vms-list"),
        pytest.param('{"vms": {"a": 3}}', ["`vms.a` must be an object"], id="vm-not-object"),
        pytest.param(
            '{"vms": {"a": {"name": "a"}}}',
            ["`vms.a.start_script` is missing or not a string"],
            id="missing-start-script",
        ),
        pytest.param(
            '{"vms": {"a": {"start_script": 7}}}',
            ["`vms.a.start_script` is missing or not a string"],
            id="start-script-number",
        ),
        pytest.param('{"vlans": "1"}', ["`vlans` must be a list of integers"], id="vlans-str"),
        pytest.param('{"vlans": [1, "x"]}', ['`vlans` entry "x"'], id="vlan-entry"),
        pytest.param('{"vlans": [0]}', ["`vlans` entry 0 is not an integer 1-255"], id="vlan-0"),
        pytest.param(
            '{"global_timeout": true}',
            ["`global_timeout` must be a number of seconds"],
            id="timeout-bool",
        ),
        pytest.param(
            '{"enable_ssh_backdoor": "yes"}',
            ["`enable_ssh_backdoor` must be true or false"],
            id="backdoor-str",
        ),
        pytest.param('{"test_script": 5}', ["`test_script` must be a path"], id="script-int"),
    ],
)
def test_malformed_config(run_driver, write_script, script, config, fragments):
    cfg = write_script("config.json", config)
    r = run_driver(["--config", cfg, script])
    assert_usage_error(r, f"invalid --config file `{cfg}`", *fragments)


def test_config_file_missing(run_driver, driver_env, script):
    cfg = driver_env.work / "nope.json"
    r = run_driver(["--config", cfg, script])
    assert_usage_error(r, f"invalid --config file `{cfg}`", "No such file")


def test_config_start_script_missing(run_driver, driver_env, write_script, script):
    missing = driver_env.work / "bin" / "run-srv-vm"
    cfg = write_script(
        "config.json", json.dumps({"vms": {"srv": {"name": "srv", "start_script": str(missing)}}})
    )
    r = run_driver(["--config", cfg, script])
    assert_usage_error(r, f"start script `{missing}` of machine `srv` does not exist")


def test_nonexistent_test_script(run_driver, driver_env):
    r = run_driver([driver_env.work / "nope.py"])
    assert_usage_error(r, "nope.py", "does not exist")


def test_no_test_script_at_all(run_driver):
    r = run_driver([])
    assert_usage_error(r, "no test script given")


def test_syntax_error_reported_before_any_machine_starts(run_driver, fake_vm, write_script):
    vm = fake_vm("alpha")
    bad = write_script(
        "bad.py",
        """
        start_all()
        alpha.succeed("true")
        if True
            pass
        """,
    )
    r = run_driver(["--vm-start-scripts", vm.script, "--", bad])
    assert_usage_error(r, f"{bad}:3:", "syntax error")
    assert vm.start_count == 0, "the fake VM was started despite the syntax error"
    assert not vm.record.exists()


def test_missing_output_directory(run_driver, driver_env, script):
    missing = driver_env.tmp / "no-such-out"
    r = run_driver(["-o", missing, script])
    assert_usage_error(r, f"output directory `{missing}` does not exist")


def test_output_directory_is_a_file(run_driver, write_script, script):
    f = write_script("afile", "x")
    r = run_driver(["--output_directory", f, script])
    assert_usage_error(r, "is not a directory")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--vlans", "x1"], ["invalid VLAN number `x1`"]),
        (["--vlans", "300"], ["invalid VLAN number `300`", "1-255"]),
        (["--global-timeout", "soon"], ["--global-timeout", "`soon` is not a number"]),
        (["--global-timeout", "0"], ["--global-timeout must be positive"]),
        (["--boot-timeout=-3"], ["--boot-timeout", "`-3`"]),
        (["--log-level", "loud"], ["loud"]),
    ],
    ids=["vlan-word", "vlan-range", "timeout-word", "timeout-zero", "boot-neg", "log-level"],
)
def test_bad_values(run_driver, script, args, fragments):
    r = run_driver([*args, "--", script])
    assert_usage_error(r, *fragments)


def test_bad_transport_is_named(run_driver, script):
    r = run_driver([script], env={"NIXOS_TEST_NG_TRANSPORT": "ssh"})
    assert_usage_error(
        r, 'NIXOS_TEST_NG_TRANSPORT="ssh" is not a transport', "use `backdoor`, `agent`"
    )
    assert "SCRIPT RAN" not in r.stdout


def test_help_exits_zero(run_driver):
    r = run_driver(["--help"])
    assert r.returncode == 0, r
    assert "\nUsage: nixos-test-driver [OPTIONS] [TESTSCRIPT]" in r.stdout, r
    for flag in ("--vm-start-scripts", "--vlans", "--global-timeout", "--config", "--junit-xml"):
        assert flag in r.stdout, f"{flag} missing from --help\n{r}"
    assert r.stderr == "", r


# -- good command lines ---------------------------------------------------------------------

REPORT = """
import json
print("REPORT " + json.dumps({
    "machines": [m.name for m in machines],
    "vlans": [v.nr for v in vlans],
}))
"""


def report(result) -> dict:
    assert result.returncode == 0, result
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    assert len(lines) == 1, result
    return json.loads(lines[0][len("REPORT ") :])


@pytest.mark.parametrize(
    "layout",
    ["script-first", "script-after-scripts", "script-after-vlans", "double-dash"],
)
def test_test_script_may_stand_anywhere(run_driver, fake_vm, write_script, layout):
    a, b = fake_vm("a"), fake_vm("b")
    t = write_script("t.py", REPORT)
    scripts = ["--vm-start-scripts", a.script, b.script]
    args = {
        "script-first": [t, *scripts],
        "script-after-scripts": [*scripts, t],
        "script-after-vlans": [*scripts, "--vlans", "1", t],
        "double-dash": [*scripts, "--", t],
    }[layout]
    got = report(run_driver(args))
    assert got["machines"] == ["a", "b"]
    assert got["vlans"] == ([1] if layout == "script-after-vlans" else [])
    # nothing was booted: the script did not ask for it
    assert a.start_count == 0 and b.start_count == 0


def test_vlans_optional_and_deduplicated(run_driver, fake_vm, write_script):
    a = fake_vm("a")
    t = write_script("t.py", REPORT)
    assert report(run_driver(["--start-scripts", a.script, "--", t]))["vlans"] == []
    # upstream: `list(set(vlans))`, ascending for these numbers
    got = report(run_driver(["--start-scripts", a.script, "--vlans", "2", "1", "2", "--", t]))
    assert got["vlans"] == [1, 2]


def test_environment_defaults(run_driver, fake_vm, write_script):
    a, b, c = fake_vm("a"), fake_vm("b"), fake_vm("c")
    t = write_script("t.py", REPORT)
    r = run_driver(
        [],
        env={
            "startScripts": str(a.script),
            "vmStartScripts": f"{b.script}  {c.script}",
            "vmNames": "bee sea",
            "vlans": "3 1",
            "globalTimeout": "123",
            "testScript": str(t),
        },
    )
    got = report(r)
    assert got["machines"] == ["a", "bee", "sea"]
    assert got["vlans"] == [1, 3]
    assert "Test will time out and terminate in 123 seconds" in r.stderr, r


def test_flags_win_over_environment(run_driver, fake_vm, write_script):
    a, b = fake_vm("a"), fake_vm("b")
    t = write_script("t.py", REPORT)
    r = run_driver(
        ["--vm-start-scripts", b.script, "--global-timeout", "45", t],
        env={"vmStartScripts": str(a.script), "globalTimeout": "99", "testScript": "/nope"},
    )
    assert report(r)["machines"] == ["b"]
    assert "terminate in 45 seconds" in r.stderr, r


def test_vm_names_override_script_names(run_driver, fake_vm, write_script):
    a = fake_vm("x", script_name="qemu-anything")
    t = write_script("t.py", REPORT + "assert server is machine\n")
    got = report(run_driver(["--vm-names", "server", "--vm-start-scripts", a.script, "--", t]))
    assert got["machines"] == ["server"]


def test_one_misnamed_script_is_machine_with_warning(run_driver, fake_vm, write_script):
    a = fake_vm("x", script_name="qemu-anything")
    t = write_script("t.py", REPORT)
    r = run_driver(["--vm-start-scripts", a.script, "--", t])
    assert report(r)["machines"] == ["machine"]
    assert "not named `run-<name>-vm`" in r.stderr, r


def test_config_generation_c_end_to_end(run_driver, fake_vm, write_script, driver_env):
    vm = fake_vm("srv")
    t = write_script(
        "t.py",
        REPORT
        + """
        start_all()
        t.assertEqual(srv.succeed("echo from-config"), "from-config\\n")
        """.replace("\n        ", "\n"),
    )
    cfg = write_script(
        "config.json",
        json.dumps(
            {
                "vms": {"srv": {"name": "srv", "start_script": str(vm.script)}},
                "containers": {},
                "vlans": [1],
                "global_timeout": 77,
                "enable_ssh_backdoor": False,
                "test_script": str(t),
                "something_new": True,
            }
        ),
    )
    r = run_driver(["--config", cfg])
    got = report(r)
    assert got == {"machines": ["srv"], "vlans": [1]}
    assert "terminate in 77 seconds" in r.stderr, r
    assert "unknown key `something_new` ignored" in r.stderr, r
    assert vm.start_count == 1
    start = vm.records("start")[0]
    # the start-script contract: appended arguments and environment
    state = driver_env.state_dir("srv")
    assert start["argv"][:4] == [
        "-qmp",
        f"unix:{state}/qmp,server=on,wait=off",
        "-monitor",
        f"unix:{state}/monitor",
    ]
    assert "-no-reboot" in start["argv"] and "-nographic" in start["argv"]
    assert start["cwd"] == str(state)
    assert start["env"]["TMPDIR"] == str(state)
    assert start["env"]["USE_TMPDIR"] == "1"
    assert start["env"]["SHARED_DIR"] == str(driver_env.runtime / "shared-xchg")
    assert start["env"]["QEMU_VDE_SOCKET_1"] == str(driver_env.runtime / "vde1.ctl")


def test_prefix_abbreviations(run_driver, fake_vm, write_script, driver_env):
    vm = fake_vm("a")
    t = write_script(
        "t.py",
        """
        with subtest("only"):
            pass
        """,
    )
    r = run_driver(
        ["--vm-start", vm.script, "--global=30", "--junit=junit.xml", "-o", driver_env.out, t]
    )
    assert r.returncode == 0, r
    assert "terminate in 30 seconds" in r.stderr, r
    junit = driver_env.out / "junit.xml"
    assert junit.is_file(), r
    assert not (driver_env.work / "junit.xml").exists()
    cases = ET.parse(junit).getroot().iter("testcase")
    assert [c.get("name") for c in cases] == ["only"]


def test_keep_vm_state_is_deprecated_but_works(run_driver, fake_vm, write_script, driver_env):
    vm = fake_vm("a")
    state = driver_env.state_dir("a")
    state.mkdir(parents=True)
    (state / "disk.img").write_text("keep me")
    t = write_script("t.py", "pass\n")
    r = run_driver(["--keep-vm-state", "--vm-start-scripts", vm.script, "--", t])
    assert r.returncode == 0, r
    assert "deprecated" in r.stderr, r
    assert (state / "disk.img").read_text() == "keep me"
    r = run_driver(["--vm-start-scripts", vm.script, "--", t])
    assert r.returncode == 0, r
    assert not (state / "disk.img").exists()
    assert "deleting machine state directory" in r.stderr, r


def test_a_run_dash_directory_in_the_path_names_the_machine_as_upstream_and_warns(
    driver_env, fake_vm, run_driver, write_script
):
    # upstream's re.search("run-(.+)-vm$", cmd) starts at the first `run-` of the path
    vm = fake_vm("alpha", script_name="run-odd/run-alpha-vm")
    test = write_script("t.py", "odd_run_alpha.succeed('true')\n")
    r = run_driver(["--vm-start-scripts", vm.script, "--", test])
    assert r.returncode == 0, r
    assert "warning: machine `odd/run-alpha` takes its name from the first `run-`" in r.stderr
    assert "scripts call it `odd_run_alpha`; pass --vm-names" in r.stderr
