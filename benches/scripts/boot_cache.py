#!/usr/bin/env python3
"""The boot cache (docs/boot-cache.md): CLI start to the first command returned, a normal boot
against a start from the cache, on the busybox VM and the systemd VM (TCG).

    python3 benches/scripts/boot_cache.py [--runs N] [--kinds vm,systemd] [--json FILE]

Not a driver script like the others here: it runs `nixos-test-ng run SCRIPT -m machine[@KIND]`
itself, each time in a temporary directory of its own (XDG_RUNTIME_DIR, the start scripts)
with a boot cache of its own for the whole measurement. The clock starts just before the
CLI's process is created (this process's `time.time()`) and stops when the test script's
first `machine.succeed("true")` returned (the script's `time.time()`, written to a file).
Per kind and round: a run with the cache off (normal boot), one that fills the cache (not
counted), one that starts from it for the first time and makes the entry's memory image
(first hit), then one that starts from it with its memory mapped from that image (hit).
Runs are sequential. The issue's targets: a hit at most 0.5 s (busybox VM) and 0.8 s
(systemd VM).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCRIPT = """\
import os, time
machine.succeed("true")
with open(os.environ["NTNG_BENCH_RESULT"], "w") as f:
    f.write(repr(time.time()))
"""

TARGETS = {"vm": 0.5, "systemd": 0.8}
#: The installed command beside this interpreter, not a version manager's shim found first
#: on PATH (pyenv's costs about 0.3 s a call on the project's bench machine, not ours).
CLI = str(Path(sys.executable).with_name("nixos-test-ng"))
HIT = "started from the boot cache"
MAPPED = "memory mapped from its image"


def one_run(kind: str, cache: Path | None, work: Path) -> tuple[float, str]:
    """Seconds from the CLI's start to the first command returned, and the run's log."""
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        root = Path(tmp)
        (root / "xdg").mkdir()
        test = root / "test.py"
        test.write_text(SCRIPT)
        result = root / "result"
        env = {**os.environ, "XDG_RUNTIME_DIR": str(root / "xdg"), "NTNG_BENCH_RESULT": str(result)}
        env.pop("NIXOS_TEST_NG_BOOT_CACHE", None)
        if cache is not None:
            env["NIXOS_TEST_NG_BOOT_CACHE"] = str(cache)
        machine = "machine" if kind == "vm" else f"machine@{kind}"
        start = time.time()
        p = subprocess.run(
            [CLI, "run", str(test), "-m", machine],
            env=env,
            cwd=root,
            capture_output=True,
            text=True,
            timeout=900,
            start_new_session=True,
        )
        log = p.stdout + p.stderr
        if p.returncode != 0 or not result.exists():
            sys.exit(f"the run failed ({p.returncode}):\n{log[-4000:]}")
        return float(result.read_text()) - start, log


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--kinds", default="vm,systemd", help="vm (busybox) and/or systemd")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    figures: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="ntng-bench-cache-") as tmp:
        work = Path(tmp)
        for kind in args.kinds.split(","):
            cache = work / f"cache-{kind}"
            boot, first, hit = [], [], []
            for _ in range(args.runs):
                boot.append(one_run(kind, None, work)[0])
                subprocess.run(
                    [CLI, "cache", "clear"],
                    env={**os.environ, "NIXOS_TEST_NG_BOOT_CACHE": str(cache)},
                    capture_output=True,
                    check=True,
                )
                _, log = one_run(kind, cache, work)  # fills the cache
                if HIT in log:
                    sys.exit("the cache was not empty before the run that fills it")
                seconds, log = one_run(kind, cache, work)
                if HIT not in log:
                    sys.exit(f"the second run did not start from the cache:\n{log[-4000:]}")
                first.append(seconds)
                seconds, log = one_run(kind, cache, work)
                if MAPPED not in log:
                    sys.exit(f"the third run did not map the memory image:\n{log[-4000:]}")
                hit.append(seconds)
            figures[kind] = {"boot_s": boot, "first_hit_s": first, "hit_s": hit}
            print(
                f"{kind:8} normal boot median {statistics.median(boot):6.2f} s   "
                f"first hit (makes the memory image) median {statistics.median(first):6.2f} s   "
                f"cache hit median {statistics.median(hit):6.2f} s "
                f"(target {TARGETS.get(kind, float('nan'))} s; runs: "
                f"{', '.join(f'{s:.2f}' for s in hit)})"
            )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
