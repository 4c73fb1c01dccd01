# ruff: noqa: F821  (`machine` comes from the driver's namespace)
"""(c) `succeed("true")` round trips and (d) 1 MB of stdout, on one booted VM.

Environment (set by benches/run.py): NTNG_BENCH_CALLS timed `succeed("true")` calls,
NTNG_BENCH_WARMUP untimed calls before them, NTNG_BENCH_MB_ITERS repetitions of each 1 MB
command, NTNG_BENCH_RESULT the JSON file to write.
"""

import json
import os
import time

calls = int(os.environ["NTNG_BENCH_CALLS"])
warmup = int(os.environ["NTNG_BENCH_WARMUP"])
mb_iters = int(os.environ["NTNG_BENCH_MB_ITERS"])

MB = 1_000_000
# The shell sees `tr '\0' a`.
TO_STDOUT = f"head -c {MB} /dev/zero | tr '\\0' a"
TO_DEVNULL = f"{TO_STDOUT} > /dev/null"

t_start = time.perf_counter()
machine.start()
machine.succeed("true")
first_command = time.perf_counter() - t_start

for _ in range(warmup):
    machine.succeed("true")

true_s = []
for _ in range(calls):
    tic = time.perf_counter()
    machine.succeed("true")
    true_s.append(time.perf_counter() - tic)

# Alternate the two 1 MB commands so that drift in the machine's load hits both alike.
mb_stdout_s = []
mb_devnull_s = []
for _ in range(mb_iters):
    tic = time.perf_counter()
    out = machine.succeed(TO_STDOUT)
    mb_stdout_s.append(time.perf_counter() - tic)
    if len(out) != MB or out.strip("a"):
        raise AssertionError(f"1 MB command returned {len(out)} characters, not {MB} x `a`")
    tic = time.perf_counter()
    out = machine.succeed(TO_DEVNULL)
    mb_devnull_s.append(time.perf_counter() - tic)
    if out != "":
        raise AssertionError(f"the /dev/null variant printed {len(out)} characters")

with open("/proc/self/status") as f:
    vm_hwm_kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

with open(os.environ["NTNG_BENCH_RESULT"], "w") as f:
    json.dump(
        {
            "start_to_first_command_s": first_command,
            "true_s": true_s,
            "mb_stdout_s": mb_stdout_s,
            "mb_devnull_s": mb_devnull_s,
            "vm_hwm_kib": vm_hwm_kib,
        },
        f,
    )
