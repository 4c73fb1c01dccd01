"""The `debug` symbol: breakpoints that a developer attaches to over TCP, as upstream's
`--debug-hook-attach` does (there with remote-pdb; here with the standard library's pdb on a
socket).

A breakpoint logs `!!! Breakpoint reached, run 'sudo <attach command> <pattern>'`, runs
`sleep <pattern>` (nixpkgs' breakpointHook attach script finds the build's sandbox by that
process), and waits on 127.0.0.1:4444 (`telnet 127.0.0.1 4444` or `nc 127.0.0.1 4444` inside
the sandbox). Unlike upstream, the port is not open to every local user: the log line
`pdb is waiting for a connection on 127.0.0.1:4444; send the secret <secret> as the first
line` names a fresh random secret, and a client whose first line is not that secret is
logged and disconnected (the driver keeps waiting for the right one). The right client gets
a pdb prompt; `c` (continue) or `q` ends the session.
"""

from __future__ import annotations

import hmac
import os
import pdb
import random
import secrets
import shutil
import socket
import subprocess
import sys
from types import FrameType, TracebackType
from typing import Any

__all__ = ["Debug", "DebugNop"]

HOST = "127.0.0.1"
PORT = 4444
# How long a client has to send the secret line, and how long that line may be.
SECRET_TIMEOUT = 10.0
SECRET_MAX = 256


class DebugNop:
    """`debug` when no debug hook is configured: breakpoints do nothing."""

    def breakpoint(self, host: str = HOST, port: int = PORT) -> None:
        pass

    def post_mortem(self, tb: TracebackType | None) -> None:
        pass


class _SocketPdb(pdb.Pdb):
    """pdb on a connected socket; leaving the debugger closes it."""

    def __init__(self, conn: socket.socket, on_close: Any, prefer_file: str | None = None) -> None:
        self._prefer_file = prefer_file
        self._conn = conn
        self._file = conn.makefile("rw", buffering=1, encoding="utf-8", errors="replace")
        self._on_close = on_close
        super().__init__(stdin=self._file, stdout=self._file)
        self.use_rawinput = False
        self.prompt = "(Pdb) "

    def setup(self, f: FrameType | None, tb: TracebackType | None) -> None:
        super().setup(f, tb)
        # Start in the test script's innermost frame, not in the library that raised.
        for i in range(len(self.stack) - 1, -1, -1):
            frame = self.stack[i][0]
            if frame.f_code.co_filename == self._prefer_file:
                self.curindex = i
                self.curframe = frame
                self.curframe_locals = frame.f_locals
                break

    @property
    def closed(self) -> bool:
        return self._file.closed

    def close(self) -> None:
        try:
            self._file.close()
            self._conn.close()
        finally:
            self._on_close()

    def do_continue(self, arg: str) -> bool | None:
        result = super().do_continue(arg)
        self.close()
        return result

    do_c = do_cont = do_continue

    def do_quit(self, arg: str) -> bool | None:
        result = super().do_quit(arg)
        self.close()
        return result

    do_q = do_exit = do_quit


class Debug:
    """`debug` with `--debug-hook-attach CMD`: a breakpoint on request and on failures."""

    def __init__(self, logger: Any, attach_command: str, script_path: str | None = None) -> None:
        self.logger = logger
        self.attach_command = attach_command
        self.script_path = script_path

    def _open(self, host: str, port: int) -> tuple[socket.socket, Any]:
        pattern = str(random.randint(1_000_000, 9_999_999))
        self.logger.log_test_error(
            f"Breakpoint reached, run 'sudo {self.attach_command} {pattern}'"
        )
        os.environ["bashInteractive"] = shutil.which("bash") or "/bin/bash"
        sleeper = subprocess.Popen(["sleep", pattern], stdin=subprocess.DEVNULL)
        secret = secrets.token_urlsafe(24)
        with socket.create_server((host, port)) as server:
            self.logger.log(
                f"pdb is waiting for a connection on {host}:{port}; "
                f"send the secret {secret} as the first line"
            )
            conn = self._accept_with_secret(server, secret)

        def stop_sleeper() -> None:
            sleeper.kill()
            sleeper.wait()

        return conn, stop_sleeper

    def _accept_with_secret(self, server: socket.socket, secret: str) -> socket.socket:
        """The first connection whose first line is `secret`; others are logged and closed."""
        while True:
            conn, peer = server.accept()
            line = _first_line(conn)
            if line is not None and hmac.compare_digest(line, secret.encode()):
                conn.settimeout(None)
                return conn
            self.logger.log(
                f"pdb: refused a connection from {peer[0]}:{peer[1]}: "
                "its first line was not the secret"
            )
            conn.close()

    def breakpoint(self, host: str = HOST, port: int = PORT) -> None:
        """Stop here and wait for a debugger connection."""
        frame: FrameType | None = sys._getframe(1)
        conn, done = self._open(host, port)
        _SocketPdb(conn, done).set_trace(frame)

    def post_mortem(self, tb: TracebackType | None) -> None:
        """Open a debugger on a failure's traceback and wait until it is left."""
        conn, done = self._open(HOST, PORT)
        debugger = _SocketPdb(conn, done, self.script_path)
        try:
            debugger.reset()
            debugger.interaction(None, tb)
        finally:
            if not debugger.closed:
                debugger.close()


def _first_line(conn: socket.socket) -> bytes | None:
    """The first line `conn` sends (without its line ending), or None when it sends none in
    time or too long a one."""
    conn.settimeout(SECRET_TIMEOUT)
    line = b""
    try:
        # A byte at a time: what follows the line (pdb commands) stays in the socket.
        while len(line) <= SECRET_MAX:
            byte = conn.recv(1)
            if not byte:
                return None
            if byte == b"\n":
                return line.rstrip(b"\r")
            line += byte
    except OSError:
        return None
    return None
