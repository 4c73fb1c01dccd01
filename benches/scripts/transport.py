# ruff: noqa: F821  (`machine` comes from the driver's namespace)
"""Agent vs backdoor (issue 17), run once per transport (NIXOS_TEST_NG_TRANSPORT, set by
benches/run.py): `succeed("true")` round trips, the guest's own cost of one subshell (fork,
exit, wait: timed inside the guest, the floor of any fresh-subshell command), 1 MB and
NTNG_BENCH_BIG_MB MB of stdout, 1 MB of stdout from a file (`cat`: the cheapest producer,
so that the transport's share shows; `head | tr` alone costs about 75 ms under TCG),
`copy_from_host` and `copy_from_machine` of NTNG_BENCH_COPY_MB MB, each checked. The
handshake time is the driver's own `connecting took` line (the harness reads it).

Environment: NTNG_BENCH_CALLS timed calls after NTNG_BENCH_WARMUP untimed ones,
NTNG_BENCH_MB_ITERS repetitions of the 1 MB commands and of each copy, NTNG_BENCH_RESULT the
JSON file to write.
"""

import hashlib
import json
import os
import time
from pathlib import Path

calls = int(os.environ["NTNG_BENCH_CALLS"])
warmup = int(os.environ["NTNG_BENCH_WARMUP"])
iters = int(os.environ["NTNG_BENCH_MB_ITERS"])
copy_size = int(os.environ["NTNG_BENCH_COPY_MB"]) * 1_000_000
big = int(os.environ["NTNG_BENCH_BIG_MB"]) * 1_000_000
MB = 1_000_000


def stdout_of(size):
    tic = time.perf_counter()
    out = machine.succeed(f"head -c {size} /dev/zero | tr '\\0' a")
    took = time.perf_counter() - tic
    if len(out) != size or out.strip("a"):
        raise AssertionError(f"the command returned {len(out)} characters, not {size} x `a`")
    return took


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

# The guest's own cost of what every command needs with fresh-subshell semantics: a fork of
# bash, the subshell's exit and its parent's wait, timed inside the guest (no transport).
SUBSHELLS = 200
floor_us = machine.succeed(
    f"s=${{EPOCHREALTIME/./}}; for i in $(seq {SUBSHELLS}); do (true) & wait $!; done; "
    f"e=${{EPOCHREALTIME/./}}; echo $(( (e - s) / {SUBSHELLS} ))"
)
subshell_floor = int(floor_us) / 1e6

mb_s = [stdout_of(MB) for _ in range(iters)]

machine.succeed(f"head -c {MB} /dev/zero | tr '\\0' a > /tmp/bench-1mb")
mb_cat_s = []
for _ in range(iters):
    tic = time.perf_counter()
    out = machine.succeed("cat /tmp/bench-1mb")
    mb_cat_s.append(time.perf_counter() - tic)
    if len(out) != MB or out.strip("a"):
        raise AssertionError(f"`cat` of the 1 MB file returned {len(out)} characters")
big_s = stdout_of(big) if big else None

# A file of random bytes (not compressible, not all one byte), written in the run's directory.
payload = Path("copy-payload.bin")
payload.write_bytes(os.urandom(copy_size))
digest = hashlib.sha256(payload.read_bytes()).hexdigest()
out_dir = Path(os.environ.get("NTNG_BENCH_OUT", "out"))
to_s, from_s = [], []
for i in range(iters):
    target = f"/tmp/bench-copy-{i}.bin"
    tic = time.perf_counter()
    machine.copy_from_host(str(payload), target)
    to_s.append(time.perf_counter() - tic)
    guest_sum = machine.succeed(f"sha256sum {target}").split()[0]
    if guest_sum != digest:
        raise AssertionError(f"copy_from_host: the guest has {guest_sum}, not {digest}")
    tic = time.perf_counter()
    machine.copy_from_machine(target, f"copied-{i}")
    from_s.append(time.perf_counter() - tic)
    got = out_dir / f"copied-{i}" / Path(target).name
    if hashlib.sha256(got.read_bytes()).hexdigest() != digest:
        raise AssertionError(f"copy_from_machine: {got} differs from what was copied in")
    got.unlink()
    machine.succeed(f"rm -f {target}")

with open("/proc/self/status") as f:
    vm_hwm_kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

# what the driver says it used, when it says (None: it does not tell)
used = getattr(machine, "transport", None)
used = None if used is None or callable(used) else str(used)

with open(os.environ["NTNG_BENCH_RESULT"], "w") as f:
    json.dump(
        {
            "transport_requested": os.environ.get("NIXOS_TEST_NG_TRANSPORT"),
            "transport_used": used,
            "start_to_first_command_s": first_command,
            "true_s": true_s,
            "subshell_floor_s": subshell_floor,
            "mb_stdout_s": mb_s,
            "mb_cat_s": mb_cat_s,
            "big_stdout_s": big_s,
            "big_bytes": big,
            "copy_bytes": copy_size,
            "copy_to_machine_s": to_s,
            "copy_from_machine_s": from_s,
            "vm_hwm_kib": vm_hwm_kib,
        },
        f,
    )
