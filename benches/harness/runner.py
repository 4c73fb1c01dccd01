"""One `nixos-test-driver` run of a suite. Every run gets its own temporary directory
(XDG_RUNTIME_DIR, output directory, start scripts) and its own session; whatever is left of
it is killed after it (`nixos_test_ng.procs.Reaper`, which also kills every run in flight
when the harness exits)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nixos_test_ng import procs

from harness import SCRIPTS
from harness.suites import Suite

RUN_TIMEOUT_S = 600.0
LEFTOVER_GRACE_S = 3.0

CONNECTING = re.compile(r"^(?:(\S+): )?\(connecting took ([0-9.]+) seconds\)", re.M)

WRAPPER = """#!/bin/bash
# Benchmark wrapper: record when the driver ran the start script, then exec the real one.
printf '%s\\n' "$EPOCHREALTIME" > {stamp}
exec {real} "$@"
"""


class RunFailed(Exception):
    """A run that did not give its figures (its exit status, its missing lines)."""


@dataclass
class Context:
    driver: str
    guest_dir: Path
    tmp_root: Path
    reaper: procs.Reaper
    keep_tmp: bool


def run_once(ctx: Context, suite: Suite, label: str) -> dict[str, Any]:
    """One `nixos-test-driver` run of a suite; returns the raw figures of that run."""
    from nixos_test_ng.guest import write_start_scripts

    tmp = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=ctx.tmp_root))
    xdg, out, real, bindir, stamps = (tmp / d for d in ("xdg", "out", "real", "bin", "stamps"))
    for d in (xdg, out, bindir, stamps):
        d.mkdir(mode=0o700)
    written = write_start_scripts(real, suite.nodes, guest_dir=ctx.guest_dir, kinds=suite.kinds)
    wrappers = {}
    for name, path in written.items():
        w = bindir / path.name
        stamp = shlex.quote(str(stamps / name))
        w.write_text(WRAPPER.format(stamp=stamp, real=shlex.quote(str(path))))
        w.chmod(0o755)
        wrappers[name] = w
    vlans = [v for vs in suite.nodes.values() for v in vs]
    result_file = tmp / "result.json"
    cmd = [ctx.driver, *procs.driver_arguments(wrappers, suite.kinds, vlans)]
    cmd += ["-o", str(out), "--", str(SCRIPTS / suite.script)]

    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.update(suite.env)
    env.update(
        XDG_RUNTIME_DIR=str(xdg),
        NTNG_BENCH_RESULT=str(result_file),
        NIXOS_TEST_NG_ACCEL="tcg",
        NO_COLOR="1",
    )
    stdout_path, stderr_path = tmp / "stdout.log", tmp / "stderr.log"
    with open(stdout_path, "wb") as so, open(stderr_path, "wb") as se:
        t_launch = time.time()
        proc = ctx.reaper.spawn(
            cmd, needles=[str(tmp)], env=env, cwd=tmp, stdin=subprocess.DEVNULL, stdout=so,
            stderr=se,
        )  # fmt: skip
        # A blocking wait (Popen.wait with a timeout polls at up to 50 ms steps).
        timer = threading.Timer(RUN_TIMEOUT_S, lambda: ctx.reaper.reap(proc))
        timer.daemon = True
        timer.start()
        try:
            rc = proc.wait()
            t_exit = time.time()
        finally:
            timer.cancel()

    killed = ctx.reaper.reap(proc, grace=LEFTOVER_GRACE_S)
    leftovers = [f"{pid}: {cmd[:160]}" for pid, cmd in killed.items()]

    stderr = stderr_path.read_text(errors="replace")
    try:
        if rc != 0 or not result_file.exists():
            tail = "\n".join(stderr.splitlines()[-25:])
            raise RunFailed(f"{label}: the driver exited with {rc}\n{tail}")
        raw: dict[str, Any] = json.loads(result_file.read_text())
        raw["t_launch"] = t_launch
        raw["wall_s"] = t_exit - t_launch
        raw["exit_status"] = rc
        raw["leftover_processes"] = leftovers
        raw["connecting_s"] = {
            (m.group(1) or "?"): float(m.group(2)) for m in CONNECTING.finditer(stderr)
        }
        raw["exec_stamps"] = {}
        for name in written:
            text = (stamps / name).read_text().strip().replace(",", ".")
            raw["exec_stamps"][name] = float(text)
        missing = set(written) - set(raw["connecting_s"])
        if missing:
            raise RunFailed(f"{label}: no `connecting took` line for {sorted(missing)}")
        return raw
    finally:
        if not ctx.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
