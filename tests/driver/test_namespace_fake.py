"""The test-script namespace and the Machine API, on the fake QEMU: every upstream symbol,
and every Machine method that works without a real guest, checked from inside a script
(assertions in the script make the driver exit 1, which the test reports with the log)."""

from __future__ import annotations

import json
import re
import sys
import textwrap

import pytest
from fakes import FAKE_QEMU

# Prepended to every script: a helper to check which exception a call raises.
PRELUDE = """
def raises(name, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except BaseException as e:
        t.assertEqual(type(e).__name__, name, f"expected {name}, got {type(e).__name__}: {e}")
        return str(e)
    raise AssertionError(f"{fn} did not raise {name}")
"""

GENERAL_SYMBOLS = [
    "start_all",
    "test_script",
    "machines",
    "vlans",
    "driver",
    "log",
    "os",
    "create_machine",
    "subtest",
    "run_tests",
    "join_all",
    "retry",
    "serial_stdout_off",
    "serial_stdout_on",
    "polling_condition",
    "Machine",
    "BaseMachine",
    "QemuMachine",
    "NspawnMachine",
    "FirecrackerMachine",
    "CloudHypervisorMachine",
    "t",
    "debug",
]


@pytest.fixture
def run_script(run_driver, driver_env):
    """`run_script(body, machines=("alpha",), extra=[], ok=True)`: runs `body` (with `@G@`
    replaced by a scratch dir the guest and the script share) on fake VMs; returns the
    result, asserting exit 0 unless `ok=False`."""

    def run(body, machines=("alpha",), extra=(), ok=True, timeout=60, **knobs):
        scratch = driver_env.tmp / "guest"
        scratch.mkdir(exist_ok=True)
        text = PRELUDE + textwrap.dedent(body).replace("@G@", str(scratch))
        vms, args = driver_env.script_args(text, machines, extra=extra, **knobs)
        r = run_driver(args, timeout=timeout)
        if ok:
            assert r.returncode == 0, str(r)
        r.vms = vms
        return r

    return run


# -- the namespace ----------------------------------------------------------------------------


def test_symbols_with_one_machine_and_vlans(run_script, driver_env):
    body = """
    import datetime
    g = globals()
    for name in GENERAL:
        t.assertIn(name, g, name)
    # the machine under its pythonized name, and `machine` as there is exactly one
    t.assertEqual(my_box.name, "my-box")
    t.assertIs(machine, my_box)
    t.assertEqual(machines, [my_box])
    t.assertIs(driver.machines, machines)
    t.assertEqual([v.nr for v in vlans], [1, 2])
    t.assertTrue(vlan1 is vlans[0] and vlan2 is vlans[1])
    t.assertTrue(vlan1.pid > 0 and vlan1.socket_dir.endswith("vde1.ctl"))
    t.assertIs(os, __import__("os"))
    t.assertEqual(os.environ["QEMU_VDE_SOCKET_1"], vlan1.socket_dir)
    t.assertTrue(isinstance(my_box, QemuMachine) and isinstance(my_box, BaseMachine))
    t.assertIsInstance(my_box, Machine)
    t.assertFalse(isinstance(my_box, NspawnMachine))
    t.assertTrue(callable(run_tests) and callable(test_script) and callable(start_all))
    t.assertIsNone(debug.breakpoint())
    t.assertEqual(1, 1)
    t.assertIn("a", "abc")
    t.assertEqual(repr(my_box), "<QemuMachine 'my-box'>", repr(my_box))
    print("SYMBOLS-OK")
    """.replace("GENERAL", repr(GENERAL_SYMBOLS))
    r = run_script(body, machines=("my-box",), extra=["--vlans", "1", "2"])
    assert "SYMBOLS-OK" in r.stdout, r
    # upstream prints the names it adds, machines (unpythonized), vlans, then the rest
    m = re.search(r"additionally exposed symbols:\n    (.*),\n    (.*),\n    (.*)\n", r.stdout)
    assert m, r
    assert m.group(1) == "my-box"
    assert m.group(2) == "vlan1, vlan2"
    listed = m.group(3).split(", ")
    assert set(GENERAL_SYMBOLS) <= set(listed), listed
    # nothing was started: the script never asked for it
    assert r.vms["my-box"].start_count == 0


def test_symbols_with_two_machines(run_script):
    body = """
    t.assertNotIn("machine", globals())
    t.assertEqual([m.name for m in machines], ["alpha", "beta"])
    t.assertEqual(machines, [alpha, beta])
    t.assertTrue(not alpha.booted and not beta.booted)
    start_all()
    t.assertTrue(alpha.booted and beta.booted)
    t.assertNotEqual(alpha.pid, beta.pid)
    t.assertEqual(alpha.succeed("echo a") + beta.succeed("echo b"), "a\\nb\\n")
    for m in machines:
        m.execute("poweroff", check_return=False, check_output=False)
    join_all()
    t.assertTrue(not alpha.booted and not beta.booted)
    print("TWO-OK")
    """
    # listed out of order: machines are sorted by name
    r = run_script(body, machines=("beta", "alpha"))
    assert "TWO-OK" in r.stdout, r
    assert "start all VMs" in r.stderr and "wait for all VMs to finish" in r.stderr
    for vm in r.vms.values():
        assert [e["reason"] for e in vm.exits()] == ["poweroff"]


def test_retry_forms(run_script):
    body = """
    import datetime, time

    calls = []
    def second_time(last):
        calls.append(last)
        return len(calls) >= 2

    # one second between attempts: what retry asks time.sleep for
    slept, real_sleep = [], time.sleep
    time.sleep = lambda secs: (slept.append(secs), real_sleep(secs))[1]
    try:
        retry(second_time)  # default timeout
    finally:
        time.sleep = real_sleep
    t.assertEqual(calls, [False, False], calls)
    t.assertEqual(slept, [1], slept)

    for how in (
        dict(timeout=5),
        dict(timeout_seconds=5),
        dict(timeout=datetime.timedelta(seconds=5)),
    ):
        calls.clear()
        retry(lambda last: calls.append(last) or True, **how)
        t.assertEqual(calls, [False], (how, calls))
    calls.clear()
    retry(lambda last: calls.append(last) or True, 5)
    t.assertEqual(calls, [False])

    # a zero timeout: only the last chance, then the failure
    calls.clear()
    msg = raises(
        "RequestedAssertionFailed",
        retry,
        lambda last: calls.append(last) or False,
        timeout=datetime.timedelta(0),
    )
    t.assertEqual(calls, [True], calls)
    t.assertIn("action timed out", msg, msg)
    calls.clear()
    raises("RequestedAssertionFailed", retry, lambda last: calls.append(last) or False, 1)
    t.assertTrue(calls[-1] is True and calls[0] is False, calls)
    print("RETRY-OK")
    """
    r = run_script(body)
    assert "RETRY-OK" in r.stdout, r


def test_polling_conditions(run_script):
    body = """
    state = {"ok": True, "checks": 0}

    @polling_condition
    def healthy():
        "the box is healthy"
        state["checks"] += 1
        return state["ok"]

    @polling_condition(seconds_interval=0, description="custom description")
    def strict():
        state["checks"] += 1
        if not state["ok"]:
            raise ValueError("an exception counts as failure")

    with healthy:
        alpha.succeed("true")
        t.assertEqual(state["checks"], 1, state)
        alpha.succeed("true")  # checked less than 2 s ago: not checked again
        t.assertEqual(state["checks"], 1, state)
    t.assertEqual(driver.polling_conditions, [])

    with strict:
        alpha.succeed("true")
        alpha.send_monitor_command("info status")  # monitor commands check too
        t.assertEqual(state["checks"], 3, state)
        state["ok"] = False
        msg = raises("PollingConditionError", alpha.succeed, "true")
        t.assertEqual(msg, "Polling condition failed: custom description", msg)
    # not active any more: commands run again
    alpha.succeed("true")
    state["ok"] = True
    healthy.wait(timeout=5)
    print("POLL-OK")
    """
    r = run_script(body)
    assert "POLL-OK" in r.stdout, r
    assert "Checking polling condition 'the box is healthy'" in r.stderr, r
    assert "Polling condition failed: custom description" in r.stderr, r
    assert "Polling condition succeeded: the box is healthy" in r.stderr, r


def test_polling_condition_failure_fails_the_test(run_script):
    body = """
    @polling_condition(seconds_interval=0)
    def never():
        return False

    with never:
        alpha.succeed("true")
    print("NOT REACHED")
    """
    r = run_script(body, ok=False)
    assert r.returncode == 1, r
    assert "NOT REACHED" not in r.stdout
    assert "PollingConditionError: Polling condition failed: never" in r.stderr, r


def test_t_assertion_failure(run_script, driver_env):
    body = """
    x = 1 + 1
    t.assertEqual(x, 3, "arithmetic is broken")
    print("NOT REACHED")
    """
    r = run_script(body, ok=False)
    assert r.returncode == 1, r
    assert "NOT REACHED" not in r.stdout
    errors = [line for line in r.stderr.splitlines() if line.startswith("!!! ")]
    text = "\n".join(errors)
    assert "!!! Traceback (most recent call last):" in text, r
    script = driver_env.work / "t.py"
    source = script.read_text().splitlines()
    lineno = 1 + next(i for i, x in enumerate(source) if x.startswith("t.assertEqual"))
    assert f'File "{script}", line {lineno}' in text, r
    assert '!!!     t.assertEqual(x, 3, "arithmetic is broken")' in text, r
    assert "RequestedAssertionFailed: 2 != 3 : arithmetic is broken" in text, r
    # only the script's frames: nothing from unittest or the driver
    assert "unittest" not in text and "nixos_test_ng" not in text, r


def test_failed_succeed_is_reported_like_upstream(run_script):
    r = run_script('alpha.succeed("echo some output; exit 42")\n', ok=False)
    assert r.returncode == 1, r
    assert "alpha: output: some output" in r.stderr, r
    assert (
        "!!! RequestedAssertionFailed: command `echo some output; exit 42` failed (exit code 42)"
        in r.stderr
    ), r
    assert "cleanup" in r.stderr


def test_log_subtest_and_nested(run_script):
    body = """
    log.info("plain info line")
    log.info("attributed line", machine="alpha")
    log.log("log line")
    log.warning("careful now")
    with log.nested("outer block"):
        log.info("inside the block")
    alpha.log("said by alpha")
    with alpha.nested("alpha block"):
        pass
    with subtest("my subtest"):
        alpha.succeed("true")
    try:
        with subtest("a failing subtest"):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    print("LOG-OK")
    """
    r = run_script(body)
    assert "LOG-OK" in r.stdout, r
    lines = r.stderr.splitlines()
    for expected in [
        "plain info line",
        "alpha: attributed line",
        "log line",
        "warning: careful now",
        "outer block",
        "inside the block",
        "alpha: said by alpha",
        "alpha: alpha block",
        "subtest: my subtest",
        "alpha: must succeed: true",
    ]:
        assert expected in lines, f"{expected!r} not logged\n{r}"
    assert any(re.fullmatch(r"\(finished: outer block, in \d+\.\d\d seconds\)", x) for x in lines)
    assert any(line.startswith("alpha: (finished: alpha block, in ") for line in lines)
    assert any(line.startswith("(finished: subtest: my subtest, in ") for line in lines)
    assert '!!! Test "a failing subtest" failed with error: "boom"' in lines, r
    assert not any("(finished: subtest: a failing subtest" in x for x in lines)
    # the script caught the subtest's failure: nothing escaped, the run passes (as upstream)
    assert r.returncode == 0, r


def test_serial_stdout_on_off(run_script):
    body = """
    alpha.succeed("echo SHOWN-BEFORE >&2")
    alpha.wait_for_console_text("SHOWN-BEFORE")
    serial_stdout_off()
    alpha.succeed("echo HIDDEN-LINE >&2")
    alpha.wait_for_console_text("HIDDEN-LINE")
    serial_stdout_on()
    alpha.succeed("echo SHOWN-AFTER >&2")
    alpha.wait_for_console_text("SHOWN-AFTER")
    t.assertIn("HIDDEN-LINE", alpha.get_console_log())
    print("SERIAL-OK")
    """
    r = run_script(body)
    assert "SERIAL-OK" in r.stdout, r
    assert "alpha # SHOWN-BEFORE" in r.stderr, r
    assert "alpha # SHOWN-AFTER" in r.stderr, r
    assert "alpha # HIDDEN-LINE" not in r.stderr, r


def test_create_machine(run_script, fake_vm, driver_env):
    extra = fake_vm("extra")
    body = f"""
    m = create_machine({str(extra.script)!r})
    t.assertEqual(m.name, "extra", m.name)
    t.assertIsInstance(m, QemuMachine)
    t.assertNotIn(m, machines)
    t.assertEqual(repr(m), "<QemuMachine 'extra'>")
    t.assertEqual(m.succeed("echo created"), "created\\n")
    named = create_machine({str(extra.script)!r}, name="other", keep_machine_state=True)
    t.assertEqual(named.name, "other")
    t.assertEqual(named.state_dir.name, "vm-state-other")  # a Path, as upstream
    m.release()
    t.assertFalse(m.booted)
    start_all()  # only the driver's machines
    t.assertFalse(named.booted)
    print("CREATE-OK")
    """
    r = run_script(body)
    assert "CREATE-OK" in r.stdout, r
    assert extra.start_count == 1
    assert (driver_env.runtime / "vm-state-other").is_dir()


def test_create_machine_with_a_shell_command_line(run_script, driver_env):
    # upstream runs the start command with `shell=True`: a command line, arguments and
    # environment assignments included, works as in a shell
    record = driver_env.tmp / "cmdline.record.jsonl"
    command = f"FAKE_QEMU_RECORD={record} {sys.executable} {FAKE_QEMU} -m 512"
    body = f"""
    m = create_machine({command!r}, name="cmdline")
    t.assertEqual(m.succeed("echo from-cmdline"), "from-cmdline\\n")
    m.release()
    print("CMDLINE-OK")
    """
    r = run_script(body, ok=False)
    assert r.returncode == 0, r
    assert "CMDLINE-OK" in r.stdout, r
    assert record.exists(), r
    argv = json.loads(record.read_text().splitlines()[0])["argv"]
    assert argv[:3] == ["-m", "512", "-qmp"], argv


def test_create_machine_with_a_command_without_assignments(run_script):
    body = f"""
    m = create_machine({f"{sys.executable} {FAKE_QEMU} -m 512"!r})
    t.assertEqual(m.name, "machine")
    t.assertEqual(m.succeed("echo plain"), "plain\\n")
    m.release()
    print("PLAIN-OK")
    """
    r = run_script(body)
    assert "PLAIN-OK" in r.stdout, r


# -- Machine methods --------------------------------------------------------------------------


def test_execute_succeed_fail(run_script):
    body = """
    t.assertEqual(alpha.execute("echo out; echo err >&2; exit 3"), (3, "out\\n"))
    t.assertEqual(alpha.execute("echo x", check_return=False), (-1, "x\\n"))
    t.assertEqual(alpha.execute("echo x", check_output=False), (-2, ""))
    t.assertEqual(alpha.execute("sleep 5", timeout=0.5)[0], 124)
    t.assertEqual(alpha.execute("echo fast", timeout=5), (0, "fast\\n"))
    import datetime
    t.assertEqual(alpha.execute("sleep 5", timeout=datetime.timedelta(seconds=0.5))[0], 124)
    out = alpha.wait_until_succeeds("echo td", timeout=datetime.timedelta(seconds=5))
    t.assertEqual(out, "td\\n")
    # replies not waited for must not end up in the next command's output
    t.assertEqual(alpha.execute("echo skipped; sleep 0.2", check_output=False), (-2, ""))
    out = alpha.execute("echo only-output; exit 9", check_return=False)
    t.assertEqual(out, (-1, "only-output\\n"))
    t.assertEqual(alpha.succeed("echo next"), "next\\n")
    # each command runs in a fresh shell: no state carries over, and `set -euo pipefail`
    alpha.succeed("cd /; export FOO=1")
    t.assertEqual(alpha.succeed("pwd; echo ${FOO:-unset}"), "/tmp\\nunset\\n")
    t.assertEqual(alpha.execute("false; echo not reached")[0], 1)
    t.assertEqual(alpha.execute("false | true")[0], 1)
    t.assertEqual(alpha.succeed("echo a", "echo b", "printf c"), "a\\nb\\nc")
    t.assertEqual(alpha.fail("false", "exit 3"), "")
    t.assertEqual(alpha.fail("echo partial; false"), "partial\\n")
    msg = raises("RequestedAssertionFailed", alpha.succeed, "true", "exit 7", "echo never")
    t.assertEqual(msg, "command `exit 7` failed (exit code 7)", msg)
    msg = raises("RequestedAssertionFailed", alpha.fail, "exit 1", "true")
    t.assertEqual(msg, "command `true` unexpectedly succeeded", msg)
    t.assertEqual(alpha.succeed("echo \\"it's\\" 'a \\"b\\"'"), "it's a \\"b\\"\\n")
    print("EXEC-OK")
    """
    r = run_script(body)
    assert "EXEC-OK" in r.stdout, r
    assert "alpha: must succeed: echo a" in r.stderr
    assert "alpha: must fail: false" in r.stderr
    assert "alpha # err" in r.stderr  # stderr goes to the serial console


def test_waits(run_script):
    body = """
    g = "@G@"
    # wait_until_succeeds returns the output of the successful attempt
    alpha.succeed(f"(sleep 0.5; touch {g}/ready) >/dev/null 2>&1 &")
    out = alpha.wait_until_succeeds(f"test -e {g}/ready && echo there", timeout=10)
    t.assertEqual(out, "there\\n", out)
    alpha.succeed(f"(sleep 0.5; rm {g}/ready) >/dev/null 2>&1 &")
    alpha.wait_until_fails(f"test -e {g}/ready", timeout=10)
    # attempt_timeout: a hanging first attempt is cut short, the next one succeeds (were it
    # not cut, the first attempt would outlast `timeout` and the call fail)
    script = f"if [ -e {g}/once ]; then echo second; else touch {g}/once; sleep 30; fi"
    out = alpha.wait_until_succeeds(script, timeout=20, attempt_timeout=1)
    t.assertEqual(out, "second\\n", out)
    msg = raises("RequestedAssertionFailed", alpha.wait_until_succeeds, "false", timeout=1)
    t.assertTrue("waiting for success: false" in msg and "timed out" in msg, msg)
    raises("RequestedAssertionFailed", alpha.wait_until_fails, "true", timeout=1)
    # wait_for_file
    alpha.succeed(f"(sleep 0.3; touch {g}/file) >/dev/null 2>&1 &")
    alpha.wait_for_file(f"{g}/file", timeout=10)
    raises("RequestedAssertionFailed", alpha.wait_for_file, f"{g}/missing", timeout=1)
    # sleep runs in the guest (the log line below)
    alpha.sleep(0.3)
    print("WAITS-OK")
    """
    r = run_script(body)
    assert "WAITS-OK" in r.stdout, r
    assert "alpha: waiting for success: test -e" in r.stderr
    assert "alpha: must succeed: sleep 0.3" in r.stderr, r
    assert "alpha: waiting for failure: test -e" in r.stderr
    assert "waiting for file '" in r.stderr
    assert "alpha: must succeed: sleep 0.3" in r.stderr


def test_monitor_qmp_and_links(run_script):
    body = """
    alpha.start()
    answer = alpha.send_monitor_command("info status")
    t.assertTrue("VM status: running" in answer and answer.endswith("(qemu) "), repr(answer))
    alpha.send_monitor_command("stop")
    event = alpha.wait_for_qmp_event(lambda e: e["event"] == "STOP", timeout=5)
    t.assertTrue(event["event"] == "STOP" and "timestamp" in event, event)
    alpha.send_monitor_command("cont")
    alpha.wait_for_qmp_event(lambda e: e["event"] == "RESUME", timeout=5)
    # an event the guest triggers; non-matching events are skipped
    alpha.succeed("fake-qemu-ctl event OTHER; fake-qemu-ctl event CUSTOM '{\\"n\\": 7}'")
    event = alpha.wait_for_qmp_event(lambda e: e["event"] == "CUSTOM", timeout=5)
    t.assertEqual(event["data"], {"n": 7}, event)
    raises("TimeoutError", alpha.wait_for_qmp_event, lambda e: False, timeout=0.3)
    alpha.block()
    alpha.unblock()
    alpha.forward_port()
    alpha.forward_port(2222, 22)
    alpha.send_key("ctrl-alt-f1")
    print("MONITOR-OK")
    """
    r = run_script(body)
    assert "MONITOR-OK" in r.stdout, r
    cmds = r.vms["alpha"].monitor_commands()
    assert cmds == [
        "info status",
        "stop",
        "cont",
        "set_link virtio-net-pci.1 off",
        "set_link virtio-net-pci.1 on",
        "hostfwd_add tcp::8080-:80",
        "hostfwd_add tcp::2222-:22",
        "sendkey ctrl-alt-f1",
    ], cmds


def test_console(run_script):
    body = r"""
    alpha.start()  # as upstream, waiting for console text does not start the machine
    # lines the fake printed while booting, read from the start of the console
    alpha.wait_for_console_text(r"Welcome to FakeOS \d+\.\d+", timeout=10)
    # a line printed later, by a guest process (stderr is the serial console)
    alpha.succeed("(sleep 0.3; echo late-console-42 >&2) >/dev/null &")
    alpha.wait_for_console_text(r"late-console-\d+", timeout=10)
    # upstream concatenates queued lines without separator: a regex may span lines
    alpha.succeed("echo part-one >&2; echo part-two >&2")
    alpha.wait_for_console_text("part-onepart-two", timeout=10)
    # input on the serial console (QEMU's stdin); the fake echoes it
    alpha.send_console("hello serial\n")
    alpha.wait_for_console_text("serial input: hello serial", timeout=10)
    raises("RequestedAssertionFailed", alpha.wait_for_console_text, "never-printed", timeout=0.5)
    text = alpha.get_console_log()
    t.assertTrue(text.startswith("SeaBIOS"), text[:100])
    t.assertTrue("late-console-42" in text and "serial input: hello serial" in text)
    t.assertNotIn("\r", text)
    print("CONSOLE-OK")
    """
    r = run_script(body)
    assert "CONSOLE-OK" in r.stdout, r
    assert "alpha: waiting for late-console-\\d+ to appear on console" in r.stderr, r


def test_lifecycle_and_attributes(run_script, driver_env):
    body = f"""
    t.assertEqual(alpha.name, "alpha")
    t.assertTrue(not alpha.booted and not alpha.connected and not alpha.is_up())
    t.assertIsNone(alpha.pid)
    import pathlib
    # Paths, as upstream (`machine.state_dir / "file"` works)
    t.assertEqual(alpha.state_dir, pathlib.Path({str(driver_env.state_dir("alpha"))!r}))
    t.assertEqual(alpha.shared_dir, pathlib.Path({str(driver_env.runtime / "shared-xchg")!r}))
    t.assertEqual(alpha.out_dir, pathlib.Path({str(driver_env.out)!r}))
    t.assertEqual(repr(alpha), "<QemuMachine 'alpha'>")

    alpha.start()
    t.assertTrue(alpha.booted and not alpha.connected and not alpha.is_up())
    first = alpha.pid
    t.assertTrue(isinstance(first, int) and first > 0)
    alpha.connect()
    t.assertTrue(alpha.connected and alpha.is_up())

    alpha.shutdown()  # poweroff typed into the backdoor shell
    t.assertTrue(not alpha.booted and not alpha.is_up() and alpha.pid is None)

    alpha.start()
    alpha.execute("poweroff", check_return=False, check_output=False)
    alpha.wait_for_shutdown()  # the guest powered itself off
    t.assertFalse(alpha.booted)

    alpha.start()
    alpha.connect()
    alpha.crash()
    t.assertFalse(alpha.booted)

    alpha.start()
    pid = alpha.pid
    alpha.release()
    t.assertFalse(alpha.booted)
    print("PIDS", first, pid)
    """
    r = run_script(body, extra=["-o", str(driver_env.out)])
    vm = r.vms["alpha"]
    starts = vm.records("start")
    assert len(starts) == 4
    first, last = map(int, re.search(r"PIDS (\d+) (\d+)", r.stdout).groups())
    # `pid` is the QEMU process (the start script execs it)
    assert starts[0]["pid"] == first and starts[-1]["pid"] == last
    reasons = [e["reason"] for e in vm.exits()]
    assert reasons == ["poweroff", "poweroff", "quit"], reasons  # release() SIGKILLs
    assert "alpha: waiting for the VM to power off" in r.stderr
    assert "alpha: forced crash" in r.stderr
    assert f"kill QemuMachine (pid {last})" in r.stderr


def test_switch_root_leaves_the_initrd_for_a_new_shell(run_script):
    r = run_script(
        """
        t.assertEqual(alpha.succeed("echo $FAKE_QEMU_SHELL"), "0\\n")
        alpha.wait_for_job("initrd.target")  # generation A's alias of wait_for_unit
        alpha.switch_root()
        t.assertTrue(alpha.connected)
        t.assertEqual(alpha.succeed("echo $FAKE_QEMU_SHELL"), "1\\n")  # the root's shell
        t.assertEqual(alpha.succeed("echo root"), "root\\n")
        """,
        initrd=True,
    )
    assert "alpha: waiting for unit initrd.target" in r.stderr
    assert r.stderr.count("alpha: connected to guest root shell") == 2
    assert "Switching root." in r.stderr


def test_switch_root_needs_a_vm(driver_env, run_driver, write_script):
    container = driver_env.write_script(
        "run-box-nspawn",
        '#!/bin/bash\necho "systemd-nspawn\'s PID is $$"\nsleep 600 &\nwait\n',
        True,
    )
    test = write_script(
        "t.py",
        PRELUDE
        + 'msg = raises("Unsupported", box.switch_root)\n'
        + 'assert "needs a QEMU machine" in msg, msg\n'
        + "from nixos_test_ng import MachineError, Unsupported\n"
        + "assert issubclass(Unsupported, MachineError)\n",
    )
    r = run_driver(["--container-start-scripts", container, "--", test])
    assert r.returncode == 0, r


def test_x_and_tty_helpers_run_upstreams_commands(run_script):
    """The commands behind wait_for_x, get_window_names, wait_for_window and
    dump_tty_contents, against fake guest tools that record what they were given."""
    run_script(
        """
        import pathlib
        alpha.start()
        alpha.connect()
        bindir = pathlib.Path(alpha.state_dir) / "fake-qemu/bin"
        def tool(name, body):
            (bindir / name).write_text("#!/bin/sh\\n" + body)
            (bindir / name).chmod(0o755)
        tool(
            "journalctl",
            'echo "$*" >> @G@/journalctl\\n'
            'echo "systemd[1]: Reached target Current graphical User Interface."\\n',
        )
        tool(
            "xwininfo",
            'cat <<"EOF"\\nxwininfo: Window id: 0x1 (the root window)\\n'
            '     0x400001 "xterm: root@machine": ("xterm" "XTerm")\\n'
            '     0x400002 "Firefox": ("firefox")\\nEOF\\n',
        )
        tool("systemd-cat", 'cat > @G@/journal-input\\n')
        os.makedirs("/tmp/.X11-unix", exist_ok=True)
        made = not os.path.exists("/tmp/.X11-unix/X0")
        open("/tmp/.X11-unix/X0", "a").close()
        try:
            alpha.wait_for_x(timeout=10)
        finally:
            if made:
                os.unlink("/tmp/.X11-unix/X0")
        t.assertEqual(open("@G@/journalctl").read(), "-b SYSLOG_IDENTIFIER=systemd\\n")
        t.assertEqual(alpha.get_window_names(), ["xterm: root@machine", "Firefox"])
        alpha.wait_for_window(r"^Fire", timeout=10)
        try:
            alpha.wait_for_window("chromium", timeout=1)
        except Exception as e:
            t.assertIn("waiting for a window to appear", str(e), e)
        else:
            raise AssertionError("a missing window was found")
        tool("fold", 'echo "fold $*" > @G@/fold; echo screen text\\n')
        alpha.dump_tty_contents(2)
        t.assertEqual(open("@G@/fold").read(), "fold -w 80 /dev/vcs2\\n")
        t.assertEqual(open("@G@/journal-input").read(), "screen text\\n")
        """
    )


def test_send_chars_maps_characters_to_upstreams_key_names(run_script):
    r = run_script(
        """
        alpha.start()
        alpha.send_chars("aZ1!\\n", delay=0)
        print("KEYS-OK")
        """
    )
    assert "KEYS-OK" in r.stdout, r
    assert "alpha: sending keys 'aZ1!\\n'" in r.stderr
    cmds = r.vms["alpha"].monitor_commands()
    assert cmds == [
        "sendkey a",
        "sendkey shift-z",
        "sendkey 1",
        "sendkey shift-0x02",
        "sendkey ret",
    ]


def test_dump_vsocks_prints_the_ssh_commands(run_script):
    r = run_script("pass", machines=("beta", "alpha"), extra=["--dump-vsocks", "2"])
    assert "SSH backdoor enabled, the machines can be accessed like this:" in r.stdout
    assert "    alpha:  ssh -o User=root vsock/3" in r.stdout
    assert "    beta:   ssh -o User=root vsock/4" in r.stdout  # aligned, as upstream
    assert "Note: this requires systemd-ssh-proxy(1) to be enabled" in r.stdout


def test_upstreams_smaller_machine_members(run_script):
    r = run_script(
        """
        t.assertTrue(alpha.callbacks and alpha.logger is log)
        t.assertTrue(alpha.keep_machine_state is False and alpha.keep_vm_state is False)
        alpha.run_callbacks()
        alpha.start()
        t.assertTrue(alpha.wait_for_monitor_prompt().endswith("(qemu) "))
        t.assertEqual(alpha.ssh_backdoor_command(3), "ssh -o User=root vsock/3")
        print("MEMBERS-OK")
        """
    )
    assert "MEMBERS-OK" in r.stdout, r
