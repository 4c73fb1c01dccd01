# ruff: noqa: F821  (`machine` comes from the driver's namespace)
"""The soak's long run (stage 2): one driver, one VM, `succeed("true")` $NTNG_SOAK_COMMANDS
times, each timed, after $NTNG_SOAK_WARMUP untimed ones. Every $NTNG_SOAK_SAMPLE_EVERY
commands (and before the first) it samples the driver's RSS (VmRSS of /proc/self/status:
the driver runs this script in its own process) and its open fds.

Writes JSON to $NTNG_SOAK_RESULT.
"""

import json
import os
import time

commands = int(os.environ["NTNG_SOAK_COMMANDS"])
every = int(os.environ["NTNG_SOAK_SAMPLE_EVERY"])


def sample(done: int) -> dict:
    with open("/proc/self/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return {"commands": done, "vm_rss_kib": rss, "driver_fds": len(os.listdir("/proc/self/fd"))}


machine.start()
for _ in range(int(os.environ.get("NTNG_SOAK_WARMUP", "20"))):
    machine.succeed("true")
samples = [sample(0)]
latencies = []
for i in range(1, commands + 1):
    tic = time.perf_counter()
    machine.succeed("true")
    latencies.append(time.perf_counter() - tic)
    if i % every == 0 or i == commands:
        samples.append(sample(i))

with open("/proc/self/status") as f:
    hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
with open(os.environ["NTNG_SOAK_RESULT"], "w") as f:
    json.dump({"latencies_s": latencies, "samples": samples, "vm_hwm_kib": hwm}, f)
