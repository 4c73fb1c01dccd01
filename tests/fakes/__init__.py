"""Fakes for driver-level tests (a fake QEMU, see `fake_qemu.py`)."""

from pathlib import Path

FAKE_QEMU = Path(__file__).with_name("fake_qemu.py")

__all__ = ["FAKE_QEMU"]
