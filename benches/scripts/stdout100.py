# ruff: noqa: F821  (`machine` comes from the driver's namespace)
"""Large output: one `succeed` printing NTNG_BENCH_MB (100) MB, checked, on one booted VM.

Environment (set by benches/run.py): NTNG_BENCH_MB, NTNG_BENCH_RESULT the JSON file to write.
"""

import json
import os
import time

size = int(os.environ.get("NTNG_BENCH_MB", "100")) * 1_000_000

machine.start()
machine.succeed("true")

tic = time.perf_counter()
out = machine.succeed(f"head -c {size} /dev/zero | tr '\\0' a")
took = time.perf_counter() - tic
if len(out) != size or out.strip("a"):
    raise AssertionError(f"the command returned {len(out)} characters, not {size} x `a`")
del out

with open("/proc/self/status") as f:
    vm_hwm_kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

with open(os.environ["NTNG_BENCH_RESULT"], "w") as f:
    json.dump({"bytes": size, "stdout_s": took, "vm_hwm_kib": vm_hwm_kib}, f)
