"""What a result was taken with: the machine, the driver, QEMU, the guest, git."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from harness import REPO


def _output(cmd: list[str], cwd: Path | None = None) -> str | None:
    try:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def resolve_driver(name: str) -> tuple[str, str | None]:
    """(the executable to run, the shim it was resolved from). A pyenv shim re-runs pyenv on
    every start (about 45 ms here), which is no part of the driver, so it is resolved."""
    found = shutil.which(name) or name
    if "/shims/" in found and shutil.which("pyenv"):
        real = _output(["pyenv", "which", os.path.basename(found)])
        if real:
            return real, found
    return found, None


def environment(driver: str, shim: str | None, guest_dir: Path) -> dict[str, Any]:
    cpu = None
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    interp = None
    with open(driver, "rb") as f:
        first = f.readline().decode(errors="replace")
    if first.startswith("#!"):
        interp = first[2:].strip().split()[0]
    versions = None
    if interp:
        versions = _output(
            [
                interp,
                "-c",
                "import importlib.metadata as m, sys;"
                "print(m.version('nixos-test-ng'), sys.version.split()[0])",
            ]
        )
    manifest: dict[str, Any] = {}
    try:
        manifest = json.loads((guest_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        pass
    dirty = _output(["git", "status", "--porcelain"], REPO)
    return {
        "cpu_model": cpu,
        "nproc": os.cpu_count(),
        "nproc_usable": len(os.sched_getaffinity(0)),
        "mem_total_gib": round(mem_kib / 1024 / 1024, 1),
        "qemu_version": (_output(["qemu-system-x86_64", "--version"]) or "").splitlines()[0:1],
        "accel": "tcg",
        "kernel": platform.release(),
        "os": _output(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "git_commit": _output(["git", "rev-parse", "HEAD"], REPO),
        "git_dirty": bool(dirty) if dirty is not None else None,
        "driver": driver,
        "driver_resolved_from": shim,
        "driver_version_python": versions,
        "harness_python": platform.python_version(),
        "guest_dir": str(guest_dir),
        "guest_input_hash": manifest.get("input_hash"),
        "guest_kernel": manifest.get("kernel_version"),
        "guest_kernel_boot": manifest.get("kernel_boot"),
        "loadavg_before": os.getloadavg(),
    }
