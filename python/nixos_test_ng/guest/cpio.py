"""A reproducible writer for the `newc` cpio format, which the Linux kernel unpacks as initramfs.

Entries are written in sorted path order, owned by root, with one fixed modification time and
sequential inode numbers, so the same tree always gives the same bytes (no `cpio` binary and no
file-system metadata leak into the archive).
"""

from __future__ import annotations

import gzip
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Entry", "entries_from_tree", "write_gzip_newc", "write_newc"]

_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member. `path` is relative (no leading `/`), `data` is the file content or
    the symlink target; `rdev` is `(major, minor)` for device nodes."""

    path: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(
    ino: int, mode: int, nlink: int, mtime: int, size: int, rdev: tuple[int, int], namesize: int
) -> bytes:
    fields = (ino, mode, 0, 0, nlink, mtime, size, 0, 0, rdev[0], rdev[1], namesize, 0)
    return _MAGIC + b"".join(b"%08X" % f for f in fields)


def write_newc(entries: Iterable[Entry], mtime: int) -> bytes:
    """Serialise `entries` (in sorted path order) as one newc archive with its trailer."""
    out = bytearray()
    ordered = sorted(entries, key=lambda e: e.path.encode())
    seen: set[str] = set()
    for ino, e in enumerate(ordered, start=1):
        if e.path in seen:
            raise ValueError(f"duplicate cpio entry `{e.path}`")
        seen.add(e.path)
        name = e.path.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(e.mode) else 1
        out += _header(ino, e.mode, nlink, mtime, len(e.data), e.rdev, len(name))
        out += name + _pad4(110 + len(name))
        out += e.data + _pad4(len(e.data))
    name = _TRAILER.encode() + b"\0"
    out += _header(0, 0, 1, 0, 0, (0, 0), len(name)) + name + _pad4(110 + len(name))
    return bytes(out)


def write_gzip_newc(entries: Iterable[Entry], mtime: int) -> bytes:
    """`write_newc`, gzip-compressed (with no time stamp in the gzip header): an initramfs."""
    return gzip.compress(write_newc(entries, mtime), compresslevel=6, mtime=0)


def entries_from_tree(root: Path) -> list[Entry]:
    """Every directory, regular file and symlink below `root` (not `root` itself).

    Permission bits are kept; owners, times and hard links are not.
    """
    entries: list[Entry] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            perm = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                entries.append(Entry(rel, stat.S_IFLNK | 0o777, os.readlink(full).encode()))
            elif stat.S_ISDIR(st.st_mode):
                entries.append(Entry(rel, stat.S_IFDIR | perm))
            elif stat.S_ISREG(st.st_mode):
                entries.append(Entry(rel, stat.S_IFREG | perm, Path(full).read_bytes()))
            else:
                raise ValueError(f"unsupported file type in initramfs tree: `{full}`")
    return entries
