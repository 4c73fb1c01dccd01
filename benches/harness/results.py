"""A result document (the JSON file: every raw figure, the statistics, the environment, the
targets, and upstream's runs of the same run when there were any) and its files in
benches/results/."""

from __future__ import annotations

import json
import statistics
from typing import Any

from harness import RESULTS
from harness.figures import TRANSPORT_KEYS, quantile, summarize
from harness.report import markdown
from harness.targets import RATIO_TARGETS, TARGETS

Runs = dict[str, list[dict[str, Any]]]

#: agent / backdoor of the same round, by the figure compared (`ag_<figure>` / `bd_<figure>`)
TRANSPORT_COMPARED = (
    "connecting_s", "true_median_s", "mb_stdout_s", "mb_cat_s", "mb100_stdout_s", "copy_to_s",
    "copy_from_s",
)  # fmt: skip


def metrics(raw_runs: Runs) -> dict[str, dict[str, Any]]:
    """Every figure over the runs that gave it, by metric key."""
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
    # the agent against the backdoor of the same round
    bd, ag = TRANSPORT_KEYS["backdoor"], TRANSPORT_KEYS["agent"]
    backdoor = {r["round"]: r for r in raw_runs.get("transport-backdoor", []) if "round" in r}
    for run in raw_runs.get("transport-agent", []):
        other = backdoor.get(run.get("round"))
        if other is None:
            continue
        for figure in TRANSPORT_COMPARED:
            a, b = run["figures"].get(f"{ag}_{figure}"), other["figures"].get(f"{bd}_{figure}")
            if a is not None and b:
                by_key.setdefault(f"ag_bd_{figure}_ratio", []).append(a / b)
    return {k: summarize(v) for k, v in by_key.items()}


def true_pooled(raw_runs: Runs) -> dict[str, float] | None:
    """(c) over every timed `succeed("true")` of every commands run."""
    pooled = [t for raw in raw_runs.get("commands", []) for t in raw["true_s"]]
    if not pooled:
        return None
    return {
        "n": len(pooled),
        "p10": quantile(pooled, 0.10),
        "median": statistics.median(pooled),
        "p90": quantile(pooled, 0.90),
        "min": min(pooled),
        "max": max(pooled),
    }


def paired_ratios(ours: Runs, upstream: Runs) -> dict[str, dict[str, Any]]:
    """ours / upstream's figure of the same round (the runs that followed each other), by
    metric key: a second view of the ratio, less sensitive to drifts across rounds."""
    by_key: dict[str, list[float]] = {}
    for suite, theirs in upstream.items():
        by_round = {r["round"]: r for r in theirs if "round" in r}
        for run in ours.get(suite, []):
            other = by_round.get(run.get("round"))
            if other is None:
                continue
            for k, v in run["figures"].items():
                u = other["figures"].get(k)
                if u:
                    by_key.setdefault(k, []).append(v / u)
    return {k: summarize(v) for k, v in by_key.items()}


def document(
    meta: dict[str, Any],
    env: dict[str, Any],
    raw_runs: Runs,
    failures: list[dict[str, str]],
    upstream_runs: Runs | None = None,
) -> dict[str, Any]:
    """The result document. `upstream_runs` are upstream's runs of this same run (None: no
    `--upstream`, so no comparison with upstream is made); its provenance is in
    `env["upstream_driver"]`."""
    doc = {
        "meta": meta,
        "environment": env,
        "targets": TARGETS,
        "ratio_targets": RATIO_TARGETS,
        "metrics": metrics(raw_runs),
        "true_pooled": true_pooled(raw_runs),
        "failures": failures,
        "runs": raw_runs,
        "upstream_metrics": None,
        "upstream_paired_ratios": None,
        "upstream_runs": None,
    }
    if upstream_runs is not None:
        doc["upstream_metrics"] = metrics(upstream_runs)
        doc["upstream_paired_ratios"] = paired_ratios(raw_runs, upstream_runs)
        doc["upstream_runs"] = upstream_runs
    return doc


def write(doc: dict[str, Any], name: str) -> str:
    """Writes `NAME.json` and `NAME.md`; returns the markdown."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
    md = markdown(doc)
    (RESULTS / f"{name}.md").write_text(md)
    return md
