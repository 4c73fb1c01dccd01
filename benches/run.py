#!/usr/bin/env python3
"""Benchmark harness of nixos-test-ng: the busybox guest under TCG, driven by `nixos-test-driver`.

    python3 benches/run.py [--runs N] [--quick] [--driver PATH] [--only SUITE,...] [--name NAME]

Measures (see benches/README.md for the method of each):
  (a) driver start -> first QEMU exec        (b) boot -> handshake, the driver's own log line
  (c) succeed("true") round trip             (d) 1 MB of stdout, and the same to /dev/null
  (e) start_all() of 2 and 4 VMs, and of 2 VMs on one VLAN, until each answered a command
  (f) the driver's peak RSS                  (g) the driver's own share of a minimal run
  (j) OCR of a known screen: every variant vs `wait_for_text`'s early exit
  (h) a systemd-nspawn container of the Debian systemd guest: start to first command and to
      multi-user.target, succeed("true"), 1 MB      (i) the systemd guest as a VM: boot
  (l) succeed("true") with spans exported over OTLP to a receiver in this process, against
      (c) in the same round: the cost of tracing
and writes benches/results/NAME.json and NAME.md (NAME: `latest`, or `quick` with --quick).

Every driver run gets its own temporary directory (XDG_RUNTIME_DIR, output directory, start
scripts) and its own session; whatever is left of a run is killed after it, and everything
is killed when the harness exits. Runs are strictly sequential.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCHES = Path(__file__).resolve().parent
REPO = BENCHES.parent
SCRIPTS = BENCHES / "scripts"
RESULTS = BENCHES / "results"

RUN_TIMEOUT_S = 600.0
LEFTOVER_GRACE_S = 3.0
PAUSE_BETWEEN_RUNS_S = 1.0

# Upstream's figures (medians) from /work/shared/reference/upstream-baseline.md, measured on
# this machine class with the generation-B Python driver under CPython 3.13.
UPSTREAM = {
    "cli_wall_minimal_s": 4.94,  # (a) CLI start -> exit, minimal script
    "connecting_s": 4.33,  # (b) `connecting took`
    "start_to_first_command_s": 4.68,  # (b') start() -> first succeed("true") returned
    "start_returned_s": 0.072,  # (b'') start() returns
    "true_median_s": 0.0268,  # (c) per-run median
    "true_mean_s": 0.0252,  # (c) per-run mean
    "true_total_200_s": 5.05,  # (c) 200 x succeed("true")
    "mb_stdout_s": 0.64,  # (d)
    "start2_vlan_up_s": 4.70,  # (e) two VMs on vlan 1: start_all() -> both guests up with IP
    "ping_phase_s": 0.55,  # (e) ping phase
    "cli_wall_start2_vlan_s": 5.76,  # (e) CLI start -> exit, two-VM ping test
    "rss_minimal_mb": 49.6,  # (f) minimal script
    "rss_commands_mb": 52.2,  # (f) 200-command + 1 MB script
    "rss_start2_vlan_mb": 49.7,  # (f) two VMs + VLAN
    # (g) not measured upstream as such: the baseline's "roughly 0.5 s" is the difference of
    # the medians of (a) and (b), 4.94 - 4.33.
    "driver_share_s": 0.61,
    # (h) upstream's figures (g) of upstream-baseline.md: its container start script announced
    # readiness after multi-user.target; its commands start nsenter and source the profile.
    "ct_multi_user_s": 0.60,
    "ct_true_mean_s": 0.00498,
    "ct_mb_stdout_s": 0.009,
    "rss_container_mb": 51.5,
}

# The targets (upper bounds on our median).
TARGETS = {
    "true_median_s": 0.008,
    "mb_stdout_s": 0.2,
    "driver_share_s": 0.1,
    "rss_minimal_mb": 25.0,
    "ct_multi_user_s": 0.45,
    "ct_true_median_s": 0.001,
    "rs_ratio": 0.05,
    "rs_sd_ratio": 0.05,
    "tr_overhead": 0.05,
    "rs_b2b_ratio": 0.05,
    "rs_sd_b2b_ratio": 0.05,
    "rs_b2b_mean_ratio": 0.05,
    "rs_sd_b2b_mean_ratio": 0.05,
    "rs_loadvm_ratio": 0.05,
    "rs_sd_loadvm_ratio": 0.05,
}
STRICT_TARGETS = {"driver_share_s"}


# ---------------------------------------------------------------------------------------------
# Suites


@dataclass(frozen=True)
class Suite:
    name: str
    script: str
    nodes: dict[str, list[int]]
    env: dict[str, str] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)


def suites(calls: int, warmup: int, mb_iters: int) -> list[Suite]:
    return [
        Suite("minimal", "minimal.py", {"machine": []}),
        Suite(
            "commands",
            "commands.py",
            {"machine": []},
            {
                "NTNG_BENCH_CALLS": str(calls),
                "NTNG_BENCH_WARMUP": str(warmup),
                "NTNG_BENCH_MB_ITERS": str(mb_iters),
            },
        ),
        Suite(
            "tracing",
            "commands.py",
            {"machine": []},
            {
                "NTNG_BENCH_CALLS": str(calls),
                "NTNG_BENCH_WARMUP": str(warmup),
                "NTNG_BENCH_MB_ITERS": "0",
                # the endpoint is the harness's receiver, set when it starts
            },
        ),
        Suite("start2", "start_all.py", {"node1": [], "node2": []}),
        Suite("start4", "start_all.py", {f"node{i}": [] for i in range(1, 5)}),
        Suite(
            "start2-vlan", "start_all.py", {"node1": [1], "node2": [1]}, {"NTNG_BENCH_PING": "1"}
        ),
        Suite(
            "container",
            "container.py",
            {"machine": []},
            {
                "NTNG_BENCH_CALLS": str(calls),
                "NTNG_BENCH_WARMUP": str(warmup),
                "NTNG_BENCH_MB_ITERS": str(mb_iters),
            },
            {"machine": "systemd-nspawn"},
        ),
        Suite("systemd-vm", "systemd_boot.py", {"machine": []}, {}, {"machine": "systemd-vm"}),
        Suite("ocr", "ocr.py", {"machine": []}, {"NTNG_BENCH_OCR_ITERS": str(mb_iters)}),
        Suite("restore", "restore.py", {"machine": []}, {"NTNG_BENCH_RESTORE_ITERS": "5"}),
        Suite(
            "restore-systemd",
            "restore.py",
            {"machine": []},
            {"NTNG_BENCH_RESTORE_ITERS": "5"},
            {"machine": "systemd-vm"},
        ),
    ]


#: Suites that need the Debian systemd guest (and root, for the container).
SYSTEMD_SUITES = {"container", "systemd-vm", "restore-systemd"}


# ---------------------------------------------------------------------------------------------
# Processes: each driver run is a session of its own; kill what is left of it.


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, session id) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    rest = text[text.rfind(")") + 2 :].split()
    return rest[0], int(rest[3])


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def run_processes(sid: int, marker: str) -> list[int]:
    """Live processes of session `sid`, or whose command line mentions `marker` (the run's
    temporary directory: QEMU's sockets and vde_switch's socket live there)."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        st = _proc_stat(pid)
        if st is None or st[0] in ("Z", "X"):
            continue
        if st[1] == sid or marker in _cmdline(pid):
            found.append(pid)
    return found


def kill_run(sid: int, marker: str) -> list[str]:
    """SIGKILL every process of a run; returns descriptions of what was killed."""
    killed = []
    for pid in run_processes(sid, marker):
        desc = f"{pid}: {_cmdline(pid)[:160]}"
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(desc)
        except ProcessLookupError:
            pass
    return killed


class Reaper:
    """Remembers the runs in flight; kills them at exit or on a signal."""

    def __init__(self) -> None:
        self.live: dict[int, str] = {}
        atexit.register(self.kill_all)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.kill_all()
        sys.exit(128 + signum)

    def kill_all(self) -> None:
        for sid, marker in list(self.live.items()):
            for desc in kill_run(sid, marker):
                print(f"bench: killed leftover {desc}", file=sys.stderr)
            self.live.pop(sid, None)


# ---------------------------------------------------------------------------------------------
# One driver run

CONNECTING = re.compile(r"^(?:(\S+): )?\(connecting took ([0-9.]+) seconds\)", re.M)

WRAPPER = """#!/bin/bash
# Benchmark wrapper: record when the driver ran the start script, then exec the real one.
printf '%s\\n' "$EPOCHREALTIME" > {stamp}
exec {real} "$@"
"""


class RunFailed(Exception):
    pass


@dataclass
class Context:
    driver: str
    guest_dir: Path
    tmp_root: Path
    reaper: Reaper
    keep_tmp: bool


def run_once(ctx: Context, suite: Suite, label: str) -> dict[str, Any]:
    """One `nixos-test-driver` run of a suite; returns the raw figures of that run."""
    from nixos_test_ng.guest import write_start_scripts

    tmp = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=ctx.tmp_root))
    xdg, out, real, bindir, stamps = (tmp / d for d in ("xdg", "out", "real", "bin", "stamps"))
    for d in (xdg, out, bindir, stamps):
        d.mkdir(mode=0o700)
    written = write_start_scripts(real, suite.nodes, guest_dir=ctx.guest_dir, kinds=suite.kinds)
    vm_wrappers, container_wrappers = [], []
    for name, path in written.items():
        w = bindir / path.name
        stamp = shlex.quote(str(stamps / name))
        w.write_text(WRAPPER.format(stamp=stamp, real=shlex.quote(str(path))))
        w.chmod(0o755)
        container = suite.kinds.get(name) == "systemd-nspawn"
        (container_wrappers if container else vm_wrappers).append(str(w))
    vlans = sorted({v for vs in suite.nodes.values() for v in vs})
    result_file = tmp / "result.json"
    cmd = [ctx.driver]
    if vm_wrappers:
        cmd += ["--vm-start-scripts", *vm_wrappers]
    if container_wrappers:
        cmd += ["--container-start-scripts", *container_wrappers]
    if vlans:
        cmd += ["--vlans", *map(str, vlans)]
    cmd += ["-o", str(out), "--", str(SCRIPTS / suite.script)]

    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.update(suite.env)
    env.update(
        XDG_RUNTIME_DIR=str(xdg),
        NTNG_BENCH_RESULT=str(result_file),
        NIXOS_TEST_NG_ACCEL="tcg",
        NO_COLOR="1",
    )
    stdout_path, stderr_path = tmp / "stdout.log", tmp / "stderr.log"
    with open(stdout_path, "wb") as so, open(stderr_path, "wb") as se:
        t_launch = time.time()
        proc = subprocess.Popen(
            cmd, env=env, cwd=tmp, stdin=subprocess.DEVNULL, stdout=so, stderr=se,
            start_new_session=True,
        )  # fmt: skip
        ctx.reaper.live[proc.pid] = str(tmp)
        # A blocking wait (Popen.wait with a timeout polls at up to 50 ms steps).
        timer = threading.Timer(RUN_TIMEOUT_S, lambda: kill_run(proc.pid, str(tmp)))
        timer.daemon = True
        timer.start()
        try:
            rc = proc.wait()
            t_exit = time.time()
        finally:
            timer.cancel()

    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while run_processes(proc.pid, str(tmp)) and time.monotonic() < deadline:
        time.sleep(0.05)
    leftovers = kill_run(proc.pid, str(tmp))
    ctx.reaper.live.pop(proc.pid, None)

    stderr = stderr_path.read_text(errors="replace")
    try:
        if rc != 0 or not result_file.exists():
            tail = "\n".join(stderr.splitlines()[-25:])
            raise RunFailed(f"{label}: the driver exited with {rc}\n{tail}")
        raw: dict[str, Any] = json.loads(result_file.read_text())
        raw["t_launch"] = t_launch
        raw["wall_s"] = t_exit - t_launch
        raw["exit_status"] = rc
        raw["leftover_processes"] = leftovers
        raw["connecting_s"] = {
            (m.group(1) or "?"): float(m.group(2)) for m in CONNECTING.finditer(stderr)
        }
        raw["exec_stamps"] = {}
        for name in written:
            text = (stamps / name).read_text().strip().replace(",", ".")
            raw["exec_stamps"][name] = float(text)
        missing = set(written) - set(raw["connecting_s"])
        if missing:
            raise RunFailed(f"{label}: no `connecting took` line for {sorted(missing)}")
        return raw
    finally:
        if not ctx.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Per-run figures and statistics


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolation quantile (q in 0..1)."""
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def per_run_figures(suite: str, raw: dict[str, Any]) -> dict[str, float]:
    """The figures of one run, by metric key (seconds, MB = the kernel's kB / 1000)."""
    f: dict[str, float] = {}
    if suite == "minimal":
        connecting = raw["connecting_s"]["machine"]
        first_command = (raw["t_first"] - raw["t_started"]) - connecting
        f["launch_to_qemu_exec_s"] = raw["exec_stamps"]["machine"] - raw["t_launch"]
        f["connecting_s"] = connecting
        f["rss_minimal_mb"] = raw["vm_hwm_kib"] / 1000
        f["cli_wall_minimal_s"] = raw["wall_s"]
        f["first_command_s"] = first_command
        f["driver_share_s"] = raw["wall_s"] - connecting - first_command
        f["launch_to_script_s"] = raw["t_script"] - raw["t_launch"]
        f["start_returned_s"] = raw["t_started"] - raw["t_script"]
        f["qemu_exec_to_start_returned_s"] = raw["t_started"] - raw["exec_stamps"]["machine"]
        f["script_end_to_exit_s"] = raw["t_launch"] + raw["wall_s"] - raw["t_end"]
    elif suite == "commands":
        t = raw["true_s"]
        f["true_median_s"] = statistics.median(t)
        f["true_mean_s"] = statistics.fmean(t)
        f["true_p10_s"] = quantile(t, 0.10)
        f["true_p90_s"] = quantile(t, 0.90)
        f["true_min_s"] = min(t)
        f["true_max_s"] = max(t)
        f["true_total_s"] = sum(t)
        f["mb_stdout_s"] = statistics.median(raw["mb_stdout_s"])
        f["mb_devnull_s"] = statistics.median(raw["mb_devnull_s"])
        f["mb_transfer_s"] = f["mb_stdout_s"] - f["mb_devnull_s"]
        f["start_to_first_command_s"] = raw["start_to_first_command_s"]
        f["rss_commands_mb"] = raw["vm_hwm_kib"] / 1000
        f["cli_wall_commands_s"] = raw["wall_s"]
    elif suite == "tracing":
        t = raw["true_s"]
        f["tr_true_median_s"] = statistics.median(t)
        f["tr_true_mean_s"] = statistics.fmean(t)
        f["tr_spans_received"] = raw["spans_received"]
    elif suite == "container":
        t = raw["true_s"]
        f["ct_launch_to_script_exec_s"] = raw["exec_stamps"]["machine"] - raw["t_launch"]
        f["ct_first_command_s"] = raw["first_command_s"]
        f["ct_multi_user_s"] = raw["multi_user_s"]
        f["ct_true_median_s"] = statistics.median(t)
        f["ct_true_mean_s"] = statistics.fmean(t)
        f["ct_true_p10_s"] = quantile(t, 0.10)
        f["ct_true_p90_s"] = quantile(t, 0.90)
        f["ct_mb_stdout_s"] = statistics.median(raw["mb_stdout_s"])
        f["rss_container_mb"] = raw["vm_hwm_kib"] / 1000
        f["cli_wall_container_s"] = raw["wall_s"]
    elif suite in ("restore", "restore-systemd"):
        key = "rs_sd" if suite == "restore-systemd" else "rs"
        boot = raw["boot_s"]
        f[f"{key}_boot_s"] = boot
        f[f"{key}_snapshot_s"] = raw["snapshot_s"]
        f[f"{key}_restore_s"] = statistics.median(raw["restore_s"])
        f[f"{key}_ratio"] = f[f"{key}_restore_s"] / boot
        f[f"{key}_b2b_s"] = statistics.median(raw["back_to_back_s"])
        f[f"{key}_b2b_ratio"] = f[f"{key}_b2b_s"] / boot
        f[f"{key}_b2b_mean_s"] = statistics.fmean(raw["back_to_back_s"])
        f[f"{key}_b2b_mean_ratio"] = f[f"{key}_b2b_mean_s"] / boot
        f[f"{key}_loadvm_s"] = statistics.median(raw["loadvm_s"])
        f[f"{key}_loadvm_ratio"] = f[f"{key}_loadvm_s"] / boot
        f[f"{key}_snapshot_plain_s"] = raw["snapshot_plain_s"]
        f[f"{key}_first_standby_s"] = raw["first_standby_s"]
        f[f"{key}_standby_after_s"] = statistics.median(raw["standby_ready_after_s"])
        f[f"{key}_standby_rss_mb"] = raw["standby_rss_kib"] / 1000
        f[f"{key}_live_rss_mb"] = raw["live_rss_kib"] / 1000
        f[f"{key}_golden_mb"] = raw["golden_bytes"] / 1e6
    elif suite == "ocr":
        f["ocr_all_variants_s"] = statistics.median(raw["all_variants_s"])
        f["ocr_early_exit_s"] = statistics.median(raw["early_exit_s"])
        f["ocr_raw_s"] = statistics.median(raw["raw_s"])
    elif suite == "systemd-vm":
        f["sd_connecting_s"] = raw["connecting_s"]["machine"]
        f["sd_first_command_s"] = raw["first_command_s"]
        f["sd_multi_user_s"] = raw["multi_user_s"]
    else:
        key = suite.replace("-", "_")
        stamps = [s - raw["t_start_all"] for s in raw["exec_stamps"].values()]
        f[f"{key}_up_s"] = raw["all_answered_s"]
        f[f"{key}_start_all_returned_s"] = raw["start_all_returned_s"]
        f[f"{key}_last_qemu_exec_s"] = max(stamps)
        f[f"{key}_connecting_max_s"] = max(raw["connecting_s"].values())
        f[f"rss_{key}_mb"] = raw["vm_hwm_kib"] / 1000
        f[f"cli_wall_{key}_s"] = raw["wall_s"]
        if "ping_phase_s" in raw:
            f["ping_phase_s"] = raw["ping_phase_s"]
    return f


def summarize(values: list[float]) -> dict[str, Any]:
    return {
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
        "n": len(values),
        "values": values,
    }


# ---------------------------------------------------------------------------------------------
# Environment


def _output(cmd: list[str], cwd: Path | None = None) -> str | None:
    try:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def resolve_driver(name: str) -> tuple[str, str | None]:
    """(the executable to run, the shim it was resolved from). A pyenv shim re-runs pyenv on
    every start (about 45 ms here), which is no part of the driver, so it is resolved."""
    found = shutil.which(name) or name
    if "/shims/" in found and shutil.which("pyenv"):
        real = _output(["pyenv", "which", os.path.basename(found)])
        if real:
            return real, found
    return found, None


def environment(driver: str, shim: str | None, guest_dir: Path) -> dict[str, Any]:
    cpu = None
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    interp = None
    with open(driver, "rb") as f:
        first = f.readline().decode(errors="replace")
    if first.startswith("#!"):
        interp = first[2:].strip().split()[0]
    versions = None
    if interp:
        versions = _output(
            [
                interp,
                "-c",
                "import importlib.metadata as m, sys;"
                "print(m.version('nixos-test-ng'), sys.version.split()[0])",
            ]
        )
    manifest: dict[str, Any] = {}
    try:
        manifest = json.loads((guest_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        pass
    dirty = _output(["git", "status", "--porcelain"], REPO)
    return {
        "cpu_model": cpu,
        "nproc": os.cpu_count(),
        "nproc_usable": len(os.sched_getaffinity(0)),
        "mem_total_gib": round(mem_kib / 1024 / 1024, 1),
        "qemu_version": (_output(["qemu-system-x86_64", "--version"]) or "").splitlines()[0:1],
        "accel": "tcg",
        "kernel": platform.release(),
        "os": _output(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "git_commit": _output(["git", "rev-parse", "HEAD"], REPO),
        "git_dirty": bool(dirty) if dirty is not None else None,
        "driver": driver,
        "driver_resolved_from": shim,
        "driver_version_python": versions,
        "harness_python": platform.python_version(),
        "guest_dir": str(guest_dir),
        "guest_input_hash": manifest.get("input_hash"),
        "guest_kernel": manifest.get("kernel_version"),
        "guest_kernel_boot": manifest.get("kernel_boot"),
        "loadavg_before": os.getloadavg(),
    }


# ---------------------------------------------------------------------------------------------
# Report

# (id, metric key, what, unit): the rows of the markdown table, in order.
ROWS = [
    ("a", "launch_to_qemu_exec_s", "driver start → first QEMU exec (wrapper stamp)", "s"),
    ("a", "launch_to_script_s", "… driver start → first line of the test script", "s"),
    ("a", "qemu_exec_to_start_returned_s", "… start script exec → `start()` returned", "s"),
    ("b", "connecting_s", "boot → handshake, driver's `connecting took`", "s"),
    ("b'", "start_to_first_command_s", '`start()` → first `succeed("true")` returned', "s"),
    ("b''", "start_returned_s", "`start()` returns (QEMU spawned, sockets, monitor prompt)", "s"),
    ("c", "true_median_s", '`succeed("true")`, median of per-run medians', "ms"),
    ("c", "true_p10_s", "… per-run p10", "ms"),
    ("c", "true_p90_s", "… per-run p90", "ms"),
    ("c", "true_mean_s", "… per-run mean", "ms"),
    ("c", "true_total_s", "… total of the timed calls in a run", "s"),
    ("d", "mb_stdout_s", "1 MB stdout `head -c 1000000 /dev/zero \\| tr '\\0' a`", "s"),
    ("d", "mb_devnull_s", "… same command `> /dev/null` (guest's own cost)", "s"),
    ("d", "mb_transfer_s", "… difference (transfer + decoding)", "s"),
    ("e", "start2_up_s", "`start_all()` 2 VMs, no VLAN → all answered", "s"),
    ("e", "start4_up_s", "`start_all()` 4 VMs, no VLAN → all answered", "s"),
    ("e", "start2_vlan_up_s", "`start_all()` 2 VMs on VLAN 1 → all answered", "s"),
    ("e", "start2_last_qemu_exec_s", "… 2 VMs: `start_all()` → last start script exec", "s"),
    ("e", "start4_last_qemu_exec_s", "… 4 VMs: `start_all()` → last start script exec", "s"),
    ("e", "start4_connecting_max_s", "… 4 VMs: slowest `connecting took`", "s"),
    ("e", "ping_phase_s", "… VLAN: ping phase (wait for ping a→b, 3 pings b→a)", "s"),
    ("e", "cli_wall_start2_vlan_s", "… VLAN: CLI start → exit", "s"),
    ("f", "rss_minimal_mb", "driver peak RSS (VmHWM), minimal run", "MB"),
    ("f", "rss_commands_mb", "… commands script (c)+(d)", "MB"),
    ("f", "rss_start2_vlan_mb", "… 2 VMs + VLAN", "MB"),
    ("f", "rss_start4_mb", "… 4 VMs", "MB"),
    ("g", "cli_wall_minimal_s", "CLI start → exit, minimal run (whole wall time)", "s"),
    ("g", "driver_share_s", "driver's own share: wall − `connecting took` − first command", "s"),
    ("g", "first_command_s", "… first command (its round trip after the handshake)", "s"),
    ("g", "script_end_to_exit_s", "… end of script → driver exited (sync, cleanup, exit)", "s"),
    ("l", "tr_true_median_s", '`succeed("true")` with spans exported over OTLP, median', "ms"),
    ("l", "tr_true_mean_s", "… per-run mean", "ms"),
    ("l", "tr_overhead", "… extra over (c) of the same round (median ratio − 1)", "x"),
    ("l", "tr_spans_received", "… spans the receiver got per run", "n"),
    ("h", "ct_first_command_s", 'container: `start()` → first `succeed("true")` returned', "s"),
    ("h", "ct_multi_user_s", '… `start()` → `wait_for_unit("multi-user.target")` returned', "s"),
    ("h", "ct_launch_to_script_exec_s", "… driver start → start script exec", "s"),
    ("h", "ct_true_median_s", 'container: `succeed("true")`, median of per-run medians', "ms"),
    ("h", "ct_true_p10_s", "… per-run p10", "ms"),
    ("h", "ct_true_p90_s", "… per-run p90", "ms"),
    ("h", "ct_true_mean_s", "… per-run mean", "ms"),
    ("h", "ct_mb_stdout_s", "container: 1 MB stdout", "s"),
    ("h", "rss_container_mb", "container: driver peak RSS", "MB"),
    ("h", "cli_wall_container_s", "container: CLI start → exit (boot, commands, cleanup)", "s"),
    ("k", "rs_boot_s", 'busybox VM: `start()` → first `succeed("true")` (a fresh boot)', "s"),
    ("k", "rs_restore_s", "… `restore()` → first `succeed`, warm standby ready", "s"),
    ("k", "rs_ratio", "… … restore / boot", "x"),
    ("k", "rs_b2b_s", "… `restore()` → first `succeed`, back to back", "s"),
    ("k", "rs_b2b_ratio", "… … restore / boot", "x"),
    ("k", "rs_b2b_mean_s", "… … back to back, mean (loadvm and standby alternate)", "s"),
    ("k", "rs_b2b_mean_ratio", "… … restore / boot", "x"),
    ("k", "rs_loadvm_s", "… `restore()` → first `succeed`, loadvm only (standby off)", "s"),
    ("k", "rs_loadvm_ratio", "… … restore / boot", "x"),
    ("k", "rs_snapshot_s", "… taking the snapshot (with the golden disk copy)", "s"),
    ("k", "rs_snapshot_plain_s", "… taking a second snapshot (`plain`), standby off", "s"),
    ("k", "rs_first_standby_s", "… snapshot returned → first standby ready", "s"),
    ("k", "rs_standby_after_s", "… restore done → next standby ready", "s"),
    ("k", "rs_standby_rss_mb", "… cost: RSS of the standby QEMU (paused, warm)", "MB"),
    ("k", "rs_live_rss_mb", "… (RSS of the live QEMU, for comparison)", "MB"),
    ("k", "rs_golden_mb", "… cost: golden disk copy (the standby holds one more)", "MB"),
    ("k", "rs_sd_boot_s", 'systemd VM: `start()` → first `succeed("true")` (a fresh boot)', "s"),
    ("k", "rs_sd_restore_s", "… `restore()` → first `succeed`, warm standby ready", "s"),
    ("k", "rs_sd_ratio", "… … restore / boot", "x"),
    ("k", "rs_sd_b2b_s", "… `restore()` → first `succeed`, back to back", "s"),
    ("k", "rs_sd_b2b_ratio", "… … restore / boot", "x"),
    ("k", "rs_sd_b2b_mean_s", "… … back to back, mean (loadvm and standby alternate)", "s"),
    ("k", "rs_sd_b2b_mean_ratio", "… … restore / boot", "x"),
    ("k", "rs_sd_loadvm_s", "… `restore()` → first `succeed`, loadvm only (standby off)", "s"),
    ("k", "rs_sd_loadvm_ratio", "… … restore / boot", "x"),
    ("k", "rs_sd_snapshot_s", "… taking the snapshot (with the golden disk copy)", "s"),
    ("k", "rs_sd_snapshot_plain_s", "… taking a second snapshot (`plain`), standby off", "s"),
    ("k", "rs_sd_first_standby_s", "… snapshot returned → first standby ready", "s"),
    ("k", "rs_sd_standby_after_s", "… restore done → next standby ready", "s"),
    ("k", "rs_sd_standby_rss_mb", "… cost: RSS of the standby QEMU (paused, warm)", "MB"),
    ("k", "rs_sd_live_rss_mb", "… (RSS of the live QEMU, for comparison)", "MB"),
    ("k", "rs_sd_golden_mb", "… cost: golden disk copy (the standby holds one more)", "MB"),
    ("j", "ocr_all_variants_s", "OCR: all 3 variants of a known screen (upstream's try)", "s"),
    ("j", "ocr_early_exit_s", "… `wait_for_text` on it (stops at the first match)", "s"),
    ("j", "ocr_raw_s", "… `get_screen_text` (the raw screen only)", "s"),
    ("i", "sd_connecting_s", "systemd VM: boot → handshake, `connecting took`", "s"),
    ("i", "sd_first_command_s", '… `start()` → first `succeed("true")` returned', "s"),
    ("i", "sd_multi_user_s", '… `start()` → `wait_for_unit("multi-user.target")` returned', "s"),
]


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "–"
    if unit == "ms":
        return f"{value * 1000:.2f} ms"
    if unit == "MB":
        return f"{value:.1f} MB"
    if unit == "x":
        return f"{value:.1%}"
    if unit == "n":
        return f"{value:.0f}"
    return f"{value:.3f} s"


def markdown(doc: dict[str, Any]) -> str:
    meta, env, metrics = doc["meta"], doc["environment"], doc["metrics"]
    lines = [
        "# nixos-test-ng benchmark results",
        "",
        f"- taken: {meta['started']} → {meta['finished']} ({meta['duration_s']:.0f} s)"
        + (" — **quick run, smoke test only**" if meta["quick"] else ""),
        f"- command: `{meta['command']}`",
        f'- runs per suite: {meta["runs"]}; `succeed("true")` calls per run: {meta["calls"]}'
        f" (+{meta['warmup']} warm-up); 1 MB iterations per run: {meta['mb_iters']}",
        f"- machine: {env['cpu_model']}, {env['nproc']} CPUs, {env['mem_total_gib']} GiB,"
        f" kernel {env['kernel']}, {' '.join(env['qemu_version'])} (TCG)",
        f"- load average before / after: {fmt_load(env['loadavg_before'])} /"
        f" {fmt_load(env.get('loadavg_after'))}",
        f"- git {env['git_commit']}{' (dirty tree)' if env['git_dirty'] else ''};"
        f" driver {env['driver']} ({env['driver_version_python']})",
    ]
    if meta.get("note"):
        lines.append(f"- note: {meta['note']}")
    if doc["failures"]:
        lines.append(f"- **failed runs: {len(doc['failures'])}** (see the JSON)")
    lines += [
        "",
        "min / median / max over runs; `upstream` is the median from upstream-baseline.md,"
        " `ratio` = ours / upstream (below 1 = faster or smaller); `target` from the issue,"
        " met when our median is at or below it (below it for the driver's share).",
        "",
        "| # | what | min | median | max | n | upstream | ratio | target | met |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ident, key, what, unit in ROWS:
        m = metrics.get(key)
        if m is None:
            continue
        up = UPSTREAM.get(key)
        target = TARGETS.get(key)
        ratio = f"{m['median'] / up:.2f}" if up else "–"
        met = ""
        if target is not None:
            # "< 0.1 s" for the driver's share; "at most" for the others.
            ok = m["median"] < target if key in STRICT_TARGETS else m["median"] <= target
            met = "yes" if ok else "**no**"
        lines.append(
            f"| {ident} | {what} | {fmt(m['min'], unit)} | {fmt(m['median'], unit)} |"
            f" {fmt(m['max'], unit)} | {m['n']} | {fmt(up, unit)} | {ratio} |"
            f" {fmt(target, unit) if target is not None else ''} | {met} |"
        )
    c = doc.get("true_pooled")
    if c:
        lines += [
            "",
            f"(c) over all {c['n']} timed calls pooled: p10 {fmt(c['p10'], 'ms')},"
            f" median {fmt(c['median'], 'ms')}, p90 {fmt(c['p90'], 'ms')},"
            f" fastest {fmt(c['min'], 'ms')}, slowest {fmt(c['max'], 'ms')}.",
        ]
    lines += [
        "",
        "Notes: (e) runs the first commands in parallel threads, one per machine, right after"
        " `start_all()` returns. Upstream's (e) waited for the guests' IP addresses, which"
        " this guest configures before its backdoor starts. Upstream's driver share (g) is"
        " derived from its medians (4.94 s − 4.33 s). MB = the kernel's kB / 1000, as in"
        " upstream's `/usr/bin/time -v` figures. (k): `standby off` is a snapshot taken with"
        " `NIXOS_TEST_NG_STANDBY=0`; back to back, a restore follows the previous one at once"
        " (its standby is not ready yet: loadvm, or the standby when it became ready)."
        " Method: benches/README.md.",
        "",
    ]
    return "\n".join(lines)


def fmt_load(load: Any) -> str:
    return " ".join(f"{x:.2f}" for x in load) if load else "–"


# ---------------------------------------------------------------------------------------------
# Main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benches/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, help="runs per suite (default 5; 2 with --quick)")
    p.add_argument(
        "--quick", action="store_true", help="2 runs, fewer iterations: a smoke test of the harness"
    )
    p.add_argument("--driver", default="nixos-test-driver", help="the driver command to measure")
    p.add_argument(
        "--only",
        help="comma-separated suites (minimal, commands, start2, start4, start2-vlan)",
    )
    p.add_argument("--name", help="results file stem (default: latest, or quick with --quick)")
    p.add_argument("--note", help="a note recorded in the results (e.g. 'machine busy')")
    p.add_argument("--keep-tmp", action="store_true", help="keep each run's temporary directory")
    args = p.parse_args(argv)

    runs = args.runs if args.runs is not None else (2 if args.quick else 5)
    if runs < 1:
        p.error("--runs must be at least 1")
    calls, warmup, mb_iters = (50, 2, 2) if args.quick else (200, 5, 5)
    selected = suites(calls, warmup, mb_iters)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {s.name for s in selected}
        if unknown:
            p.error(f"unknown suite(s): {', '.join(sorted(unknown))}")
        selected = [s for s in selected if s.name in wanted]
    name = args.name or ("quick" if args.quick else "latest")

    try:
        from nixos_test_ng.guest import ensure_built
    except ImportError as e:
        print(f"bench: cannot import nixos_test_ng ({e}); install the package", file=sys.stderr)
        return 2
    guest_dir = ensure_built()
    if any(s.name in SYSTEMD_SUITES for s in selected):
        from nixos_test_ng.guest import ensure_systemd_built

        ensure_systemd_built(guest_dir)
    driver, shim = resolve_driver(args.driver)
    if not os.access(driver, os.X_OK):
        print(f"bench: driver `{args.driver}` not found", file=sys.stderr)
        return 2

    receiver = None
    if any(s.name == "tracing" for s in selected):
        sys.path.insert(0, str(REPO))
        from tests.otlp_receiver import OtlpReceiver

        receiver = OtlpReceiver().__enter__()
        atexit.register(receiver.__exit__)
        otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_SERVICE_NAME": "bench"}
        selected = [
            dataclasses.replace(s, env={**s.env, **otel}) if s.name == "tracing" else s
            for s in selected
        ]

    reaper = Reaper()
    started = datetime.datetime.now(datetime.UTC)
    env = environment(driver, shim, guest_dir)
    tmp_root = Path(tempfile.mkdtemp(prefix="ntng-bench-"))
    ctx = Context(driver, guest_dir, tmp_root, reaper, args.keep_tmp)
    raw_runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in selected}
    failures: list[dict[str, str]] = []
    try:
        # One discarded run first, so that the page cache and the like are warm for all.
        print("bench: warm-up run (discarded)", file=sys.stderr, flush=True)
        try:
            run_once(ctx, selected[0], "warmup")
        except RunFailed as e:
            print(f"bench: warm-up failed: {e}", file=sys.stderr)
            return 1
        # Round robin, so that a change in the machine's load spreads over all suites.
        for i in range(1, runs + 1):
            for s in selected:
                time.sleep(PAUSE_BETWEEN_RUNS_S)
                label = f"{s.name}-{i}"
                tic = time.monotonic()
                before = len(receiver.spans) if receiver else 0
                try:
                    raw = run_once(ctx, s, label)
                    if receiver:
                        raw["spans_received"] = len(receiver.spans) - before
                except RunFailed as e:
                    print(f"bench: {label}: FAILED\n{e}", file=sys.stderr, flush=True)
                    failures.append({"run": label, "error": str(e)})
                    continue
                raw["figures"] = per_run_figures(s.name, raw)
                raw_runs[s.name].append(raw)
                if raw["leftover_processes"]:
                    print(f"bench: {label}: killed {raw['leftover_processes']}", file=sys.stderr)
                shown = {k: round(v, 4) for k, v in raw["figures"].items()}
                print(
                    f"bench: {label} ({time.monotonic() - tic:.1f} s): {shown}",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        reaper.kill_all()
        if not args.keep_tmp:
            shutil.rmtree(tmp_root, ignore_errors=True)
        else:
            print(f"bench: run directories kept in {tmp_root}", file=sys.stderr)

    finished = datetime.datetime.now(datetime.UTC)
    env["loadavg_after"] = os.getloadavg()
    by_key: dict[str, list[float]] = {}
    for runs_of_suite in raw_runs.values():
        for raw in runs_of_suite:
            for k, v in raw["figures"].items():
                by_key.setdefault(k, []).append(v)
    # tracing against the commands run of the same round
    pairs = zip(raw_runs.get("commands", []), raw_runs.get("tracing", []), strict=False)
    overhead = [
        t["figures"]["tr_true_median_s"] / c["figures"]["true_median_s"] - 1 for c, t in pairs
    ]
    if overhead:
        by_key["tr_overhead"] = overhead
    metrics = {k: summarize(v) for k, v in by_key.items()}
    pooled = [t for raw in raw_runs.get("commands", []) for t in raw["true_s"]]
    doc: dict[str, Any] = {
        "meta": {
            "started": started.isoformat(timespec="seconds"),
            "finished": finished.isoformat(timespec="seconds"),
            "duration_s": (finished - started).total_seconds(),
            "command": shlex.join([os.path.relpath(sys.argv[0], REPO), *(argv or sys.argv[1:])]),
            "quick": args.quick,
            "runs": runs,
            "calls": calls,
            "warmup": warmup,
            "mb_iters": mb_iters,
            "suites": [s.name for s in selected],
            "note": args.note,
        },
        "environment": env,
        "upstream": UPSTREAM,
        "targets": TARGETS,
        "metrics": metrics,
        "true_pooled": {
            "n": len(pooled),
            "p10": quantile(pooled, 0.10),
            "median": statistics.median(pooled),
            "p90": quantile(pooled, 0.90),
            "min": min(pooled),
            "max": max(pooled),
        }
        if pooled
        else None,
        "failures": failures,
        "runs": raw_runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
    md = markdown(doc)
    (RESULTS / f"{name}.md").write_text(md)
    print(md)
    print(f"bench: wrote {RESULTS / name}.json and .md", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
