"""The markdown table of a result document."""

from __future__ import annotations

import re
from typing import Any

from harness import vmm
from harness.targets import RATIO_TARGETS, STRICT_TARGETS, TARGETS

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
    ("d", "mb100_stdout_s", "100 MB stdout, one command (`stdout100`)", "s"),
    ("f", "rss_stdout100_mb", "… driver peak RSS of that run", "MB"),
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
    ("o", "watch_save_to_first_s", "watch loop: save → first command returned, run median", "s"),
    ("o", "watch_save_to_first_max_s", "… slowest save of a run", "s"),
    ("j", "ocr_all_variants_s", "OCR: all 3 variants of a known screen (upstream's try)", "s"),
    ("j", "ocr_early_exit_s", "… `wait_for_text` on it (stops at the first match)", "s"),
    ("j", "ocr_raw_s", "… `get_screen_text` (the raw screen only)", "s"),
    ("i", "sd_connecting_s", "systemd VM: boot → handshake, `connecting took`", "s"),
    ("i", "sd_first_command_s", '… `start()` → first `succeed("true")` returned', "s"),
    ("i", "sd_multi_user_s", '… `start()` → `wait_for_unit("multi-user.target")` returned', "s"),
    *(
        row
        for key, name in (("bd", "backdoor"), ("ag", "agent"))
        for row in (
            ("m", f"{key}_connecting_s", f"{name}: handshake, driver's `connecting took`", "s"),
            ("m", f"{key}_first_command_s", '… `start()` → first `succeed("true")`', "s"),
            ("m", f"{key}_true_median_s", '… `succeed("true")`, median of per-run medians', "ms"),
            ("m", f"{key}_true_mean_s", "… … per-run mean", "ms"),
            (
                "m",
                f"{key}_subshell_floor_s",
                "… … the guest alone: `(true) & wait` in a loop, per subshell",
                "ms",
            ),
            ("m", f"{key}_mb_stdout_s", "… 1 MB stdout (`head -c \\| tr`)", "s"),
            ("m", f"{key}_mb_cat_s", "… 1 MB stdout (`cat` of a file)", "s"),
            ("m", f"{key}_mb100_stdout_s", "… 100 MB stdout", "s"),
            ("m", f"{key}_copy_to_s", "… `copy_from_host` of 10 MB", "s"),
            ("m", f"{key}_copy_from_s", "… `copy_from_machine` of 10 MB", "s"),
            ("m", f"rss_{key}_mb", "… driver peak RSS", "MB"),
        )
    ),
    *vmm.report_rows(),
    ("m", "ag_bd_connecting_s_ratio", "agent / backdoor, same round: handshake", "r"),
    ("m", "ag_bd_true_median_s_ratio", '… `succeed("true")` median', "r"),
    ("m", "ag_bd_mb_stdout_s_ratio", "… 1 MB stdout (`head -c \\| tr`)", "r"),
    ("m", "ag_bd_mb_cat_s_ratio", "… 1 MB stdout (`cat` of a file)", "r"),
    ("m", "ag_bd_mb100_stdout_s_ratio", "… 100 MB stdout", "r"),
    ("m", "ag_bd_copy_to_s_ratio", "… `copy_from_host` 10 MB", "r"),
    ("m", "ag_bd_copy_from_s_ratio", "… `copy_from_machine` 10 MB", "r"),
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
    if unit == "r":
        return f"{value:.2f}"
    if unit == "n":
        return f"{value:.0f}"
    return f"{value:.3f} s"


def markdown(doc: dict[str, Any]) -> str:
    meta, env, metrics = doc["meta"], doc["environment"], doc["metrics"]
    # Only upstream's runs of this same run are compared with (older documents recorded
    # figures from another day under "upstream": those are not shown).
    theirs = doc.get("upstream_metrics")
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
    up = env.get("upstream_driver")
    if theirs is not None and up:
        commits = ", ".join(f"`{f['local']}` @{f['commit'][:12]}" for f in up.get("files", []))
        lines.append(
            f"- upstream's driver, run in this same run on the same guest, alternating with ours"
            f" run by run: `{up['command']}` ({up.get('python') or 'Python ?'};"
            f" NixOS/nixpkgs {commits or 'commits unknown'}; sha256 of each file in the JSON)"
        )
    if meta.get("note"):
        lines.append(f"- note: {meta['note']}")
    if doc["failures"]:
        n = len(doc["failures"])
        lines.append(f"- **failed runs: {n}** (the errors: below and in the JSON)")
    lines.append("")
    if theirs is None:
        lines += [
            "**No upstream comparison was made in this run** (no `--upstream`): the figures"
            " are ours only. A comparison with upstream's driver is only ever taken in the same"
            " run, on the same guest (`benches/run.py --upstream CMD`).",
            "",
            "min / median / max over runs; `target` from the issues, met when our median is at"
            " or below it (below it for the driver's share).",
            "",
            "| # | what | min | median | max | n | target | met |",
            "|---|---|---|---|---|---|---|---|",
        ]
    else:
        lines += [
            "min / median / max over runs; `upstream` is the median of upstream's driver over"
            " its runs of this same run, `ratio` = our median / upstream's (below 1 = faster or"
            " smaller); `target` from the issues: an upper bound on our median, or on the"
            " ratio (`× upstream`).",
            "",
            "| # | what | min | median | max | n | upstream | ratio | target | met |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
    for ident, key, what, unit in ROWS:
        m = metrics.get(key)
        if m is None:
            continue
        cells = [ident, what, fmt(m["min"], unit), fmt(m["median"], unit), fmt(m["max"], unit)]
        cells.append(str(m["n"]))
        target, met = target_cells(key, m["median"], unit)
        if theirs is not None:
            u = theirs.get(key)
            ratio = m["median"] / u["median"] if u and u["median"] else None
            cells += [fmt(u["median"] if u else None, unit), f"{ratio:.2f}" if ratio else "–"]
            rt = RATIO_TARGETS.get(key)
            if rt is not None:
                target = ", ".join(t for t in (target, f"≤ {rt:.2f} × upstream") if t)
                ok = ratio is not None and ratio <= rt
                met = ", ".join(x for x in (met, "yes" if ok else "**no**") if x)
        cells += [target, met]
        lines.append("| " + " | ".join(cells) + " |")
    c = doc.get("true_pooled")
    if c:
        lines += [
            "",
            f"(c) over all {c['n']} timed calls pooled: p10 {fmt(c['p10'], 'ms')},"
            f" median {fmt(c['median'], 'ms')}, p90 {fmt(c['p90'], 'ms')},"
            f" fastest {fmt(c['min'], 'ms')}, slowest {fmt(c['max'], 'ms')}.",
        ]
    if doc["failures"]:
        lines += ["", "Failed runs (each a run of its own; the others went on):", ""]
        for f in doc["failures"]:
            first, why = failure_lines(f["error"])
            lines.append(f"- `{f['run']}`: {first} — `{why[:200]}`")
    lines += [
        "",
        "Notes: (e) runs the first commands in parallel threads, one per machine, right after"
        " `start_all()` returns (upstream's `start_all()` starts its machines one after the"
        " other). MB = the kernel's kB / 1000. (k): `standby off` is a snapshot taken with"
        " `NIXOS_TEST_NG_STANDBY=0`; back to back, a restore follows the previous one at once"
        " (its standby is not ready yet: loadvm, or the standby when it became ready)."
        " (m): our driver with `NIXOS_TEST_NG_TRANSPORT=backdoor` and `=agent`, one after the"
        " other in every round. Method: benches/README.md.",
        "",
    ]
    if any(key.startswith(tuple(f"{v.key}_" for v in vmm.VMMS.values())) for key in metrics):
        lines += [vmm.CLOSING_NOTE, ""]
    return "\n".join(lines)


ERROR_LINE = re.compile(r"Error\b|error:|!!! \w+:|FAILED|failed")


def failure_lines(error: str) -> tuple[str, str]:
    """A failed run's first line (which run, the exit status) and the line that says why: the
    last one naming an error (the driver's timing summary may follow it), else the last."""
    lines = [ln.strip() for ln in error.splitlines() if ln.strip()]
    if not lines:
        return "", ""
    why = next((ln for ln in reversed(lines[1:]) if ERROR_LINE.search(ln)), lines[-1])
    return lines[0], why


def target_cells(key: str, median: float, unit: str) -> tuple[str, str]:
    """The absolute target of a metric and whether our median meets it ("" when none)."""
    target = TARGETS.get(key)
    if target is None:
        return "", ""
    # "< 0.1 s" for the driver's share; "at most" for the others.
    ok = median < target if key in STRICT_TARGETS else median <= target
    return fmt(target, unit), "yes" if ok else "**no**"


def fmt_load(load: Any) -> str:
    return " ".join(f"{x:.2f}" for x in load) if load else "–"
