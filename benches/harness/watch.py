"""The `watch` suite, (o): the watch loop's save → first command of the new run returned.

The loop (`python -m nixos_test_ng.watch`, what `nixos-test-ng run --watch` runs) gets a copy
of benches/scripts/watch.py, which the harness saves (a new file renamed over it, as editors
do) each time the loop has said it waits for a save and `SETTLE_S` more have passed (a
person's edit takes longer; the standby QEMU prepared after the restore is ready by then).
Each run of the script appends the time its first command returned; the figure is that time
minus the time just before the rename. After the last run, SIGINT ends the loop (exit 0: the
last run passed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

#: Between the loop's "waiting" line and the save.
SETTLE_S = 2.0
#: The hang detector of each step (the boot, one run).
STEP_TIMEOUT_S = 300.0
POLL_S = 0.01
WAITING = "watch: waiting for "


class WatchFailed(Exception):
    """The loop did not get through its saves (why, for the run's failure)."""


def command() -> list[str]:
    return [sys.executable, "-m", "nixos_test_ng.watch"]


def _wait(proc: subprocess.Popen, what: str, ready) -> None:
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while not ready():
        if proc.poll() is not None:
            raise WatchFailed(f"the loop exited with {proc.returncode} waiting for {what}")
        if time.monotonic() > deadline:
            raise WatchFailed(f"no {what} within {STEP_TIMEOUT_S:g} s")
        time.sleep(POLL_S)


def _count(path: Path, text: str) -> int:
    return path.read_text(errors="replace").count(text) if path.exists() else 0


def _stamps(path: Path) -> list[float]:
    return [float(x) for x in path.read_text().split()] if path.exists() else []


def drive(
    proc: subprocess.Popen, script: Path, stderr: Path, stamps: Path, saves: int
) -> dict[str, list[float]]:
    """Saves `script` `saves` times while the loop `proc` runs; then SIGINT. Raw figures."""
    save_to_first: list[float] = []
    for i in range(saves + 1):
        _wait(proc, f"wait for save {i + 1}", lambda i=i: _count(stderr, WAITING) > i)
        if len(_stamps(stamps)) != i + 1:
            raise WatchFailed(f"run {i + 1} gave no stamp (it failed)")
        if i == saves:
            break
        time.sleep(SETTLE_S)
        text = script.read_text().rsplit("\n# saved", 1)[0] + f"\n# saved {i + 1}\n"
        tmp = script.with_name(script.name + ".swp")
        tmp.write_text(text)
        t_save = time.time()
        os.replace(tmp, script)
        _wait(
            proc,
            f"the end of run {i + 2}",
            lambda i=i: len(_stamps(stamps)) > i + 1 or _count(stderr, WAITING) > i + 1,
        )
        if len(_stamps(stamps)) <= i + 1:
            raise WatchFailed(f"run {i + 2} gave no stamp (it failed)")
        save_to_first.append(_stamps(stamps)[i + 1] - t_save)
    os.kill(proc.pid, signal.SIGINT)
    return {"save_to_first_s": save_to_first}
