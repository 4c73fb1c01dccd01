"""The VMMs' hybrid vsock socket, emulated over QEMU's user-mode network.

Firecracker and Cloud Hypervisor give the host the guest's vsock as a unix socket (`uds_path`):
a client connects, sends `CONNECT <port>\\n`, is answered `OK <host port>\\n` once the guest
accepted, and the stream is then the guest's connection; when nothing listens on the port the
VMM closes the connection without an answer. The stand-ins cannot use vhost-device-vsock (QEMU
refuses to migrate a vhost-user-vsock device, and the daemon stops carrying traffic after QEMU's
stop/cont), so their QEMU has a user-mode NIC forwarding a host port on 127.0.0.1 to each guest
port served (`hostfwd=tcp:127.0.0.1:<host port>-10.0.2.15:<guest port>`; the agent listens on
TCP there with `ntng.agent=tcp`), and this server maps `CONNECT <port>` onto that forward.

One difference from a VMM: QEMU's user-mode network (slirp) accepts the host side of a
forwarded connection at once and only then connects to the guest, so the host gets no sign of
the guest's accept. The answer `OK` is therefore sent when the guest has sent its first bytes
(they follow the `OK` line); a guest that refuses (nothing listens, slirp gets a reset) closes
the connection without an answer, as a VMM does. A guest service that waits for the host to
speak first is never answered: every service behind the stand-ins' vsock (the agent, which
sends HELLO on every connection) speaks first.
"""

from __future__ import annotations

import itertools
import os
import select
import socket
import stat
import threading
from collections.abc import Mapping

#: The longest `CONNECT <port>` line read before the connection counts as garbage.
MAX_LINE = 64
#: The first host port number of the `OK` answers (Firecracker's local ports start there too).
FIRST_LOCAL_PORT = 1 << 30
CHUNK = 64 * 1024


class HybridVsockServer:
    """Serves `uds_path`; `forwards` maps guest vsock ports to host TCP ports on 127.0.0.1
    (replaced by `set_forwards` when a restore starts a new QEMU with new host ports)."""

    def __init__(self, uds_path: str, forwards: Mapping[int, int]) -> None:
        self.uds_path = uds_path
        self._forwards = dict(forwards)
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._local_ports = itertools.count(FIRST_LOCAL_PORT)
        self._closed = False
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            _remove_stale_socket(uds_path)
            self._listener.bind(uds_path)
            self._listener.listen(64)
        except OSError:
            self._listener.close()
            raise
        self._inode = os.stat(uds_path).st_ino
        self._thread = threading.Thread(target=self._accept_loop, name="hybrid-vsock", daemon=True)
        self._thread.start()

    def set_forwards(self, forwards: Mapping[int, int]) -> None:
        with self._lock:
            self._forwards = dict(forwards)

    def close(self) -> None:
        """Stops serving: the socket file goes, every connection is shut down."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            conns = list(self._open)
        try:
            # wakes the accept() blocked in the thread
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        for conn in conns:
            _shutdown(conn)
        try:
            if os.stat(self.uds_path).st_ino == self._inode:
                os.unlink(self.uds_path)
        except FileNotFoundError:
            pass
        self._thread.join(timeout=5)

    def _track(self, conn: socket.socket) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._open.add(conn)
            return True

    def _forget(self, *conns: socket.socket) -> None:
        with self._lock:
            for conn in conns:
                self._open.discard(conn)
        for conn in conns:
            conn.close()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            if not self._track(client):
                client.close()
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        guest = None
        try:
            line, rest = _read_line(client)
            port = _parse_connect(line)
            with self._lock:
                host_port = self._forwards.get(port) if port is not None else None
            if host_port is None:
                return  # garbage, or no such port in the guest: closed without an answer
            try:
                guest = socket.create_connection(("127.0.0.1", host_port))
            except OSError:
                return  # no QEMU behind the forward (it is being replaced, or gone)
            if not self._track(guest):
                return
            guest.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if rest:
                guest.sendall(rest)
            first = _first_bytes_from_guest(client, guest)
            if first is None:
                return
            client.sendall(f"OK {next(self._local_ports)}\n".encode() + first)
            _splice(client, guest)
        except OSError:
            pass
        finally:
            self._forget(client, *([guest] if guest is not None else []))


def _remove_stale_socket(path: str) -> None:
    """A socket file left at `path` by an earlier run is replaced; anything else is an error
    (bind reports it)."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


def _shutdown(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _read_line(client: socket.socket) -> tuple[bytes, bytes]:
    """The first line (without its newline) and whatever came after it in the same reads."""
    data = b""
    while b"\n" not in data:
        if len(data) > MAX_LINE:
            return b"", b""
        chunk = client.recv(MAX_LINE)
        if not chunk:
            return b"", b""
        data += chunk
    line, _, rest = data.partition(b"\n")
    return line, rest


def _parse_connect(line: bytes) -> int | None:
    words = line.split(b" ")
    if len(words) != 2 or words[0] != b"CONNECT" or not words[1].isdigit():
        return None
    return int(words[1])


def _first_bytes_from_guest(client: socket.socket, guest: socket.socket) -> bytes | None:
    """Waits until the guest speaks (its first bytes) or the connection ends on either side
    (None). What the client sends meanwhile goes on to the guest."""
    while True:
        readable, _, _ = select.select([client, guest], [], [])
        if guest in readable:
            try:
                data = guest.recv(CHUNK)
            except OSError:
                return None
            return data or None
        try:
            data = client.recv(CHUNK)
        except OSError:
            return None
        if not data:
            return None
        guest.sendall(data)


def _splice(client: socket.socket, guest: socket.socket) -> None:
    """Copies both ways until both directions ended (a half-close is passed on)."""
    other = threading.Thread(target=_pump, args=(guest, client), daemon=True)
    other.start()
    _pump(client, guest)
    other.join()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(CHUNK)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        # one side broke: end both directions
        _shutdown(src)
        _shutdown(dst)
        return
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass
