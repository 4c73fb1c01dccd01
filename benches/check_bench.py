#!/usr/bin/env python3
"""(l) `nixos-test-ng check` on a 500-line test script against mypy on the same script with
upstream-style declarations (nixpkgs prepends the namespace's declarations and runs mypy at
build time). Each tool runs as a fresh process, as in a build or on save; mypy without its
cache (`--cache-dir=/dev/null`), as in a sandboxed build. Medians over --runs runs; writes
benches/results/check.json and .md.

    python3 benches/check_bench.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_SPEEDUP = 5.0


def script_500() -> str:
    lines = ["start_all()", 'server.wait_for_unit("multi-user.target")']
    i = 0
    while len(lines) < 498:
        lines.append(f'with subtest("step {i}"):')
        lines.append(f'    out = client.succeed("curl -s http://server/{i}")')
        lines.append(f'    t.assertIn("{i}", out)')
        i += 1
    lines.append("server.wait_for_open_port(80)")
    lines.append("undefined_helper()  # the seeded mistake both tools must find")
    return "\n".join(lines) + "\n"


def timed(cmd: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    tic = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=600)
    return time.perf_counter() - tic, r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    if shutil.which("mypy") is None:
        print("check_bench: mypy is not installed (requirements-dev.txt)", file=sys.stderr)
        return 2
    from nixos_test_ng.check_cli import render_stubs

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        script = script_500()
        (d / "test.py").write_text(script)
        decls = render_stubs({"server": "vm", "client": "vm"}, [1])
        (d / "for_mypy.py").write_text(decls + "\n" + script)
        check = [
            sys.executable, "-c", "from nixos_test_ng.cli import ng_main; ng_main()",
            "check", "test.py", "--machines", "server", "client", "--vlans", "1",
        ]  # fmt: skip
        mypy = ["mypy", "--cache-dir=/dev/null", "--no-error-summary", "for_mypy.py"]
        ours, theirs = [], []
        for _ in range(args.runs):
            t, r = timed(check, d)
            if "undefined name 'undefined_helper'" not in r.stdout:
                raise SystemExit(f"check missed the seeded mistake:\n{r.stdout}{r.stderr}")
            ours.append(t)
            t, r = timed(mypy, d)
            if "undefined_helper" not in r.stdout:
                raise SystemExit(f"mypy missed the seeded mistake:\n{r.stdout}{r.stderr}")
            theirs.append(t)
    mc, mm = statistics.median(ours), statistics.median(theirs)
    doc = {
        "runs": args.runs,
        "check_s": ours,
        "mypy_s": theirs,
        "check_median_s": mc,
        "mypy_median_s": mm,
        "speedup": mm / mc,
        "target_speedup": TARGET_SPEEDUP,
        "mypy_version": subprocess.run(
            ["mypy", "--version"], capture_output=True, text=True
        ).stdout.strip(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "check.json").write_text(json.dumps(doc, indent=1) + "\n")
    md = (
        "# `nixos-test-ng check` against mypy\n\n"
        f"500-line script, {args.runs} runs each, fresh processes, medians ({doc['mypy_version']},"
        " no cache).\n\n"
        "| tool | min | median | max |\n|---|---|---|---|\n"
        f"| `nixos-test-ng check` | {min(ours):.3f} s | {mc:.3f} s | {max(ours):.3f} s |\n"
        f"| mypy with upstream-style declarations | {min(theirs):.3f} s | {mm:.3f} s |"
        f" {max(theirs):.3f} s |\n\n"
        f"Speed-up: {mm / mc:.1f}x (target: at least {TARGET_SPEEDUP:.0f}x:"
        f" {'met' if mm / mc >= TARGET_SPEEDUP else '**not met**'}).\n"
    )
    (RESULTS / "check.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
