"""How a run ends, on the fake QEMU: the exit status depends only on what escapes the script
(and on `log.error`); the global timeout, SIGTERM and `driver.terminate_test()` kill the driver
with SIGTERM after the cleanup and the reports, as upstream's driver dies of SIGTERM; scripts
that catch every exception cannot swallow that. Plus `driver.global_timeout` and
`driver.race_timer`."""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from support.driver import driver_command
from support.leaks import wait_until_gone

KILLED_BY_SIGTERM = -signal.SIGTERM

CAUGHT = """
try:
    with subtest("expected to fail"):
        alpha.succeed("exit 9")
except Exception:
    pass
with subtest("after"):
    alpha.succeed("true")
"""
CAUGHT_ERROR = 'Test "expected to fail" failed with error: "command `exit 9` failed (exit code 9)"'


@pytest.fixture
def one_vm(driver_env):
    """`one_vm(body, *extra)`: args running `body` on one fake VM `alpha`, with JUnit and the
    HTML report in the output directory."""

    def make(body: str, *extra: str) -> list:
        out = ["--junit-xml", "junit.xml", "-o", driver_env.out]
        return driver_env.script_args(body, extra=[*out, *extra])[1]

    return make


def junit_cases(path) -> dict[str, str | None]:
    """Case name -> its failure message, or None when it passed."""
    root = ET.parse(path).getroot()
    out = {}
    for case in root.iter("testcase"):
        failure = case.find("failure")
        out[case.get("name")] = None if failure is None else failure.get("message")
    return out


# -- what escapes the script ------------------------------------------------------------------


def test_a_subtest_failure_the_script_catches_passes_the_run(one_vm, run_driver, driver_env):
    log = driver_env.work / "log.xml"
    r = run_driver(one_vm(CAUGHT), env={"LOGFILE": str(log)})
    assert r.returncode == 0, r
    assert f"!!! {CAUGHT_ERROR}" in r.stderr.splitlines(), r
    assert "(finished: subtest: after" in r.stderr, r
    # every report still shows the subtest failed
    cases = junit_cases(driver_env.out / "junit.xml")
    assert cases == {"expected to fail": CAUGHT_ERROR, "after": None}, cases
    root = ET.parse(log).getroot()
    (nest,) = [n for n in root.iter("nest") if n.find("head").text == "subtest: expected to fail"]
    assert CAUGHT_ERROR in [line.text for line in nest.iter("line")]
    report = (driver_env.out / "report.html").read_text()
    assert "<td>expected to fail</td><td>failed</td>" in report
    assert 'id="status">passed<' in report  # the run's badge: what the exit status says


def test_log_error_fails_the_run_although_nothing_escapes(one_vm, run_driver, driver_env):
    r = run_driver(one_vm('alpha.succeed("true")\nlog.error("the result is wrong")\n'))
    assert r.returncode == 1, r
    assert "!!! the result is wrong" in r.stderr, r
    assert junit_cases(driver_env.out / "junit.xml") == {"main": "the result is wrong"}


def test_log_test_error_alone_does_not_fail_the_run(one_vm, run_driver):
    # upstream logs it "at warning level so that it does not exit"
    r = run_driver(one_vm('log.log_test_error("just a red line")\n'))
    assert r.returncode == 0, r
    assert "!!! just a red line" in r.stderr, r


def test_keep_going_fails_the_run_when_the_driver_caught_the_failure(one_vm, run_driver):
    # under --keep-going the failure escaped no further only because the driver caught it
    r = run_driver(one_vm(CAUGHT, "--keep-going"))
    assert r.returncode == 1, r
    assert f"!!! {CAUGHT_ERROR}" in r.stderr.splitlines(), r
    assert "--keep-going: going on with the script" in r.stderr, r


def test_an_escaping_subtest_failure_fails_the_run(one_vm, run_driver, driver_env):
    r = run_driver(one_vm('with subtest("expected to fail"):\n    alpha.succeed("exit 9")\n'))
    assert r.returncode == 1, r
    assert f"!!! {CAUGHT_ERROR}" in r.stderr.splitlines(), r
    report = (driver_env.out / "report.html").read_text()
    assert 'id="status">failed<' in report


PYTEST_CAUGHT = """
def test_steps(alpha, subtest):
    try:
        with subtest("expected to fail"):
            alpha.succeed("exit 9")
    except Exception:
        pass
"""


def test_pytest_style_a_caught_subtest_is_still_a_failed_report(one_vm, run_driver, driver_env):
    # pytest decides a pytest-style run's status: the subtest is a failed report of its own
    # (as with pytest-subtests), the test that caught it passes
    r = run_driver(one_vm(PYTEST_CAUGHT))
    assert r.returncode == 1, r
    assert "1 failed, 1 passed" in r.stdout, r.stdout
    cases = junit_cases(driver_env.out / "junit.xml")
    assert cases["test_steps"] is None and cases["expected to fail"] is not None, cases


# -- the global timeout -----------------------------------------------------------------------


def assert_ended_by_sigterm(r, driver_env, reason: str) -> None:
    """Killed by SIGTERM after the cleanup and the reports, no process left."""
    assert r.returncode == KILLED_BY_SIGTERM, r
    assert f"!!! {reason}" in r.stderr.splitlines(), r
    assert "(finished: cleanup" in r.stderr, r
    assert "HTML report: " in r.stderr, r
    assert (driver_env.out / "report.html").exists()
    assert (driver_env.out / "junit.xml").exists()
    assert not wait_until_gone(driver_env.tmp, timeout=3)


TIMEOUT = "the global timeout expired; the test was terminated"


def test_the_global_timeout_kills_the_driver_with_sigterm(one_vm, run_driver, driver_env):
    body = 'with subtest("slow"):\n    alpha.succeed("sleep 60")\nprint("NOT REACHED")\n'
    r = run_driver(["--global-timeout", "2", *one_vm(body)])
    assert_ended_by_sigterm(r, driver_env, TIMEOUT)
    assert "Test will time out and terminate in 2 seconds" in r.stderr, r
    assert "timeout reached; test terminating..." in r.stderr.splitlines(), r
    assert "!!! global timeout of 2 seconds reached" in r.stderr.splitlines(), r
    assert "kill QemuMachine" in r.stderr, r
    assert "received SIGTERM" not in r.stderr, r
    assert "NOT REACHED" not in r.stdout
    cases = junit_cases(driver_env.out / "junit.xml")
    assert list(cases) == ["slow"] and "global timeout" in cases["slow"], cases
    report = (driver_env.out / "report.html").read_text()
    assert "<td>slow</td><td>failed</td>" in report and 'id="status">failed<' in report


def test_a_shell_sees_status_143(one_vm, driver_env):
    args = [*driver_command(), "--global-timeout", "2", *one_vm('alpha.succeed("sleep 60")\n')]
    r = subprocess.run(
        ["sh", "-c", f"{shlex.join(map(str, args))} >/dev/null 2>&1; echo $?"],
        env=driver_env.env,
        cwd=driver_env.work,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.stdout == "143\n", r
    assert not wait_until_gone(driver_env.tmp, timeout=3)


@pytest.mark.parametrize(
    "body",
    [
        # every engine call fails once the timeout fired: the second one ends the run
        'while True:\n    try:\n        alpha.succeed("sleep 1")\n    except BaseException:\n'
        "        pass\n",
        # no engine call at all: the grace period ends it
        "import time\nwhile True:\n    try:\n        time.sleep(0.2)\n"
        "    except BaseException:\n        pass\n",
    ],
    ids=["engine-calls", "pure-python"],
)
def test_a_script_that_swallows_the_timeout_still_ends(one_vm, run_driver, driver_env, body):
    r = run_driver(["--global-timeout", "2", *one_vm(body)])
    assert_ended_by_sigterm(r, driver_env, TIMEOUT)
    caught = "caught `GlobalTimeout: the global timeout expired` and went on; ending the run"
    assert f"!!! the test script {caught}" in r.stderr.splitlines(), r
    # it went on for a call or two after the timeout, not for thousands
    lines = r.stderr.splitlines()
    after = lines[lines.index("timeout reached; test terminating...") :]
    assert after.count("alpha: must succeed: sleep 1") <= 2, r


def test_a_script_that_catches_the_timeout_and_returns_still_ends(one_vm, run_driver, driver_env):
    body = 'try:\n    alpha.succeed("sleep 60")\nexcept Exception:\n    pass\nprint("AFTER")\n'
    r = run_driver(["--global-timeout", "2", *one_vm(body)])
    assert_ended_by_sigterm(r, driver_env, TIMEOUT)
    assert "AFTER" in r.stdout  # it returned; the driver then ended the run
    assert "caught `GlobalTimeout" not in r.stderr, r


def test_a_pytest_style_run_ends_at_the_timeout(one_vm, run_driver, driver_env):
    body = 'def test_slow(alpha):\n    alpha.succeed("sleep 60")\n\n'
    body += 'def test_never(alpha):\n    print("NOT REACHED")\n'
    r = run_driver(["--global-timeout", "3", *one_vm(body)])
    assert_ended_by_sigterm(r, driver_env, TIMEOUT)
    assert "NOT REACHED" not in r.stdout
    cases = junit_cases(driver_env.out / "junit.xml")
    assert list(cases) == ["test_slow"] and cases["test_slow"] is not None, cases


# -- SIGTERM, terminate_test() ------------------------------------------------------------------


def test_sigterm_swallowed_by_the_script_still_ends_it(one_vm, start_driver, driver_env):
    body = 'alpha.succeed("true")\nimport time\nwhile True:\n    try:\n'
    body += '        print("READY", flush=True)\n        time.sleep(0.2)\n'
    body += "    except BaseException:\n        pass\n"
    p = start_driver(one_vm(body))
    p.wait_for_output("READY", stream="stdout")
    p.send_signal(signal.SIGTERM)
    r = p.wait(timeout=30)
    assert_ended_by_sigterm(r, driver_env, "received SIGTERM; cleaning up")
    assert "caught `Terminated: received SIGTERM` and went on" in r.stderr, r


def test_terminate_test_ends_the_run_as_upstream(one_vm, run_driver, driver_env):
    body = 'alpha.succeed("true")\ndriver.terminate_test()\nprint("NOT REACHED")\n'
    r = run_driver(one_vm(body))
    assert_ended_by_sigterm(r, driver_env, "received SIGTERM; cleaning up")
    lines = r.stderr.splitlines()
    block = lines.index("timeout reached; test terminating...")
    assert lines[block + 1] == "!!! terminate_test() called by the test script", r
    assert lines[block + 2].startswith("kill QemuMachine (pid "), r
    assert "NOT REACHED" not in r.stdout


def test_global_timeout_and_race_timer(one_vm, run_driver):
    body = """
    t.assertEqual(driver.global_timeout, 3, driver.global_timeout)
    t.assertEqual(driver.race_timer.interval, 3)
    t.assertTrue(driver.race_timer.is_alive())  # run_tests() started it
    driver.race_timer.cancel()
    retry(lambda _: not driver.race_timer.is_alive())
    alpha.succeed("sleep 4")  # beyond the cancelled timeout
    driver.race_timer.start()  # started once: a second start does nothing
    t.assertFalse(driver.race_timer.is_alive())
    print("PASSED", flush=True)
    """
    r = run_driver(["--global-timeout", "3", *one_vm(body)])
    assert r.returncode == 0, r
    assert "PASSED" in r.stdout
    assert "timeout reached" not in r.stderr


def test_no_race_timer_runs_before_run_tests(driver_env, fake_vm):
    # the Driver object of the pytest plugin or a REPL: the timer only runs once started
    vm = fake_vm("alpha")
    code = f"""
from nixos_test_ng import _native
from nixos_test_ng.driver import Driver
config = _native.parse_args(["--vm-start-scripts", {str(vm.script)!r}, "--interactive"], {{}})
driver = Driver(config, _native.Logger())
if driver.global_timeout != 7 * 24 * 3600:
    raise SystemExit("global timeout: " + repr(driver.global_timeout))
if driver.race_timer.is_alive():
    raise SystemExit("the race timer runs before run_tests()")
driver.cleanup()
print("OK")
"""
    r = subprocess.run(
        [sys.executable, "-c", code],
        env=driver_env.env,
        cwd=driver_env.work,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.stdout == "OK\n", r
