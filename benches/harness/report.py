"""The markdown table of a result document."""

from __future__ import annotations

from typing import Any

from harness.targets import STRICT_TARGETS, TARGETS, UPSTREAM

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
