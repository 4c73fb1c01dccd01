"""`--vnc`: each VM's display over VNC on 127.0.0.1, on real QEMU (the busybox guest)."""

from __future__ import annotations

import queue
import re
import socket
import threading
import time
from pathlib import Path

import pytest

# snapshots: no vhost-user vsock device (QEMU cannot save it)
pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("takes_snapshots")]

DISPLAY_LINE = re.compile(
    r"^(\w+): display on VNC 127\.0\.0\.1:(\d+) \(vncviewer 127\.0\.0\.1::\2\)$"
)

SCRIPT = """
import os, time

def wait_for_file(path):
    while not os.path.exists(path):
        time.sleep(0.1)

start_all()
server.succeed("true")
client.succeed("true")
print("BOOTED", flush=True)
wait_for_file({go!r})
server.screenshot("vnc-on")
server.snapshot("s")
t.assertTrue(server.wait_for_standby(600), "no warm standby")
server.restore("s")
server.succeed("true")
print("RESTORED", flush=True)
wait_for_file({done!r})
"""


class Output:
    """Both pipes of the driver, line by line, in one queue."""

    def __init__(self, p) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.open_pipes = 2
        for pipe in (p.stdout, p.stderr):
            threading.Thread(target=self._pump, args=(pipe,), daemon=True).start()

    def _pump(self, pipe) -> None:
        for line in pipe:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, pattern: re.Pattern[str] | str, timeout: float = 300) -> re.Match[str]:
        """The next line matching `pattern` (waits for it, fails once the driver is gone)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0 and self.open_pipes, (
                f"no line matching {rx.pattern!r}; output:\n" + "\n".join(self.seen[-60:])
            )
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self.open_pipes -= 1
                continue
            self.seen.append(line)
            if m := rx.search(line):
                return m


def rfb_banner(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        banner = b""
        while not banner.endswith(b"\n"):
            chunk = s.recv(64)
            assert chunk, f"port {port} closed before its banner: {banner!r}"
            banner += chunk
        return banner


def rfb_security_types(port: int) -> list[int]:
    """The security types the server offers an RFB 3.8 client (1: none, 2: VNC password)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        f = s.makefile("rb")
        assert f.readline() == b"RFB 003.008\n"
        s.sendall(b"RFB 003.008\n")
        count = f.read(1)[0]
        return list(f.read(count))


def listeners(port: int) -> list[str]:
    """The local addresses of every socket listening on `port` (IPv4 and IPv6), in hex."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.append(address)
    return found


def test_vnc_shows_each_vm_on_loopback_and_survives_a_restore(vm_env, leftovers):
    go, done = vm_env.root / "go", vm_env.root / "done"
    p = vm_env.spawn(
        {"server": [], "client": []}, SCRIPT.format(go=str(go), done=str(done)), "--vnc"
    )
    out = Output(p)
    ports = {}
    passwords = {}
    while len(ports) + len(passwords) < 4:  # the machines' lines may interleave
        m = out.expect(rf"{DISPLAY_LINE.pattern}|^(\w+): VNC password: (\w{{8}})$")
        if m.group(1):
            ports[m.group(1)] = int(m.group(2))
        else:
            passwords[m.group(3)] = m.group(4)
    assert set(passwords) == {"server", "client"}, passwords
    assert set(ports) == {"server", "client"} and len(set(ports.values())) == 2, ports
    for name, port in ports.items():
        assert rfb_banner(port) == b"RFB 003.008\n", name
        # a password is asked: any local user reaches a loopback port
        assert rfb_security_types(port) == [2], name
        # 127.0.0.1 only: one IPv4 listener on the loopback address, none on IPv6
        assert listeners(port) == ["0100007F"], (name, listeners(port))

    out.expect("^BOOTED$")
    go.touch()
    # a warm standby takes over: the display stays where it was
    out.expect(r"^server: restored snapshot s: switched to the warm standby")
    m = out.expect(DISPLAY_LINE)
    assert (m.group(1), int(m.group(2))) == ("server", ports["server"])
    out.expect("^RESTORED$")
    assert rfb_banner(ports["server"]) == b"RFB 003.008\n"
    assert rfb_security_types(ports["server"]) == [2]
    assert listeners(ports["server"]) == ["0100007F"]
    done.touch()

    assert p.wait(timeout=300) == 0, "\n".join(out.seen[-80:])
    png = vm_env.out / "vnc-on.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # screenshots work with VNC on
    assert not leftovers(vm_env.root, wait=3)
