"""The figures of one run from its raw measurements, and statistics over runs."""

from __future__ import annotations

import statistics
from typing import Any

from harness import vmm

#: The metric-key prefix of each `transport-*` suite.
TRANSPORT_KEYS = {"backdoor": "bd", "agent": "ag"}


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
    elif suite == "stdout100":
        f["mb100_stdout_s"] = raw["stdout_s"]
        f["rss_stdout100_mb"] = raw["vm_hwm_kib"] / 1000
    elif suite.startswith("transport-"):
        key = TRANSPORT_KEYS[suite.removeprefix("transport-")]
        t = raw["true_s"]
        f[f"{key}_connecting_s"] = raw["connecting_s"]["machine"]
        f[f"{key}_first_command_s"] = raw["start_to_first_command_s"]
        f[f"{key}_true_median_s"] = statistics.median(t)
        f[f"{key}_true_mean_s"] = statistics.fmean(t)
        if "subshell_floor_s" in raw:
            f[f"{key}_subshell_floor_s"] = raw["subshell_floor_s"]
        f[f"{key}_mb_stdout_s"] = statistics.median(raw["mb_stdout_s"])
        if "mb_cat_s" in raw:
            f[f"{key}_mb_cat_s"] = statistics.median(raw["mb_cat_s"])
        if raw["big_stdout_s"] is not None:
            f[f"{key}_mb100_stdout_s"] = raw["big_stdout_s"]
        f[f"{key}_copy_to_s"] = statistics.median(raw["copy_to_machine_s"])
        f[f"{key}_copy_from_s"] = statistics.median(raw["copy_from_machine_s"])
        f[f"rss_{key}_mb"] = raw["vm_hwm_kib"] / 1000
    elif suite.startswith("vmm-"):
        f.update(vmm.figures(vmm.VMMS[suite.removeprefix("vmm-")].key, raw))
    elif suite == "watch":
        f["watch_save_to_first_s"] = statistics.median(raw["save_to_first_s"])
        f["watch_save_to_first_max_s"] = max(raw["save_to_first_s"])
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
