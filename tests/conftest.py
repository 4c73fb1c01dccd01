"""Shared fixtures: an isolated driver environment, fake VMs, running `nixos-test-driver`
as a subprocess, and a check that no process a test started outlives it.

- `driver_env`: a per-test `DriverEnv` (its own XDG_RUNTIME_DIR, output dir and cwd, an
  environment without upstream's env-variable defaults or a display).
- `write_script(name, body, executable=False)`: a file in the work dir (dedented).
- `fake_container(name="box", before="")`: a `run-<name>-nspawn` script that announces its
  pid as upstream's contract says and runs one child as the "container init" in the host's
  own namespaces (so nsenter works without systemd); `before` is shell run first.
- `fake_vm(name, **knobs)`: a `run-<name>-vm` start script around `tests/fakes/fake_qemu.py`;
  knobs become `FAKE_QEMU_<KNOB>` variables (`no_handshake=True`, `exit_early=3`,
  `boot_delay=0.5`, `panic=5`, `console="..."`, `pidns=False`; see fake_qemu.py); every
  fake records its argv, env, monitor/QMP commands and exit to `vm.record` (JSON lines).
- `run_driver(args, timeout=60, env=None)`: runs the driver to completion (`DriverResult`).
- `start_driver(args, env=None)`: starts it in the background (`DriverProcess`), for tests
  that signal it while it runs.
- autouse `no_leaked_processes`: after the test, no process may remain whose command line
  contains the test's tmp dir or whose environment carries the test's marker variable
  (`NTNG_TEST_TMP`, which every process started through `driver_env` inherits: the driver,
  QEMU or the fake, vde_switch, the guest's shell and its commands).
"""

from __future__ import annotations

import json
import os
import pty
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fakes import FAKE_QEMU  # noqa: E402

MARKER_VAR = "NTNG_TEST_TMP"

# Variables the driver reads as defaults (upstream generations A/B) or that change how it
# runs; a test sets the ones it wants explicitly.
_SCRUBBED_ENV = (
    "DISPLAY",
    "WAYLAND_DISPLAY",
    "startScripts",
    "vmStartScripts",
    "vmNames",
    "containerStartScripts",
    "containerNames",
    "vlans",
    "globalTimeout",
    "testScript",
    "NIXOS_TEST_NG_BOOT_TIMEOUT",
    "NIXOS_TEST_NG_SHELL_FRAMING",
    "XDG_RUNTIME_DIR",
    "TMPDIR",
)


def driver_command() -> list[str]:
    """How to run `nixos-test-driver`: the entry point installed beside this interpreter,
    else the one on PATH, else the module's `driver_main`."""
    beside = Path(sys.executable).parent / "nixos-test-driver"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("nixos-test-driver")
    if found:
        return [found]
    return [
        sys.executable,
        "-c",
        "import sys; from nixos_test_ng.cli import driver_main; "
        "sys.argv[0] = 'nixos-test-driver'; driver_main()",
    ]


# -- results and running drivers -------------------------------------------------------------


def spawn_on_terminal(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, int]:
    """Starts `argv` with stdin, stdout and stderr on a new pseudo-terminal: (pid, the
    terminal's fd). [`close_terminal`] ends it."""
    pid, fd = pty.fork()
    if pid == 0:  # the child
        os.chdir(cwd)
        os.execvpe(argv[0], argv, env)
    return pid, fd


def close_terminal(pid: int, fd: int) -> None:
    """Kills what is left of a [`spawn_on_terminal`] process and closes its terminal."""
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
    os.close(fd)


@dataclass
class DriverResult:
    """A finished driver run."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    duration: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __str__(self) -> str:
        return (
            f"nixos-test-driver {shlex.join(self.args)}\n"
            f"exit status {self.returncode} after {self.duration:.2f}s\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )


class DriverProcess:
    """A driver running in the background, in its own session (so teardown can kill its
    whole process group), with its output collected as it arrives."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.args = args
        self.started = time.monotonic()
        self.popen = subprocess.Popen(
            [*driver_command(), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        self._chunks: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(name, stream), daemon=True)
            for name, stream in (("stdout", self.popen.stdout), ("stderr", self.popen.stderr))
        ]
        for r in self._readers:
            r.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read(self, name: str, stream: Any) -> None:
        while True:
            data = stream.read1(65536)
            if not data:
                return
            with self._changed:
                self._chunks[name].append(data)
                self._changed.notify_all()

    def text(self, stream: str = "stderr") -> str:
        with self._changed:
            return b"".join(self._chunks[stream]).decode("utf-8", "replace")

    def wait_for_output(self, pattern: str, timeout: float = 20, stream: str = "stderr") -> str:
        """Waits until `stream` matches the regex `pattern`; returns the text so far.
        Fails the test (killing the driver) when it does not within `timeout` seconds."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                text = b"".join(self._chunks[stream]).decode("utf-8", "replace")
                if regex.search(text):
                    return text
                left = deadline - time.monotonic()
                if left <= 0 or (self.popen.poll() is not None and not self._alive_readers()):
                    break
                self._changed.wait(min(left, 0.1))
        self.kill()
        pytest.fail(f"driver output never matched {pattern!r} within {timeout}s\n{self.result(1)}")

    def _alive_readers(self) -> bool:
        return any(r.is_alive() for r in self._readers)

    def send_signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL to the driver's whole process group."""
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def result(self, reader_timeout: float = 5) -> DriverResult:
        for r in self._readers:
            r.join(reader_timeout)
        return DriverResult(
            args=self.args,
            returncode=self.popen.returncode if self.popen.returncode is not None else -999,
            stdout=self.text("stdout"),
            stderr=self.text("stderr"),
            duration=time.monotonic() - self.started,
        )

    def wait(self, timeout: float = 60) -> DriverResult:
        """Waits for the exit; on timeout kills the driver and fails the test."""
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.popen.wait(10)
            pytest.fail(f"driver did not exit within {timeout}s; killed it\n{self.result(2)}")
        # Children of the driver that keep its pipes open would stall the readers; the
        # leak check reports them, so do not wait for them for long here.
        return self.result()


# -- fake VMs ---------------------------------------------------------------------------------


@dataclass
class FakeVM:
    """A `run-<name>-vm` start script around the fake QEMU."""

    name: str
    script: Path
    record: Path
    knobs: dict[str, str] = field(default_factory=dict)

    def records(self, event: str | None = None) -> list[dict[str, Any]]:
        """The fake's JSON-lines record (every start, monitor/QMP/control command, exit)."""
        if not self.record.exists():
            return []
        entries = [json.loads(line) for line in self.record.read_text().splitlines() if line]
        return [e for e in entries if event is None or e["event"] == event]

    @property
    def start_count(self) -> int:
        return len(self.records("start"))

    def monitor_commands(self) -> list[str]:
        return [e["command"] for e in self.records("monitor")]

    def exits(self) -> list[dict[str, Any]]:
        return self.records("exit")


# -- the environment --------------------------------------------------------------------------


class DriverEnv:
    """One test's isolated world: XDG_RUNTIME_DIR (the driver's tmp dir), the output dir,
    the work dir (cwd, where scripts are written) and the environment."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.work = tmp / "work"
        self.runtime = tmp / "xdg"
        self.out = tmp / "out"
        for d in (self.work, self.runtime, self.out):
            d.mkdir(mode=0o700, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        env.update(
            XDG_RUNTIME_DIR=str(self.runtime),
            NO_COLOR="1",
            PYTHONUNBUFFERED="1",
            PYTHONDONTWRITEBYTECODE="1",
            **{MARKER_VAR: str(tmp)},
        )
        self.env = env
        self.processes: list[DriverProcess] = []

    def state_dir(self, machine: str) -> Path:
        return self.runtime / f"vm-state-{machine}"

    def write_script(self, name: str, body: str, executable: bool = False) -> Path:
        """Writes `body` (dedented) to `<work>/<name>`."""
        path = self.work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(body).lstrip("\n"))
        if executable:
            path.chmod(0o755)
        return path

    def fake_vm(self, name: str, *, script_name: str | None = None, **knobs: Any) -> FakeVM:
        """Writes `run-<name>-vm` (or `script_name`) starting the fake QEMU.

        Keyword knobs become `FAKE_QEMU_<KNOB>`: True → "1", False → "0", None → unset."""
        record = self.tmp / f"fake-{name}.record.jsonl"
        env = {"FAKE_QEMU_RECORD": str(record)}
        for key, value in knobs.items():
            if value is None:
                continue
            if isinstance(value, bool):
                value = "1" if value else "0"
            env[f"FAKE_QEMU_{key.upper()}"] = str(value)
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
        script = self.write_script(
            script_name or f"run-{name}-vm",
            f'#!/bin/sh\n{exports}exec {shlex.quote(sys.executable)} {FAKE_QEMU} "$@"\n',
            executable=True,
        )
        return FakeVM(name=name, script=script, record=record, knobs=env)

    def start_driver(
        self, args: list[str | Path], env: dict[str, str] | None = None
    ) -> DriverProcess:
        full_env = dict(self.env)
        if env:
            full_env.update(env)
        proc = DriverProcess([str(a) for a in args], full_env, self.work)
        self.processes.append(proc)
        return proc

    def run_driver(
        self,
        args: list[str | Path],
        timeout: float = 60,
        env: dict[str, str] | None = None,
    ) -> DriverResult:
        return self.start_driver(args, env).wait(timeout)

    def close(self) -> None:
        for p in self.processes:
            if p.popen.poll() is None:
                p.kill()
                try:
                    p.popen.wait(10)
                except subprocess.TimeoutExpired:
                    pass
            for stream in (p.popen.stdout, p.popen.stderr):
                if stream is not None:
                    stream.close()


@pytest.fixture
def driver_env(tmp_path: Path) -> Iterator[DriverEnv]:
    env = DriverEnv(tmp_path)
    yield env
    env.close()


@pytest.fixture
def write_script(driver_env: DriverEnv):
    return driver_env.write_script


@pytest.fixture
def fake_vm(driver_env: DriverEnv):
    return driver_env.fake_vm


FAKE_CONTAINER = """\
#!/bin/bash
# a fake container: announce the pid, print the environment, run one "init" child
{before}
echo "systemd-nspawn's PID is $$"
echo "env: $(env | grep -v '^_=' | sort | tr '\\n' ' ')"
sleep 600 &
echo "Welcome to the fake container!"
wait
"""


@pytest.fixture
def fake_container(driver_env: DriverEnv):
    def make(name: str = "box", before: str = "") -> str:
        body = FAKE_CONTAINER.format(before=before)
        return str(driver_env.write_script(f"run-{name}-nspawn", body, True))

    return make


@pytest.fixture
def run_driver(driver_env: DriverEnv):
    return driver_env.run_driver


@pytest.fixture
def start_driver(driver_env: DriverEnv):
    return driver_env.start_driver


# -- no process may outlive its test ----------------------------------------------------------


def _proc_alive(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def processes_marked_with(tmp: Path) -> dict[int, str]:
    """Live processes whose command line names `tmp`, or whose environment carries
    `NTNG_TEST_TMP=<tmp>`: pid → command line."""
    needles = {str(tmp).encode(), str(tmp.resolve()).encode()}
    env_needles = {MARKER_VAR.encode() + b"=" + n for n in needles}
    me = os.getpid()
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    environ = f.read().split(b"\0")
            except OSError:
                environ = []
        except OSError:
            continue
        if any(n in cmdline for n in needles) or any(e in env_needles for e in environ):
            if _proc_alive(entry):
                found[int(entry)] = cmdline.replace(b"\0", b" ").decode("utf-8", "replace")
    return found


def with_descendants(pids: set[int]) -> set[int]:
    """`pids` and every process descending from them."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found = set(pids)
    todo = list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def wait_until_gone(tmp: Path, timeout: float) -> dict[int, str]:
    """Waits up to `timeout` s for every marked process to end; returns the survivors."""
    deadline = time.monotonic() + timeout
    while True:
        left = processes_marked_with(tmp)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def no_leaked_processes(tmp_path: Path) -> Iterator[None]:
    yield
    survivors = wait_until_gone(tmp_path, timeout=3)
    if survivors:
        for pid in with_descendants(set(survivors)):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        listing = "\n".join(f"  {pid}: {cmd}" for pid, cmd in sorted(survivors.items()))
        pytest.fail(f"processes started by the test outlived it:\n{listing}", pytrace=False)
