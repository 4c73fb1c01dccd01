# ruff: noqa: F821  (`machine` comes from the driver's namespace)
"""(n) A Firecracker or Cloud Hypervisor machine through its API stand-in with the fake
runner (no guest boots): the driver's API calls per boot and per snapshot operation.

Run by benches/run.py with one machine called `machine` (`run-machine-firecracker` or
`run-machine-cloud-hypervisor`) and `benches/vmm_standin.py` as the VMM, which records every
API call to $NTNG_BENCH_API_LOG. Its shell is the real guest agent on the host behind a
fake hybrid vsock socket ($NTNG_BENCH_VSOCK_GUEST, tests/fakes/vsock_guest.py), started
here: the guest is the host, so the only command run is `true`.

$NTNG_BENCH_VMM_ITERS boots (each but the last ended by `crash()`), then as many rounds of
`snapshot()` and `restore()`, each followed by `succeed("true")`. Writes the timestamps
(CLOCK_REALTIME, `time.time()`, the stand-in's clock), the API log and the driver's VmHWM as
JSON to $NTNG_BENCH_RESULT.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from nixos_test_ng import _native

t_script = time.time()
iters = int(os.environ.get("NTNG_BENCH_VMM_ITERS", "5"))
out = Path(os.environ["NTNG_BENCH_OUT"])
state = Path(os.environ["XDG_RUNTIME_DIR"]) / f"vm-state-{machine.name}"

agent = out / "nixos-test-ng-agent"
agent.write_bytes(_native.agent_binary())
agent.chmod(0o755)
guest_dir = out / "guest"
guest_dir.mkdir()
guest = subprocess.Popen(
    [
        sys.executable,
        os.environ["NTNG_BENCH_VSOCK_GUEST"],
        str(state / "vsock.sock"),
        str(agent),
        str(guest_dir),
    ],
    start_new_session=True,
    stdin=subprocess.DEVNULL,
)

boots, snapshots = [], []
try:
    for i in range(iters):
        t_start = time.time()
        machine.start()
        t_started = time.time()
        machine.succeed("true")
        t_first = time.time()
        boots.append({"t_start": t_start, "t_started": t_started, "t_first": t_first})
        if i < iters - 1:
            machine.crash()
    for _ in range(iters):
        t_snapshot = time.time()
        machine.snapshot("bench")
        t_snapshotted = time.time()
        machine.restore("bench")
        t_restored = time.time()
        machine.succeed("true")
        t_first = time.time()
        snapshots.append(
            {
                "t_snapshot": t_snapshot,
                "t_snapshotted": t_snapshotted,
                "t_restored": t_restored,
                "t_first": t_first,
            }
        )
    # ended here, so that nothing at the driver's end could reach the "guest" (the host)
    machine.crash()
finally:
    os.killpg(guest.pid, signal.SIGKILL)
    guest.wait()


def vm_hwm_kib() -> int:
    """Peak RSS of this (the driver's) process so far, from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


api_log = Path(os.environ["NTNG_BENCH_API_LOG"]).read_text().splitlines()
with open(os.environ["NTNG_BENCH_RESULT"], "w") as f:
    json.dump(
        {
            "t_script": t_script,
            "boots": boots,
            "snapshots": snapshots,
            "api": [json.loads(line) for line in api_log],
            "vm_hwm_kib": vm_hwm_kib(),
        },
        f,
    )
