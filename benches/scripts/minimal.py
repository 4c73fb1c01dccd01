# ruff: noqa: F821  (`machine` comes from the driver's namespace)
"""The minimal run, (a) (b) (f) (g): `machine.start(); machine.succeed("true")`.

Run by benches/run.py as the test script of `nixos-test-driver` with one VM called `machine`.
Writes its timestamps (CLOCK_REALTIME, `time.time()`) and the driver's VmHWM as JSON to
$NTNG_BENCH_RESULT.
"""

import json
import os
import time

t_script = time.time()
machine.start()
t_started = time.time()
machine.succeed("true")
t_first = time.time()


def vm_hwm_kib() -> int:
    """Peak RSS of this (the driver's) process so far, from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


result = {
    "t_script": t_script,
    "t_started": t_started,
    "t_first": t_first,
    "vm_hwm_kib": vm_hwm_kib(),
    "t_end": time.time(),
}
with open(os.environ["NTNG_BENCH_RESULT"], "w") as f:
    json.dump(result, f)
