"""A fake guest directory: a manifest and empty artifacts, enough to write start scripts."""

from __future__ import annotations

import json
from pathlib import Path

from nixos_test_ng.guest.cache import INITRD_FILE, MANIFEST_FILE


def make_fake_guest(path: Path, *, kvm: bool = False) -> Path:
    """A guest directory with a manifest and empty artifacts (enough for start scripts)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "vmlinux").write_bytes(b"")
    (path / INITRD_FILE).write_bytes(b"")
    manifest = {
        "format": 1,
        "kernel_file": "vmlinux",
        "artifacts": {},
        "kvm": {"usable": kvm, "detail": "fake"},
    }
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    return path
