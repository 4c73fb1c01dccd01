"""The command line of `benches/run.py`: which suites, how many runs, where the results go;
the warm-up run, the rounds (round robin over the suites; with `--upstream`, each run of
ours followed by upstream's run of the same suite), the result files."""

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

from harness import REPO, RESULTS, results, upstream
from harness.environment import environment, resolve_driver
from harness.figures import per_run_figures
from harness.suites import GROUPS, SYSTEMD_SUITES, Suite, suites

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
        "--upstream",
        metavar="CMD",
        help="upstream's driver (a command line): every suite that has an upstream"
        " counterpart also runs it, alternating with ours run by run, and the report compares"
        " with its medians of this same run",
    )
    p.add_argument(
        "--only",
        help="comma-separated suites (minimal, commands, stdout100, start2, ...; groups: "
        + ", ".join(f"{g} = {'+'.join(m)}" for g, m in GROUPS.items())
        + ")",
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
        wanted = {n for w in args.only.split(",") for n in GROUPS.get(w, [w])}
        unknown = wanted - {s.name for s in selected}
        if unknown:
            p.error(f"unknown suite(s): {', '.join(sorted(unknown))}")
        selected = [s for s in selected if s.name in wanted]
    name = args.name or ("quick" if args.quick else "latest")
    upstream_command: tuple[str, ...] | None = None
    if args.upstream:  # checked before any guest is built
        try:
            upstream_command = upstream.command(args.upstream)
        except upstream.UpstreamError as e:
            print(f"bench: {e}", file=sys.stderr)
            return 2
        if not any(s.upstream for s in selected):
            print(
                "bench: --upstream: none of the selected suites has an upstream counterpart"
                f" (those that have: {', '.join(s.name for s in suites(1, 1, 1) if s.upstream)})",
                file=sys.stderr,
            )

    try:
        from nixos_test_ng.guest import ensure_built
    except ImportError as e:
        print(f"bench: cannot import nixos_test_ng ({e}); install the package", file=sys.stderr)
        return 2
    from nixos_test_ng.procs import Reaper

    from harness.runner import Context, Driver, RunFailed, run_once

    theirs = Driver(upstream_command, kind="upstream") if upstream_command else None

    if all(s.vmm for s in selected):  # the VMM stand-ins' fake runner boots no guest
        from nixos_test_ng.guest import default_guest_dir

        guest_dir = default_guest_dir()
    else:
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
    env["upstream_driver"] = upstream.provenance(theirs.command) if theirs else None
    tmp_root = Path(tempfile.mkdtemp(prefix="ntng-bench-"))
    ours = Context(Driver((driver,)), guest_dir, tmp_root, reaper, args.keep_tmp)
    upstream_ctx = dataclasses.replace(ours, driver=theirs) if theirs else None
    raw_runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in selected}
    upstream_runs: dict[str, list[dict[str, Any]]] | None = None
    if theirs:
        upstream_runs = {s.name: [] for s in selected if s.upstream}
    failures: list[dict[str, str]] = []

    def one_run(ctx: Context, s: Suite, label: str, i: int, into: dict[str, Any]) -> None:
        """One run; its figures go into `into`, its failure into `failures` (the bench goes
        on: a failed run is reported, not fatal)."""
        time.sleep(PAUSE_BETWEEN_RUNS_S)
        tic = time.monotonic()
        before = len(receiver.spans) if receiver else 0
        try:
            raw = run_once(ctx, s, label)
            if receiver:
                raw["spans_received"] = len(receiver.spans) - before
            raw["round"] = i
            raw["figures"] = per_run_figures(s.name, raw)
        except RunFailed as e:
            print(f"bench: {label}: FAILED\n{e}", file=sys.stderr, flush=True)
            failures.append({"run": label, "error": str(e)})
            return
        except (KeyError, TypeError, ValueError) as e:  # a result file without its figures
            print(f"bench: {label}: FAILED (bad result: {e!r})", file=sys.stderr, flush=True)
            failures.append({"run": label, "error": f"{label}: bad result: {e!r}"})
            return
        into[s.name].append(raw)
        if raw["leftover_processes"]:
            print(f"bench: {label}: killed {raw['leftover_processes']}", file=sys.stderr)
        shown = {k: round(v, 4) for k, v in raw["figures"].items()}
        print(f"bench: {label} ({time.monotonic() - tic:.1f} s): {shown}", file=sys.stderr)

    try:
        # One discarded run first (of each driver), so that the page cache, the bytecode
        # caches and the like are warm for all.
        print("bench: warm-up run (discarded)", file=sys.stderr, flush=True)
        warm = [(ours, selected[0], "warmup")]
        first_upstream = next((s for s in selected if s.upstream), None)
        if upstream_ctx and first_upstream:
            warm.append((upstream_ctx, first_upstream, "warmup-upstream"))
        for ctx, s, label in warm:
            try:
                run_once(ctx, s, label)
            except RunFailed as e:
                print(f"bench: {label} failed: {e}", file=sys.stderr)
                return 1
        # Round robin, so that a change in the machine's load spreads over all suites; with
        # --upstream, upstream's run of a suite follows ours at once (ours, upstream, ours,
        # upstream, ...), so that drifts hit both alike.
        for i in range(1, runs + 1):
            for s in selected:
                one_run(ours, s, f"{s.name}-{i}", i, raw_runs)
                if upstream_ctx and upstream_runs is not None and s.upstream:
                    one_run(upstream_ctx, s, f"{s.name}-upstream-{i}", i, upstream_runs)
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
        "upstream_suites": [s.name for s in selected if s.upstream] if theirs else [],
        "note": args.note,
    }
    doc = results.document(meta, env, raw_runs, failures, upstream_runs)
    print(results.write(doc, name))
    print(f"bench: wrote {RESULTS / name}.json and .md", file=sys.stderr)
    return 1 if failures else 0
