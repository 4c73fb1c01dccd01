"""Upstream's XML log: `LOGFILE=path` adds it, as nixpkgs' driver does (`run.nix` sets
`LOGFILE=/dev/null`)."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET

SCRIPT = """
alpha.start()
with subtest("greets"):
    alpha.succeed("echo hello-from-alpha > /dev/console")
with subtest("breaks"):
    alpha.succeed("exit 3")
"""


def test_logfile_gets_upstreams_xml_log(driver_env, fake_vm, run_driver, write_script):
    vm = fake_vm("alpha")
    test = write_script("t.py", SCRIPT)
    log = driver_env.work / "log.xml"
    r = run_driver(["--vm-start-scripts", vm.script, "--", test], env={"LOGFILE": str(log)})
    assert r.returncode == 1, r
    root = ET.parse(log).getroot()  # well-formed although a subtest failed
    assert root.tag == "logfile"
    heads = [h.text for h in root.iter("head")]
    assert "subtest: greets" in heads and "subtest: breaks" in heads, heads
    lines = list(root.iter("line"))
    command = [h for h in root.iter("head") if h.get("machine") == "alpha"]
    assert "must succeed: echo hello-from-alpha > /dev/console" in [h.text for h in command]
    serial = [e.text for e in lines if e.get("type") == "serial"]
    assert serial and all(e.get("machine") == "alpha" for e in lines if e.get("type") == "serial")
    assert any("(finished: subtest: greets, in " in (e.text or "") for e in lines)
    assert any("exit code 3" in (e.text or "") for e in lines)


def test_logfile_dev_null_as_run_nix_sets_it(driver_env, fake_vm, run_driver, write_script):
    vm = fake_vm("alpha")
    test = write_script("t.py", "alpha.succeed('true')\n")
    r = run_driver(["--vm-start-scripts", vm.script, "--", test], env={"LOGFILE": "/dev/null"})
    assert r.returncode == 0, r
    assert "LOGFILE" not in r.stderr


def test_an_unwritable_logfile_is_a_warning(driver_env, fake_vm, run_driver, write_script):
    vm = fake_vm("alpha")
    test = write_script("t.py", "alpha.succeed('true')\n")
    bad = driver_env.work / "missing-dir" / "log.xml"
    r = run_driver(["--vm-start-scripts", vm.script, "--", test], env={"LOGFILE": str(bad)})
    assert r.returncode == 0, r
    assert f"warning: LOGFILE {bad}: " in r.stderr and "no XML log" in r.stderr


def test_plain_pytest_takes_the_logfile_from_the_environment(driver_env, fake_vm):
    """The pytest plugin's machines come from its options only (a `vmStartScripts` in the
    environment is not read), its XML log and spans from the environment."""
    vm = fake_vm("alpha")
    tests = driver_env.tmp / "suite"
    tests.mkdir()
    (tests / "test_machine.py").write_text(
        "def test_uname(alpha):\n    assert alpha.succeed('echo up') == 'up\\n'\n"
    )
    log = driver_env.work / "plugin-log.xml"
    env = {
        **driver_env.env,
        "PATH": os.environ["PATH"],
        "LOGFILE": str(log),
        "vmStartScripts": str(driver_env.work / "no-such-start-script"),
    }
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)]
        + ["--rootdir", str(tests), "--nixos-vm-start-script", str(vm.script)]
        + ["--nixos-out", str(driver_env.work)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tests,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed" in r.stdout
    root = ET.parse(log).getroot()
    commands = [h.text for h in root.iter("head") if h.get("machine") == "alpha"]
    assert "must succeed: echo up" in commands, commands


def test_a_full_disk_under_the_xml_log_fails_the_run(driver_env, fake_vm, run_driver, write_script):
    from support.tmpfs import small_tmpfs

    vm = fake_vm("alpha")
    body = (
        "alpha.succeed('true')\n"
        "for i in range(400):\n"
        "    alpha.log('x' * 200)\n"
        "print('SCRIPT-END')\n"
    )
    test = write_script("t.py", body)
    with small_tmpfs(driver_env.work / "small", "16k") as small:
        log = small / "log.xml"
        r = run_driver(["--vm-start-scripts", vm.script, "--", test], env={"LOGFILE": str(log)})
    assert "SCRIPT-END" in r.stdout, r  # the script itself ran to its end
    assert r.returncode == 1, r
    assert f"!!! cannot write the XML log {log}: No space left on device (os error 28)" in (
        r.stderr
    ), r
    assert r.stderr.count("cannot write the XML log") == 1, r  # once, not per line
    assert "Traceback" not in r.stderr, r
