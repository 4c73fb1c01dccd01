"""Running `nixos-test-driver` from a test: to completion (`DriverResult`) or in the background
(`DriverProcess`, for tests that signal it or read its output as it comes)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nixos_test_ng import procs


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


@dataclass
class DriverResult:
    """A finished driver run. `returncode` is `subprocess`'s: minus the signal's number for a
    death by signal (-15 for SIGTERM, which a shell shows as 143)."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __str__(self) -> str:
        return (
            f"nixos-test-driver {shlex.join(self.args)}\n"
            f"exit status {self.returncode}\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )


class DriverProcess:
    """A driver running in the background, in its own session (so teardown can kill its
    whole process group), with its output collected as it arrives."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.args = args
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
        Fails the test (killing the driver) when it does not within `timeout` seconds, or
        when the driver ends without it."""
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

    def wait_for_file(self, path: Path, timeout: float = 20) -> None:
        """Waits until `path` exists (a guest command that touches it has started). Fails
        the test (killing the driver) when it does not within `timeout` seconds, or when the
        driver ends first."""
        found = procs.wait_until(lambda: path.exists() or self.popen.poll() is not None, timeout)
        if found and path.exists():
            return
        self.kill()
        pytest.fail(f"{path} never appeared within {timeout}s\n{self.result(1)}")

    def _alive_readers(self) -> bool:
        return any(r.is_alive() for r in self._readers)

    def send_signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL to the driver's whole process group."""
        procs.kill_group(self.popen.pid)

    def result(self, reader_timeout: float = 5) -> DriverResult:
        for r in self._readers:
            r.join(reader_timeout)
        return DriverResult(
            args=self.args,
            returncode=self.popen.returncode if self.popen.returncode is not None else -999,
            stdout=self.text("stdout"),
            stderr=self.text("stderr"),
        )

    def wait(self, timeout: float = 60) -> DriverResult:
        """Waits for the exit; on timeout kills the driver and fails the test: the timeout
        is the hang detector, never a measurement."""
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.popen.wait(10)
            pytest.fail(f"driver did not exit within {timeout}s; killed it\n{self.result(2)}")
        # Children of the driver that keep its pipes open would stall the readers; the
        # leak check reports them, so do not wait for them for long here.
        return self.result()

    def close(self) -> None:
        """Kills the driver if it still runs (a test that failed half-way) and closes its
        pipes. What the driver left behind stays for the leak check to report."""
        if self.popen.poll() is None:
            self.kill()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                pass
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()


def wait_for_line(p: subprocess.Popen[str], marker: str, timeout: float = 120) -> str:
    """Reads the driver's stdout (text) until a line contains `marker` (a script's `print`);
    returns that line. When none does within `timeout` seconds, kills the driver's process
    group (`p` runs in a session of its own) and fails the test."""
    found: list[str] = []

    def read() -> None:
        for line in p.stdout or ():
            if marker in line:
                found.append(line)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if found:
        return found[0]
    procs.kill_group(p.pid)
    reader.join(10)
    pytest.fail(f"the driver never printed {marker!r} within {timeout}s")
