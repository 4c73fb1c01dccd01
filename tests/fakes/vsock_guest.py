#!/usr/bin/env python3
"""A fake guest behind a VMM's hybrid vsock socket, for driver-level tests of the VMM
backends with the API stand-ins' fake runner (which runs no guest).

    vsock_guest.py VSOCK_PATH AGENT_BINARY WORK_DIR

It runs the real guest agent (`nixos-test-ng-agent --listen unix:WORK_DIR/agent.sock`) on the
host and serves VSOCK_PATH as Firecracker does: a connection that sends `CONNECT <port>\\n`
is answered `OK <host port>\\n` and then carries the agent's stream (each `CONNECT` line is
appended to WORK_DIR/connects). The socket is bound
again whenever its path disappears (the driver removes a stale one before each VMM start,
and the machine's state directory is made anew), so it outlives a restore's new VMM process.
It runs until killed; the agent dies with it (its parent-death signal).

The "guest" is the host: its commands run on the host as the test's user, so a test must
never ask it to power off or reboot (`shutdown()`, `poweroff`).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time

HOST_PORT = 1073741824


def pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(conn: socket.socket, agent_socket: str) -> None:
    line = b""
    while not line.endswith(b"\n") and len(line) < 100:
        byte = conn.recv(1)
        if not byte:
            conn.close()
            return
        line += byte
    if not line.startswith(b"CONNECT "):
        conn.close()
        return
    agent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        agent.connect(agent_socket)
    except OSError:
        conn.close()
        return
    with open(os.path.join(os.path.dirname(agent_socket), "connects"), "a") as log:
        log.write(line.decode(errors="replace"))
    conn.sendall(f"OK {HOST_PORT}\n".encode())
    threading.Thread(target=pump, args=(conn, agent), daemon=True).start()
    pump(agent, conn)


def set_pdeathsig() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def main(vsock_path: str, agent_binary: str, work: str) -> None:
    agent_socket = os.path.join(work, "agent.sock")
    subprocess.Popen(
        [agent_binary, "--listen", f"unix:{agent_socket}"],
        preexec_fn=set_pdeathsig,
        stdin=subprocess.DEVNULL,
    )
    listener: socket.socket | None = None
    while True:
        if not os.path.exists(vsock_path) and os.path.isdir(os.path.dirname(vsock_path)):
            if listener is not None:
                listener.close()
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(vsock_path)
            listener.listen(16)
            listener.settimeout(0.01)
        if listener is None:
            time.sleep(0.01)
            continue
        try:
            conn, _ = listener.accept()
        except (TimeoutError, OSError):
            continue
        conn.settimeout(None)
        threading.Thread(target=serve, args=(conn, agent_socket), daemon=True).start()


if __name__ == "__main__":
    main(*sys.argv[1:4])
