"""Fakes for driver-level tests (a fake QEMU, see `fake_qemu.py`; a fake guest behind a VMM's
hybrid vsock socket, see `vsock_guest.py`)."""

from pathlib import Path

FAKE_QEMU = Path(__file__).with_name("fake_qemu.py")
VSOCK_GUEST = Path(__file__).with_name("vsock_guest.py")

__all__ = ["FAKE_QEMU", "VSOCK_GUEST"]
