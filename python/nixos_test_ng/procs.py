"""Host processes from `/proc`: who is alive, who descends from whom, who belongs to a run;
and a reaper that ends whole runs. One copy for `nixos-test-ng run`, the benchmarks, the
test suite and its fake QEMU.

A run (a driver and everything it started) is found by its session and by a marker: the
driver puts each machine in a process group of its own but never leaves its session, and a
marker (a temporary directory in every command line, or an environment entry every process of
the run inherits) finds what did leave it.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from nixos_test_ng import machine_spec

T = TypeVar("T")


@dataclass(frozen=True)
class Proc:
    """One process, from `/proc/<pid>/stat`."""

    pid: int
    state: str
    ppid: int
    pgrp: int
    session: int

    @property
    def alive(self) -> bool:
        """Running or sleeping: neither a zombie nor dead."""
        return self.state not in ("Z", "X")


def read(pid: int) -> Proc | None:
    """The process `pid`, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    # The command name in parentheses may itself hold spaces and parentheses.
    fields = text[text.rfind(b")") + 2 :].split()
    try:
        return Proc(pid, fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[3]))
    except (IndexError, ValueError):
        return None


def alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie."""
    p = read(pid)
    return p is not None and p.alive


def pids() -> Iterator[int]:
    """Every process id on the host."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def snapshot() -> list[Proc]:
    """Every process that is alive now."""
    found = (read(pid) for pid in pids())
    return [p for p in found if p is not None and p.alive]


def cmdline(pid: int) -> str:
    """The command line, arguments separated by spaces ("" when it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def environ(pid: int) -> list[bytes]:
    """The environment entries (`NAME=value`); [] when it cannot be read."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def descendants(roots: Iterable[int], procs: Sequence[Proc] | None = None) -> set[int]:
    """Every process descending from `roots` (the roots themselves not included)."""
    children: dict[int, list[int]] = {}
    for p in snapshot() if procs is None else procs:
        children.setdefault(p.ppid, []).append(p.pid)
    found: set[int] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


@dataclass(frozen=True)
class Marker:
    """What tells a run's processes apart: its session or process group, strings one of
    which its command lines contain, environment entries (`NAME=value`) it inherits. Any one
    is enough."""

    session: int | None = None
    needles: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    group: int | None = None

    def matches(self, p: Proc) -> bool:
        if p.session == self.session or p.pgrp == self.group:
            return True
        if self.needles:
            line = cmdline(p.pid)
            if any(n in line for n in self.needles):
                return True
        if self.env:
            entries = set(environ(p.pid))
            if any(e.encode() in entries for e in self.env):
                return True
        return False


def marked(marker: Marker) -> dict[int, str]:
    """The live processes `marker` matches, other than this one: pid → command line."""
    me = os.getpid()
    return {p.pid: cmdline(p.pid) for p in snapshot() if p.pid != me and marker.matches(p)}


def kill(pids: Iterable[int], sig: int = signal.SIGKILL) -> list[int]:
    """Sends `sig` to each of `pids`; returns those it reached."""
    reached = []
    for pid in pids:
        try:
            os.kill(pid, sig)
            reached.append(pid)
        except OSError:
            pass
    return reached


def kill_group(pgrp: int, sig: int = signal.SIGKILL) -> bool:
    """Sends `sig` to the process group `pgrp`; False when it is empty."""
    try:
        os.killpg(pgrp, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def wait_until(probe: Callable[[], T], timeout: float, interval: float = 0.05) -> T:
    """Calls `probe()` until it returns something true or `timeout` seconds passed; returns
    its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def survivors(marker: Marker, grace: float) -> dict[int, str]:
    """Waits up to `grace` seconds for every process `marker` matches to end; returns the
    ones still there (pid → command line)."""
    deadline = time.monotonic() + grace
    while True:
        left = marked(marker)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def end_run(marker: Marker, grace: float = 0.0) -> dict[int, str]:
    """Waits up to `grace` seconds for a run's processes to end by themselves, then SIGKILLs
    the rest and whatever descends from them; returns what it killed (pid → command line)."""
    left = survivors(marker, grace)
    if left:
        victims = set(left) | descendants(left)
        kill(victims)
        # SIGKILL is delivered at once, yet a process takes a moment to exit
        wait_until(lambda: not any(alive(pid) for pid in victims), 10)
    return left


# -- the driver's command line ----------------------------------------------------------------

#: The start-script kind that is a container.
CONTAINER_KIND = "systemd-nspawn"
#: The driver's flag for each start script's word (`machine_spec.script_word`): it tells a
#: VMM's script by its name (`run-<name>-firecracker`, `run-<name>-cloud-hypervisor`).
SCRIPT_FLAGS = {
    "vm": "--vm-start-scripts",
    "nspawn": "--container-start-scripts",
    "firecracker": "--start-scripts",
    "cloud-hypervisor": "--start-scripts",
}


def script_suffix(kind: str | None) -> str:
    """The suffix of the start script of a machine of `kind`: `run-<name>-<suffix>`."""
    return machine_spec.script_word(kind)


def driver_arguments(
    scripts: Mapping[str, str | Path],
    kinds: Mapping[str, str] | None = None,
    vlans: Iterable[int] = (),
) -> list[str]:
    """`--vm-start-scripts`, `--container-start-scripts`, `--start-scripts` and `--vlans` for
    start scripts by machine name (`kinds[name]` is `systemd-nspawn` for a container, one of
    `machine_spec.VMM_KINDS` for a Firecracker or Cloud Hypervisor machine), as Nix passes
    them."""
    kinds = kinds or {}
    by_flag: dict[str, list[str]] = {}
    for name, path in scripts.items():
        by_flag.setdefault(SCRIPT_FLAGS[script_suffix(kinds.get(name))], []).append(str(path))
    args: list[str] = []
    for flag in dict.fromkeys(SCRIPT_FLAGS.values()):  # each flag once, in this order
        if flag in by_flag:
            args += [flag, *by_flag[flag]]
    wanted = sorted(set(vlans))
    if wanted:
        args += ["--vlans", *map(str, wanted)]
    return args


# -- the reaper -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """A process started in a session of its own, and the marker of everything it starts."""

    popen: subprocess.Popen[Any]
    marker: Marker


class Reaper:
    """Starts processes in sessions of their own and ends each whole run (its session and
    whatever carries its marker) when asked; with `guard()`, also at interpreter exit and on
    SIGTERM or SIGHUP."""

    def __init__(self) -> None:
        self.runs: list[Run] = []
        self._lock = threading.Lock()

    def guard(self) -> Reaper:
        """Reaps everything at interpreter exit and on SIGTERM or SIGHUP (then exits with
        128 + the signal's number)."""

        def handler(signum: int, _frame: object) -> None:
            self.reap_all()
            sys.exit(128 + signum)

        atexit.register(self.reap_all)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, handler)
        return self

    def spawn(
        self,
        argv: Sequence[str] | str,
        *,
        needles: Iterable[str] = (),
        env_marker: str | None = None,
        **popen: Any,
    ) -> subprocess.Popen[Any]:
        """`subprocess.Popen(argv, start_new_session=True, **popen)`, remembered with its
        marker: its session, `needles` in command lines, `env_marker` (`NAME=value`)."""
        proc: subprocess.Popen[Any] = subprocess.Popen(argv, start_new_session=True, **popen)
        marker = Marker(proc.pid, tuple(needles), (env_marker,) if env_marker else ())
        with self._lock:
            self.runs.append(Run(proc, marker))
        return proc

    def reap(self, proc: subprocess.Popen[Any], grace: float = 0.0) -> dict[int, str]:
        """Ends the run of `proc`: waits up to `grace` seconds for its processes to go, kills
        the rest, collects `proc`'s status and closes its pipes. Returns what it killed."""
        with self._lock:
            mine = [r for r in self.runs if r.popen is proc]
            self.runs = [r for r in self.runs if r.popen is not proc]
        killed: dict[int, str] = {}
        for run in mine:
            killed.update(end_run(run.marker, grace))
            _collect(run.popen)
        return killed

    def reap_all(self, grace: float = 0.0) -> dict[int, str]:
        """Ends every run started here."""
        killed: dict[int, str] = {}
        for run in list(self.runs):
            killed.update(self.reap(run.popen, grace))
        return killed


def _collect(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        kill_group(proc.pid)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass
