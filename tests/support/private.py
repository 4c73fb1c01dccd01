"""Checking that what the driver created in its tmp dir is its user's only: the modes, and
`stat`, `ls` and socket connects as `nobody` (through `setpriv`, which needs root)."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

NOBODY = 65534
IS_ROOT = os.geteuid() == 0


@contextlib.contextmanager
def shared_tmp_dir() -> Iterator[Path]:
    """A fresh `/tmp`-like directory in /tmp, world-writable and sticky, reachable by anyone
    (a tmp dir under pytest's 0700 tmp_path would keep other users out for the wrong
    reason); removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="ntng-shared-tmp-", dir="/tmp"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv],
        capture_output=True,
        text=True,
        timeout=30,
    )


def created_entries(tmp: Path) -> list[tuple[Path, os.stat_result]]:
    """Everything below `tmp` (not following symlinks), with its lstat."""
    out = []
    for root, dirs, files in os.walk(tmp):
        for name in dirs + files:
            p = Path(root) / name
            out.append((p, p.lstat()))
    return out


def assert_private_tree(tmp: Path, expected: Iterable[str]) -> None:
    """Everything below `tmp` is this user's and lies in a 0700 directory directly in `tmp`;
    the `expected` paths (relative to `tmp`) exist."""
    entries = created_entries(tmp)
    names = {e.relative_to(tmp).as_posix() for e, _ in entries}
    for want in expected:
        assert want in names, (want, sorted(names))
    me = os.geteuid()
    for path, st in entries:
        rel = path.relative_to(tmp)
        assert st.st_uid == me, f"{rel} belongs to uid {st.st_uid}"
        top = tmp / rel.parts[0]
        top_st = top.lstat()
        assert stat.S_ISDIR(top_st.st_mode), f"{rel.parts[0]} lies directly in the tmp dir"
        assert stat.S_IMODE(top_st.st_mode) == 0o700, f"{rel.parts[0]}: {oct(top_st.st_mode)}"


def check_nobody_is_locked_out(tmp: Path, dirs: Iterable[str], sockets: Iterable[str]) -> None:
    """As `nobody`: each of `dirs` (in `tmp`) shows as 0700 and cannot be listed or written
    into; each of `sockets` (relative to `tmp`) cannot be stat'ed nor connected to."""
    me = str(os.geteuid())
    for d in dirs:
        seen = as_nobody("stat", "-c", "%a %u", str(tmp / d))
        assert seen.returncode == 0 and seen.stdout.split() == ["700", me], (d, seen)
        for argv in (("ls", str(tmp / d)), ("touch", str(tmp / d / "planted"))):
            r = as_nobody(*argv)
            assert r.returncode != 0 and "Permission denied" in r.stderr, (argv, r)
    for sock in sockets:
        r = as_nobody("stat", str(tmp / sock))
        assert r.returncode != 0 and "Permission denied" in r.stderr, (sock, r)
        r = as_nobody(
            sys.executable,
            "-c",
            "import socket, sys\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    sys.exit(13)\n",
            str(tmp / sock),
        )
        assert r.returncode == 13, (sock, r)
