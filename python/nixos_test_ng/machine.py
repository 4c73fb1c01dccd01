"""Machine classes of the script namespace: thin names over the native machine.

`BaseMachine` is what every machine is; `QemuMachine` a VM; `NspawnMachine` a container;
`FirecrackerMachine` a Firecracker microVM; `CloudHypervisorMachine` a Cloud Hypervisor VM.
`Machine` is the generation-A name, kept for scripts that annotate with it.
"""

from __future__ import annotations

import re
import sys
import warnings
import weakref
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from nixos_test_ng import _native
from nixos_test_ng.internals import (
    ConsoleLines,
    MonitorSocket,
    QemuStartCommand,
    QMPSession,
    SerialThread,
    ShellSocket,
)

Timeout = float | timedelta | None
_Part = TypeVar("_Part")


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

    def wait_for_text(self, regex: str, timeout: Timeout = _native.DEFAULT_COMMAND_TIMEOUT) -> None:
        """Wait until OCR finds `regex` (`re.search`) in the text of the screen.

        Each try reads the raw screen and two processed variants in parallel and stops at
        the first variant that matches. Needs `tesseract` on the host.
        """
        pattern = re.compile(regex)
        self._wait_for_text(regex, lambda text: pattern.search(text) is not None, timeout)

    def wait_until_tty_matches(
        self, tty: str | int, regexp: str, timeout: Timeout = _native.DEFAULT_COMMAND_TIMEOUT
    ) -> None:
        """Wait until the text of virtual terminal `tty` matches `regexp` (`re.search`)."""
        pattern = re.compile(regexp)
        self._wait_until_tty_matches(
            tty, regexp, lambda text: pattern.search(text) is not None, timeout
        )

    def wait_for_window(
        self, regexp: str, timeout: Timeout = _native.DEFAULT_COMMAND_TIMEOUT
    ) -> None:
        """Wait until an X window whose name matches `regexp` (`re.search`) exists."""
        pattern = re.compile(regexp)
        self._wait_for_window(regexp, lambda name: pattern.search(name) is not None, timeout)

    def shell_interact(self, address: str | None = None) -> None:
        """An interactive shell on the machine, at a `<name>$ ` prompt on the terminal.

        Each line runs as a command (stdout and stderr stream as they come); Ctrl-C
        interrupts the running command in the guest, not the driver; Ctrl-D or `exit` leaves.
        Upstream's `address` (a socat address for the raw backdoor) is not supported.
        """
        if address is not None:
            raise NotImplementedError(
                "shell_interact(address=...) is not supported: use shell_interact() at a terminal"
            )
        self.connect()
        print(
            f"{self.name}: interactive shell; Ctrl-C interrupts the running command,"
            " Ctrl-D or `exit` leaves",
            flush=True,
        )
        out = sys.stdout.buffer

        def write(chunk: bytes) -> None:
            out.write(chunk)
            out.flush()

        while True:
            try:
                line = input(f"{self.name}$ ")
            except EOFError:
                print()
                return
            except KeyboardInterrupt:
                print()
                continue
            if line.strip() in ("exit", "logout"):
                return
            if not line.strip():
                continue
            try:
                status = self._interact_command(line, write)
            except KeyboardInterrupt:
                continue
            if status != 0:
                print(f"[exit status {status}]", flush=True)

    def console_interact(self) -> None:
        """Forward the terminal's input to the serial console (QEMU's stdin) until Ctrl-D."""
        while True:
            try:
                line = sys.stdin.readline()
            except KeyboardInterrupt:
                continue
            if not line:
                return
            self.send_console(line)

    # -- upstream's smaller members ----------------------------------------------------------

    #: Functions `run_callbacks()` calls (the driver adds its polling-condition check).
    callbacks: list[Callable[[], object]]
    #: The driver's logger.
    logger: Any
    #: Whether the state directory was kept from an earlier run (`--keep-machine-state`).
    keep_machine_state: bool = False

    @property
    def keep_vm_state(self) -> bool:
        """Generation A's name of `keep_machine_state`."""
        return self.keep_machine_state

    def run_callbacks(self) -> None:
        """Run the callbacks (the driver's polling conditions); `execute` does so itself."""
        for callback in getattr(self, "callbacks", []):
            callback()

    def wait_for_job(self, jobname: str) -> None:
        """Generation A's alias of `wait_for_unit`."""
        self.wait_for_unit(jobname)

    def wait_for_monitor_prompt(self) -> str:
        """Wait until QEMU's monitor answers; returns what it printed up to its prompt."""
        return self.send_monitor_command("")

    def ssh_backdoor_command(self, index: int) -> str:
        """The command that reaches this machine through the SSH backdoor (a VM: vsock)."""
        return f"ssh -o User=root vsock/{index}"

    def copy_from_vm(self, source: str, target_dir: str = "") -> None:
        """Deprecated alias of `copy_from_machine`, as upstream."""
        warnings.warn(
            "copy_from_vm() is deprecated, use copy_from_machine()",
            DeprecationWarning,
            stacklevel=2,
        )
        self.copy_from_machine(source, target_dir)

    @property
    def process(self) -> _native.MachineProcess | None:
        """The machine's process (upstream: a `subprocess.Popen`): `pid`, `poll()`,
        `wait(timeout)`, `returncode`, `kill()`, `terminate()`, `send_signal()`. None
        before the first start; a VM keeps its last one after it stopped."""
        return self._process()


class QemuMachine(BaseMachine):
    """A QEMU VM started by a `run-<name>-vm` script."""

    @property
    def start_command(self) -> QemuStartCommand:  # type: ignore[override]
        """The start script or command line, with upstream's `QemuStartCommand` members."""
        return QemuStartCommand(super().start_command)

    def _part(self, cls: type[_Part]) -> _Part:
        """The machine's one `cls` object (a socket-like object keeps state, and scripts
        expect `machine.shell is machine.shell`, as upstream's attributes are)."""
        parts: dict[type, Any] = self.__dict__.setdefault("_parts", {})
        if cls not in parts:
            parts[cls] = cls(self)
        return parts[cls]

    @property
    def monitor_path(self) -> Path:
        """The HMP monitor's socket (`<state_dir>/monitor`)."""
        return self._socket_paths()[0]

    @property
    def qmp_path(self) -> Path:
        """The QMP socket (`<state_dir>/qmp`)."""
        return self._socket_paths()[1]

    @property
    def shell_path(self) -> Path:
        """The backdoor shell's socket (`<state_dir>/shell`)."""
        return self._socket_paths()[2]

    @property
    def qmp_client(self) -> QMPSession | None:
        """QMP while the VM runs (`qmp_client.send("query-status")`), else None."""
        return self._part(QMPSession) if self.booted else None

    @property
    def shell(self) -> ShellSocket | None:
        """The backdoor shell's connection for raw bytes while the VM runs, else None."""
        return self._part(ShellSocket) if self.booted else None

    @property
    def monitor(self) -> MonitorSocket | None:
        """The HMP monitor while the VM runs, else None."""
        return self._part(MonitorSocket) if self.booted else None

    @property
    def last_lines(self) -> ConsoleLines:
        """Console lines no `wait_for_console_text` has consumed (a queue's `get`)."""
        return self._part(ConsoleLines)

    @property
    def serial_thread(self) -> SerialThread | None:
        """The console reader while the VM runs (`is_alive()`, `join()`), else None."""
        return self._part(SerialThread) if self.booted else None


class NspawnMachine(BaseMachine):
    """A systemd-nspawn container started by a `run-<name>-nspawn` script."""

    @staticmethod
    def machine_name_from_start_command(start_command: str) -> str:
        """The name in a start script's file name (`run-<name>-nspawn`)."""
        name = _native.nspawn_machine_name(start_command)
        assert name is not None, f"Could not extract node name from {start_command}"
        return name

    @property
    def get_systemd_process(self) -> int:
        """The pid of the container's PID 1 (systemd); starts the container and waits for
        it to boot when needed."""
        return self._systemd_process()

    def ssh_backdoor_command(self, index: int) -> str:
        """The command that reaches this container's SSH through systemd's unix-export."""
        socket_path = f"/run/systemd/nspawn/unix-export/{self.name}/ssh"
        return f'ssh -o User=root -o ProxyCommand="socat - UNIX-CLIENT:{socket_path}" bash'


class FirecrackerMachine(BaseMachine):
    """A Firecracker microVM configured by a `run-<name>-firecracker` script (which prints
    its kernel, disks, command line, vCPUs, memory and VLANs as JSON). Its shell is the guest
    agent over vsock; it has no display, keyboard, monitor or serial console input."""

    def vmm_metrics(self) -> dict[str, Any]:
        """Firecracker's own metrics, flushed now (`FlushMetrics`): the last JSON object of
        its metrics file, `<state dir>/firecracker-metrics.json`, as a dict."""
        return self._vmm_metrics()


class CloudHypervisorMachine(BaseMachine):
    """A Cloud Hypervisor VM configured by a `run-<name>-cloud-hypervisor` script (the same
    JSON as a Firecracker machine's). Its shell is the guest agent over vsock; it has no
    display, keyboard, monitor or serial console input."""


Machine = BaseMachine

#: The class of each kind of machine, by the kind's name: the engine names the class
#: (`MachineKind.python_class`), so a kind without its class fails here, at import.
CLASSES: dict[str, type[BaseMachine]] = {
    kind.name: globals()[kind.python_class] for kind in _native.machine_kinds()
}


def wrap(
    handle: _native.MachineHandle,
    logger: Any,
    callbacks: list[Callable[[], object]],
    keep_machine_state: bool,
) -> BaseMachine:
    """The Python object for a machine the driver built: `callbacks` run before every
    command (upstream's `run_callbacks`), the list stays the machine's to change."""
    machine = CLASSES[handle.kind](handle)
    machine.callbacks = callbacks
    machine.logger = logger
    machine.keep_machine_state = keep_machine_state
    # A weak reference: the engine's machine holds the hook, which must not keep the
    # Python object (and so the engine's machine) alive.
    ref = weakref.ref(machine)

    def hook() -> None:
        alive = ref()
        if alive is not None:
            alive.run_callbacks()

    machine._set_hook(hook)
    return machine
