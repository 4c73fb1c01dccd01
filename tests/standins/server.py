"""Serving an API on a unix socket (HTTP/1.1, keep-alive) and the stand-in's life: it ends on
SIGTERM/SIGINT (stopping the VM, then dying of the signal as the real VMMs do), when the VM
exits (with the VM's status), or when the API asks it to (Cloud Hypervisor's vmm.shutdown)."""

from __future__ import annotations

import os
import signal
import socketserver
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Protocol

#: How often the main loop asks whether the VM has exited (the Runner protocol is polled).
POLL_S = 0.05


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"


class Api(Protocol):
    def handle(self, method: str, path: str, body: bytes | None) -> Response: ...

    def exit_status(self) -> int | None:
        """The status to exit with, once the VM has exited or the API was told to end."""
        ...

    def stop(self) -> None:
        """Stops the VM, if one runs (at the stand-in's end)."""
        ...


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False


def _handler_class(api: Api, lock: threading.Lock, server_name: str):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = server_name
        sys_version = ""

        def log_message(self, format: str, *args) -> None:  # noqa: A002
            pass

        def _serve(self) -> None:
            length = self.headers.get("Content-Length")
            body = None
            if length is not None:
                try:
                    size = int(length)
                except ValueError:
                    self.send_error(400, "bad Content-Length")
                    return
                body = self.rfile.read(size) if size > 0 else None
            # The answer is written under the lock too, so that the main loop sees an exit
            # the request caused (vmm.shutdown) only once the client has its answer.
            with lock:
                answer = api.handle(self.command, self.path, body)
                self.send_response(answer.status)
                if answer.status not in (204, 304):
                    self.send_header("Content-Type", answer.content_type)
                    self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                if answer.status not in (204, 304):
                    self.wfile.write(answer.body)
                self.wfile.flush()

        do_GET = do_PUT = do_PATCH = do_POST = do_DELETE = _serve

    return Handler


class SocketInUse(Exception):
    """The API socket path already exists."""


def serve(api: Api, socket_path: str, server_name: str, replace_stale: bool = False) -> int:
    """Serves `api` on `socket_path` until the stand-in ends; returns the exit status (a
    signal ends the process by the signal instead, after cleaning up)."""
    if os.path.exists(socket_path):
        if not replace_stale:
            raise SocketInUse(socket_path)
        os.unlink(socket_path)
    lock = threading.Lock()
    stop = threading.Event()
    caught: list[int] = []

    def on_signal(signum, _frame) -> None:
        caught.append(signum)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    # Bound and listening under a temporary name, then renamed: the socket appears ready. The
    # name is short, so a socket path near the 107-byte limit still fits.
    temporary = os.path.join(os.path.dirname(socket_path), f".{os.getpid()}.tmp")
    server = _Server(temporary, _handler_class(api, lock, server_name))
    os.rename(temporary, socket_path)
    thread = threading.Thread(target=server.serve_forever, name="api", daemon=True)
    thread.start()
    status: int | None = None
    try:
        while not caught:
            with lock:
                status = api.exit_status()
            if status is not None:
                break
            stop.wait(POLL_S)
    finally:
        server.shutdown()
        server.server_close()
        try:
            os.unlink(socket_path)
        except FileNotFoundError:
            pass
        with lock:
            api.stop()
    if caught:
        sys.stdout.flush()
        signal.signal(caught[0], signal.SIG_DFL)
        os.kill(os.getpid(), caught[0])
    return status if status is not None else 0
