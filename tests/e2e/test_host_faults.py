"""Host faults on the busybox VM (issue 21, item 4): QEMU killed as the OOM killer does it
(SIGKILL), the VLAN's `vde_switch` killed mid-run (both on both transports), and a full tmp
dir (a small tmpfs, `support.tmpfs`) under the state dir, a snapshot and a golden copy. Each
fault must end in a clear error naming the machine (the VLAN, the file), the failed test's exit
status, and no hang (`vm_env.run`'s timeout fails the test when the driver hangs)."""

from __future__ import annotations

import re

import pytest
from support.tmpfs import small_tmpfs

pytestmark = pytest.mark.vm


def error_lines(stderr: str) -> str:
    return "\n".join(line[4:] for line in stderr.splitlines() if line.startswith("!!! "))


OOM_IDLE = """
import os, signal
machine.succeed("echo ready")
os.kill(machine.pid, signal.SIGKILL)
machine.succeed("echo after")
"""


def test_qemu_killed_between_commands(vm_env):
    r = vm_env.run({"machine": []}, OOM_IDLE, timeout=240)
    assert r.returncode == 1, r.stderr[-6000:]
    errors = error_lines(r.stderr)
    assert "machine: " in errors, errors
    assert "killed by signal 9 (SIGKILL), e.g. the OOM killer" in errors, errors
    assert "echo after" in errors, errors
    # the console's last lines are part of the error
    assert re.search(r"last \d+ console lines:", errors), errors
    assert "  | " in errors, errors
    assert "Traceback (most recent call last)" not in r.stderr.split("!!!", 1)[0]


OOM_MID_COMMAND = """
import os, signal, threading
machine.succeed("echo ready")
threading.Timer(1.0, os.kill, (machine.pid, signal.SIGKILL)).start()
machine.succeed("sleep 60")
"""


def test_qemu_killed_mid_command(vm_env):
    r = vm_env.run({"machine": []}, OOM_MID_COMMAND, timeout=240)
    assert r.returncode == 1, r.stderr[-6000:]
    errors = error_lines(r.stderr)
    assert "machine: " in errors and "sleep 60" in errors, errors
    assert "killed by signal 9 (SIGKILL), e.g. the OOM killer" in errors, errors
    assert re.search(r"last \d+ console lines:", errors), errors


VDE_KILLED = """
import os, signal
from nixos_test_ng import MachineError

start_all()
a.wait_until_succeeds("ping -c 1 -W 1 b", timeout=60)
switch = vlans[0]
os.kill(switch.pid, signal.SIGKILL)
DIED = "vlan1: vde_switch (pid %d) died: killed by signal 9" % switch.pid

# the driver's watcher reaps the switch and records its death; until then commands still run
# (the shell does not use the network): wait for that event
for _ in range(200):
    try:
        a.succeed("true")
    except MachineError as e:
        t.assertIn(DIED, str(e))
        print(f"succeed: {e}", flush=True)
        break
else:
    t.fail("a.succeed never failed after the switch died")

def expect_vlan_error(what, call):
    try:
        call()
    except MachineError as e:
        t.assertIn(DIED, str(e))
        print(f"{what}: {e}", flush=True)
    else:
        t.fail(f"{what} did not fail")

expect_vlan_error("execute", lambda: b.execute("true"))
expect_vlan_error("block", lambda: a.block())
expect_vlan_error("unblock", lambda: a.unblock())
expect_vlan_error("set_network_conditions", lambda: a.set_network_conditions(delay="10ms"))
expect_vlan_error("partition", lambda: driver.partition([[a], [b]]))
print("VLAN-FAULT-OK", flush=True)
a.succeed("echo last")
"""


def test_vde_switch_killed(vm_env):
    r = vm_env.run({"a": [1], "b": [1]}, VDE_KILLED, timeout=300)
    assert "VLAN-FAULT-OK" in r.stdout, r.stderr[-6000:]
    assert r.returncode == 1, r.stderr[-6000:]
    # logged when it happened, by the driver itself
    assert re.search(r"vlan1: vde_switch \(pid \d+\) died: killed by signal 9", r.stderr), r.stderr
    for what in ("succeed", "execute", "block", "unblock", "set_network_conditions", "partition"):
        assert f"\n{what}: " in "\n" + r.stdout, r.stdout
    errors = error_lines(r.stderr)
    assert "a: cannot run `echo last`: the machine's VLAN has no switch any more" in errors, errors


# -- a full tmp dir (ENOSPC) ------------------------------------------------------------------

SNAPSHOT_ON_A_FULL_DISK = """
import os
machine.succeed("true")
# fill the tmp dir (a tmpfs) up to its last byte
with open(os.environ["XDG_RUNTIME_DIR"] + "/filler", "wb", buffering=0) as f:
    for chunk in (65536, 1):
        try:
            while True:
                f.write(b"x" * chunk)
        except OSError:
            pass
machine.snapshot("full")
print("SNAPSHOT-TAKEN", flush=True)
"""


@pytest.mark.one_transport
def test_a_snapshot_into_a_full_tmp_dir(vm_env, tmp_path, takes_snapshots):
    with small_tmpfs(tmp_path / "xdg", "48m") as xdg:
        r = vm_env.run({"machine": []}, SNAPSHOT_ON_A_FULL_DISK, timeout=240)
    assert r.returncode == 1, r.stderr[-6000:]
    assert "SNAPSHOT-TAKEN" not in r.stdout
    errors = error_lines(r.stderr)
    state = xdg / "vm-state-machine"
    assert (
        f'machine: cannot take snapshot "full": no space left on device: QEMU could not '
        f"write the snapshot into {state}" in errors
    ), errors


def test_a_tmp_dir_too_full_for_the_state_dir(vm_env, tmp_path):
    with small_tmpfs(tmp_path / "xdg", "64k") as xdg:
        r = vm_env.run({"machine": []}, 'machine.succeed("true")\n', timeout=240)
    assert r.returncode == 1, r.stderr[-6000:]
    # the start script's disk image: its tool names the file and the cause
    disk = xdg / "vm-state-machine" / "machine-snapshots.qcow2"
    assert f"{disk}: " in r.stderr and "No space left on device" in r.stderr, r.stderr
    errors = error_lines(r.stderr)
    assert "machine: start script " in errors and "exited" in errors, errors


GOLDEN_ON_A_FULL_DISK = """
import glob, os, time
state = os.environ["XDG_RUNTIME_DIR"] + "/vm-state-machine"
qcow2 = state + "/machine-snapshots.qcow2"
machine.succeed("true")
before = os.path.getsize(qcow2)
machine.snapshot("first")
vmstate = os.path.getsize(qcow2) - before
# the warm standby of "first" copies the golden disks in the background: wait for that copy
golden = os.path.getsize(state + "/golden-first/machine-snapshots.qcow2")
for _ in range(600):
    copies = glob.glob(state + "/standby-*/machine-snapshots.qcow2")
    if copies and os.path.getsize(copies[0]) == golden:
        break
    time.sleep(0.1)
else:
    raise AssertionError("the standby of snapshot first never finished its copy")
# leave room for the second snapshot's VM state, not for a copy of the disk beside it
st = os.statvfs(state)
left = st.f_bavail * st.f_frsize - 2 * vmstate
with open(os.environ["XDG_RUNTIME_DIR"] + "/filler", "wb", buffering=0) as f:
    while left > 0:
        left -= f.write(b"x" * min(left, 1 << 20))
machine.succeed("touch /tmp/after-first")
machine.snapshot("second")
print("GOLDEN-LEFT", os.path.exists(state + "/golden-second"), flush=True)
machine.succeed("rm /tmp/after-first")
machine.restore("second")
machine.succeed("test -e /tmp/after-first")
print("RESTORED", flush=True)
"""


@pytest.mark.one_transport
def test_a_golden_copy_into_a_full_tmp_dir(vm_env, tmp_path, takes_snapshots):
    with small_tmpfs(tmp_path / "xdg", "512m") as xdg:
        r = vm_env.run({"machine": []}, GOLDEN_ON_A_FULL_DISK, timeout=300)
    assert r.returncode == 0, r.stderr[-6000:]
    golden = xdg / "vm-state-machine" / "golden-second"
    assert (
        f"machine: warm standby off for snapshot second: copying its disks into {golden} "
        "failed: No space left on device (os error 28) (the half-written copy was removed)"
    ) in r.stderr, r.stderr[-6000:]
    assert "GOLDEN-LEFT False" in r.stdout, r.stdout  # nothing half-written stays
    assert "RESTORED" in r.stdout  # by loadvm instead
