"""Whether KVM works here: boot the guest's kernel under `-accel kvm` and watch the serial port.

The result goes into the guest's manifest with what it depends on (the kernel, QEMU's version,
whether /dev/kvm exists) and is probed again only when one of those changed. Start scripts use
KVM by default when it is usable; `nixos-test-ng doctor` reports it."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from .cache import guest_intact, load_manifest
from .common import Log, stderr_log

__all__ = ["KVM_PROBE_SECONDS", "kvm_result", "kvm_status", "probe_kvm"]

KVM_PROBE_SECONDS = 8.0


def _qemu_version() -> str:
    try:
        res = subprocess.run(
            ["qemu-system-x86_64", "--version"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return res.stdout.splitlines()[0] if res.stdout else "unknown"


def probe_kvm(kernel: Path, timeout: float = KVM_PROBE_SECONDS) -> dict[str, Any]:
    """Boot `kernel` (no initrd) under `-accel kvm` for at most `timeout` seconds and report
    whether it reached the serial port (`Linux version` printed). Returns
    `{"usable": bool, "detail": str}`."""
    if not os.path.exists("/dev/kvm"):
        return {"usable": False, "detail": "/dev/kvm does not exist"}
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return {"usable": False, "detail": "/dev/kvm is not readable and writable"}
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        return {"usable": False, "detail": "qemu-system-x86_64 not found"}
    cmd = [qemu, "-accel", "kvm", "-cpu", "max", "-m", "128", "-nodefaults", "-display", "none"]
    cmd += [
        "-no-reboot",
        "-serial",
        "stdio",
        "-kernel",
        str(kernel),
        "-append",
        "console=ttyS0 panic=-1",
    ]
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    seen = b""
    try:
        while (left := start + timeout - time.monotonic()) > 0:
            ready, _, _ = select.select([proc.stdout], [], [], left)
            if not ready:
                break
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
            if b"Linux version" in seen:
                return {
                    "usable": True,
                    "detail": f"kernel printed to ttyS0 after {time.monotonic() - start:.1f}s",
                }
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _, err = proc.communicate()
    if proc.returncode not in (None, -signal.SIGKILL) and err.strip():
        return {
            "usable": False,
            "detail": f"qemu failed: {err.decode(errors='replace').strip().splitlines()[-1]}",
        }
    return {"usable": False, "detail": f"nothing reached the serial port within {timeout:.0f}s"}


def kvm_result(
    kernel: Path, kernel_sha256: str, previous: dict[str, Any] | None, log: Log
) -> dict[str, Any]:
    """The probe result, reused from the previous manifest when the kernel and QEMU are the same."""
    key = {
        "kernel_sha256": kernel_sha256,
        "qemu": _qemu_version(),
        "dev_kvm": os.path.exists("/dev/kvm"),
    }
    old = (previous or {}).get("kvm")
    if isinstance(old, dict) and old.get("key") == key:
        return old
    log(f"probing KVM (at most {KVM_PROBE_SECONDS:.0f} s)")
    result = probe_kvm(kernel)
    log(f"KVM usable: {'yes' if result['usable'] else 'no'} ({result['detail']})")
    return {**result, "key": key}


def kvm_status(guest_dir: Path, log: Log = stderr_log) -> dict[str, Any] | None:
    """The guest build's KVM probe result for the built guest in `guest_dir`, probed again only
    when the kernel, QEMU or /dev/kvm changed since the build; None when no guest is built."""
    manifest = load_manifest(guest_dir)
    if manifest is None or not guest_intact(guest_dir, manifest):
        return None
    kernel_file = str(manifest["kernel_file"])
    sha256 = manifest["artifacts"][kernel_file]["sha256"]
    return kvm_result(guest_dir / kernel_file, sha256, manifest, log)
