"""The command line of `benches/run.py`: which suites, how many runs, where the results go;
the warm-up run, the rounds (round robin over the suites), the result files."""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import datetime
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import REPO, RESULTS, results
from harness.environment import environment, resolve_driver
from harness.figures import per_run_figures
from harness.suites import SYSTEMD_SUITES, suites

DESCRIPTION = (
    "Benchmark harness of nixos-test-ng: the busybox guest under TCG, driven by"
    " `nixos-test-driver`."
)
PAUSE_BETWEEN_RUNS_S = 1.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benches/run.py", description=DESCRIPTION)
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
    from nixos_test_ng.procs import Reaper

    from harness.runner import Context, RunFailed, run_once

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

    reaper = Reaper().guard()
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
        for pid, cmd in reaper.reap_all().items():
            print(f"bench: killed leftover {pid}: {cmd[:160]}", file=sys.stderr)
        if not args.keep_tmp:
            shutil.rmtree(tmp_root, ignore_errors=True)
        else:
            print(f"bench: run directories kept in {tmp_root}", file=sys.stderr)

    finished = datetime.datetime.now(datetime.UTC)
    env["loadavg_after"] = os.getloadavg()
    meta = {
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
    }
    doc = results.document(meta, env, raw_runs, failures)
    print(results.write(doc, name))
    print(f"bench: wrote {RESULTS / name}.json and .md", file=sys.stderr)
    return 1 if failures else 0
