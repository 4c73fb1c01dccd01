"""A small tmpfs for full-disk tests: `small_tmpfs(path, size)` mounts one at `path` (made if
missing) and unmounts it on exit, even when the test fails; the test is skipped, saying why,
where mounting is not permitted (not root, no CAP_SYS_ADMIN)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs at {path}: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        # lazily: a process of the failed test may still hold a file open there
        subprocess.run(["umount", "-l", str(path)], check=True)
