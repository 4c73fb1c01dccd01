"""The built guests' cache: where the guest directory is, its manifest, the hash of a build's
inputs, the record and check of its artifacts, atomic writes and the build lock.

A build records every input in its manifest and their hash; a second build with the same hash
and intact artifacts does nothing."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "DEBS_DIR",
    "INITRD_FILE",
    "MANIFEST_FILE",
    "MANIFEST_FORMAT",
    "artifacts_intact",
    "atomic_write",
    "default_guest_dir",
    "guest_intact",
    "hash_inputs",
    "load_manifest",
    "locked",
    "read_manifest",
    "record_artifacts",
    "sha256_file",
    "write_json",
]

MANIFEST_FORMAT = 1
MANIFEST_FILE = "manifest.json"
INITRD_FILE = "initrd.img"
DEBS_DIR = "debs"
LOCK_FILE = ".lock"


def default_guest_dir() -> Path:
    """`$NIXOS_TEST_NG_GUEST_DIR`, else `$XDG_CACHE_HOME/nixos-test-ng/guest`, else
    `~/.cache/nixos-test-ng/guest`."""
    explicit = os.environ.get("NIXOS_TEST_NG_GUEST_DIR")
    if explicit:
        return Path(explicit).absolute()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache).absolute() / "nixos-test-ng" / "guest"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_inputs(inputs: Any) -> str:
    """The hash of a build's inputs (JSON with sorted keys, no spaces)."""
    return hashlib.sha256(
        json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write a manifest (indented, sorted keys) atomically."""
    atomic_write(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def read_manifest(path: Path, fmt: int = MANIFEST_FORMAT) -> dict[str, Any] | None:
    """The manifest at `path` if it is a JSON object of format `fmt`, else None."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == fmt else None


def load_manifest(guest_dir: Path) -> dict[str, Any] | None:
    """The guest directory's manifest, or None if there is none (or it is unreadable)."""
    return read_manifest(Path(guest_dir) / MANIFEST_FILE)


def record_artifacts(directory: Path, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The manifest's record of the files `names` in `directory`: sha256, size, mtime."""
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        st = (directory / name).stat()
        out[name] = {
            "sha256": sha256_file(directory / name),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
        }
    return out


def artifacts_intact(directory: Path, artifacts: dict[str, Any]) -> bool:
    """Whether every file `record_artifacts` recorded is still there, unchanged."""
    for name, want in artifacts.items():
        try:
            st = (directory / name).stat()
        except OSError:
            return False
        if st.st_size != want.get("size"):
            return False
        # like make: an untouched file (same size and mtime) is trusted without re-hashing
        if st.st_mtime_ns != want.get("mtime_ns") and sha256_file(directory / name) != want.get(
            "sha256"
        ):
            return False
    return True


def guest_intact(guest_dir: Path, manifest: dict[str, Any]) -> bool:
    """Whether the guest directory's kernel and initramfs are those its manifest records."""
    arts = manifest.get("artifacts", {})
    if (
        not isinstance(arts, dict)
        or manifest.get("kernel_file") not in arts
        or INITRD_FILE not in arts
    ):
        return False
    return artifacts_intact(guest_dir, arts)


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold `directory/.lock` exclusively: serialises the builds into one directory."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
