# ruff: noqa: F821  (`machines` comes from the driver's namespace)
"""The soak's small test (stage 1, run 1,000 times back to back, a fresh driver each time):
start the machine, run `succeed("true")` $NTNG_SOAK_CALLS times, each timed.

Writes JSON to $NTNG_SOAK_RESULT: the latencies, the driver's RSS and peak RSS, its open fds.
"""

import json
import os
import time

(machine,) = machines
machine.start()
latencies = []
for _ in range(int(os.environ.get("NTNG_SOAK_CALLS", "5"))):
    tic = time.perf_counter()
    machine.succeed("true")
    latencies.append(time.perf_counter() - tic)


def status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


result = {
    "latencies_s": latencies,
    "vm_rss_kib": status_kib("VmRSS"),
    "vm_hwm_kib": status_kib("VmHWM"),
    "driver_fds": len(os.listdir("/proc/self/fd")),
}
with open(os.environ["NTNG_SOAK_RESULT"], "w") as f:
    json.dump(result, f)
