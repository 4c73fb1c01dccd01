# ruff: noqa: F821  (`machine` comes from the driver's namespace)
"""(h) A systemd-nspawn container of the Debian systemd guest: `start()` to the first
successful command and to multi-user.target, `succeed("true")` round trips, 1 MB of stdout.

Environment (set by benches/run.py): NTNG_BENCH_CALLS timed `succeed("true")` calls,
NTNG_BENCH_WARMUP untimed calls before them, NTNG_BENCH_MB_ITERS repetitions of the 1 MB
command, NTNG_BENCH_RESULT the JSON file to write.
"""

import json
import os
import time

calls = int(os.environ["NTNG_BENCH_CALLS"])
warmup = int(os.environ["NTNG_BENCH_WARMUP"])
mb_iters = int(os.environ["NTNG_BENCH_MB_ITERS"])
MB = 1_000_000

t_start = time.perf_counter()
machine.start()
machine.succeed("true")
first_command = time.perf_counter() - t_start
machine.wait_for_unit("multi-user.target")
multi_user = time.perf_counter() - t_start

for _ in range(warmup):
    machine.succeed("true")
true_s = []
for _ in range(calls):
    tic = time.perf_counter()
    machine.succeed("true")
    true_s.append(time.perf_counter() - tic)

mb_stdout_s = []
for _ in range(mb_iters):
    tic = time.perf_counter()
    out = machine.succeed(f"head -c {MB} /dev/zero | tr '\\0' a")
    mb_stdout_s.append(time.perf_counter() - tic)
    if len(out) != MB or out.strip("a"):
        raise AssertionError(f"1 MB command returned {len(out)} characters, not {MB} x `a`")

with open("/proc/self/status") as f:
    vm_hwm_kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

with open(os.environ["NTNG_BENCH_RESULT"], "w") as f:
    json.dump(
        {
            "first_command_s": first_command,
            "multi_user_s": multi_user,
            "true_s": true_s,
            "mb_stdout_s": mb_stdout_s,
            "vm_hwm_kib": vm_hwm_kib,
        },
        f,
    )
