"""How a run ends, on the busybox VM: a subtest failure the script catches passes the run (the
reports still show it failed); the global timeout kills the driver with SIGTERM (143 in a
shell) after killing the VM and writing JUnit and the HTML report, even when the script
catches every exception."""

from __future__ import annotations

import shlex
import subprocess
import xml.etree.ElementTree as ET

import pytest

pytestmark = pytest.mark.vm


def junit_cases(path) -> dict[str, str]:
    """Case name -> "failed" or "passed"."""
    root = ET.parse(path).getroot()
    return {
        case.get("name"): "passed" if case.find("failure") is None else "failed"
        for case in root.iter("testcase")
    }


def test_a_caught_subtest_failure_passes_the_run(vm_env):
    script = """
machine.start()
try:
    with subtest("expected to fail"):
        machine.succeed("exit 9")
except Exception:
    pass
with subtest("after"):
    machine.succeed("true")
"""
    run = vm_env.run({"machine": []}, script, "--junit-xml", "junit.xml")
    assert run.returncode == 0, run.stderr[-3000:]
    error = 'Test "expected to fail" failed with error: "command `exit 9` failed (exit code 9)"'
    assert f"!!! {error}" in run.stderr.splitlines(), run.stderr[-3000:]
    cases = junit_cases(vm_env.out / "junit.xml")
    assert cases == {"expected to fail": "failed", "after": "passed"}, cases
    report = (vm_env.out / "report.html").read_text()
    assert "<td>expected to fail</td><td>failed</td>" in report
    assert 'id="status">passed<' in report


def test_the_global_timeout_kills_the_driver_with_sigterm(vm_env, leftovers):
    # the script catches everything, BaseException included: the timeout still ends it
    script = """
machine.start()
with subtest("slow"):
    while True:
        try:
            machine.succeed("sleep 600")
        except BaseException:
            pass
"""
    (start,) = vm_env.scripts({"machine": []}).values()
    (vm_env.root / "xdg").mkdir(exist_ok=True)
    vm_env.out.mkdir(exist_ok=True)
    test = vm_env.root / "test.py"
    test.write_text(script)
    driver = ["nixos-test-driver", "-o", str(vm_env.out), "--junit-xml", "junit.xml"]
    driver += ["--global-timeout", "20", "--vm-start-scripts", start, "--", str(test)]
    err = vm_env.root / "stderr.txt"
    shell = f"{shlex.join(driver)} >/dev/null 2>{shlex.quote(str(err))}; echo $?"
    r = subprocess.run(
        ["sh", "-c", shell],
        env=vm_env.environ(),
        cwd=vm_env.root,
        capture_output=True,
        text=True,
        timeout=180,
    )
    log = err.read_text(errors="replace")
    assert r.stdout == "143\n", (r, log[-3000:])
    lines = log.splitlines()
    assert "timeout reached; test terminating..." in lines, log[-3000:]
    assert "!!! the global timeout expired; the test was terminated" in lines, log[-3000:]
    assert "(finished: cleanup" in log and "kill QemuMachine" in log, log[-3000:]
    assert not leftovers(vm_env.root), "the VM survived the timeout"
    cases = junit_cases(vm_env.out / "junit.xml")
    assert cases == {"slow": "failed"}, cases
    report = (vm_env.out / "report.html").read_text()
    assert "<td>slow</td><td>failed</td>" in report and 'id="status">failed<' in report
