"""Hostile guests on the busybox VM (issue 21, item 2), on both transports: a large command
output costs the driver a bounded multiple of its size, a guest frozen mid-command fails the
command at its timeout, and links and FIFOs a guest plants in a tree that `copy_from_machine`
copies never take the host out of the tree nor block it."""

from __future__ import annotations

import os
import re
import signal

import pytest

pytestmark = pytest.mark.vm

ONE = {"machine": []}

OUTPUT_BYTES = 50_000_000

MEMORY_SCRIPT = f"""
def hwm_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

start_all()
machine.succeed("true")
before = hwm_kb()
out = machine.succeed("head -c {OUTPUT_BYTES} /dev/zero | tr '\\\\0' a")
after = hwm_kb()
t.assertEqual(len(out), {OUTPUT_BYTES})
t.assertEqual(out.count("a"), {OUTPUT_BYTES})
print(f"VMHWM-GROWTH {{after - before}} kB", flush=True)
"""


def test_large_output_costs_at_most_about_twice_its_size(vm_env):
    r = vm_env.run(ONE, MEMORY_SCRIPT)
    assert r.returncode == 0, r.stderr[-4000:]
    growth = re.search(r"VMHWM-GROWTH (\d+) kB", r.stdout + r.stderr)
    assert growth, (r.stdout + r.stderr)[-4000:]
    # the driver's peak RSS grew by less than 2.5 times the output (the engine's one copy
    # of the bytes, and the Python str)
    assert int(growth.group(1)) * 1024 < 2.5 * OUTPUT_BYTES, growth.group(0)


FROZEN_SCRIPT = """
import os, pathlib, signal, threading

start_all()
machine.succeed("true")
started = pathlib.Path(machine.shared_dir) / "started"
pid = machine.pid
print(f"QEMU-PID {pid}", flush=True)

def freeze():
    # the command has started once the guest wrote the file (waits for the event)
    while not started.exists():
        threading.Event().wait(0.05)
    os.kill(pid, signal.SIGSTOP)
    print("QEMU-STOPPED", flush=True)

threading.Thread(target=freeze, daemon=True).start()
machine.succeed("touch /tmp/shared/started; sleep 1; echo x", timeout=3)
"""


def test_a_frozen_guest_fails_the_command_at_its_timeout(vm_env, leftovers):
    p = vm_env.spawn(ONE, FROZEN_SCRIPT)
    try:
        out, err = p.communicate(timeout=400)
    finally:
        # whatever happened, a stopped QEMU must not outlive the test
        for pid in qemu_pids(vm_env.root):
            os.kill(pid, signal.SIGCONT)
    text = out + err
    assert "QEMU-STOPPED" in text, text[-4000:]
    # upstream's status for a test that raised
    assert p.returncode == 1, text[-4000:]
    assert re.search(
        r"machine: .*no answer from the guest to `touch /tmp/shared/started; sleep 1; echo x`"
        r" in time",
        text,
    ), text[-4000:]
    assert leftovers(vm_env.root) == []


def qemu_pids(root) -> list[int]:
    """The QEMU processes started for the test rooted at `root` (still running)."""
    from support.leaks import wait_until_gone

    return [pid for pid, cmd in wait_until_gone(root, 0).items() if "qemu" in cmd]


SHARED_SCRIPT = """
import pathlib
outside = pathlib.Path(driver.config.out_dir) / "outside"
got = pathlib.Path(driver.config.out_dir) / "got" / "h"
outside.mkdir()
(outside / "victim").write_text("safe")

start_all()
machine.succeed(
    "mkdir -p /tmp/h/sub && echo data > /tmp/h/plain"
    " && ln -s /etc/shadow /tmp/h/shadow && ln -s /etc /tmp/h/etc"
    f" && ln -s {outside} /tmp/h/out && ln -s .. /tmp/h/sub/up"
)
machine.copy_from_machine("/tmp/h", "got")
t.assertEqual((got / "plain").read_text(), "data\\n")
# links come as links, their targets verbatim, never followed
t.assertEqual(str((got / "shadow").readlink()), "/etc/shadow")
t.assertEqual(str((got / "etc").readlink()), "/etc")
t.assertEqual((got / "out").readlink(), outside)
t.assertEqual(str((got / "sub" / "up").readlink()), "..")
# the guest turns its links into a directory and files, and the test copies again: the
# links the first copy left on the host are replaced, never written through
machine.succeed(
    "rm /tmp/h/out /tmp/h/shadow && mkdir /tmp/h/out"
    " && echo evil > /tmp/h/out/victim && echo evil > /tmp/h/shadow"
)
machine.copy_from_machine("/tmp/h", "got")
t.assertEqual((outside / "victim").read_text(), "safe")
t.assertEqual((got / "out" / "victim").read_text(), "evil\\n")
t.assertEqual((got / "shadow").read_text(), "evil\\n")

# a FIFO in the tree: left out (the agent), or refused by the guest's `cp` into the 9p
# share, which cannot hold one here; never a hang, never a FIFO on the host
machine.succeed("mkdir -p /tmp/f && echo kept > /tmp/f/file && mkfifo /tmp/f/fifo")
try:
    machine.copy_from_machine("/tmp/f", "f")
except Exception as e:
    print(f"FIFO-TREE-REFUSED {e}", flush=True)
    t.assertIn("/tmp/f", str(e))
else:
    f = pathlib.Path(driver.config.out_dir) / "f" / "f"
    t.assertEqual((f / "file").read_text(), "kept\\n")
    t.assertFalse((f / "fifo").exists() or (f / "fifo").is_symlink())

# a FIFO as the root of the copy: an error naming it, not a hang
machine.succeed("mkfifo /tmp/fifo-root")
try:
    machine.copy_from_machine("/tmp/fifo-root", "fifo")
except Exception as e:
    print(f"FIFO-ROOT-REFUSED {e}", flush=True)
else:
    raise SystemExit("copying a FIFO did not fail")
print("SHARED-DONE", flush=True)
"""


def test_planted_links_and_fifos_stay_in_the_copied_tree(vm_env):
    r = vm_env.run(ONE, SHARED_SCRIPT)
    text = r.stdout + r.stderr
    assert r.returncode == 0, text[-4000:]
    assert "SHARED-DONE" in text, text[-4000:]
    refused = re.search(r"FIFO-ROOT-REFUSED (.*)", text)
    assert refused and "fifo-root" in refused.group(1), text[-4000:]
