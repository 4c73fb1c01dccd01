"""A program on a pseudo-terminal of its own (stdin, stdout and stderr), as a user at a
terminal runs it: what it shows, what is typed, Ctrl-C as the terminal's SIGINT."""

from __future__ import annotations

import os
import pty
import select
import signal
import time
from pathlib import Path

import pytest

CTRL_C = b"\x03"
CTRL_D = b"\x04"


class Terminal:
    """`argv` started on a new pseudo-terminal; `close()` kills what is left of it."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path | str) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child
            try:
                os.chdir(cwd)
                os.execvpe(argv[0], argv, env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.seen = b""  # shown and not yet consumed by `expect`
        self.shown = b""  # everything shown
        self.status: int | None = None

    def _read(self, timeout: float) -> bool:
        """Reads what the terminal shows within `timeout`; False at its end."""
        if not select.select([self.fd], [], [], max(timeout, 0))[0]:
            return True
        try:
            chunk = os.read(self.fd, 4096)
        except OSError:  # EIO: the last process holding the terminal is gone
            chunk = b""
        self.seen += chunk
        self.shown += chunk
        return bool(chunk)

    def expect(self, marker: bytes, timeout: float = 30) -> bytes:
        """Waits until the terminal shows `marker`; consumes what it showed up to and with
        it and returns that. `timeout` is the hang detector: the test fails."""
        deadline = time.monotonic() + timeout
        while marker not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no {marker!r} on the terminal within {timeout}s:\n{self.text()}")
            if not self._read(min(left, 0.5)):
                pytest.fail(f"the terminal closed waiting for {marker!r}:\n{self.text()}")
        end = self.seen.index(marker) + len(marker)
        upto, self.seen = self.seen[:end], self.seen[end:]
        return upto

    def type(self, data: bytes) -> None:
        os.write(self.fd, data)

    def wait(self, timeout: float = 60) -> int:
        """Reads until the program exits; its exit code (minus the signal's number for a
        death by signal). `timeout` is the hang detector."""
        deadline = time.monotonic() + timeout
        while self.status is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.status = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() >= deadline:
                pytest.fail(f"the program did not exit within {timeout}s:\n{self.text()}")
            self._read(0.1)
        # what it showed last, up to the terminal's end
        while select.select([self.fd], [], [], 0.1)[0] and self._read(0):
            pass
        return self.status

    def text(self) -> str:
        return self.shown.decode(errors="replace")

    def close(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(self.fd)

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
