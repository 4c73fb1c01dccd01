# ruff: noqa: F821  (`start_all` and `machines` come from the driver's namespace)
"""(e) `start_all()` of N machines until every machine answered a first `succeed("true")`.

The first commands run in parallel, one thread per machine, started right after `start_all()`
returns. With NTNG_BENCH_PING=1 (the VLAN case), it then runs upstream's ping phase: the first
node waits until it can ping the second, and the second pings the first 3 times.
Writes JSON to $NTNG_BENCH_RESULT; times are `time.time()` (CLOCK_REALTIME) or durations.
"""

import json
import os
import threading
import time

if "machines" not in globals():  # upstream's early generation-B driver has only these two
    machines = machines_qemu + machines_nspawn

answered: dict[str, float] = {}
errors: list[BaseException] = []


def first_command(m) -> None:
    try:
        m.succeed("true")
        answered[m.name] = time.time()
    except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
        errors.append(e)


t_start_all = time.time()
start_all()
t_returned = time.time()
threads = [threading.Thread(target=first_command, args=(m,)) for m in machines]
for t in threads:
    t.start()
for t in threads:
    t.join()
if errors:
    raise errors[0]
t_all_up = time.time()

result = {
    "t_start_all": t_start_all,
    "start_all_returned_s": t_returned - t_start_all,
    "all_answered_s": t_all_up - t_start_all,
    "answered_s": {name: t - t_start_all for name, t in sorted(answered.items())},
}

if os.environ.get("NTNG_BENCH_PING") == "1":
    a, b = sorted(machines, key=lambda m: m.name)[:2]
    tic = time.perf_counter()
    a.wait_until_succeeds("ping -c 1 -W 1 192.168.1.2")
    b.succeed("ping -c 3 -i 0.2 192.168.1.1")
    result["ping_phase_s"] = time.perf_counter() - tic

with open("/proc/self/status") as f:
    result["vm_hwm_kib"] = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

with open(os.environ["NTNG_BENCH_RESULT"], "w") as f:
    json.dump(result, f)
