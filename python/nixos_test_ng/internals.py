"""Upstream's raw machine internals as objects over what the engine owns: `qmp_client`,
`shell`, `monitor`, `last_lines`, `serial_thread` and a VM's `start_command`. (`process` is
the native `MachineProcess`.) Upstream exposes its own sockets, queue and thread; here the
engine holds the connections, so each object offers what test scripts do with upstream's,
through the engine, and its docstring says where it differs.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nixos_test_ng import _native

if TYPE_CHECKING:
    from nixos_test_ng.machine import BaseMachine

__all__ = ["ConsoleLines", "MonitorSocket", "QMPSession", "QemuStartCommand", "SerialThread"]


class QMPSession:
    """`machine.qmp_client`: QMP commands through the engine's QMP session of the VM.

    `send(cmd, args)` returns QEMU's whole answer, `{"return": ...}`, as upstream; an error
    answer raises `QMPAPIError` with upstream's `class_name`, `description` and
    `transaction_id` (always None: upstream sends no id, and the engine's are its own).
    Events are those `wait_for_qmp_event` sees (one queue).
    """

    def __init__(self, machine: BaseMachine) -> None:
        self._machine = machine

    def __repr__(self) -> str:
        return f"<QMPSession of {self._machine.name!r}>"

    def send(self, cmd: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run QMP command `cmd`, with `args` as its arguments unless empty."""
        return {"return": self._machine.qmp(cmd, args or None)}

    def wait_for_event(self, timeout: float | timedelta = timedelta(seconds=10)) -> dict[str, Any]:
        """The next QMP event; `TimeoutError` when none comes within `timeout`."""
        return self._machine.wait_for_qmp_event(lambda _event: True, timeout)

    def events(self) -> Iterator[dict[str, Any]]:
        """The events queued so far, without waiting."""
        while True:
            try:
                yield self._machine.wait_for_qmp_event(lambda _event: True, 0)
            except TimeoutError:
                return


class ShellSocket:
    """`machine.shell`: the VM's backdoor shell connection, for raw bytes.

    `send(b"cmd\\n")` hands a line to the guest's shell outside the command framing, as
    scripts do for a command that must not be waited for (`reboot`, a background job).
    Its stdout must go elsewhere (`>/dev/null`, `|& systemd-cat`): otherwise the next
    command reads it as its answer (upstream has the same rule). `recv(n)` reads raw bytes.
    """

    def __init__(self, machine: BaseMachine) -> None:
        self._machine = machine

    def __repr__(self) -> str:
        return f"<ShellSocket of {self._machine.name!r}>"

    def send(self, data: bytes) -> int:
        self._machine._shell_send(bytes(data))
        return len(data)

    def sendall(self, data: bytes) -> None:
        self._machine._shell_send(bytes(data))

    def recv(self, bufsize: int) -> bytes:
        """Up to `bufsize` bytes, waiting for the first; b"" when the connection ended."""
        return self._machine._shell_recv(bufsize)


class MonitorSocket:
    """`machine.monitor`: the VM's HMP monitor connection.

    The engine owns the socket, so `send`/`sendall` run each complete line as a monitor
    command (as `send_monitor_command`, whose answer ends with the `(qemu) ` prompt) and
    keep the answers, which `recv` returns; `recv` gives b"" when nothing is left.
    """

    def __init__(self, machine: BaseMachine) -> None:
        self._machine = machine
        self._pending = b""
        self._answers = b""

    def __repr__(self) -> str:
        return f"<MonitorSocket of {self._machine.name!r}>"

    def send(self, data: bytes) -> int:
        self._pending += bytes(data)
        while b"\n" in self._pending:
            line, self._pending = self._pending.split(b"\n", 1)
            answer = self._machine.send_monitor_command(line.decode(errors="replace"))
            self._answers += answer.encode()
        return len(data)

    def sendall(self, data: bytes) -> None:
        self.send(data)

    def recv(self, bufsize: int) -> bytes:
        chunk, self._answers = self._answers[:bufsize], self._answers[bufsize:]
        return chunk


class ConsoleLines:
    """`machine.last_lines`: the console lines no `wait_for_console_text` consumed yet,
    with the reading side of upstream's `queue.Queue` (taking a line here consumes it for
    the waits too, as upstream)."""

    def __init__(self, machine: BaseMachine) -> None:
        self._machine = machine

    def __repr__(self) -> str:
        return f"<ConsoleLines of {self._machine.name!r}: {self.qsize()} unread>"

    def get(self, block: bool = True, timeout: float | None = None) -> str:
        """The oldest unread line; `queue.Empty` when none comes (in `timeout` seconds)."""
        line = self._machine._console_next(timeout if block else 0)
        if line is None:
            raise queue.Empty
        return line

    def get_nowait(self) -> str:
        return self.get(block=False)

    def qsize(self) -> int:
        return self._machine._console_unread()

    def empty(self) -> bool:
        return self.qsize() == 0


class SerialThread:
    """`machine.serial_thread`: the engine's reader of the console (QEMU's stdout), with
    the members of upstream's `threading.Thread` that make sense from outside."""

    daemon = True

    def __init__(self, machine: BaseMachine) -> None:
        self._machine = machine
        self.name = f"ntng-console-{machine.name}"

    def __repr__(self) -> str:
        return f"<SerialThread {self.name} {'alive' if self.is_alive() else 'stopped'}>"

    def is_alive(self) -> bool:
        return not self._machine._console_wait_closed(0)

    def join(self, timeout: float | None = None) -> None:
        """Wait until the console ended (the machine's process closed it)."""
        self._machine._console_wait_closed(timeout)


class QemuStartCommand(str):
    """`machine.start_command` of a VM: the start script or command line (a `str`), with
    upstream's `QemuStartCommand` members. `run()` is not offered: the driver starts QEMU
    itself (listening sockets, process group, cleanup); use `machine.start()`, or
    `create_machine(command)` for another VM."""

    @property
    def machine_name(self) -> str:
        """The name upstream derives from it (`run-<name>-vm`, else `machine`)."""
        return _native.machine_name_from_script(str(self), "vm")

    def cmd(
        self,
        monitor_socket_path: Path | str,
        qmp_socket_path: Path | str,
        shell_socket_path: Path | str,
        allow_reboot: bool = False,
    ) -> str:
        """The command line with the arguments the driver appends, as upstream builds it."""
        args = _native.qemu_start_args(
            Path(monitor_socket_path), Path(qmp_socket_path), Path(shell_socket_path), allow_reboot
        )
        return " ".join([str(self), *args])

    @staticmethod
    def build_environment(state_dir: Path | str, shared_dir: Path | str) -> dict[str, str]:
        """The driver's environment plus `TMPDIR`, `SHARED_DIR` and `USE_TMPDIR`."""
        env = dict(os.environ)
        env.update(_native.qemu_start_env(Path(state_dir), Path(shared_dir)))
        return env

    def run(self, *args: object, **kwargs: object) -> None:
        raise NotImplementedError(
            "QemuStartCommand.run() is not supported: the driver starts QEMU itself (its"
            " sockets, process group and cleanup); use machine.start(), or"
            " create_machine(start_command) for another VM"
        )
