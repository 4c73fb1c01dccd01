#!/usr/bin/env python3
"""A fake `qemu-system-*` for driver-level tests: no VM, answers in milliseconds.

A start script runs it as QEMU, with the arguments the driver appends
(`QemuBackend::appended_args`):

    -qmp unix:<state>/qmp,server=on,wait=off -monitor unix:<state>/monitor
    -chardev socket,id=shell,path=<state>/shell -device virtio-serial
    -device virtconsole,chardev=shell -device virtio-rng-pci -serial stdio
    [-no-reboot] [-nographic] [-vnc 127.0.0.1:N,to=99,password=on]

and it plays QEMU's part of the contract:

- QMP: listens on `<state>/qmp`, greets with a line containing "QMP", answers
  `qmp_capabilities`, `query-status`, `stop`, `cont`, `human-monitor-command`, `quit`,
  `query-vnc` (display N of its `-vnc` argument, not listened on), `change-vnc-password`
  (echoing each request's `id`) and sends events (`STOP`, `RESUME`, `SHUTDOWN`, ...).
- HMP monitor: connects to `<state>/monitor`, prints a banner ending in `(qemu) `, answers
  each line with its echo, some text and a new prompt. `quit` exits; `stop`/`cont` emit QMP
  events; `set_link`, `hostfwd_add`, `sendkey`, `info status` and a few more are accepted.
- Serial console: boot messages on stdout; each stdin line (`send_console`) is echoed.
- Shell backdoor: connects to `<state>/shell`, prints some noise and then
  `Spawning backdoor root shell...`, as NixOS's backdoor.service does, and relays the socket
  to `bash --norc` (stdin/stdout), whose stderr is the serial console. The relay makes the
  socket QEMU's, not the guest's: when the fake dies the driver sees the shell close, however
  many guest processes still run, as with a real VM.

The guest runs in its own PID namespace when `unshare` allows it (so every guest process dies
with the fake, like processes inside a VM), and under `setpriv --pdeathsig KILL` in any case.
The guest's `$FAKE_QEMU_DISK` is a directory in the state directory (`<state>/fake-disk`)
that plays the VM's disk: it outlives a restart of QEMU, not the state directory's deletion.
In the guest, `poweroff` makes the fake exit 0 (after a `SHUTDOWN` event), and
`fake-qemu-ctl CMD` sends a command to the fake (see `control`): `poweroff`,
`crash [STATUS]`, `event NAME [JSON-DATA]`, `console TEXT`.

Knobs (environment variables):

    FAKE_QEMU_NO_HANDSHAKE=1     never print the handshake; keep printing console lines
    FAKE_QEMU_EXIT_EARLY=N       exit with status N before connecting to anything
    FAKE_QEMU_BOOT_DELAY=SECS    boot this long before the handshake (console lines meanwhile)
    FAKE_QEMU_PANIC=N            connect, boot, then die with status N before the handshake
    FAKE_QEMU_CONSOLE=TEXT       extra console lines (`\\n`-separated) printed while booting
    FAKE_QEMU_RECORD=PATH        append JSON lines: argv/env at start, every monitor and QMP
                                 command, the exit
    FAKE_QEMU_PIDNS=0            do not put the guest in a PID namespace
    FAKE_QEMU_VNC=0              `query-vnc` says VNC is off even with a `-vnc` argument
    FAKE_QEMU_SAVEVM_ERROR=TEXT  refuse `savevm` with `Error: TEXT`, as QEMU does for a VM it
                                 cannot save (a mounted 9p share, no disk for the state)
    FAKE_QEMU_INITRD=1           play a systemd initrd with a backdoor: the guest gets a fake
                                 `systemctl` whose `show initrd.target` is active and whose
                                 `isolate ... initrd-switch-root.target` replaces the guest's
                                 shell by a new one with a new handshake (`switch_root`)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for `support`

from nixos_test_ng import procs  # noqa: E402
from support.qemu_args import MissingSockets, Sockets  # noqa: E402

HANDSHAKE = b"Spawning backdoor root shell...\n"

# The initrd's systemctl (FAKE_QEMU_INITRD=1): the root file system's shell has none.
FAKE_INITRD_SYSTEMCTL = """#!/bin/sh
case "$*" in
*"show"*initrd.target*ActiveState*) echo ActiveState=active ;;
*"show"*initrd.target*) printf 'Id=initrd.target\\nActiveState=active\\n' ;;
*"isolate --no-block initrd-switch-root.target"*) echo switch-root > "$FAKE_QEMU_CTL" ;;
*) echo "fake initrd systemctl: unexpected: $*" >&2; exit 1 ;;
esac
"""
PROMPT = "(qemu) "
BANNER = "QEMU 8.2.99 monitor - type 'help' for more information\r\n"
QMP_GREETING = {
    "QMP": {
        "version": {"qemu": {"micro": 99, "minor": 2, "major": 8}, "package": "fake"},
        "capabilities": ["oob"],
    }
}
BOOT_LINES = [
    "SeaBIOS (version fake-1.16)",
    "Booting from ROM...",
    "[    0.000000] Linux version 6.1.0-fake (fake@qemu) #1 SMP PREEMPT_DYNAMIC",
    "[    0.000000] Command line: console=ttyS0 panic=1 boot.panic_on_fail",
    "[    0.412345] Run /init as init process",
    "<<< FakeOS Stage 1 >>>",
    "[    1.000000] systemd[1]: Welcome to FakeOS 24.11 (Fake)!",
]


class Fake:
    """The whole fake QEMU process."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        sockets = Sockets.parse(argv)
        self.qmp_path, self.monitor_path = sockets.qmp, sockets.monitor
        self.shell_path = sockets.shell
        self.state_dir = Path(self.qmp_path).parent
        self.disk = self.state_dir / "fake-disk"
        self.record_path = os.environ.get("FAKE_QEMU_RECORD") or None
        self.record_lock = threading.Lock()
        self.out_lock = threading.Lock()
        self.exit_lock = threading.Lock()
        self.exit_request: tuple[int, str] | None = None
        self.exit_event = threading.Event()
        self.qmp_clients: list[socket.socket] = []
        self.qmp_lock = threading.Lock()
        self.guest: subprocess.Popen[bytes] | None = None
        self.relay_lock = threading.Lock()
        self.finishing = False
        self.shells = 0  # guest shells started so far (switch_root starts another)
        self.running = True

    # -- bookkeeping -------------------------------------------------------------------------

    def record(self, event: str, **fields: object) -> None:
        if not self.record_path:
            return
        line = json.dumps({"event": event, "time": time.time(), **fields}) + "\n"
        with self.record_lock, open(self.record_path, "a", encoding="utf-8") as f:
            f.write(line)

    def console(self, line: str | bytes) -> None:
        """Prints one line on the serial console (stdout)."""
        data = line if isinstance(line, bytes) else line.encode("utf-8", "surrogateescape")
        with self.out_lock:
            try:
                os.write(1, data + b"\r\n")
            except OSError:
                self.request_exit(1, "stdout closed")

    def request_exit(self, status: int, reason: str) -> None:
        with self.exit_lock:
            if self.exit_request is None:
                self.exit_request = (status, reason)
        self.exit_event.set()

    # -- QMP ---------------------------------------------------------------------------------

    def qmp_event(self, name: str, data: object = None) -> None:
        now = time.time()
        msg: dict[str, object] = {
            "event": name,
            "timestamp": {"seconds": int(now), "microseconds": int(now % 1 * 1e6)},
        }
        if data is not None:
            msg["data"] = data
        line = (json.dumps(msg) + "\r\n").encode()
        with self.qmp_lock:
            for c in list(self.qmp_clients):
                try:
                    c.sendall(line)
                except OSError:
                    self.qmp_clients.remove(c)

    def serve_qmp(self, server: socket.socket) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=self.qmp_session, args=(conn,), daemon=True).start()

    def qmp_send(self, conn: socket.socket, msg: dict[str, object]) -> None:
        with self.qmp_lock:
            conn.sendall((json.dumps(msg) + "\r\n").encode())

    def qmp_session(self, conn: socket.socket) -> None:
        self.qmp_send(conn, QMP_GREETING)
        negotiated = False
        for raw in conn.makefile("rb"):
            try:
                req = json.loads(raw)
            except ValueError:
                self.qmp_send(
                    conn, {"error": {"class": "GenericError", "desc": "JSON parse error"}}
                )
                continue
            cmd = req.get("execute")
            args = req.get("arguments") or {}
            self.record("qmp", execute=cmd, arguments=args, id=req.get("id"))
            reply: dict[str, object]
            after = None
            if cmd == "qmp_capabilities":
                negotiated = True
                with self.qmp_lock:
                    self.qmp_clients.append(conn)
                reply = {"return": {}}
            elif not negotiated:
                reply = {
                    "error": {
                        "class": "CommandNotFound",
                        "desc": "Expecting capabilities negotiation with 'qmp_capabilities'",
                    }
                }
            elif cmd == "query-status":
                reply = {
                    "return": {
                        "status": "running" if self.running else "paused",
                        "singlestep": False,
                        "running": self.running,
                    }
                }
            elif cmd in ("stop", "cont"):
                # as QEMU: the STOP/RESUME event goes out before the command's reply
                self.set_running(cmd == "cont")
                reply = {"return": {}}
            elif cmd == "query-vnc":
                reply = {"return": self.vnc_info()}
            elif cmd == "change-vnc-password":
                reply = {"return": {}}
            elif cmd == "human-monitor-command":
                text, after = self.hmp(str(args.get("command-line", "")))
                reply = {"return": text}
            elif cmd == "quit":
                reply = {"return": {}}
                after = lambda: self.quit("host-qmp-quit")  # noqa: E731
            else:
                reply = {
                    "error": {
                        "class": "CommandNotFound",
                        "desc": f"The command {cmd} has not been found",
                    }
                }
            if "id" in req:
                reply["id"] = req["id"]
            self.qmp_send(conn, reply)
            if after is not None:
                after()

    def vnc_info(self) -> dict[str, object]:
        """`query-vnc`'s answer for the `-vnc HOST:N[,...]` argument."""
        pairs = zip(self.argv, self.argv[1:], strict=False)
        value = next((v for f, v in pairs if f == "-vnc"), None)
        if value is None or os.environ.get("FAKE_QEMU_VNC") == "0":
            return {"enabled": False, "clients": []}
        host, display = value.split(",")[0].rsplit(":", 1)
        return {
            "enabled": True,
            "host": host,
            "service": str(5900 + int(display)),
            "family": "ipv4",
            "auth": "vnc" if "password=on" in value.split(",") else "none",
            "clients": [],
        }

    def set_running(self, running: bool) -> None:
        self.running = running
        self.qmp_event("RESUME" if running else "STOP")

    def quit(self, reason: str) -> None:
        self.qmp_event("SHUTDOWN", {"guest": False, "reason": reason})
        self.request_exit(0, "quit")

    # -- HMP monitor -------------------------------------------------------------------------

    def hmp(self, line: str):
        """Answers one monitor line: (text, action to run after the answer)."""
        self.record("monitor", command=line)
        words = line.split()
        cmd = words[0] if words else ""
        if cmd == "":
            return "", None
        if cmd in ("quit", "q"):
            return "", lambda: self.quit("host-qmp-quit")
        if cmd in ("stop", "cont", "c"):
            self.set_running(cmd != "stop")  # the event before the answer, as QEMU
            return "", None
        if cmd == "info" and words[1:2] == ["status"]:
            return f"VM status: {'running' if self.running else 'paused'}\r\n", None
        if cmd == "info" and words[1:2] == ["name"]:
            return "fake\r\n", None
        if cmd == "savevm" and os.environ.get("FAKE_QEMU_SAVEVM_ERROR"):
            return f"Error: {os.environ['FAKE_QEMU_SAVEVM_ERROR']}\r\n", None
        if cmd == "system_powerdown":
            return "", lambda: self.control("poweroff")
        if cmd in ("set_link", "hostfwd_add", "hostfwd_remove", "sendkey", "screendump"):
            if cmd == "set_link" and (len(words) != 3 or words[2] not in ("on", "off")):
                return "Error: invalid parameter\r\n", None
            return "", None
        if cmd == "help":
            return "quit|q  -- quit the emulator\r\n", None
        return f"unknown command: '{cmd}'\r\n", None

    def serve_monitor(self, conn: socket.socket) -> None:
        conn.sendall((BANNER + PROMPT).encode())
        buf = b""
        while True:
            try:
                chunk = conn.recv(4096)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                line = raw.decode("utf-8", "replace").rstrip("\r")
                text, after = self.hmp(line)
                if after is not None and line.split()[:1] in (["quit"], ["q"]):
                    # QEMU closes the monitor without a new prompt.
                    after()
                    return
                conn.sendall(f"{line}\r\n{text}{PROMPT}".encode())
                if after is not None:
                    after()

    # -- control channel (from the guest) ----------------------------------------------------

    def control(self, line: str) -> None:
        """A command from the guest (`poweroff`, `fake-qemu-ctl ...`) or the monitor."""
        words = line.split(maxsplit=2)
        if not words:
            return
        self.record("control", command=line)
        if words[0] == "poweroff":
            self.console("[   42.000000] reboot: Power down")
            self.qmp_event("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})
            self.request_exit(0, "poweroff")
        elif words[0] == "crash":
            status = int(words[1]) if len(words) > 1 else 1
            self.console("[   42.000000] Kernel panic - not syncing: fake crash")
            self.request_exit(status, "crash")
        elif words[0] == "event":
            data = json.loads(words[2]) if len(words) > 2 else None
            self.qmp_event(words[1], data)
        elif words[0] == "switch-root":
            threading.Thread(target=self.switch_root, daemon=True).start()
        elif words[0] == "console":
            self.console(line.split(maxsplit=1)[1] if len(words) > 1 else "")

    def serve_control(self, fifo: Path) -> None:
        # O_RDWR: reads never see end of file when a writer closes.
        fd = os.open(fifo, os.O_RDWR)
        with os.fdopen(fd, "rb", buffering=0) as f:
            buf = b""
            while True:
                chunk = f.read(4096)
                if not chunk:
                    return
                buf += chunk
                while b"\n" in buf:
                    raw, buf = buf.split(b"\n", 1)
                    self.control(raw.decode("utf-8", "replace").strip())

    # -- serial input ------------------------------------------------------------------------

    def serve_stdin(self) -> None:
        while True:
            try:
                data = os.read(0, 4096)
            except OSError:
                return
            if not data:
                return
            for line in data.splitlines():
                self.console(b"serial input: " + line)

    # -- the guest ---------------------------------------------------------------------------

    def guest_tools(self) -> tuple[Path, Path]:
        """`<state>/fake-qemu/{bin,ctl}`: `poweroff` and `fake-qemu-ctl` for the guest."""
        base = self.state_dir / "fake-qemu"
        bindir = base / "bin"
        bindir.mkdir(parents=True, exist_ok=True)
        ctl = base / "ctl"
        if not ctl.exists():
            os.mkfifo(ctl, 0o600)
        tools = {
            "fake-qemu-ctl": '#!/bin/sh\necho "$*" > "$FAKE_QEMU_CTL"\n',
            "poweroff": '#!/bin/sh\necho poweroff > "$FAKE_QEMU_CTL"\nsleep 60\n',
            "reboot": '#!/bin/sh\necho poweroff > "$FAKE_QEMU_CTL"\nsleep 60\n',
        }
        if os.environ.get("FAKE_QEMU_INITRD") == "1":
            tools["systemctl"] = FAKE_INITRD_SYSTEMCTL
        for name, body in tools.items():
            p = bindir / name
            p.write_text(body)
            p.chmod(p.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return bindir, ctl

    def spawn_guest(self, guest_end: socket.socket, bindir: Path, ctl: Path) -> None:
        env = dict(os.environ)
        env.update(
            PATH=f"{bindir}:{env.get('PATH', '/usr/bin:/bin')}",
            PS1="",
            USER="root",
            PAGER="",
            FAKE_QEMU_CTL=str(ctl),
            FAKE_QEMU_PID=str(os.getpid()),
            FAKE_QEMU_SHELL=str(self.shells),
            FAKE_QEMU_DISK=str(self.disk),
        )
        self.shells += 1
        # `-s` reads commands from stdin; the positional arguments only mark the process.
        bash = ["bash", "--norc", "-s", "fake-guest", str(self.state_dir)]
        cmd = ["setpriv", "--pdeathsig", "KILL", "--"]
        if os.environ.get("FAKE_QEMU_PIDNS", "1") != "0":
            cmd += pidns_command()
        fd = guest_end.fileno()
        # Forked from the main thread, which lives as long as the process: the
        # parent-death signal is tied to the forking thread.
        self.guest = subprocess.Popen(
            cmd + bash,
            stdin=fd,
            stdout=fd,
            stderr=1,  # the serial console
            env=env,
            cwd="/tmp",
            close_fds=True,
        )
        guest_end.close()

    def kill_guest(self) -> None:
        me = os.getpid()
        victims = procs.descendants([me])
        if os.getpgrp() == me:
            victims |= set(procs.marked(procs.Marker(group=me)))
        victims.discard(me)
        procs.kill(victims)

    # -- main --------------------------------------------------------------------------------

    def run(self) -> int:
        self.record("start", argv=self.argv, env=dict(os.environ), cwd=os.getcwd(), pid=os.getpid())
        early = os.environ.get("FAKE_QEMU_EXIT_EARLY")
        if early is not None:
            self.console("SeaBIOS (version fake-1.16)")
            sys.stderr.write(
                "qemu-system-x86_64: -drive file=nixos.qcow2: Could not open 'nixos.qcow2': "
                "No such file or directory (fake early exit)\n"
            )
            sys.stderr.flush()
            self.record("exit", status=int(early), reason="exit-early")
            return int(early)

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self.on_signal)

        # QMP: QEMU is the server (server=on,wait=off).
        try:
            os.unlink(self.qmp_path)
        except FileNotFoundError:
            pass
        qmp_server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        qmp_server.bind(self.qmp_path)
        qmp_server.listen(4)
        threading.Thread(target=self.serve_qmp, args=(qmp_server,), daemon=True).start()

        # Monitor and shell: the driver listens, QEMU connects.
        monitor = connect(self.monitor_path)
        shell = connect(self.shell_path)
        threading.Thread(target=self.serve_monitor, args=(monitor,), daemon=True).start()
        threading.Thread(target=self.serve_stdin, daemon=True).start()
        bindir, ctl = self.guest_tools()
        self.disk.mkdir(exist_ok=True)
        threading.Thread(target=self.serve_control, args=(ctl,), daemon=True).start()

        for line in BOOT_LINES:
            self.console(line)
        for line in os.environ.get("FAKE_QEMU_CONSOLE", "").split("\n"):
            if line:
                self.console(line)

        if os.environ.get("FAKE_QEMU_NO_HANDSHAKE") == "1":
            # Noise on the virtconsole, then nothing; the serial console keeps talking.
            shell.sendall(b"\x1b[0m[fake hvc0 noise]\r\n")
            tick = 0
            while not self.exit_event.wait(0.2):
                tick += 1
                self.console(f"[{tick * 0.2 + 1:12.6f}] waiting for device dev-hvc0.device...")
            return self.finish()

        delay = float(os.environ.get("FAKE_QEMU_BOOT_DELAY", "0") or 0)
        end = time.monotonic() + delay
        tick = 0
        while time.monotonic() < end:
            if self.exit_event.wait(min(0.2, max(0.0, end - time.monotonic()))):
                return self.finish()
            tick += 1
            self.console(f"[{tick * 0.2 + 1:12.6f}] systemd[1]: Starting fake-service-{tick}...")

        panic = os.environ.get("FAKE_QEMU_PANIC")
        if panic is not None:
            self.console("[    1.500000] Kernel panic - not syncing: VFS: Unable to mount root fs")
            self.request_exit(int(panic), "panic")
            return self.finish()

        self.console("[    2.000000] systemd[1]: Reached target Multi-User System.")
        self.console("connecting to host...")
        self.shell, self.bindir, self.ctl = shell, bindir, ctl
        host_end, guest_end = socket.socketpair()
        self.host_end = host_end
        self.spawn_guest(guest_end, bindir, ctl)
        # As the backdoor: noise may come first; nothing may follow the handshake line.
        shell.sendall(b"\x1b[0mfake virtconsole ready\r\n" + HANDSHAKE)
        threading.Thread(target=self.relay_to_guest, daemon=True).start()
        threading.Thread(target=self.relay_from_guest, args=(host_end,), daemon=True).start()
        threading.Thread(target=self.watch_guest, daemon=True).start()
        self.console("FakeOS login: ")
        while not self.exit_event.wait(0.5):
            pass
        return self.finish()

    def relay_to_guest(self) -> None:
        """The virtconsole's input goes to whichever guest shell runs now."""
        while True:
            try:
                data = self.shell.recv(1 << 18)
            except OSError:
                return
            if not data:
                return
            try:
                self.host_end.sendall(data)
            except OSError:
                pass

    def switch_root(self) -> None:
        """The initrd's shell goes; the real root's backdoor says hello on the same console."""
        old, guest = self.host_end, self.guest
        host_end, guest_end = socket.socketpair()
        self.host_end = host_end
        if guest is not None:
            guest.kill()
            guest.wait()
        old.close()
        self.console("[    3.000000] systemd[1]: Switching root.")
        self.spawn_guest(guest_end, self.bindir, self.ctl)
        self.shell.sendall(b"fake root virtconsole ready\r\n" + HANDSHAKE)
        threading.Thread(target=self.relay_from_guest, args=(host_end,), daemon=True).start()
        threading.Thread(target=self.watch_guest, daemon=True).start()
        # The guest's parent-death signal is tied to the thread that forked it: stay.
        self.exit_event.wait()

    def relay_from_guest(self, src: socket.socket) -> None:
        """The guest shell's output to the virtconsole; its end closes the console unless a
        new shell (switch_root) has taken over."""
        while True:
            try:
                data = src.recv(1 << 18)
            except OSError:
                data = b""
            if not data:
                if src is self.host_end:
                    try:
                        self.shell.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                return
            with self.relay_lock:
                if self.finishing:
                    return
                try:
                    self.shell.sendall(data)
                except OSError:
                    return

    def watch_guest(self) -> None:
        guest = self.guest
        if guest is not None:
            status = guest.wait()
            self.record("guest-exit", status=status)
            self.console(f"[   99.000000] fake: backdoor shell exited with status {status}")

    def on_signal(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        self.console(f"qemu-system-x86_64: terminating on signal {signum} ({name})")
        self.request_exit(0, f"signal {name}")

    def finish(self) -> int:
        status, reason = self.exit_request or (0, "unknown")
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        # A QEMU that ends relays nothing more: not what its guest prints while it is killed.
        with self.relay_lock:
            self.finishing = True
        self.kill_guest()
        self.record("exit", status=status, reason=reason)
        return status


def connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + 10
    while True:
        try:
            s.connect(path)
            return s
        except OSError as e:
            if time.monotonic() > deadline:
                sys.stderr.write(f"qemu-system-x86_64: -chardev socket: {path}: {e}\n")
                sys.exit(1)
            time.sleep(0.01)


_pidns: list[str] | None = None


def pidns_command() -> list[str]:
    """The `unshare` prefix that puts the guest in its own PID namespace (as root, else in
    a user namespace), or [] when neither works here."""
    global _pidns
    if _pidns is None:
        _pidns = []
        base = ["unshare", "--pid", "--fork", "--kill-child=KILL"]
        for prefix in (base, [*base, "--user", "--map-root-user"]):
            try:
                ok = (
                    subprocess.run(
                        [*prefix, "--", "true"],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        timeout=5,
                    ).returncode
                    == 0
                )
            except (OSError, subprocess.SubprocessError):
                ok = False
            if ok:
                _pidns = [*prefix, "--"]
                break
    return _pidns


def main() -> None:
    try:
        fake = Fake(sys.argv[1:])
    except MissingSockets as e:
        sys.stderr.write(f"fake_qemu: {e}\n")
        sys.exit(1)
    status = fake.run()
    sys.stdout.flush()
    os._exit(status)


if __name__ == "__main__":
    main()
