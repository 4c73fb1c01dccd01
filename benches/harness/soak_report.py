"""The soak's figures, targets and table: latency percentiles, each stage's targets met or
not, and the markdown of a soak result (benches/soak.py; method: docs/soak.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.figures import quantile

#: RSS growth of the driver over stage 2's commands must stay under this (MB = kB / 1000).
RSS_GROWTH_MB = 5.0
#: p99 of stage 2's command latency at most this many times its median.
P99_OVER_MEDIAN = 2.0

STAGE_TITLES = {
    "runs": "Stage 1: runs back to back, a fresh driver each",
    "commands": 'Stage 2: `succeed("true")` many times in one run',
    "start": "Stage 3: VMs started together",
}


def percentiles(values: list[float]) -> dict[str, float] | None:
    """p50, p90, p99 (linear interpolation) and max of `values`; None when empty."""
    if not values:
        return None
    return {
        "n": len(values),
        "p50": quantile(values, 0.50),
        "p90": quantile(values, 0.90),
        "p99": quantile(values, 0.99),
        "max": max(values),
    }


@dataclass(frozen=True)
class Check:
    """One target of one stage: what, the value found, the bound, met or not."""

    stage: str
    what: str
    value: str
    bound: str
    met: bool


def _leak_checks(stage: str, s: dict[str, Any]) -> list[Check]:
    leaks = s["leaks"]
    processes = len(leaks["processes"]) + len(s.get("killed_after_runs", []))
    temp = len(leaks["temp_entries"]) + len(leaks["kept_growth"])
    return [
        Check(stage, "leaked processes", str(processes), "0", processes == 0),
        Check(stage, "leaked fds (the harness's)", str(leaks["fds"]), "0", leaks["fds"] == 0),
        Check(stage, "leaked temp entries", str(temp), "0", temp == 0),
        Check(stage, "leaked mounts", str(len(leaks["mounts"])), "0", not leaks["mounts"]),
    ]


def evaluate(stages: dict[str, dict[str, Any]]) -> list[Check]:
    """Every stage's targets: its runs all passed, nothing leaked, and its own (stage 2:
    RSS growth and p99 / median; stage 3: every VM booted)."""
    checks: list[Check] = []
    for name, s in stages.items():
        failed = len(s["failed"])
        checks.append(
            Check(
                name,
                "runs passed",
                f"{s['runs'] - failed}/{s['runs']}",
                f"{s['runs']}/{s['runs']}",
                failed == 0,
            )
        )
        checks += _leak_checks(name, s)
        if name == "commands":
            growth = s.get("rss_growth_mb")
            checks.append(
                Check(
                    name,
                    "driver RSS growth",
                    _mb(growth),
                    f"< {RSS_GROWTH_MB:g} MB",
                    growth is not None and growth < RSS_GROWTH_MB,
                )
            )
            fds = s.get("driver_fds_growth")
            checks.append(
                Check(name, "driver's open fds growth", "-" if fds is None else str(fds), "0",
                      fds is not None and fds <= 0)
            )  # fmt: skip
            lat = s.get("latency_s")
            ratio = lat["p99"] / lat["p50"] if lat and lat["p50"] > 0 else None
            checks.append(
                Check(
                    name,
                    "command p99 / median",
                    "-" if ratio is None else f"{ratio:.2f}x",
                    f"<= {P99_OVER_MEDIAN:g}x",
                    ratio is not None and ratio <= P99_OVER_MEDIAN,
                )
            )
        if name == "start":
            booted, vms = len(s.get("boot_s", {})), s["params"]["vms"]
            checks.append(
                Check(
                    name,
                    "VMs booted within the default timeout",
                    f"{booted}/{vms}",
                    f"{vms}/{vms}",
                    booted == vms,
                )
            )
    return checks


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} MB"


def _ms(p: dict[str, float] | None) -> str:
    if not p:
        return "- | - | - | -"
    return " | ".join(f"{p[k] * 1000:.1f}" for k in ("p50", "p90", "p99", "max"))


def _s(p: dict[str, float] | None) -> str:
    if not p:
        return "- | - | - | -"
    return " | ".join(f"{p[k]:.2f}" for k in ("p50", "p90", "p99", "max"))


ACCOUNT_ROWS = [
    ("fds", "the harness's open fds (/proc/self/fd)", "fds"),
    (
        "processes",
        "our processes (qemu-system*, vde_switch, vhost-device-vsock, nixos-test-ng*,"
        " systemd-nspawn; marked by the soak's root)",
        "processes",
    ),
    ("temp_entries", "entries in the drivers' TMPDIR and XDG_RUNTIME_DIR, others", "temp_entries"),
    ("kept_files", "… kept by design (vm-state-*, shared-xchg): paths inside", "kept_growth"),
    ("kept_bytes", "… … their bytes (informational)", "kept_bytes_growth"),
    ("our_mounts", "mounts naming the soak's paths", "mounts"),
    ("host_processes", "(host, any user) processes with those names", "host_processes"),
    (
        "host_tmp_entries",
        "(host, any user) /tmp/vm-state-*, nixos-test-ng-*, ntng-*",
        "host_tmp_entries",
    ),
    ("mounts", "(host) mountinfo lines", "host_mounts"),
]


def _stage_md(name: str, s: dict[str, Any]) -> list[str]:
    p = s["params"]
    title = STAGE_TITLES[name]
    out = [f"## {title}", ""]
    if name == "runs":
        out.append(
            f"{p['runs']} runs of `benches/scripts/soak_small.py` (kind `{p['kind']}`,"
            f" {p['calls']} timed commands each, `--reuse-boots`)."
        )
    elif name == "commands":
        out.append(
            f"{p['commands']} timed commands after {p['warmup']} untimed, RSS sampled"
            f" every {p['sample_every']}."
        )
    else:
        out.append(f"`start_all()` of {p['vms']} busybox VMs, then each one's first command.")
    out.append(f"Took {s['duration_s']:.0f} s; {len(s['failed'])} failed run(s).")
    if s.get("first_run_wall_s") is not None:
        why = "boots the VM and saves the boot cache" if p["kind"] == "vm" else "warms up"
        out.append(
            f"The first run {why} ({s['first_run_wall_s']:.1f} s): the figures below are of the"
            " others. Paths inside the kept directories count from the second run on."
        )
    out += ["", "| account | before | after | leaked (host rows: new) |", "|---|---|---|---|"]
    b, a, leaks = s["before"], s["after"], s["leaks"]
    for key, what, leak_key in ACCOUNT_ROWS:
        leaked = leaks[leak_key] if leak_key else ""
        shown = leaked if isinstance(leaked, int | str) else len(leaked)
        out.append(f"| {what} | {b[key]} | {a[key]} | {shown} |")
    killed = s.get("killed_after_runs", [])
    out.append(f"| processes left by a run, killed 3 s after it | | | {len(killed)} |")
    out += ["", "| figure | p50 | p90 | p99 | max |", "|---|---|---|---|---|"]
    if s.get("latency_s"):
        out.append(
            f'| `succeed("true")` latency (ms, n={s["latency_s"]["n"]}) | {_ms(s["latency_s"])} |'
        )
    if s.get("run_wall_s"):
        out.append(f"| run wall time, start → exit (s) | {_s(s['run_wall_s'])} |")
    if s.get("boot_s"):
        out.append(
            f"| boot time, `start_all()` → first command (s) |"
            f" {_s(percentiles(list(s['boot_s'].values())))} |"
        )
    if s.get("first_command_s"):
        out.append(
            "| first command of a run (ms; a VM: started from the boot cache) |"
            f" {_ms(s['first_command_s'])} |"
        )
    rss = s.get("rss_mb")
    if rss:
        out.append(f"| driver RSS at the end of a run (MB) | {_s(rss)} |")
    if s.get("driver_fds"):
        counts = " | ".join(f"{s['driver_fds'][k]:.0f}" for k in ("p50", "p90", "p99", "max"))
        out.append(f"| driver's open fds at the end of a run | {counts} |")
    out.append("")
    if s.get("samples"):
        cells = " | ".join(
            f"{x['commands']}: {x['vm_rss_kib'] / 1000:.1f} MB, {x['driver_fds']}"
            for x in s["samples"]
        )
        out += [f"Driver RSS and open fds by commands done: {cells}.", ""]
        out += [f"RSS growth: {_mb(s.get('rss_growth_mb'))}; peak RSS (VmHWM)"
                f" {s['vm_hwm_kib'] / 1000:.1f} MB.", ""]  # fmt: skip
    if s.get("boot_s"):
        boots = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(s["boot_s"].items()))
        out += [f"Each VM: {boots}; `start_all()` returned after {s['start_all_s']:.2f} s.", ""]
    details = [
        *leaks["processes"], *killed, *leaks["temp_entries"], *leaks["kept_growth"],
        *leaks["mounts"],
    ]  # fmt: skip
    if details:
        out += ["Leaked:", "", *(f"- `{d}`" for d in details[:20]), ""]
    for f in s["failed"][:5]:
        out += [f"Failed: {f['run']}:", "", "```", f["error"], "```", ""]
    return out


def markdown(doc: dict[str, Any]) -> str:
    env, meta = doc["environment"], doc["meta"]
    clean = {True: "uncommitted changes", False: "clean tree", None: "unknown"}[env["git_dirty"]]
    load_b = " ".join(f"{x:.2f}" for x in env["loadavg_before"])
    load_a = " ".join(f"{x:.2f}" for x in env.get("loadavg_after") or [])
    out = [
        f"# Soak: {meta['name']}{' (--quick)' if meta['quick'] else ''}",
        "",
        f"- taken: {meta['started']} → {meta.get('finished', '?')} ({meta['duration_s']:.0f} s)",
        f"- command: `{meta['command']}`",
        f"- machine: {env['cpu_model']}, {env['nproc']} CPUs, TCG",
        f"- load average before / after: {load_b} / {load_a}",
        f"- git {env['git_commit']} ({clean}); driver {env.get('driver', '?')}",
        "",
        "| stage | target | value | bound | met |",
        "|---|---|---|---|---|",
    ]
    for c in doc["checks"]:
        out.append(
            f"| {c['stage']} | {c['what']} | {c['value']} | {c['bound']} |"
            f" {'yes' if c['met'] else '**no**'} |"
        )
    unmet = [c for c in doc["checks"] if not c["met"]]
    out += ["", f"Targets not met: {len(unmet)}." if unmet else "Every target met.", ""]
    for name, s in doc["stages"].items():
        out += _stage_md(name, s)
    if meta.get("note"):
        out += [f"Note: {meta['note']}", ""]
    return "\n".join(out)
