"""Leak accounting of the soak harness: what is open or alive at one moment (the harness's
fds, the driver's kind of processes, the entries of the temporary directories, the mounts),
and what one such account has that an earlier one did not.

A process counts as ours when its command line names the soak's root directory or its
environment carries the soak's marker entry (every process a driver run starts inherits it,
QEMU included). The same names on the rest of the host (other users of this machine) are
counted too, for information only: they are not ours to judge.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path

from nixos_test_ng import procs

#: Name prefixes of the processes a driver run starts (the comm, or argv[0] or argv[1]'s base
#: name for a script run by its interpreter).
WATCHED = (
    "qemu-system",
    "vde_switch",
    "vde_plug",
    "vhost-device-vsock",
    "nixos-test-ng",
    "nixos-test-driver",
    "systemd-nspawn",
)

#: What the driver keeps in its tmp dir by design, reused by name from run to run (upstream's
#: layout: a machine's state dir, kept for `--keep-machine-state`, and the shared dir). Not
#: leaks themselves; a file that appears in one that was already there is.
KEPT = ("vm-state-*", "shared-xchg")

#: Host-wide leftovers in /tmp of a driver that ignores TMPDIR (upstream's `vm-state-*`).
HOST_TMP_PATTERNS = ("vm-state-*", "nixos-test-ng-*", "ntng-*")


@dataclass(frozen=True)
class Scope:
    """What belongs to the soak: its root directory (in the command line), its marker
    environment entry (`NAME=value`), the temporary directories its drivers use."""

    root: Path
    env_marker: str
    temp_dirs: tuple[Path, ...]
    host_tmp: Path = Path("/tmp")
    mountinfo: Path = Path("/proc/self/mountinfo")
    fd_dir: Path = Path("/proc/self/fd")


@dataclass(frozen=True)
class Account:
    """One moment's account."""

    fds: int
    processes: dict[int, str]
    host_processes: int
    temp_entries: tuple[str, ...]
    kept_entries: tuple[str, ...]
    kept_files: tuple[str, ...]
    kept_bytes: int
    host_tmp_entries: tuple[str, ...]
    mounts: int
    our_mounts: tuple[str, ...]

    def summary(self) -> dict[str, int]:
        return {
            "fds": self.fds,
            "processes": len(self.processes),
            "host_processes": self.host_processes,
            "temp_entries": len(self.temp_entries),
            "kept_entries": len(self.kept_entries),
            "kept_files": len(self.kept_files),
            "kept_bytes": self.kept_bytes,
            "host_tmp_entries": len(self.host_tmp_entries),
            "mounts": self.mounts,
            "our_mounts": len(self.our_mounts),
        }


@dataclass
class Leaks:
    """What `after` has that `before` had not: the soak's targets are all zero."""

    fds: int = 0
    processes: list[str] = field(default_factory=list)
    temp_entries: list[str] = field(default_factory=list)
    #: files new in a kept directory that was already there
    kept_growth: list[str] = field(default_factory=list)
    #: informational: the kept directories' size, after less before
    kept_bytes_growth: int = 0
    mounts: list[str] = field(default_factory=list)
    #: informational: other users of the host may have made these
    host_processes: int = 0
    host_tmp_entries: list[str] = field(default_factory=list)
    host_mounts: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "fds": self.fds,
            "processes": self.processes,
            "temp_entries": self.temp_entries,
            "kept_growth": self.kept_growth,
            "kept_bytes_growth": self.kept_bytes_growth,
            "mounts": self.mounts,
            "host_processes": self.host_processes,
            "host_tmp_entries": self.host_tmp_entries,
            "host_mounts": self.host_mounts,
        }


def watched_name(pid: int) -> str | None:
    """The watched name `pid` runs under, or None."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None
    argv = procs.cmdline(pid).split(" ")[:2]
    for name in (comm, *(os.path.basename(a) for a in argv)):
        if name.startswith(WATCHED):
            return name
    return None


def _ours(pid: int, scope: Scope) -> bool:
    if str(scope.root) in procs.cmdline(pid):
        return True
    return scope.env_marker.encode() in set(procs.environ(pid))


def _entries(d: Path) -> list[str]:
    try:
        return sorted(str(d / e) for e in os.listdir(d))
    except FileNotFoundError:
        return []


def kept(entry: str) -> bool:
    """Whether a tmp dir entry is one the driver keeps by design (`KEPT`)."""
    name = os.path.basename(entry)
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in KEPT)


def _files(top: str) -> tuple[list[str], int]:
    """Every path under `top` (not following links) and the total size of its files."""
    found, size = [], 0
    for d, dirs, files in os.walk(top):
        found += (os.path.join(d, name) for name in dirs)
        for name in files:
            path = os.path.join(d, name)
            found.append(path)
            try:
                size += os.lstat(path).st_size
            except OSError:
                pass
    return found, size


def account(scope: Scope, exclude: frozenset[int] = frozenset()) -> Account:
    """What is open and alive now; `exclude`: pids not to count (the harness, runs in
    flight)."""
    me = os.getpid()
    ours: dict[int, str] = {}
    host = 0
    for p in procs.snapshot():
        if p.pid == me or p.pid in exclude or watched_name(p.pid) is None:
            continue
        host += 1
        if _ours(p.pid, scope):
            ours[p.pid] = procs.cmdline(p.pid)[:200]
    entries = [e for d in scope.temp_dirs for e in _entries(d)]
    kept_entries = [e for e in entries if kept(e)]
    kept_files: list[str] = []
    kept_bytes = 0
    for e in kept_entries:
        files, size = _files(e)
        kept_files += files
        kept_bytes += size
    host_tmp = sorted(str(p) for pat in HOST_TMP_PATTERNS for p in scope.host_tmp.glob(pat))
    lines = scope.mountinfo.read_text().splitlines()
    our_mounts = [ln for ln in lines if str(scope.root) in ln]
    return Account(
        fds=len(os.listdir(scope.fd_dir)),
        processes=ours,
        host_processes=host,
        temp_entries=tuple(e for e in entries if not kept(e)),
        kept_entries=tuple(kept_entries),
        kept_files=tuple(sorted(kept_files)),
        kept_bytes=kept_bytes,
        host_tmp_entries=tuple(e for e in host_tmp if e != str(scope.root)),
        mounts=len(lines),
        our_mounts=tuple(our_mounts),
    )


def compare(before: Account, after: Account) -> Leaks:
    """What `after` has that `before` had not: new processes, entries and mounts naming our
    paths by name, the fds by number; the host's figures (any user's) by number."""
    return Leaks(
        fds=max(0, after.fds - before.fds),
        processes=[
            f"{pid}: {cmd}" for pid, cmd in after.processes.items() if pid not in before.processes
        ],  # fmt: skip
        temp_entries=[e for e in after.temp_entries if e not in before.temp_entries],
        kept_growth=[
            f
            for f in after.kept_files
            if f not in before.kept_files and _top(f, before.kept_entries)
        ],  # fmt: skip
        kept_bytes_growth=after.kept_bytes - before.kept_bytes,
        mounts=[m for m in after.our_mounts if m not in before.our_mounts],
        host_mounts=after.mounts - before.mounts,
        host_processes=max(0, after.host_processes - before.host_processes),
        host_tmp_entries=[e for e in after.host_tmp_entries if e not in before.host_tmp_entries],
    )


def _top(path: str, tops: tuple[str, ...]) -> bool:
    return any(path.startswith(t + os.sep) for t in tops)
