# ruff: noqa: F821  (`machine` comes from the driver's namespace)
"""(k) A fresh machine per test: by boot (start() -> first succeed("true")) and by restoring
the snapshot taken when it was first ready (restore() -> first succeed("true")), three ways:
- standby ready: the warm standby QEMU waits at the snapshot (wait_for_standby() first);
- back to back: each restore right after the previous one (the next standby is on its way);
- loadvm only: a snapshot taken with NIXOS_TEST_NG_STANDBY=0.
Also the costs of the standby: its QEMU's RSS (paused, warm) and the golden disk copy.
NTNG_BENCH_RESTORE_ITERS restores of each kind; NTNG_BENCH_RESULT: the JSON file to write."""

import json
import os
import time
from pathlib import Path

from nixos_test_ng import procs

iters = int(os.environ.get("NTNG_BENCH_RESTORE_ITERS", "5"))
state = Path(os.environ["XDG_RUNTIME_DIR"]) / f"vm-state-{machine.name}"


def restore(name):
    machine.succeed("echo dirty > /etc/dirty")
    tic = time.perf_counter()
    machine.restore(name)
    machine.succeed("true")
    took = time.perf_counter() - tic
    machine.fail("test -e /etc/dirty")
    return took


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def standby_pid():
    """The standby QEMU: the process started with `-loadvm` whose sockets are in `state`."""
    found = procs.marked(procs.Marker(needles=(str(state),)))
    return next((pid for pid, cmd in found.items() if " -loadvm " in f" {cmd} "), None)


def du(path):
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


tic = time.perf_counter()
machine.start()
machine.succeed("true")
boot_s = time.perf_counter() - tic

tic = time.perf_counter()
machine.snapshot("ready")
snapshot_s = time.perf_counter() - tic
golden_bytes = du(state / "golden-ready")

ready_s, standby_ready_after_s = [], []
tic = time.perf_counter()
if not machine.wait_for_standby():
    raise RuntimeError("no warm standby")
first_standby_s = time.perf_counter() - tic
standby_rss_kib = rss_kib(standby_pid())
live_rss_kib = rss_kib(machine.pid)
for _ in range(iters):
    ready_s.append(restore("ready"))
    tic = time.perf_counter()
    if not machine.wait_for_standby():
        raise RuntimeError("no warm standby")
    standby_ready_after_s.append(time.perf_counter() - tic)

# back to back: each restore right after the previous one (the first of these follows a
# ready standby, so it is not counted)
back_to_back_s = [restore("ready") for _ in range(iters + 1)][1:]

# loadvm only: the standby of "ready" stays paused (no CPU) while these run
machine.wait_for_standby()
os.environ["NIXOS_TEST_NG_STANDBY"] = "0"
tic = time.perf_counter()
machine.snapshot("plain")
snapshot_plain_s = time.perf_counter() - tic
loadvm_s = [restore("plain") for _ in range(iters)]

with open(os.environ["NTNG_BENCH_RESULT"], "w") as f:
    json.dump(
        {
            "boot_s": boot_s,
            "snapshot_s": snapshot_s,
            "snapshot_plain_s": snapshot_plain_s,
            "restore_s": ready_s,
            "back_to_back_s": back_to_back_s,
            "loadvm_s": loadvm_s,
            "first_standby_s": first_standby_s,
            "standby_ready_after_s": standby_ready_after_s,
            "standby_rss_kib": standby_rss_kib,
            "live_rss_kib": live_rss_kib,
            "golden_bytes": golden_bytes,
        },
        f,
    )
