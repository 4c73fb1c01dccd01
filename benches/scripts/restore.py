# ruff: noqa: F821  (`machine` comes from the driver's namespace)
"""(k) A fresh machine per test: by boot (start() -> first succeed("true")) and by restoring
the snapshot taken when it was first ready (restore() -> first succeed("true")).
NTNG_BENCH_RESTORE_ITERS restores; NTNG_BENCH_RESULT: the JSON file to write."""

import json
import os
import time

iters = int(os.environ.get("NTNG_BENCH_RESTORE_ITERS", "5"))
tic = time.perf_counter()
machine.start()
machine.succeed("true")
boot_s = time.perf_counter() - tic
tic = time.perf_counter()
machine.snapshot("ready")
snapshot_s = time.perf_counter() - tic

restore_s = []
for i in range(iters):
    machine.succeed(f"echo {i} > /etc/dirty")
    tic = time.perf_counter()
    machine.restore("ready")
    machine.succeed("true")
    restore_s.append(time.perf_counter() - tic)
    machine.fail("test -e /etc/dirty")

with open(os.environ["NTNG_BENCH_RESULT"], "w") as f:
    json.dump({"boot_s": boot_s, "snapshot_s": snapshot_s, "restore_s": restore_s}, f)
