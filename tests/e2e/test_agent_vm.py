"""The busybox VM on the guest agent: its start script announces the vsock device, the driver
starts a vhost-device-vsock daemon for it and talks to the agent through the daemon's hybrid
vsock socket (`CONNECT 7001`). Needs vhost-device-vsock on PATH (scripts/setup-system.sh)."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
from support.driver import wait_for_line

# No skip without the daemon: setup-system.sh installs it, and its absence is a failure.
pytestmark = [pytest.mark.vm, pytest.mark.one_transport]

DAEMON = "vhost-device-vsock"


@pytest.fixture(autouse=True)
def agent_asked_for(monkeypatch):
    """The agent over vhost-device-vsock is used when asked for (docs/agent.md)."""
    monkeypatch.setenv("NIXOS_TEST_NG_TRANSPORT", "agent")


STATUSES = """
box.start()
t.assertEqual(box.succeed("echo hello; echo to-stderr >&2"), "hello\\n")
t.assertEqual(box.execute("echo out; exit 3"), (3, "out\\n"))
t.assertEqual(box.fail("echo no; false"), "no\\n")
t.assertEqual(box.succeed("echo $USER $HOME $DISPLAY; pwd"), "root /root :0.0\\n/tmp\\n")
try:
    box.succeed("exit 5")
except Exception as e:
    print("FAILED:", e, flush=True)
"""


def run_ng(tmp_path, script: str, *machines: str, env: dict[str, str] | None = None):
    test = tmp_path / "test.py"
    test.write_text(script)
    environ = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path))
    # the agent over vhost-device-vsock is used when asked for (docs/agent.md)
    environ["NIXOS_TEST_NG_TRANSPORT"] = "agent"
    environ.update(env or {})
    return subprocess.run(
        ["nixos-test-ng", "run", str(test), *machines],
        capture_output=True,
        text=True,
        env=environ,
        cwd=tmp_path,
        timeout=600,
    )


def test_run_connects_through_the_agent_with_upstreams_statuses(tmp_path, guest_dir, leftovers):
    r = run_ng(tmp_path, STATUSES, "-m", "box")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    log = r.stderr
    assert "box: vsock daemon vhost-device-vsock running (pid " in log, log[-4000:]
    assert "box: connected to the guest agent (nixos-test-ng-agent " in log, log[-4000:]
    assert "over hybrid vsock" in log
    assert "connected to guest root shell" not in log
    # stderr of a command is shown as the console shows it
    assert "box # to-stderr" in log, log[-4000:]
    assert "FAILED: command `exit 5` failed (exit code 5)" in r.stdout, r.stdout
    assert not leftovers(tmp_path, wait=3)


def test_backdoor_forced_starts_no_daemon(tmp_path, guest_dir, leftovers):
    script = 'box.start()\nt.assertEqual(box.execute("exit 3"), (3, ""))\n'
    r = run_ng(tmp_path, script, "-m", "box", env={"NIXOS_TEST_NG_TRANSPORT": "backdoor"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    assert "connected to guest root shell" in r.stderr
    assert "vsock daemon" not in r.stderr and "guest agent" not in r.stderr
    assert not leftovers(tmp_path, wait=3)


KILL_DAEMON = """
import os, signal
from nixos_test_ng import procs
from nixos_test_ng.errors import MachineError

box.succeed("true")
state_dir = str(box.monitor_path.parent)
(pid,) = [p for p in procs.pids() if "vhost-device-vsock" in procs.cmdline(p)
          and state_dir in procs.cmdline(p)]
os.kill(pid, signal.SIGKILL)
for command in ("echo after", "echo again"):
    try:
        box.succeed(command)
    except MachineError as e:
        print("MACHINE-ERROR:", str(e).splitlines()[0], flush=True)
    else:
        print("NO-ERROR", flush=True)
"""


def test_the_daemon_killed_mid_run_fails_the_next_commands_naming_the_machine(vm_env):
    r = vm_env.run({"box": []}, KILL_DAEMON, timeout=300)
    assert r.returncode == 0, r.stderr[-6000:]
    errors = [line for line in r.stdout.splitlines() if line.startswith("MACHINE-ERROR:")]
    assert len(errors) == 2 and "NO-ERROR" not in r.stdout, r.stdout + r.stderr[-4000:]
    assert all("box" in e for e in errors), errors
    assert "vsock daemon `vhost-device-vsock`" in errors[1] and "exited" in errors[1], errors


ABANDONED_CONNECTS = """
import socket, time
from nixos_test_ng import procs

box.succeed("true")
state_dir = str(box.monitor_path.parent)
(line,) = [procs.cmdline(p) for p in procs.pids() if "vhost-device-vsock" in procs.cmdline(p)
           and state_dir in procs.cmdline(p)]
uds = line.split("--uds-path")[1].split()[0]
# connections given up before the guest accepts them, as a connect attempt that timed out
for _ in range(30):
    s = socket.socket(socket.AF_UNIX)
    s.connect(uds)
    s.sendall(b"CONNECT 7001\\n")
    s.close()
    time.sleep(0.05)
print("AFTER:", box.succeed("echo still here").strip(), flush=True)
"""


def test_connections_given_up_before_the_guest_accepts_leave_the_device_working(vm_env):
    # stock vhost-device-vsock 0.3.0 (and 0.3.0+ntng.1) panicked writing its `OK` to such a
    # connection: the device moved nothing ever after and the next command hung
    r = vm_env.run({"box": []}, ABANDONED_CONNECTS, timeout=300)
    assert r.returncode == 0, r.stderr[-6000:]
    assert "AFTER: still here" in r.stdout, r.stdout + r.stderr[-4000:]
    assert "vsock daemon:" not in r.stderr, r.stderr[-4000:]


def test_an_agent_that_never_answers_is_a_boot_timeout_with_the_console(vm_env, monkeypatch):
    # the start script announces the device, the guest's /init does not start the agent
    monkeypatch.setenv("QEMU_KERNEL_PARAMS", "ntng.agent=0")
    r = vm_env.run({"box": []}, "box.start()\nbox.succeed('true')\n", "--boot-timeout", "45")
    assert r.returncode == 1, r.stderr[-6000:]
    assert "box: vsock daemon vhost-device-vsock running" in r.stderr
    tail = r.stderr[r.stderr.index("!!!") :] if "!!!" in r.stderr else r.stderr
    assert "box" in tail and "init: started the backdoor" in tail, r.stderr[-6000:]
    assert "init: started the guest agent" not in r.stderr


def test_sigkill_of_the_driver_leaves_no_daemon_and_no_qemu(vm_env, leftovers):
    script = 'box.succeed("true")\nprint("ready", flush=True)\nimport time\ntime.sleep(600)\n'
    p = vm_env.spawn({"box": []}, script)
    wait_for_line(p, "ready")
    running = leftovers(vm_env.root, wait=0)
    assert any(DAEMON in line for line in running), running
    assert any("qemu-system" in line for line in running), running
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not leftovers(vm_env.root, wait=5)


REFUSE = """
from nixos_test_ng.errors import SnapshotRefused

box.succeed("true")
try:
    box.snapshot("x")
except SnapshotRefused as e:
    print("REFUSED:", e, flush=True)
t.assertEqual(box.succeed("echo still"), "still\\n")
"""


def test_a_snapshot_of_a_vm_with_the_vhost_user_device_is_refused_naming_the_fix(
    tmp_path, guest_dir
):
    r = run_ng(tmp_path, REFUSE, "-m", "box")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    (line,) = [line for line in r.stdout.splitlines() if line.startswith("REFUSED:")]
    assert 'box: cannot take snapshot "x": the VM has a vhost-user vsock device' in line, line
    assert "NIXOS_TEST_NG_TRANSPORT=backdoor" in line, line
    assert "connected to the guest agent" in r.stderr


ISOLATED = """
import os

import pytest


@pytest.mark.isolated
def test_isolated(box):
    # no daemon, no device: the VM can be saved, and was
    assert os.environ["NIXOS_TEST_NG_SNAPSHOTS"] == "1"
    assert not list(box.monitor_path.parent.glob("vhost-user-vsock*"))
    assert "ntng-ready" in box.snapshots
    box.succeed("echo dirty > /root/state")


@pytest.mark.isolated
def test_again(box):
    box.fail("test -e /root/state")
"""


def test_pytest_isolation_starts_the_vm_without_the_device_and_snapshots_it(tmp_path, guest_dir):
    r = run_ng(tmp_path, ISOLATED, "-m", "box", env={"NIXOS_TEST_NG_TRANSPORT": ""})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    assert "2 passed" in r.stdout, r.stdout + r.stderr[-3000:]
