"""The stand-ins' VM side: the guest under QEMU (TCG), driven through QMP.

`NTNG_STANDIN_RUNNER=qemu` selects it. `QemuRunner` implements the `Runner` protocol of `runner.py`.
Its QEMU:

- `qemu-system-x86_64 -accel tcg -M pc -nodefaults`: the `pc` machine, not `microvm`. The
  built-in guests find their devices on PCI (their /init loads `virtio_pci` and then the drivers
  of the virtio devices it finds there; the busybox guest ships no `virtio_mmio`, so under
  microvm it would find no device at all), and `pc` has the i8042 keyboard that `ctrl_alt_del`
  presses (QMP `send-key`) and the ACPI power button of `power_button` (`system_powerdown`;
  the built-in guests have no ACPI button driver, so there it does nothing). Since the devices
  are on PCI, a `pci=off` in the command line (Firecracker's default boot arguments have it)
  is dropped.
- the spec's kernel (`-kernel`: the busybox guest's uncompressed vmlinux boots through PVH),
  initrd, command line plus `ntng.agent=tcp`, vCPUs and memory; the disks as virtio-blk
  (`if=virtio`, the root disk first: `/dev/vda`; no image locking, as the VMMs take none); one
  TAP NIC per network interface (`-netdev tap,ifname=<tap>,script=no,downscript=no` + virtio-net
  with the spec's MAC; no NIC has an option ROM: the firmware would spend seconds of TCG on
  iPXE for nothing); the console on `-serial stdio` (the stand-in's stdout), a file, or none;
  `-nographic`, QMP on `<state dir>/qmp.sock`;
- the user-mode NIC (MAC 52:54:00:12:34:56, first, so the guest calls it eth0) that carries the
  hybrid vsock: `hostfwd=tcp:127.0.0.1:<free port>-10.0.2.15:7001`, `restrict=on` (the guest
  reaches nothing through it); `hybrid_vsock.py` serves the spec's vsock `uds_path` on it;
- what a guest reboot does follows the VMM: Firecracker ends when its guest reboots
  (`-action reboot=shutdown`, which is what `-no-reboot` means: QEMU exits with status 0),
  Cloud Hypervisor resets the VM and goes on (`-action reboot=reset`). `reboot` (Cloud
  Hypervisor's vm.reboot) is QMP `system_reset` under `reboot=reset` for both; `shutdown`
  kills QEMU; `pause`/`resume` are QMP `stop`/`cont`.

Snapshots are QEMU migrations to a file: `snapshot` (VM paused, as both VMMs require) migrates
to `exec:cat > <state file>`; QEMU's migration stream holds the memory together with the device
state, so the memory file only gets a marker naming the state file, and `diff` makes no
difference (always a full snapshot). QEMU refuses a second migration before the VM ran again,
so a second snapshot while still paused is a copy of the first (the VM has not changed).
`restore` starts a new QEMU with the same devices and
`-incoming defer`, then `migrate-incoming` from the state file; the user-mode network's
connections are not part of the stream, so the agent's connections end at a restore (as
Firecracker's vsock connections do after a snapshot load) and the client connects again.

QEMU runs in a process group of its own, as a child of the stand-in that dies with it: killed
(the whole group) at `shutdown`, at the stand-in's exit (`atexit`; SIGTERM/SIGINT go through the
API's stop, which calls `shutdown`), and by the kernel (PR_SET_PDEATHSIG) when the stand-in is
SIGKILLed. QEMU's own messages go to `qemu.log` in the runner's state directory (a temporary
directory, under $TMPDIR), and into the error when a start fails.

Environment: `NTNG_STANDIN_QEMU` names the QEMU binary (default `qemu-system-x86_64`).
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import queue
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .hybrid_vsock import HybridVsockServer
from .runner import RunnerError, VmSpec

QEMU_ENV = "NTNG_STANDIN_QEMU"
DEFAULT_QEMU = "qemu-system-x86_64"
#: The guest agent's vsock port, forwarded to the guest's TCP port of the same number.
AGENT_PORT = 7001
#: The user-mode NIC: slirp's usual guest MAC and address.
USER_MAC = "52:54:00:12:34:56"
GUEST_ADDR = "10.0.2.15"
QMP_SOCKET = "qmp.sock"
#: What the guest's command line gets: the agent listens on TCP too (guest/agent.sh).
AGENT_PARAM = "ntng.agent=tcp"
#: How a guest reboot ends, per VMM: "shutdown" (QEMU exits) or "reset" (the VM restarts).
REBOOT_ACTION = {"firecracker": "shutdown", "cloud-hypervisor": "reset"}
#: Hang guards, not timings: a QEMU that takes this long to show its QMP socket, or a
#: migration this long, has failed.
START_TIMEOUT_S = 60.0
MIGRATE_TIMEOUT_S = 600.0
QMP_TIMEOUT_S = 60.0
POLL_S = 0.02
#: Migration bandwidth: no throttling (QEMU's default is 32 MiB/s).
MAX_BANDWIDTH = 1 << 40
#: How often a start is tried again when the free port chosen for the forward was taken first.
PORT_TRIES = 3


def create_runner(vmm: str) -> QemuRunner:
    """The runner that `runner.create_runner` hands to the stand-in of `vmm`."""
    return QemuRunner(vmm)


class QmpError(Exception):
    """QMP answered an error, or the connection broke."""


class Qmp:
    """A QMP client on QEMU's unix socket: commands one at a time, events set aside."""

    def __init__(self, path: str) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(QMP_TIMEOUT_S)
        try:
            self._sock.connect(path)
        except OSError:
            self._sock.close()
            raise
        self._file = self._sock.makefile("rb")
        self.events: list[dict] = []
        try:
            greeting = self._read()
            if "QMP" not in greeting:
                raise QmpError(f"not a QMP greeting: {greeting}")
            self.execute("qmp_capabilities")
        except (OSError, QmpError):
            self.close()
            raise

    def _read(self) -> dict:
        try:
            line = self._file.readline()
        except OSError as err:
            raise QmpError(f"QMP connection broke: {err}") from None
        if not line:
            raise QmpError("QEMU closed its QMP socket")
        try:
            return json.loads(line)
        except ValueError:
            raise QmpError(f"not a QMP message: {line[:200]!r}") from None

    def execute(self, command: str, **arguments: Any) -> Any:
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        try:
            self._sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError as err:
            raise QmpError(f"QMP connection broke: {err}") from None
        while True:
            answer = self._read()
            if "event" in answer:
                self.events.append(answer)
                continue
            if "error" in answer:
                raise QmpError(f"{command}: {answer['error'].get('desc', answer['error'])}")
            return answer.get("return")

    def close(self) -> None:
        self._file.close()
        self._sock.close()


# --- QEMU as a child that dies with the stand-in --------------------------------------------

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with(parent: int) -> Callable[[], None]:
    def hook() -> None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the stand-in died before the prctl
            os._exit(1)

    return hook


class _Spawner:
    """Starts processes from one long-lived thread: PR_SET_PDEATHSIG fires when the *thread*
    that forked the child ends, and the API serves each request on a thread of its own."""

    def __init__(self) -> None:
        self._requests: queue.Queue = queue.Queue()
        threading.Thread(target=self._loop, name="qemu-spawner", daemon=True).start()

    def _loop(self) -> None:
        while True:
            args, kwargs, done = self._requests.get()
            try:
                done.put((subprocess.Popen(args, **kwargs), None))
            except Exception as err:  # noqa: BLE001 - handed to the caller
                done.put((None, err))

    def popen(self, args: list[str], **kwargs: Any) -> subprocess.Popen:
        done: queue.Queue = queue.Queue(maxsize=1)
        self._requests.put((args, kwargs, done))
        proc, err = done.get()
        if err is not None:
            raise err
        return proc


_spawner: _Spawner | None = None
_spawner_lock = threading.Lock()


def _spawn(args: list[str], **kwargs: Any) -> subprocess.Popen:
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = _Spawner()
    return _spawner.popen(
        args, process_group=0, preexec_fn=_die_with(os.getpid()), close_fds=True, **kwargs
    )


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def _loopback_up() -> None:
    """Brings the network namespace's loopback up when it is down. The hybrid vsock emulation
    goes through 127.0.0.1, and the namespace an engine makes for VLAN NICs is fresh (its `lo`
    down; 127.0.0.1 can be bound there but not reached). Real Firecracker needs no loopback, so
    this is the stand-in's own business, not the engine's."""
    shown = subprocess.run(
        ["ip", "-o", "link", "show", "lo"], capture_output=True, text=True, check=False
    )
    if shown.returncode != 0 or "<" not in shown.stdout:
        return  # no `ip`: the bind below says what is wrong if it is
    if "UP" in shown.stdout.split("<", 1)[1].split(">", 1)[0].split(","):
        return
    up = subprocess.run(
        ["ip", "link", "set", "lo", "up"], capture_output=True, text=True, check=False
    )
    if up.returncode != 0:
        raise RunnerError(
            "the hybrid vsock forward needs 127.0.0.1, and this network namespace's loopback "
            f"is down: `ip link set lo up` failed: {up.stderr.strip()}"
        )


def _free_port() -> int:
    _loopback_up()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", 0))
        except OSError as err:
            raise RunnerError(
                f"the hybrid vsock forward needs 127.0.0.1, which this network namespace "
                f"cannot bind ({err.strerror}): is its loopback up (`ip link set lo up`)?"
            ) from None
        return s.getsockname()[1]


def _opt(value: str) -> str:
    """A value inside a QEMU option list: commas doubled."""
    return value.replace(",", ",,")


def _image_format(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return "qcow2" if f.read(4) == b"QFI\xfb" else "raw"
    except OSError as err:
        raise RunnerError(f"cannot open the disk {path}: {err.strerror}") from None


def user_mac(spec: VmSpec) -> str:
    """USER_MAC, or the next free one when a network interface of the spec has it (the guest
    tells the user-mode NIC apart as the one no `ntng.if` names, not by its MAC)."""
    taken = {net.mac.lower() for net in spec.nets if net.mac}
    prefix, last = USER_MAC.rsplit(":", 1)
    for n in range(int(last, 16), int(last, 16) + 256):
        mac = f"{prefix}:{n % 256:02x}"
        if mac not in taken:
            return mac
    raise RunnerError("no MAC left for the user-mode NIC")


def guest_cmdline(cmdline: str) -> str:
    """The spec's command line as the stand-in's guest gets it: `pci=off` dropped (the devices
    are on PCI here), `ntng.agent=tcp` appended."""
    words = [w for w in cmdline.split() if w != "pci=off"]
    return " ".join([*words, AGENT_PARAM])


def qemu_args(
    spec: VmSpec, *, qemu: str, state_dir: Path, host_port: int, reboot: str, incoming: bool
) -> list[str]:
    """QEMU's command line for `spec` (see the module's text)."""
    args = [
        qemu,
        "-name",
        "ntng-standin",
        "-accel",
        "tcg",
        "-M",
        "pc",
        "-nodefaults",
        "-nographic",
        "-m",
        str(spec.mem_mib),
        "-smp",
        str(spec.vcpus),
        "-kernel",
        spec.kernel,
        *(["-initrd", spec.initrd] if spec.initrd else []),
        "-append",
        guest_cmdline(spec.cmdline),
        "-monitor",
        "none",
        "-chardev",
        f"socket,id=ntng-qmp,path={_opt(str(state_dir / QMP_SOCKET))},server=on,wait=off",
        "-mon",
        "chardev=ntng-qmp,mode=control",
        "-action",
        f"reboot={reboot}",
    ]
    for disk in sorted(spec.disks, key=lambda d: not d.is_root):
        drive = (
            f"file={_opt(disk.path)},if=virtio,format={_image_format(disk.path)},"
            "cache=unsafe,file.locking=off"
        )
        args += ["-drive", drive + (",readonly=on" if disk.read_only else "")]
    args += [
        "-netdev",
        f"user,id=ntng-user,restrict=on,hostfwd=tcp:127.0.0.1:{host_port}-{GUEST_ADDR}:{AGENT_PORT}",
        "-device",
        f"virtio-net-pci,netdev=ntng-user,mac={user_mac(spec)},romfile=",
    ]
    for i, net in enumerate(spec.nets):
        args += ["-netdev", f"tap,id=ntng-tap{i},ifname={_opt(net.tap)},script=no,downscript=no"]
        device = f"virtio-net-pci,netdev=ntng-tap{i},romfile="
        args += ["-device", device + (f",mac={net.mac}" if net.mac else "")]
    console = spec.console
    if console == "stdout":
        args += ["-serial", "stdio"]
    elif isinstance(console, tuple):
        args += ["-chardev", f"file,id=ntng-console,path={_opt(console[1])}"]
        args += ["-serial", "chardev:ntng-console"]
    else:
        args += ["-serial", "none"]
    if incoming:
        args += ["-S", "-incoming", "defer"]
    return args


class _Qemu:
    """One QEMU process and its QMP connection."""

    def __init__(self, proc: subprocess.Popen, qmp: Qmp, host_port: int) -> None:
        self.proc = proc
        self.qmp = qmp
        self.host_port = host_port

    def ended(self) -> bool:
        """Whether QEMU has exited, without reaping it: while it is a zombie its process
        group id stays reserved, so `kill` can still end what is left in the group."""
        if self.proc.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def kill(self) -> int:
        """Kills the process group (QEMU and its `exec:` migration helpers), reaps QEMU and
        returns its status."""
        if self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self.qmp.close()
        return self.proc.returncode


class QemuRunner:
    """The Runner protocol over QEMU; see the module's text."""

    def __init__(self, vmm: str, qemu: str | None = None) -> None:
        if vmm not in REBOOT_ACTION:
            raise RunnerError(f"no QEMU runner for the VMM {vmm!r}")
        self.vmm = vmm
        self.qemu_binary = qemu or os.environ.get(QEMU_ENV) or DEFAULT_QEMU
        self._lock = threading.RLock()
        self._state_dir: Path | None = None
        self._vm: _Qemu | None = None
        self._vsock: HybridVsockServer | None = None
        #: Set once the VM's end was seen (or caused by shutdown): its status, or None.
        self._ended = False
        self._status: int | None = None
        #: The state file of the last snapshot, while the VM has not run since.
        self._unchanged_since: str | None = None
        atexit.register(self._cleanup)

    # --- the Runner protocol ------------------------------------------------------------

    def boot(self, spec: VmSpec) -> None:
        with self._lock:
            if self._vm is not None and not self._vm.ended():
                raise RunnerError("a VM runs already")
            self._launch(spec, incoming=False)

    def pause(self) -> None:
        self._qmp("stop")

    def resume(self) -> None:
        with self._lock:
            self._qmp("cont")
            self._unchanged_since = None

    def snapshot(self, state_path: str, mem_path: str, diff: bool) -> None:
        # `diff` changes nothing: QEMU's migration stream is always complete.
        del diff
        with self._lock:
            vm = self._running()
            partial = f"{state_path}.partial"
            try:
                if self._unchanged_since is not None:
                    # QEMU refuses a second migration before the VM ran again ("Can't migrate
                    # the vm that was paused due to previous migration"); it has not run, so
                    # the last snapshot is this one too.
                    try:
                        shutil.copyfile(self._unchanged_since, partial)
                    except FileNotFoundError:
                        raise RunnerError(
                            "QEMU cannot take a second snapshot before the VM ran again, and "
                            f"the first one ({self._unchanged_since}) is gone: resume the VM "
                            "first"
                        ) from None
                else:
                    vm.qmp.execute("migrate-set-parameters", **{"max-bandwidth": MAX_BANDWIDTH})
                    vm.qmp.execute("migrate", uri=f"exec:cat > {shlex.quote(partial)}")
                    self._wait_migration(vm, "snapshot")
                os.replace(partial, state_path)
                self._unchanged_since = state_path
                Path(mem_path).write_text(
                    "nixos-test-ng stand-in: the guest's memory is in the snapshot's state file "
                    f"{state_path} (QEMU's migration stream holds memory and device state "
                    "together); this file only stands for the memory file.\n"
                )
            except QmpError as err:
                raise self._failed("snapshot", err) from None
            except OSError as err:
                raise RunnerError(f"cannot write the snapshot: {err}") from None
            finally:
                Path(partial).unlink(missing_ok=True)

    def restore(self, state_path: str, mem_path: str, spec: VmSpec, resume: bool) -> None:
        for path in (state_path, mem_path):
            if not Path(path).is_file():
                raise RunnerError(f"no snapshot file at {path}")
        with self._lock:
            if self._vm is not None:
                self._vm.kill()
                self._vm = None
            vm = self._launch(spec, incoming=True)
            try:
                vm.qmp.execute("migrate-incoming", uri=f"exec:cat {shlex.quote(state_path)}")
                self._wait_incoming(vm)
                if resume:
                    vm.qmp.execute("cont")
            except QmpError as err:
                raise self._failed("restore", err) from None

    def ctrl_alt_del(self) -> None:
        keys = [{"type": "qcode", "data": key} for key in ("ctrl", "alt", "delete")]
        self._qmp("send-key", keys=keys)

    def power_button(self) -> None:
        self._qmp("system_powerdown")

    def reboot(self) -> None:
        """Resets the VM, which goes on (whatever a guest-initiated reboot does)."""
        with self._lock:
            vm = self._running()
            try:
                # the action in force when the reset is requested decides what it does
                vm.qmp.execute("set-action", reboot="reset")
                vm.qmp.execute("system_reset")
                vm.qmp.execute("set-action", reboot=REBOOT_ACTION[self.vmm])
            except QmpError as err:
                raise self._failed("reboot", err) from None

    def shutdown(self) -> None:
        with self._lock:
            self._ended = True
            self._cleanup()

    def exited(self) -> int | None:
        with self._lock:
            if self._ended or self._vm is None:
                return self._status
            if not self._vm.ended():
                return None
            code = self._vm.kill()
            self._ended = True
            # a QEMU killed by a signal: the shell's status for it
            self._status = code if code >= 0 else 128 - code
            self._cleanup()
            return self._status

    # --- the parts ----------------------------------------------------------------------

    def _launch(self, spec: VmSpec, incoming: bool) -> _Qemu:
        if self._state_dir is None:
            # short: the QMP socket's path must fit a unix socket address (108 bytes)
            self._state_dir = Path(tempfile.mkdtemp(prefix="ntng-qemu-"))
        self._ended = False
        self._status = None
        self._unchanged_since = None
        for attempt in range(PORT_TRIES):
            host_port = _free_port()
            args = qemu_args(
                spec,
                qemu=self.qemu_binary,
                state_dir=self._state_dir,
                host_port=host_port,
                reboot=REBOOT_ACTION[self.vmm],
                incoming=incoming,
            )
            vm, log = self._start(args, host_port, spec)
            if vm is not None:
                break
            if "host forwarding rule" not in log or attempt == PORT_TRIES - 1:
                raise RunnerError(f"QEMU did not start: {log.strip() or 'no message'}")
        self._vm = vm
        try:
            self._serve_vsock(spec, vm.host_port)
        except RunnerError:
            vm.kill()
            self._vm = None
            raise
        return vm

    def _start(self, args: list[str], host_port: int, spec: VmSpec) -> tuple[_Qemu | None, str]:
        """Starts QEMU and connects to its QMP socket; (None, its log) when it ended first."""
        assert self._state_dir is not None
        qmp_path = self._state_dir / QMP_SOCKET
        qmp_path.unlink(missing_ok=True)
        log_path = self._state_dir / "qemu.log"
        on_stdout = spec.console == "stdout"
        # The serial console's input is the stand-in's stdin, as a VMM's is; but not a
        # terminal, which QEMU would leave in raw mode when it is killed.
        stdin = None if on_stdout and not _isatty(0) else subprocess.DEVNULL
        try:
            with open(log_path, "wb") as log:
                proc = _spawn(
                    args,
                    stdin=stdin,
                    stdout=None if on_stdout else subprocess.DEVNULL,
                    stderr=log,
                )
        except OSError as err:
            raise RunnerError(
                f"cannot run QEMU ({self.qemu_binary}): {err.strerror}; install QEMU "
                f"(qemu-system-x86) or name its binary in {QEMU_ENV}"
            ) from None
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                return None, self._qemu_log()
            if qmp_path.exists():
                try:
                    return _Qemu(proc, Qmp(str(qmp_path)), host_port), ""
                except (OSError, QmpError):
                    pass  # not listening yet
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise RunnerError(f"QEMU showed no QMP socket within {START_TIMEOUT_S:.0f} s")
            time.sleep(POLL_S)

    def _serve_vsock(self, spec: VmSpec, host_port: int) -> None:
        forwards = {AGENT_PORT: host_port}
        wanted = spec.vsock.uds_path if spec.vsock is not None else None
        if self._vsock is not None and self._vsock.uds_path != wanted:
            self._vsock.close()
            self._vsock = None
        if wanted is None:
            return
        if self._vsock is None:
            try:
                self._vsock = HybridVsockServer(wanted, forwards)
            except OSError as err:
                raise RunnerError(f"cannot serve the vsock socket {wanted}: {err}") from None
        else:
            self._vsock.set_forwards(forwards)

    def _running(self) -> _Qemu:
        if self._vm is None or self._vm.ended():
            raise RunnerError("no VM runs")
        return self._vm

    def _qmp(self, command: str, **arguments: Any) -> None:
        with self._lock:
            vm = self._running()
            try:
                vm.qmp.execute(command, **arguments)
            except QmpError as err:
                raise self._failed(command, err) from None

    def _failed(self, what: str, err: Exception) -> RunnerError:
        """The error for a failed operation, naming QEMU's end when it ended meanwhile. A QMP
        connection that broke is QEMU exiting, whose end may come a moment after: it gets a
        few seconds to show."""
        vm = self._vm
        if vm is not None and "connection broke" in str(err):
            deadline = time.monotonic() + 5
            while not vm.ended() and time.monotonic() < deadline:
                time.sleep(0.01)
        if vm is not None and vm.ended():
            status = vm.kill()
            said = self._qemu_log().strip()
            return RunnerError(
                f"{what}: QEMU exited with status {status} ({err})" + (f": {said}" if said else "")
            )
        return RunnerError(f"{what}: {err}")

    def _qemu_log(self) -> str:
        """The end of what QEMU wrote to its stderr."""
        if self._state_dir is None:
            return ""
        try:
            return (self._state_dir / "qemu.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def _wait_migration(self, vm: _Qemu, what: str) -> None:
        deadline = time.monotonic() + MIGRATE_TIMEOUT_S
        while True:
            info = vm.qmp.execute("query-migrate")
            status = info.get("status")
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise QmpError(f"the migration {status}: {info.get('error-desc', 'no reason')}")
            if time.monotonic() > deadline:
                vm.qmp.execute("migrate_cancel")
                raise QmpError(f"the {what} did not finish within {MIGRATE_TIMEOUT_S:.0f} s")
            time.sleep(POLL_S)

    def _wait_incoming(self, vm: _Qemu) -> None:
        """Until the state is loaded: QEMU (started with -S) is then paused; a stream it
        cannot load makes it exit."""
        deadline = time.monotonic() + MIGRATE_TIMEOUT_S
        while vm.qmp.execute("query-status").get("status") == "inmigrate":
            if time.monotonic() > deadline:
                raise QmpError(f"the restore did not finish within {MIGRATE_TIMEOUT_S:.0f} s")
            time.sleep(POLL_S)

    def _cleanup(self) -> None:
        """Kills QEMU (its process group), stops serving vsock, removes the state directory."""
        with self._lock:
            if self._vm is not None:
                self._vm.kill()
                self._vm = None
            if self._vsock is not None:
                self._vsock.close()
                self._vsock = None
            if self._state_dir is not None:
                shutil.rmtree(self._state_dir, ignore_errors=True)
                self._state_dir = None
