"""Fixtures for the guest tests: a fake guest directory, a fake QEMU, a process reaper, and a
minimal stand-in for the driver's side of a VM (sockets, start script, backdoor, monitor)."""

from __future__ import annotations

import base64
import os
import select
import shlex
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from nixos_test_ng.guest import BuildError, ensure_built
from nixos_test_ng.procs import Reaper
from support.guest import make_fake_guest
from support.qemu_args import appended_args

HANDSHAKE = b"Spawning backdoor root shell..."


# --------------------------------------------------------------------------------------------
# processes


@pytest.fixture
def reaper() -> Iterator[Reaper]:
    """`reaper.spawn(cmd, **popen)`: a process in a session of its own; the whole session is
    killed at teardown."""
    r = Reaper()
    try:
        yield r
    finally:
        r.reap_all()


# --------------------------------------------------------------------------------------------
# fake guest and fake QEMU


@pytest.fixture
def fake_guest_factory() -> Callable[..., Path]:
    """`make_fake_guest(path, kvm=False)`."""
    return make_fake_guest


@pytest.fixture
def fake_guest(tmp_path: Path) -> Path:
    return make_fake_guest(tmp_path / "guest dir, with spaces")


FAKE_QEMU = textwrap.dedent(
    """\
    #!{python}
    import json, os, sys
    with open(os.environ["FAKE_QEMU_OUT"], "w") as f:
        call = {{"argv": sys.argv, "pid": os.getpid(), "cwd": os.getcwd()}}
        json.dump({{**call, "env": dict(os.environ)}}, f)
    """
)


@pytest.fixture
def fake_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put a fake `qemu-system-x86_64` first on PATH; it dumps argv, pid, cwd and env as JSON to
    the returned path."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    qemu = bindir / "qemu-system-x86_64"
    qemu.write_text(FAKE_QEMU.format(python=sys.executable))
    qemu.chmod(0o755)
    out = tmp_path / "qemu-call.json"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_QEMU_OUT", str(out))
    for var in (
        "QEMU_OPTS",
        "QEMU_NET_OPTS",
        "QEMU_KERNEL_PARAMS",
        "NIXOS_TEST_NG_ACCEL",
        "SHARED_DIR",
        "USE_TMPDIR",
    ):
        monkeypatch.delenv(var, raising=False)
    return out


# --------------------------------------------------------------------------------------------
# the driver's side of a real VM


class VM:
    """Plays the upstream driver's part for one start script: listening `shell` and `monitor`
    sockets before the spawn, the driver's arguments and environment, the handshake, and
    `execute()` framed exactly as upstream does."""

    def __init__(
        self,
        reaper: Reaper,
        script: Path,
        state: Path,
        shared: Path,
        env: dict[str, str] | None = None,
        allow_reboot: bool = False,
    ):
        self.state = state
        state.mkdir(parents=True, exist_ok=True)
        shared.mkdir(parents=True, exist_ok=True)
        self.listeners: dict[str, socket.socket] = {}
        for name in ("monitor", "shell"):
            path = state / name
            path.unlink(missing_ok=True)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(str(path))
            s.listen(1)
            self.listeners[name] = s
        full_env = {
            **os.environ,
            **(env or {}),
            "TMPDIR": str(state),
            "SHARED_DIR": str(shared),
            "USE_TMPDIR": "1",
        }
        cmd = shlex.join([str(script), *appended_args(state, allow_reboot)])
        self.serial_log = state / "serial.log"
        self.started = time.monotonic()
        with open(self.serial_log, "wb") as log:
            self.proc = reaper.spawn(
                cmd, shell=True, stdin=subprocess.PIPE, stdout=log, cwd=state, env=full_env
            )
        self.shell: socket.socket | None = None
        self.monitor: socket.socket | None = None
        self.buf = b""

    def console(self) -> str:
        return self.serial_log.read_text(errors="replace")[-3000:]

    def _wait_readable(self, sock: socket.socket, deadline: float) -> None:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"timed out; console:\n{self.console()}")
            if select.select([sock], [], [], min(left, 0.5))[0]:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"start script exited with {self.proc.returncode}; console:\n{self.console()}"
                )

    def connect(self, timeout: float = 120) -> float:
        """Accept monitor and shell, wait for the handshake; returns seconds since the spawn."""
        deadline = time.monotonic() + timeout
        for name in ("monitor", "shell"):
            self._wait_readable(self.listeners[name], deadline)
            conn, _ = self.listeners[name].accept()
            setattr(self, name, conn)
        self.wait_for_handshake(deadline - time.monotonic())
        return time.monotonic() - self.started

    def wait_for_handshake(self, timeout: float = 120) -> None:
        """Read the shell socket up to the backdoor's handshake line, as upstream's connect()
        does (also after a reboot, on the same socket: the driver's reboot())."""
        assert self.shell is not None
        deadline = time.monotonic() + timeout
        while HANDSHAKE not in self.buf:
            self._wait_readable(self.shell, deadline)
            chunk = self.shell.recv(4096)
            if not chunk:
                raise RuntimeError(f"shell disconnected; console:\n{self.console()}")
            self.buf += chunk
        # upstream: nothing may follow the handshake line
        self.buf = self.buf[self.buf.index(HANDSHAKE) + len(HANDSHAKE) :].lstrip(b"\n")
        assert self.buf == b""

    def _line(self, timeout: float) -> bytes:
        assert self.shell is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            self._wait_readable(self.shell, deadline)
            chunk = self.shell.recv(4096)
            if not chunk:
                raise RuntimeError("shell disconnected")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def execute(self, command: str, timeout: float = 60) -> tuple[int, str]:
        """Upstream's framing: `bash -c CMD | (base64 -w 0; echo)`, then `echo ${PIPESTATUS[0]}`."""
        assert self.shell is not None
        self.shell.sendall(f"bash -c {shlex.quote(command)} | (base64 -w 0; echo)\n".encode())
        out = base64.b64decode(self._line(timeout))
        self.shell.sendall(b"echo ${PIPESTATUS[0]}\n")
        return int(self._line(timeout)), out.decode(errors="replace")

    def succeed(self, command: str, timeout: float = 60) -> str:
        rc, out = self.execute(command, timeout)
        assert rc == 0, f"`{command}` failed with {rc}: {out}"
        return out

    def wait_until_succeeds(self, command: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while True:
            rc, out = self.execute(command, timeout)
            if rc == 0:
                return out
            if time.monotonic() > deadline:
                raise TimeoutError(f"`{command}` kept failing ({rc}): {out}")
            time.sleep(0.2)

    def hmp(self, command: str, timeout: float = 10) -> str:
        """A human-monitor command; returns its output (the prompt is stripped)."""
        assert self.monitor is not None
        deadline = time.monotonic() + timeout
        data = b""
        if not getattr(self, "_prompted", False):
            while not data.endswith(b"(qemu) "):
                self._wait_readable(self.monitor, deadline)
                data += self.monitor.recv(4096)
            self._prompted = True
            data = b""
        self.monitor.sendall(command.encode() + b"\n")
        while not data.endswith(b"(qemu) "):
            self._wait_readable(self.monitor, deadline)
            data += self.monitor.recv(4096)
        return data.decode(errors="replace")

    def shutdown(self, timeout: float = 30) -> int:
        """Send `poweroff` raw, as upstream's `shutdown()` does, and wait for QEMU to exit."""
        assert self.shell is not None
        self.shell.sendall(b"poweroff\n")
        return self.proc.wait(timeout=timeout)


@pytest.fixture
def upstream_driver_args() -> Callable[[Path], list[str]]:
    """`driver_args(state_dir)`: what the upstream driver appends to a start script."""
    return appended_args


@pytest.fixture
def vm_factory(reaper: Reaper) -> Callable[..., VM]:
    """`vm_factory(script, state, shared, env=None, allow_reboot=False)` -> a started `VM`,
    killed at teardown."""

    def make(
        script: Path,
        state: Path,
        shared: Path,
        env: dict[str, str] | None = None,
        allow_reboot: bool = False,
    ) -> VM:
        return VM(reaper, script, state, shared, env, allow_reboot)

    return make


@pytest.fixture
def vde_switch(reaper: Reaper) -> Callable[[Path], Path]:
    """`vde_switch(dir)`: start a switch upstream style (stdin kept open as a pipe), return once
    `dir/ctl` exists; killed at teardown."""

    def start(path: Path) -> Path:
        reaper.spawn(
            ["vde_switch", "-s", str(path), "--dirmode", "0700"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not (path / "ctl").exists():
            assert time.monotonic() < deadline, "vde_switch did not create its ctl socket"
            time.sleep(0.02)
        return path

    return start


@pytest.fixture(scope="session")
def built_guest() -> Path:
    """The real guest, built (or found cached) in the default guest directory."""
    try:
        return ensure_built()
    except BuildError as e:
        pytest.fail(f"cannot build the guest: {e}")
