"""A result document (the JSON file: every raw figure, the statistics, the environment,
upstream's figures and the targets) and its files in benches/results/."""

from __future__ import annotations

import json
import statistics
from typing import Any

from harness import RESULTS
from harness.figures import quantile, summarize
from harness.report import markdown
from harness.targets import TARGETS, UPSTREAM


def metrics(raw_runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
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
    return {k: summarize(v) for k, v in by_key.items()}


def true_pooled(raw_runs: dict[str, list[dict[str, Any]]]) -> dict[str, float] | None:
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


def document(
    meta: dict[str, Any],
    env: dict[str, Any],
    raw_runs: dict[str, list[dict[str, Any]]],
    failures: list[dict[str, str]],
) -> dict[str, Any]:
    return {
        "meta": meta,
        "environment": env,
        "upstream": UPSTREAM,
        "targets": TARGETS,
        "metrics": metrics(raw_runs),
        "true_pooled": true_pooled(raw_runs),
        "failures": failures,
        "runs": raw_runs,
    }


def write(doc: dict[str, Any], name: str) -> str:
    """Writes `NAME.json` and `NAME.md`; returns the markdown."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
    md = markdown(doc)
    (RESULTS / f"{name}.md").write_text(md)
    return md
