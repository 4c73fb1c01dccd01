"""The issues' targets, by metric key. Figures of upstream's driver are never recorded here:
every comparison with upstream is taken in the same run (`benches/run.py --upstream CMD`)."""

from __future__ import annotations

# Upper bounds on our median.
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
    # issue 17, the agent on the busybox VM under TCG
    "ag_true_median_s": 0.0025,
    "ag_mb_stdout_s": 0.03,
    "ag_mb_cat_s": 0.03,
    "ag_copy_to_s": 0.5,
    "ag_copy_from_s": 0.5,
    # issue 19, the watch loop on the busybox VM under TCG
    "watch_save_to_first_s": 0.2,
}
STRICT_TARGETS = {"driver_share_s"}

# Upper bounds on ours / upstream's median of the same run (issue 17, the stock backdoor and
# containers); checked only when the run had `--upstream`.
RATIO_TARGETS = {
    "true_median_s": 1 / 3,
    "mb_stdout_s": 0.7,
    "ct_mb_stdout_s": 1.0,
}
