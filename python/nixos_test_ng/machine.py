"""Machine classes of the script namespace: thin names over the native machine.

`BaseMachine` is what every machine is; `QemuMachine` a VM; `NspawnMachine` a container.
`Machine` is the generation-A name, kept for scripts that annotate with it.
"""

from __future__ import annotations

import re
import warnings
from datetime import timedelta

from nixos_test_ng import _native

Timeout = float | timedelta | None


class BaseMachine(_native.Machine):
    """A machine of the test: a QEMU VM or a systemd-nspawn container."""

    def wait_for_console_text(self, regex: str, timeout: float | None = None) -> None:
        """Wait until the console (serial port) printed text matching `regex`.

        Lines are consumed as upstream does: each call starts with an empty buffer and
        reads the lines not consumed by earlier calls, one at a time, concatenated as
        they arrive; the wait is woken by new output instead of polling once a second.
        """
        pattern = re.compile(regex)
        self._wait_for_console_text(regex, lambda text: pattern.search(text) is not None, timeout)

    def wait_for_text(self, regex: str, timeout: Timeout = 900) -> None:
        """Wait until OCR finds `regex` (`re.search`) in the text of the screen.

        Each try reads the raw screen and two processed variants in parallel and stops at
        the first variant that matches. Needs `tesseract` on the host.
        """
        pattern = re.compile(regex)
        self._wait_for_text(regex, lambda text: pattern.search(text) is not None, timeout)

    def wait_until_tty_matches(self, tty: str | int, regexp: str, timeout: Timeout = 900) -> None:
        """Wait until the text of virtual terminal `tty` matches `regexp` (`re.search`)."""
        pattern = re.compile(regexp)
        self._wait_until_tty_matches(
            tty, regexp, lambda text: pattern.search(text) is not None, timeout
        )

    def wait_for_window(self, regexp: str, timeout: Timeout = 900) -> None:
        """Wait until an X window whose name matches `regexp` (`re.search`) exists."""
        pattern = re.compile(regexp)
        self._wait_for_window(regexp, lambda name: pattern.search(name) is not None, timeout)

    def copy_from_vm(self, source: str, target_dir: str = "") -> None:
        """Deprecated alias of `copy_from_machine`, as upstream."""
        warnings.warn(
            "copy_from_vm() is deprecated, use copy_from_machine()",
            DeprecationWarning,
            stacklevel=2,
        )
        self.copy_from_machine(source, target_dir)


class QemuMachine(BaseMachine):
    """A QEMU VM started by a `run-<name>-vm` script."""


class NspawnMachine(BaseMachine):
    """A systemd-nspawn container started by a `run-<name>-nspawn` script."""


Machine = BaseMachine


def wrap(handle: _native.MachineHandle) -> BaseMachine:
    """The Python object for a machine the driver built."""
    cls = NspawnMachine if handle.kind == "nspawn" else QemuMachine
    return cls(handle)
