# ruff: noqa: F821  (`start_all` and `machines` come from the driver's namespace)
"""The soak's crowd (stage 3): `start_all()` of every machine (8 busybox VMs on the 2-core
machine, the default boot timeout), then each machine's first `succeed("true")` in a thread
of its own, started as soon as `start_all()` returned. A machine's boot time runs from the
call to `start_all()` to its first command returned.

Writes JSON to $NTNG_SOAK_RESULT: each machine's boot time, or its error.
"""

import json
import os
import threading
import time

answered: dict[str, float] = {}
errors: dict[str, str] = {}


def first_command(m) -> None:
    try:
        m.succeed("true")
        answered[m.name] = time.time() - t_start_all
    except Exception as e:  # noqa: BLE001 - recorded, and the script fails below
        errors[m.name] = f"{type(e).__name__}: {e}"


t_start_all = time.time()
start_all()
start_all_s = time.time() - t_start_all
threads = [threading.Thread(target=first_command, args=(m,)) for m in machines]
for t in threads:
    t.start()
for t in threads:
    t.join()

with open("/proc/self/status") as f:
    hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
with open(os.environ["NTNG_SOAK_RESULT"], "w") as f:
    json.dump(
        {"start_all_s": start_all_s, "boot_s": answered, "errors": errors, "vm_hwm_kib": hwm}, f
    )
if errors:
    raise SystemExit(f"machines that did not answer: {sorted(errors)}")
