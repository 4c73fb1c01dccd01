"""Faults, on the fake QEMU: guests that never say hello, start scripts that fail, guests
that die mid-command, nasty output, timeouts and signals. Every failure must be a clear
message and the exit status docs/cli.md promises, with no process left behind (the autouse
leak check in conftest.py). No test measures time: a driver that hangs instead of failing is
caught by `run_driver`'s timeout, which fails the test."""

from __future__ import annotations

import os
import re
import signal
import xml.etree.ElementTree as ET

import pytest
from nixos_test_ng import procs
from support.leaks import wait_until_gone


@pytest.fixture
def one_vm(driver_env):
    """`one_vm(body, name="alpha", extra=(), **knobs)`: the fake VM and the driver's
    arguments running `body` on it."""

    def make(body: str, name: str = "alpha", extra: list | None = None, **knobs):
        vms, args = driver_env.script_args(body, [name], extra=extra or (), **knobs)
        return vms[name], args

    return make


@pytest.fixture(params=["default", "base64", "upstream"])
def framing(request):
    """Every shell framing of the engine (`NIXOS_TEST_NG_SHELL_FRAMING`; the default is the
    raw one)."""
    return {"NIXOS_TEST_NG_SHELL_FRAMING": request.param}


def error_lines(result) -> list[str]:
    return [line[4:] for line in result.stderr.splitlines() if line.startswith("!!! ")]


# -- boot failures ----------------------------------------------------------------------------


def test_guest_without_handshake_hits_boot_timeout(one_vm, run_driver):
    vm, args = one_vm('alpha.succeed("true")\n', no_handshake=True)
    r = run_driver(["--boot-timeout", "3", *args], timeout=30)
    assert r.returncode == 1, r
    errors = "\n".join(error_lines(r))
    assert "alpha: no backdoor handshake within 3 s" in errors, r
    assert "Spawning backdoor root shell..." in errors, r
    # the last console lines are part of the error
    assert re.search(r"last \d+ console lines:", errors), r
    assert "  | " in errors and "waiting for device dev-hvc0.device" in errors, r
    assert vm.start_count == 1
    assert "cleanup" in r.stderr


def test_boot_timeout_from_environment(one_vm, run_driver):
    _, args = one_vm('alpha.succeed("true")\n', no_handshake=True)
    r = run_driver(args, env={"NIXOS_TEST_NG_BOOT_TIMEOUT": "1.5"}, timeout=30)
    assert r.returncode == 1, r
    # 1.5 s, shown rounded to whole seconds
    assert "alpha: no backdoor handshake within 2 s of the start" in r.stderr, r


def test_slow_boot_within_boot_timeout_is_fine(one_vm, run_driver):
    _, args = one_vm('print("OUT", alpha.succeed("echo up"), end="")\n', boot_delay=1)
    r = run_driver(["--boot-timeout", "10", *args], timeout=30)
    assert r.returncode == 0, r
    assert "OUT up" in r.stdout, r
    assert "systemd[1]: Starting fake-service-" in r.stderr  # console lines while booting


def test_start_script_exits_early(one_vm, run_driver):
    vm, args = one_vm("start_all()\n", exit_early=3)
    r = run_driver(args, timeout=30)
    assert r.returncode == 1, r
    errors = "\n".join(error_lines(r))
    assert f"start script `{vm.script}` exited" in errors, r
    assert "exit status: 3" in errors, r
    assert "alpha" in errors, r
    # QEMU's own complaint (its stderr) reaches the driver's stderr
    assert "Could not open 'nixos.qcow2'" in r.stderr, r


def test_start_script_exits_early_on_first_command(one_vm, run_driver):
    vm, args = one_vm('alpha.succeed("true")\n', exit_early=42)
    r = run_driver(args, timeout=30)
    assert r.returncode == 1, r
    assert "exit status: 42" in r.stderr, r
    assert f"`{vm.script}`" in r.stderr, r


def test_guest_dies_before_the_handshake(one_vm, run_driver):
    vm, args = one_vm('alpha.succeed("true")\n', panic=5)
    r = run_driver(args, timeout=30)
    assert r.returncode == 1, r
    errors = "\n".join(error_lines(r))
    assert "alpha: the machine stopped before the backdoor handshake" in errors, r
    assert "(QEMU exited with status 5)" in errors, r
    assert "  | [    1.500000] Kernel panic - not syncing: VFS" in errors, r
    assert vm.exits()[-1]["reason"] == "panic"


def test_start_script_that_cannot_exec(write_script, run_driver):
    bad = write_script("run-broken-vm", "#!/nonexistent/interpreter\n", executable=True)
    t = write_script("t.py", "start_all()\n")
    r = run_driver(["--vm-start-scripts", bad, "--", t], timeout=30)
    assert r.returncode == 1, r
    assert "broken" in r.stderr and str(bad) in r.stderr, r
    assert "Traceback (most recent call last)" in r.stderr  # upstream-style script frames


# -- the guest dies ---------------------------------------------------------------------------


def test_guest_crashes_mid_command(one_vm, run_driver, framing):
    # the guest tells the fake QEMU to die (exit status 7) while the command still runs
    vm, args = one_vm('alpha.succeed("fake-qemu-ctl crash 7; sleep 30")\n')
    r = run_driver(args, timeout=30, env=framing)
    assert r.returncode == 1, r
    errors = "\n".join(error_lines(r))
    assert "alpha: the machine stopped while running `fake-qemu-ctl crash 7; sleep 30`" in errors
    assert "(QEMU exited with status 7)" in errors, r
    assert "Kernel panic - not syncing: fake crash" in errors, r  # console tail
    assert vm.exits()[-1]["reason"] == "crash"


def test_qemu_killed_mid_command(one_vm, run_driver):
    # QEMU itself is SIGKILLed from the host while a command runs
    body = """
    import os, signal, threading
    alpha.start()
    threading.Timer(0.5, os.kill, (alpha.pid, signal.SIGKILL)).start()
    alpha.succeed("sleep 30")
    """
    _, args = one_vm(body)
    r = run_driver(args, timeout=30)
    assert r.returncode == 1, r
    assert "alpha: the machine stopped while running `sleep 30`" in r.stderr, r
    assert "(QEMU killed by signal 9 (SIGKILL), e.g. the OOM killer)" in r.stderr, r
    assert 'alpha.succeed("sleep 30")' in r.stderr, r  # the script line, upstream style


def test_next_command_after_a_crash_restarts_the_machine(one_vm, run_driver):
    # upstream: execute() → connect() → start(): a crashed machine boots again
    body = """
    alpha.start()
    first = alpha.pid
    alpha.crash()
    t.assertTrue(not alpha.booted and alpha.pid is None, (alpha.booted, alpha.pid))
    t.assertEqual(alpha.execute("echo again"), (0, "again\\n"))
    t.assertTrue(alpha.booted and alpha.pid != first)
    print("RESTART-OK")
    """
    vm, args = one_vm(body)
    r = run_driver(args, timeout=30)
    assert r.returncode == 0, r
    assert "RESTART-OK" in r.stdout
    assert "alpha: forced crash" in r.stderr, r
    assert vm.start_count == 2
    assert vm.exits()[0]["reason"] == "quit"
    assert "quit" in vm.monitor_commands()


# -- nasty output -----------------------------------------------------------------------------


def test_huge_output(one_vm, run_driver, framing):
    body = """
    out = alpha.succeed("head -c 100000000 /dev/zero")
    t.assertEqual(len(out), 100_000_000, len(out))
    t.assertEqual(out.count("\\0"), 100_000_000)
    t.assertEqual(alpha.succeed("echo still-in-sync"), "still-in-sync\\n")
    print("HUGE-OK")
    """
    _, args = one_vm(body)
    r = run_driver(args, timeout=90, env=framing)
    assert r.returncode == 0, r
    assert "HUGE-OK" in r.stdout


def test_non_utf8_output_is_replaced(one_vm, run_driver, framing):
    body = r"""
    out = alpha.succeed("printf 'a\\xffb\\xfe\\xc3(\\n'")
    t.assertEqual(out, "a\ufffdb\ufffd\ufffd(\n", repr(out))
    status, out = alpha.execute("printf '\\x80'; exit 3")
    t.assertEqual((status, out), (3, "\ufffd"), (status, out))
    print("UTF8-OK")
    """
    _, args = one_vm(body)
    r = run_driver(args, timeout=30, env=framing)
    assert r.returncode == 0, r
    assert "UTF8-OK" in r.stdout


def test_protocol_lookalike_output(one_vm, run_driver, framing):
    body = r"""
    tricky = [
        "Spawning backdoor root shell...",
        "aGVsbG8gd29ybGQ=",
        " 0",
        "0",
        "42",
        "echo ${PIPESTATUS[0]}",
        "(qemu) ",
        '{"return": {}}',
        "",
        "trailing space ",
    ]
    for text in tricky:
        status, out = alpha.execute("printf '%s\\n' " + repr(text).replace('"', "'"))
        t.assertEqual(status, 0, (text, status))
    # the same, without going through printf quoting: written to a file and cat'ed
    alpha.succeed("cat > /tmp/tricky.txt <<'EOF'\n" + "\n".join(tricky) + "\nEOF")
    out = alpha.succeed("cat /tmp/tricky.txt; rm /tmp/tricky.txt")
    t.assertEqual(out, "\n".join(tricky) + "\n", repr(out))
    t.assertEqual(alpha.succeed("echo -n ' 0'"), " 0")
    out = alpha.succeed("echo 'Spawning backdoor root shell...'; echo ' 1'")
    t.assertEqual(out, "Spawning backdoor root shell...\n 1\n")
    t.assertEqual(alpha.execute("echo ' 0'; exit 5"), (5, " 0\n"))
    t.assertEqual(alpha.execute("echo -n x"), (0, "x"))
    print("LOOKALIKE-OK")
    """
    _, args = one_vm(body)
    r = run_driver(args, timeout=30, env=framing)
    assert r.returncode == 0, r
    assert "LOOKALIKE-OK" in r.stdout


def test_background_child_holding_stdout(one_vm, run_driver, framing):
    body = """
    out = alpha.succeed("(sleep 2; echo late) & echo early")
    t.assertEqual(out, "early\\nlate\\n", repr(out))  # "late": it waited for the child
    print("BG-OK")
    """
    _, args = one_vm(body)
    r = run_driver(args, timeout=30, env=framing)
    assert r.returncode == 0, r
    assert "BG-OK" in r.stdout


def test_command_timeout_gives_124(one_vm, run_driver, framing):
    body = """
    status, out = alpha.execute("echo before; sleep 20; echo after", timeout=1)
    t.assertEqual(status, 124, status)
    t.assertEqual(out, "before\\n", repr(out))
    t.assertEqual(alpha.succeed("echo next"), "next\\n")
    print("TIMEOUT-OK")
    """
    _, args = one_vm(body)
    r = run_driver(args, timeout=30, env=framing)
    assert r.returncode == 0, r
    assert "TIMEOUT-OK" in r.stdout


def test_succeed_with_timeout_fails_with_124(one_vm, run_driver):
    _, args = one_vm('alpha.succeed("sleep 20", timeout=1)\n')
    r = run_driver(args, timeout=30)
    assert r.returncode == 1, r
    assert "command `sleep 20` failed (exit code 124)" in r.stderr, r
    assert "RequestedAssertionFailed" in r.stderr, r


# -- the global timeout and signals -----------------------------------------------------------


def test_global_timeout(one_vm, run_driver, driver_env):
    _, args = one_vm('alpha.succeed("sleep 60")\n')
    r = run_driver(["--global-timeout", "3", *args], timeout=30)
    assert r.returncode == -signal.SIGTERM, r
    assert "global timeout" in r.stderr, r
    assert "Test will time out and terminate in 3 seconds" in r.stderr, r
    assert "timeout reached; test terminating..." in r.stderr, r
    assert "cleanup" in r.stderr, r
    assert not wait_until_gone(driver_env.tmp, timeout=3)


def test_global_timeout_is_reported_as_the_global_timeout(one_vm, run_driver):
    # The driver dies of SIGTERM (as upstream), with the message "the global timeout expired;
    # the test was terminated": the timer's own SIGTERM is not reported as "received SIGTERM".
    _, args = one_vm("import time\ntime.sleep(60)\n")
    r = run_driver(["--global-timeout", "2", *args], timeout=30)
    assert "global timeout of 2 seconds reached" in r.stderr, r
    assert "the global timeout expired" in r.stderr, r
    assert "received SIGTERM" not in r.stderr, r
    assert r.returncode == -signal.SIGTERM, r


def test_global_timeout_while_booting(one_vm, run_driver):
    _, args = one_vm('alpha.succeed("true")\n', no_handshake=True)
    r = run_driver(["--global-timeout", "2", *args], timeout=30)
    assert r.returncode == -signal.SIGTERM, r
    assert "global timeout" in r.stderr, r


@pytest.mark.parametrize(
    ("sig", "status", "message"),
    [
        # killed by the signal after the cleanup, as upstream (a shell sees 130 and 143)
        (signal.SIGINT, -signal.SIGINT, "interrupted; cleaning up"),
        (signal.SIGTERM, -signal.SIGTERM, "received SIGTERM; cleaning up"),
    ],
    ids=["SIGINT", "SIGTERM"],
)
def test_signal_while_command_runs(one_vm, start_driver, driver_env, sig, status, message):
    running = driver_env.tmp / "running"
    vm, args = one_vm(f'alpha.succeed("touch {running}; sleep 60")\nprint("NOT REACHED")\n')
    proc = start_driver(args)
    proc.wait_for_file(running)  # the command is in the guest now
    proc.send_signal(sig)
    r = proc.wait(timeout=20)
    assert r.returncode == status, r
    assert message in r.stderr, r
    # the cleanup block ran and finished
    assert re.search(r"^cleanup$", r.stderr, re.M), r
    assert "(finished: cleanup" in r.stderr, r
    assert "NOT REACHED" not in r.stdout
    assert "kill QemuMachine" in r.stderr, r
    assert not wait_until_gone(driver_env.tmp, timeout=3)


def test_sigint_while_booting(one_vm, start_driver, driver_env):
    _, args = one_vm('alpha.succeed("true")\n', no_handshake=True)
    proc = start_driver(args)
    proc.wait_for_output(r"waiting for the VM to finish booting")
    proc.send_signal(signal.SIGINT)
    r = proc.wait(timeout=20)
    assert r.returncode == -signal.SIGINT, r
    assert "(finished: cleanup" in r.stderr, r
    assert not wait_until_gone(driver_env.tmp, timeout=3)


def test_sigkill_of_the_driver_takes_everything_down(one_vm, start_driver, driver_env):
    body = """
    alpha.start()
    print("PIDS", alpha.pid, vlan1.pid, flush=True)
    alpha.succeed("sleep 60")
    """
    _, args = one_vm(body, extra=["--vlans", "1"])
    proc = start_driver(args)
    out = proc.wait_for_output(r"PIDS \d+ \d+", stream="stdout")
    qemu_pid, vde_pid = map(int, re.search(r"PIDS (\d+) (\d+)", out).groups())
    proc.wait_for_output(r"must succeed: sleep 60")
    assert procs.alive(qemu_pid) and procs.alive(vde_pid)
    assert "vde_switch" in procs.cmdline(vde_pid)
    os.kill(proc.pid, signal.SIGKILL)  # the driver only, not its process group
    proc.popen.wait(5)
    # the parent-death signal ends them at once; the timeout only detects a hang
    procs.wait_until(lambda: not (procs.alive(qemu_pid) or procs.alive(vde_pid)), 20)
    assert not procs.alive(qemu_pid), "the (fake) QEMU survived its driver"
    assert not procs.alive(vde_pid), "vde_switch survived its driver"
    assert not wait_until_gone(driver_env.tmp, timeout=3)


# -- JUnit ------------------------------------------------------------------------------------


def test_junit_with_passing_and_failing_subtests(one_vm, run_driver, driver_env):
    body = """
    with subtest("first works"):
        alpha.succeed("true")
    with subtest("second fails"):
        alpha.succeed("echo about to fail; exit 3")
    """
    _, args = one_vm(body, extra=["--junit-xml", "report.xml", "-o", str(driver_env.out)])
    r = run_driver(args, timeout=30)
    assert r.returncode == 1, r
    assert 'Test "second fails" failed with error:' in r.stderr, r
    root = ET.parse(driver_env.out / "report.xml").getroot()
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert set(cases) == {"first works", "second fails"}, ET.tostring(root)
    good, bad = cases["first works"], cases["second fails"]
    assert good.find("failure") is None and good.find("error") is None
    failure = bad.find("failure")
    if failure is None:
        failure = bad.find("error")
    assert failure is not None, ET.tostring(bad)
    text = (failure.get("message") or "") + (failure.text or "")
    assert "exit code 3" in text, ET.tostring(bad)
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    assert suites[0].get("name") == "NixOS integration test"
    assert suites[0].get("tests") == "2"
    assert int(suites[0].get("failures", "0")) + int(suites[0].get("errors", "0")) == 1


def test_junit_reports_a_failure_outside_subtests(one_vm, run_driver, driver_env):
    # the run fails after its only subtest passed: the report must not say "0 failures"
    body = """
    with subtest("first works"):
        alpha.succeed("true")
    alpha.succeed("echo outside; exit 4")
    """
    _, args = one_vm(body, extra=["--junit-xml", "report.xml", "-o", str(driver_env.out)])
    r = run_driver(args, timeout=30)
    assert r.returncode == 1, r
    xml = (driver_env.out / "report.xml").read_text()
    root = ET.fromstring(xml)
    failures = [
        f for case in root.iter("testcase") for f in [*case.iter("failure"), *case.iter("error")]
    ]
    assert failures, f"the run failed but the JUnit report has no failure:\n{xml}"
    assert any("exit code 4" in (f.get("message") or "") + (f.text or "") for f in failures), xml
