"""The `vmm-*` suites (n): a Firecracker or Cloud Hypervisor machine through the API stand-in
of tests/standins with its fake runner (no guest boots), the stand-in run by
`benches/vmm_standin.py`, which records every API call. This module writes a run's start
script and VMM wrapper, and computes a run's figures from the script's timestamps and the
API log. Every stamp is CLOCK_REALTIME: `time.time()` in the script and the stand-in, bash's
`$EPOCHREALTIME` in the wrappers."""

from __future__ import annotations

import json
import shlex
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import BENCHES, REPO


@dataclass(frozen=True)
class Vmm:
    #: the binary's name (the stand-in's first argument, the start script's suffix)
    binary: str
    #: the driver's variable naming the binary
    variable: str
    #: the metric-key prefix
    key: str
    #: as the report names it
    title: str
    cmdline: str


VMMS = {
    "firecracker": Vmm(
        "firecracker",
        "NIXOS_TEST_NG_FIRECRACKER",
        "fc",
        "Firecracker",
        "console=ttyS0 reboot=k panic=1",
    ),
    "cloud-hypervisor": Vmm(
        "cloud-hypervisor",
        "NIXOS_TEST_NG_CLOUD_HYPERVISOR",
        "ch",
        "Cloud Hypervisor",
        "console=ttyS0 root=/dev/vda panic=1",
    ),
}

#: Said under every report with `vmm-*` figures.
CLOSING_NOTE = (
    "(n): **real-VMM timings were not measured here.** This machine has no usable KVM, so"
    " neither Firecracker nor Cloud Hypervisor can run on it: each `vmm-*` figure was taken"
    " through the VMM's API stand-in (tests/standins, a Python process serving the documented"
    " API) with its fake runner, which boots no guest, and the guest agent on the host behind"
    " a fake hybrid vsock socket. They give the driver's own share of each operation (its API"
    " calls, process handling and agent reconnect) and its number of API calls; the stand-in's"
    " start-up and its time in the calls are shown apart and are not the real VMMs'."
)

#: The rows of the report, each VMM's: (metric key without the VMM's prefix, what, unit).
ROWS = (
    ("boot_start_s", "{vmm} stand-in: `start()` (fake runner, no guest)", "ms"),
    ("boot_driver_s", "… driver's share: less the stand-in's start-up and calls", "ms"),
    ("boot_to_script_s", "… … `start()` → start script exec", "ms"),
    ("boot_script_to_exec_s", "… … script exec → VMM exec (script, config, spawn)", "ms"),
    ("boot_probe_s", "… … socket bound → driver's probe connected (5 ms polls)", "ms"),
    ("boot_api_driver_s", "… … the API calls less the stand-in's time in them", "ms"),
    ("boot_api_per_call_s", "… … … per call", "ms"),
    ("boot_after_api_s", "… … boot call answered → `start()` returned", "ms"),
    ("boot_calls", "… API calls", "n"),
    ("boot_connections", "… connections to the API socket (probe + one per call)", "n"),
    ("boot_standin_up_s", "… stand-in's start-up: exec → socket bound (Python)", "ms"),
    ("boot_api_standin_s", "… stand-in's time in the calls (read → answer)", "ms"),
    ("boot_api_runner_s", "… … of which its fake runner", "ms"),
    ("boot_first_command_s", '… `start()` → first `succeed("true")` (agent connect)', "ms"),
    ("snapshot_s", "{vmm} stand-in: `snapshot()` (pause, create, resume)", "ms"),
    ("snapshot_driver_s", "… driver's share: less the stand-in's time in the calls", "ms"),
    ("snapshot_before_api_s", "… … `snapshot()` → first call", "ms"),
    ("snapshot_calls", "… API calls", "n"),
    ("snapshot_connections", "… connections to the API socket", "n"),
    ("snapshot_api_standin_s", "… stand-in's time in the calls", "ms"),
    ("restore_path_s", '{vmm} stand-in: `restore()` → first `succeed("true")`', "ms"),
    ("restore_s", "… `restore()`: new process, load, resume, agent reconnect", "ms"),
    ("restore_driver_s", "… driver's share: less the stand-in's start-up and calls", "ms"),
    ("restore_to_exec_s", "… … `restore()` → new VMM exec (the old one killed)", "ms"),
    ("restore_probe_s", "… … socket bound → driver's probe connected", "ms"),
    ("restore_api_driver_s", "… … the API calls less the stand-in's time in them", "ms"),
    ("restore_after_api_s", "… … last answer → `restore()` returned (agent reconnect)", "ms"),
    ("restore_calls", "… API calls", "n"),
    ("restore_connections", "… connections to the API socket", "n"),
    ("restore_standin_up_s", "… stand-in's start-up: exec → socket bound (Python)", "ms"),
    ("restore_api_standin_s", "… stand-in's time in the calls", "ms"),
    ("restore_first_command_s", '… `restore()` returned → first `succeed("true")`', "ms"),
    ("rss_mb", "… driver peak RSS", "MB"),
)


def report_rows() -> list[tuple[str, str, str, str]]:
    """(id, metric key, what, unit) of every VMM's rows, as `report.ROWS` has them."""
    return [
        ("n", f"{v.key}_{key}", what.format(vmm=v.title), unit)
        for v in VMMS.values()
        for key, what, unit in ROWS
    ]


STANDIN = BENCHES / "vmm_standin.py"
VSOCK_GUEST = REPO / "tests" / "fakes" / "vsock_guest.py"

START_SCRIPT = """#!/bin/bash
# Benchmark start script: record when the driver ran it, print the machine's configuration.
printf '%s\\n' "$EPOCHREALTIME" >> {stamp}
cat <<'EOF'
{config}
EOF
"""

VMM_WRAPPER = """#!/bin/bash
# Benchmark VMM: record when the driver ran it, then exec the recording stand-in.
printf '%s\\n' "$EPOCHREALTIME" >> {stamp}
exec {python} {standin} {binary} "$@"
"""


def prepare(
    vmm_name: str, node: str, tmp: Path, bindir: Path, stamps: Path
) -> tuple[Path, dict[str, str]]:
    """Writes `run-<node>-<vmm>` (its stamps: `stamps/script`) and the VMM wrapper (its
    stamps: `stamps/vmm`) into `bindir`, with dummy kernel, initrd and disks (the fake runner
    boots nothing); returns the start script and the run's variables."""
    vmm = VMMS[vmm_name]
    files = tmp / "vm-files"
    files.mkdir()
    for f in ("vmlinux", "initrd", "root.img", "data.img"):
        (files / f).write_text(f)
    config = {
        "kernel": str(files / "vmlinux"),
        "initrd": str(files / "initrd"),
        "root_disk": str(files / "root.img"),
        "disks": [{"path": str(files / "data.img"), "read_only": True}],
        "cmdline": vmm.cmdline,
        "vcpus": 2,
        "memory_mib": 256,
    }
    script = bindir / f"run-{node}-{vmm.binary}"
    script.write_text(
        START_SCRIPT.format(stamp=shlex.quote(str(stamps / "script")), config=json.dumps(config))
    )
    wrapper = bindir / vmm.binary
    wrapper.write_text(
        VMM_WRAPPER.format(
            stamp=shlex.quote(str(stamps / "vmm")),
            python=shlex.quote(sys.executable),
            standin=shlex.quote(str(STANDIN)),
            binary=vmm.binary,
        )
    )
    for p in (script, wrapper):
        p.chmod(0o755)
    env = {
        vmm.variable: str(wrapper),
        "NTNG_STANDIN_RUNNER": "fake",
        "NTNG_BENCH_API_LOG": str(tmp / "api.jsonl"),
        "NTNG_BENCH_VSOCK_GUEST": str(VSOCK_GUEST),
    }
    return script, env


def stamps_of(path: Path) -> list[float]:
    if not path.exists():
        return []
    return [float(x.replace(",", ".")) for x in path.read_text().split()]


def _in(t: float, lo: float, hi: float) -> bool:
    return lo <= t <= hi


def _one(values: list[float], what: str) -> float:
    if len(values) != 1:
        raise ValueError(f"{len(values)} {what}, not 1")
    return values[0]


def api_window(api: list[dict[str, Any]], lo: float, hi: float) -> dict[str, Any]:
    """The API calls whose request came between `lo` and `hi`: their number, the first
    request, the last answer, the stand-in's time in them (HTTP, API layer, runner) and its
    runner's, and the processes that served them."""
    calls = [e for e in api if e["event"] == "request" and _in(e["t_request"], lo, hi)]
    if not calls:
        raise ValueError("no API call in the window")
    return {
        "calls": calls,
        "n": len(calls),
        "first": min(c["t_request"] for c in calls),
        "last": max(c["t_answered"] for c in calls),
        "standin_s": sum(c["t_answered"] - c["t_request"] for c in calls),
        "runner_s": sum(c["runner_s"] or 0.0 for c in calls),
        "pids": {c["pid"] for c in calls},
    }


def connections(api: list[dict[str, Any]], lo: float, hi: float) -> int:
    """The connections the stand-ins accepted between `lo` and `hi`."""
    return sum(1 for e in api if e["event"] == "accept" and _in(e["t"], lo, hi))


def launch(raw: dict[str, Any], lo: float, hi: float, calls: dict[str, Any]) -> dict[str, float]:
    """The phases of a VMM launch between `lo` (the driver's call) and `hi` (its return):
    the driver to the VMM's exec (the start script's run and the spawn; a restore also ends
    the old VMM first), the stand-in's start-up to its socket bound, the driver's wait until
    its probe connected, and the API calls from there to the last answer."""
    vmm_exec = _one([t for t in raw["vmm_stamps"] if _in(t, lo, hi)], "VMM execs")
    if len(calls["pids"]) != 1:
        raise ValueError(f"API calls of {len(calls['pids'])} processes in one launch")
    (pid,) = calls["pids"]
    events = [e for e in raw["api"] if e["pid"] == pid]
    bound = _one([e["t"] for e in events if e["event"] == "bound"], "sockets bound")
    accepts = [e["t"] for e in events if e["event"] == "accept" and e["t"] <= hi]
    if not accepts:
        raise ValueError("no accepted connection")
    return {
        "to_exec_s": vmm_exec - lo,
        "standin_up_s": bound - vmm_exec,
        "probe_s": min(accepts) - bound,
        "api_s": calls["last"] - min(accepts),
        "connections": len(accepts),
    }


def figures(key: str, raw: dict[str, Any]) -> dict[str, float]:
    """A run's figures (the median over its boots and its snapshot rounds), by metric key.
    A launch's "driver" share is the whole call minus the stand-in's own parts: its start-up
    (exec → interpreter up and imported, in `standin_up_s`) and its time in each API call
    (request read → answer flushed); what is left is the driver's: the start script's run and
    the spawn, its wait for the socket, building and sending the calls and reading the
    answers, and what it does after them."""
    per: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        per.setdefault(f"{key}_{name}", []).append(value)

    for b in raw["boots"]:
        lo, hi = b["t_start"], b["t_started"]
        calls = api_window(raw["api"], lo, hi)
        phases = launch(raw, lo, hi, calls)
        start_s = hi - lo
        standin_s = phases["standin_up_s"] + calls["standin_s"]
        add("boot_start_s", start_s)
        add("boot_calls", calls["n"])
        add("boot_connections", phases["connections"])
        script = _one([t for t in raw["script_stamps"] if _in(t, lo, hi)], "start script runs")
        add("boot_to_script_s", script - lo)
        add("boot_script_to_exec_s", phases["to_exec_s"] - (script - lo))
        add("boot_standin_up_s", phases["standin_up_s"])
        add("boot_probe_s", phases["probe_s"])
        add("boot_api_standin_s", calls["standin_s"])
        add("boot_api_runner_s", calls["runner_s"])
        add("boot_api_driver_s", phases["api_s"] - calls["standin_s"])
        add("boot_api_per_call_s", (phases["api_s"] - calls["standin_s"]) / calls["n"])
        add("boot_after_api_s", hi - calls["last"])
        add("boot_driver_s", start_s - standin_s)
        add("boot_first_command_s", b["t_first"] - hi)
    for s in raw["snapshots"]:
        lo, hi = s["t_snapshot"], s["t_snapshotted"]
        calls = api_window(raw["api"], lo, hi)
        add("snapshot_s", hi - lo)
        add("snapshot_calls", calls["n"])
        add("snapshot_connections", connections(raw["api"], lo, hi))
        add("snapshot_before_api_s", calls["first"] - lo)
        add("snapshot_api_standin_s", calls["standin_s"])
        add("snapshot_driver_s", hi - lo - calls["standin_s"])
        lo, hi = s["t_snapshotted"], s["t_restored"]
        calls = api_window(raw["api"], lo, hi)
        phases = launch(raw, lo, hi, calls)
        standin_s = phases["standin_up_s"] + calls["standin_s"]
        add("restore_s", hi - lo)
        add("restore_calls", calls["n"])
        add("restore_connections", phases["connections"])
        add("restore_to_exec_s", phases["to_exec_s"])
        add("restore_standin_up_s", phases["standin_up_s"])
        add("restore_probe_s", phases["probe_s"])
        add("restore_api_standin_s", calls["standin_s"])
        add("restore_api_driver_s", phases["api_s"] - calls["standin_s"])
        add("restore_after_api_s", hi - calls["last"])
        add("restore_driver_s", hi - lo - standin_s)
        add("restore_first_command_s", s["t_first"] - hi)
        add("restore_path_s", s["t_first"] - lo)
    if not per:
        raise ValueError("no boot and no snapshot in the run")
    f = {k: statistics.median(v) for k, v in per.items()}
    f[f"{key}_rss_mb"] = raw["vm_hwm_kib"] / 1000
    return f
