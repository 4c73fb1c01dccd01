"""What every guest-building module uses: the error classes, the progress log, host commands,
the package's data files (`init.sh`, `backdoor.service`, ...) and writing files into a tree."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_SOURCE_DATE_EPOCH",
    "BuildError",
    "GuestError",
    "Log",
    "data_file",
    "run",
    "source_date_epoch",
    "stderr_log",
    "write_file",
]

DEFAULT_SOURCE_DATE_EPOCH = 1700000000

Log = Callable[[str], None]


class GuestError(Exception):
    """Base class of every error raised by `nixos_test_ng.guest`."""


class BuildError(GuestError):
    """The guest could not be built (a missing host tool, apt, a package, a module)."""


def stderr_log(msg: str) -> None:
    print(f"guest: {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a host command, capturing its output as text; `BuildError` when it is not installed."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, **kw)
    except FileNotFoundError as e:
        raise BuildError(
            f"`{cmd[0]}` not found\n(run scripts/setup-system.sh or install it)"
        ) from e


def data_file(name: str) -> bytes:
    """The content of one of this package's data files (beside this module)."""
    return resources.files(__package__).joinpath(name).read_bytes()


def source_date_epoch() -> int:
    """The time stamp of every file in the built images: `$SOURCE_DATE_EPOCH`, else a fixed one."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if not value:
        return DEFAULT_SOURCE_DATE_EPOCH
    try:
        return int(value)
    except ValueError as e:
        raise BuildError(f"SOURCE_DATE_EPOCH is not an integer: `{value}`") from e


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` with permission bits `mode`, creating its directory and replacing
    (not writing through) a file or symbolic link already there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_bytes(data)
    path.chmod(mode)
