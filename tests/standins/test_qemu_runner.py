"""The stand-ins' QEMU runner. Without a VM: QEMU's command line, and the hybrid vsock server
against a local TCP server standing in for the guest. With VMs (marker `vm`, the busybox and
systemd guests under TCG): hybrid vsock over the user-mode network to the guest agent,
pause/resume, snapshot/restore, the guest's power-off, Ctrl-Alt-Del and reset, and QEMU dying
with the stand-in. Each VM test boots one guest (slow under TCG)."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.leaks import wait_until_gone

from standins import qemu_runner
from standins.hybrid_vsock import HybridVsockServer
from standins.runner import Disk, Net, RunnerError, VmSpec, Vsock

#: Hang guards, not timings: a wait that runs this long has failed.
BOOT_GUARD_S = 300.0
ANSWER_TRY_S = 2.0
EXIT_GUARD_S = 120.0

HELLO, EXEC, STDOUT, STDERR, EXIT = 0x81, 0x01, 0x82, 0x83, 0x84
TESTS = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def guest_dir() -> Path:
    from nixos_test_ng.guest import ensure_built

    return ensure_built()


@pytest.fixture(scope="session")
def systemd_dir(guest_dir: Path) -> Path:
    from nixos_test_ng.guest import GuestError, ensure_systemd_built
    from nixos_test_ng.guest.systemd_guest import systemd_dir

    try:
        return systemd_dir(ensure_systemd_built(guest_dir))
    except GuestError as e:
        pytest.skip(f"the Debian systemd guest cannot be built here: {e}")


@pytest.fixture
def state_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The runner's state directory goes under the test's tmp dir (the leak check finds its
    QEMU by the QMP socket's path on the command line)."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    return tmp_path


def make_spec(guest_dir: Path, tmp: Path, disks: list[Disk] | None = None) -> VmSpec:
    return VmSpec(
        kernel=str(guest_dir / "vmlinux"),
        initrd=str(guest_dir / "initrd.img"),
        cmdline="console=ttyS0 panic=1 loglevel=4 ntng.hostname=standin",
        vcpus=1,
        mem_mib=256,
        disks=disks or [],
        vsock=Vsock(cid=3, uds_path=str(tmp / "v.sock")),
        console=("file", str(tmp / "console.log")),
    )


@pytest.fixture
def runners() -> Iterator[list[qemu_runner.QemuRunner]]:
    made: list[qemu_runner.QemuRunner] = []
    yield made
    for runner in made:
        runner.shutdown()


# --- a client of the agent through the hybrid vsock socket ----------------------------------


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(f"the connection ended after {len(data)} of {n} bytes")
        data += chunk
    return data


def read_frame(sock: socket.socket) -> tuple[int, bytes]:
    kind, length = struct.unpack("<BI", recv_exact(sock, 5))
    return kind, recv_exact(sock, length)


def send_frame(sock: socket.socket, kind: int, body: bytes) -> None:
    sock.sendall(struct.pack("<BI", kind, len(body)) + body)


def try_connect(uds: Path) -> socket.socket | None:
    """One `CONNECT 7001`: the stream after `OK`, or None (refused, or not answered yet)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(ANSWER_TRY_S)
        sock.connect(str(uds))
        sock.sendall(b"CONNECT 7001\n")
        line = b""
        while not line.endswith(b"\n"):
            byte = sock.recv(1)
            if not byte:
                raise EOFError
            line += byte
    except (OSError, EOFError):
        sock.close()
        return None
    assert line.startswith(b"OK "), line
    sock.settimeout(BOOT_GUARD_S)
    return sock


def connect_agent(uds: Path, running: Callable[[], bool]) -> tuple[socket.socket, dict]:
    """A connection to the guest agent and its HELLO, once the guest serves it; `running`
    says whether the VM still runs."""
    deadline = time.monotonic() + BOOT_GUARD_S
    while True:
        assert running(), "the VM ended while waiting for the agent"
        sock = try_connect(uds)
        if sock is not None:
            kind, body = read_frame(sock)
            assert kind == HELLO, (kind, body)
            return sock, json.loads(body)
        assert time.monotonic() < deadline, f"no agent behind {uds}"
        time.sleep(0.1)


def run(sock: socket.socket, command: str) -> tuple[int, str]:
    send_frame(sock, EXEC, json.dumps({"command": command}).encode())
    out = b""
    while True:
        kind, body = read_frame(sock)
        if kind == STDOUT:
            out += body
        elif kind == EXIT:
            return json.loads(body)["status"], out.decode()
        else:
            assert kind == STDERR, (kind, body)


def start_and_hold(sock: socket.socket, command: str) -> None:
    """Runs a command that takes the guest down: until its EXIT, or the connection's end when
    the guest goes first. (A connection closed earlier would end the command: the agent kills
    a command whose host went away.)"""
    send_frame(sock, EXEC, json.dumps({"command": command}).encode())
    try:
        while read_frame(sock)[0] != EXIT:
            pass
    except (EOFError, ConnectionResetError):
        pass


def listening(proc_net_tcp: str) -> list[str]:
    """The listening addresses in a /proc/net/tcp table (hex, little-endian IPv4)."""
    out = []
    for line in proc_net_tcp.splitlines()[1:]:
        fields = line.split()
        if fields[3] != "0A":  # TCP_LISTEN
            continue
        addr, port = fields[1].split(":")
        octets = bytes.fromhex(addr)[::-1]
        out.append(f"{'.'.join(map(str, octets))}:{int(port, 16)}")
    return out


def ended_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def vm_of(runner: qemu_runner.QemuRunner) -> Callable[[], bool]:
    return lambda: runner.exited() is None


def wait_exited(runner: qemu_runner.QemuRunner) -> int:
    deadline = time.monotonic() + EXIT_GUARD_S
    while (status := runner.exited()) is None:
        assert time.monotonic() < deadline, "the VM did not end"
        time.sleep(0.05)
    return status


def qemu_pids(tmp: Path) -> list[int]:
    """The QEMU processes whose command line names `tmp`."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            argv
            and argv[0].endswith(b"qemu-system-x86_64")
            and str(tmp).encode() in b" ".join(argv)
        ):
            out.append(int(entry.name))
    return out


# --- without a VM ----------------------------------------------------------------------------


def test_qemu_command_line_follows_the_spec(tmp_path):
    root, data = tmp_path / "root.img", tmp_path / "data,1.img"
    root.write_bytes(b"QFI\xfb" + bytes(60))
    data.write_bytes(bytes(64))
    spec = VmSpec(
        kernel="/k/vmlinux",
        initrd=None,
        cmdline="console=ttyS0 reboot=k pci=off root=/dev/vda",
        vcpus=2,
        mem_mib=300,
        disks=[Disk("data", str(data), True, False), Disk("root", str(root), False, True)],
        nets=[Net("eth1", "tap-a", qemu_runner.USER_MAC), Net("eth2", "tap-b", None)],
        vsock=Vsock(3, str(tmp_path / "v.sock")),
        console=("file", str(tmp_path / "console.log")),
    )
    args = qemu_runner.qemu_args(
        spec,
        qemu="qemu-system-x86_64",
        state_dir=tmp_path,
        host_port=4321,
        reboot="shutdown",
        incoming=True,
    )
    line = " ".join(args)
    assert args[:9] == ["qemu-system-x86_64", "-name", "ntng-standin", "-accel", "tcg", "-M",
                        "pc", "-nodefaults", "-nographic"]  # fmt: skip
    assert "-initrd" not in args
    assert args[args.index("-append") + 1] == "console=ttyS0 reboot=k root=/dev/vda ntng.agent=tcp"
    assert ("-m", "300") == tuple(args[args.index("-m") : args.index("-m") + 2])
    assert ("-smp", "2") == tuple(args[args.index("-smp") : args.index("-smp") + 2])
    drives = [args[i + 1] for i, a in enumerate(args) if a == "-drive"]
    assert drives == [
        f"file={root},if=virtio,format=qcow2,cache=unsafe,file.locking=off",
        f"file={str(data).replace(',', ',,')},if=virtio,format=raw,cache=unsafe,"
        "file.locking=off,readonly=on",
    ]
    devices = [args[i + 1] for i, a in enumerate(args) if a == "-device"]
    # the user-mode NIC first (eth0), its MAC moved aside from the one a VLAN NIC has
    assert devices == [
        "virtio-net-pci,netdev=ntng-user,mac=52:54:00:12:34:57,romfile=",
        "virtio-net-pci,netdev=ntng-tap0,romfile=,mac=52:54:00:12:34:56",
        "virtio-net-pci,netdev=ntng-tap1,romfile=",
    ]
    assert "user,id=ntng-user,restrict=on,hostfwd=tcp:127.0.0.1:4321-10.0.2.15:7001" in args
    assert "tap,id=ntng-tap0,ifname=tap-a,script=no,downscript=no" in args
    assert "-serial chardev:ntng-console" in line and "-action reboot=shutdown" in line
    assert args[-3:] == ["-S", "-incoming", "defer"]
    spec.console = "stdout"
    assert "-serial stdio" in " ".join(
        qemu_runner.qemu_args(
            spec, qemu="q", state_dir=tmp_path, host_port=1, reboot="reset", incoming=False
        )
    )


def test_a_missing_disk_is_an_error_naming_it(tmp_path):
    spec = VmSpec("/k", None, "", 1, 64, disks=[Disk("d", str(tmp_path / "nope"), False, True)])
    with pytest.raises(RunnerError, match="cannot open the disk .*nope"):
        qemu_runner.qemu_args(
            spec, qemu="q", state_dir=tmp_path, host_port=1, reboot="reset", incoming=False
        )


class FakeGuest:
    """A TCP server on 127.0.0.1 standing in for the guest's forwarded port: each connection
    gets `greeting` (None: closed at once, as a refused connection reaches the host through
    slirp) and is then echoed."""

    def __init__(self, greeting: bytes | None) -> None:
        self.greeting = greeting
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                if self.greeting is None:
                    continue
                conn.sendall(self.greeting)
                while data := conn.recv(65536):
                    conn.sendall(data)

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def fake_guest() -> Iterator[Callable[[bytes | None], FakeGuest]]:
    made: list[FakeGuest] = []

    def make(greeting: bytes | None) -> FakeGuest:
        made.append(FakeGuest(greeting))
        return made[-1]

    yield make
    for guest in made:
        guest.close()


def ask(uds: Path, line: bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(EXIT_GUARD_S)
    sock.connect(str(uds))
    sock.sendall(line)
    return sock


def test_hybrid_vsock_answers_ok_once_the_guest_speaks_and_then_splices(tmp_path, fake_guest):
    guest = fake_guest(b"HELLO")
    uds = tmp_path / "v.sock"
    server = HybridVsockServer(str(uds), {7001: guest.port})
    try:
        # bytes sent along with the CONNECT line go on to the guest
        sock = ask(uds, b"CONNECT 7001\nearly")
        assert recv_exact(sock, len(b"OK 1073741824\n")) == b"OK 1073741824\n"
        assert recv_exact(sock, 10) == b"HELLOearly"
        sock.sendall(b"x" * 300_000)
        assert recv_exact(sock, 300_000) == b"x" * 300_000
        # a half-close reaches the guest, whose end comes back
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""
        second = ask(uds, b"CONNECT 7001\n")
        assert recv_exact(second, 19) == b"OK 1073741825\nHELLO"
        second.close()
    finally:
        server.close()
    assert not uds.exists()


def test_hybrid_vsock_closes_what_the_guest_does_not_answer(tmp_path, fake_guest):
    refusing = fake_guest(None)
    nobody = socket.create_server(("127.0.0.1", 0))
    gone = nobody.getsockname()[1]
    nobody.close()
    uds = tmp_path / "v.sock"
    uds.touch(mode=0o600)
    with pytest.raises(OSError):  # not a socket: never replaced
        HybridVsockServer(str(uds), {})
    uds.unlink()
    server = HybridVsockServer(str(uds), {7001: refusing.port, 7002: gone})
    try:
        for line in (
            b"CONNECT 7001\n",  # the guest closes at once (nothing listens there)
            b"CONNECT 7002\n",  # no QEMU behind the forward
            b"CONNECT 9\n",  # no such port forwarded
            b"HELLO\n",
            b"CONNECT x\n",
            b"C" * 100,
        ):
            assert ask(uds, line).recv(100) == b"", line
        # a restore's new QEMU: new forwards
        guest = fake_guest(b"hi")
        server.set_forwards({9: guest.port})
        assert recv_exact(ask(uds, b"CONNECT 9\n"), 16) == b"OK 1073741824\nhi"
        # close() ends the connections it carries
        held = ask(uds, b"CONNECT 9\n")
        assert recv_exact(held, 16).endswith(b"hi")
    finally:
        server.close()
    assert held.recv(1) == b""
    # a stale socket file of an earlier run is replaced
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(uds))
    stale.close()
    HybridVsockServer(str(uds), {}).close()


# --- with VMs --------------------------------------------------------------------------------


@pytest.mark.vm
def test_agent_through_hybrid_vsock_across_pause_snapshot_and_restore(
    guest_dir, state_tmp, runners
):
    tmp = state_tmp
    disk = tmp / "data.img"
    disk.write_bytes(b"\0" * (1 << 20))
    spec = make_spec(guest_dir, tmp, [Disk("data", str(disk), read_only=True, is_root=True)])
    runner = qemu_runner.create_runner("firecracker")
    runners.append(runner)
    runner.boot(spec)
    uds = Path(spec.vsock.uds_path)

    conn, hello = connect_agent(uds, vm_of(runner))
    assert hello["agent"] == "nixos-test-ng-agent"
    # the disk is virtio-blk /dev/vda, read-only
    assert run(conn, "cat /sys/block/vda/ro") == (0, "1\n")
    # the agent's TCP listener is on the user-mode NIC's address only
    status, table = run(conn, "cat /proc/net/tcp")
    assert status == 0
    assert [addr for addr in listening(table) if addr.endswith(":7001")] == ["10.0.2.15:7001"]

    runner.pause()
    runner.resume()
    after_pause, _ = connect_agent(uds, vm_of(runner))
    assert run(after_pause, "echo after pause") == (0, "after pause\n")

    state, mem = tmp / "snap.state", tmp / "snap.mem"
    runner.pause()
    runner.snapshot(str(tmp / "full.state"), str(tmp / "full.mem"), diff=False)
    # a second one before the VM runs again (QEMU itself refuses a second migration then)
    runner.snapshot(str(state), str(mem), diff=True)
    assert state.read_bytes() == (tmp / "full.state").read_bytes()
    assert state.stat().st_size > 0 and str(state) in mem.read_text()
    runner.resume()
    assert run(after_pause, "echo 'written after the snapshot' > /tmp/later") == (0, "")

    runner.restore(str(state), str(mem), spec, resume=True)
    # the connections of the VM before the restore end with its QEMU
    assert ended_by_peer(after_pause)
    restored, _ = connect_agent(uds, vm_of(runner))
    assert run(restored, "test -e /tmp/later; echo $?") == (0, "1\n")
    assert run(restored, "cat /proc/sys/kernel/hostname") == (0, "standin\n")

    # the guest powers off: QEMU ends with status 0 and the runner reports it
    start_and_hold(restored, "poweroff")
    assert wait_exited(runner) == 0
    assert not uds.exists()
    assert wait_until_gone(tmp) == {}


@pytest.mark.vm
def test_ctrl_alt_del_ends_a_firecracker_vm(guest_dir, state_tmp, runners):
    runner = qemu_runner.create_runner("firecracker")
    runners.append(runner)
    spec = make_spec(guest_dir, state_tmp)
    runner.boot(spec)
    connect_agent(Path(spec.vsock.uds_path), vm_of(runner))
    runner.ctrl_alt_del()
    # the guest reboots; Firecracker (and so the stand-in's QEMU) ends then
    assert wait_exited(runner) == 0
    assert wait_until_gone(state_tmp) == {}


@pytest.mark.vm
def test_a_cloud_hypervisor_vm_comes_back_from_a_reset(guest_dir, state_tmp, runners):
    runner = qemu_runner.create_runner("cloud-hypervisor")
    runners.append(runner)
    spec = make_spec(guest_dir, state_tmp)
    runner.boot(spec)
    uds = Path(spec.vsock.uds_path)
    _, first = connect_agent(uds, vm_of(runner))
    assert first["boot_id"]
    runner.reboot()
    deadline = time.monotonic() + BOOT_GUARD_S
    while True:
        conn, hello = connect_agent(uds, vm_of(runner))
        if hello["boot_id"] != first["boot_id"]:
            break
        conn.close()  # the old boot still answering before the reset took effect
        assert time.monotonic() < deadline, "the VM did not come back from the reset"
    assert runner.exited() is None
    runner.shutdown()
    assert wait_until_gone(state_tmp) == {}


@pytest.mark.vm
def test_operations_without_a_vm_and_bad_snapshots_are_errors(guest_dir, state_tmp, runners):
    runner = qemu_runner.create_runner("firecracker")
    runners.append(runner)
    with pytest.raises(RunnerError, match="no VM runs"):
        runner.pause()
    spec = make_spec(guest_dir, state_tmp)
    with pytest.raises(RunnerError, match="no snapshot file at .*missing.state"):
        runner.restore(str(state_tmp / "missing.state"), str(state_tmp / "m"), spec, True)
    bad = state_tmp / "bad.state"
    bad.write_bytes(b"not a migration stream")
    (state_tmp / "bad.mem").write_text("")
    with pytest.raises(RunnerError, match="restore: QEMU exited with status 1"):
        runner.restore(str(bad), str(state_tmp / "bad.mem"), spec, True)
    spec.kernel = str(state_tmp / "no-such-kernel")
    with pytest.raises(RunnerError, match="QEMU did not start: .*no-such-kernel"):
        runner.boot(spec)
    assert wait_until_gone(state_tmp) == {}


@pytest.mark.vm
def test_qemu_dies_with_a_sigkilled_stand_in(guest_dir, tmp_path):
    """The stand-in's process SIGKILLed: the kernel kills its QEMU (PR_SET_PDEATHSIG)."""
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(make_spec(guest_dir, tmp_path).to_json()))
    program = textwrap.dedent(
        f"""
        import json, sys, threading, time
        sys.path.insert(0, {str(TESTS)!r})
        from standins.qemu_runner import create_runner
        from standins.runner import VmSpec
        spec = VmSpec.from_json(json.loads(open({str(spec_file)!r}).read()))
        runner = create_runner("firecracker")
        # booted from a thread that then ends, as the API's request threads do
        boot = threading.Thread(target=runner.boot, args=(spec,))
        boot.start()
        boot.join()
        runner.pause()  # QEMU still answers after that thread's end
        print(runner._vm.proc.pid, flush=True)
        time.sleep(3600)
        """
    )
    env = dict(os.environ, TMPDIR=str(tmp_path))
    stand_in = subprocess.Popen(
        [sys.executable, "-c", program], stdout=subprocess.PIPE, env=env, start_new_session=True
    )
    try:
        qemu_pid = int(stand_in.stdout.readline())
        assert qemu_pids(tmp_path) == [qemu_pid]
        stand_in.send_signal(signal.SIGKILL)
        assert stand_in.wait(timeout=EXIT_GUARD_S) == -signal.SIGKILL
    finally:
        if stand_in.poll() is None:
            stand_in.kill()
            stand_in.wait()
        stand_in.stdout.close()
    assert wait_until_gone(tmp_path) == {}


@pytest.mark.vm
def test_a_firecracker_stand_in_on_qemu_serves_the_agent_and_ends_with_its_qemu(
    guest_dir, standin, tmp_path
):
    """The whole stand-in (its API, this runner): InstanceStart boots the guest, whose agent
    answers through the vsock socket; SIGTERM ends the stand-in and its QEMU."""
    from standins.client import FIRECRACKER

    vmm = standin(FIRECRACKER).start(NTNG_STANDIN_RUNNER="qemu", TMPDIR=str(tmp_path))
    assert vmm.put("/machine-config", {"vcpu_count": 1, "mem_size_mib": 256}).status == 204
    boot = {
        "kernel_image_path": str(guest_dir / "vmlinux"),
        "initrd_path": str(guest_dir / "initrd.img"),
        "boot_args": "console=ttyS0 panic=1 ntng.hostname=fc",
    }
    assert vmm.put("/boot-source", boot).status == 204
    uds = tmp_path / "fc-vsock.sock"
    assert vmm.put("/vsock", {"guest_cid": 3, "uds_path": str(uds)}).status == 204
    assert vmm.put("/actions", {"action_type": "InstanceStart"}).status == 204

    conn, _ = connect_agent(uds, lambda: vmm.proc.poll() is None)
    assert run(conn, "cat /proc/sys/kernel/hostname") == (0, "fc\n")
    assert len(qemu_pids(tmp_path)) == 1
    assert vmm.signal(signal.SIGTERM) == -signal.SIGTERM
    assert wait_until_gone(tmp_path) == {}
    # the serial console was the stand-in's stdout
    assert "init: started the guest agent" in vmm.stdout_path.read_text()


@pytest.mark.vm
def test_the_systemd_guest_on_a_root_disk_serves_its_agent_and_survives_its_own_reboot(
    guest_dir, systemd_dir, state_tmp, runners
):
    """The systemd guest's nixos-test-ng-agent.service with ntng.agent=tcp, on a Cloud
    Hypervisor VM: a guest reboot resets the VM, which goes on (Cloud Hypervisor does not
    exit then)."""
    root = state_tmp / "root.img"
    subprocess.run(
        ["cp", "--sparse=always", str(systemd_dir / "rootfs.ext4"), str(root)], check=True
    )
    spec = make_spec(guest_dir, state_tmp, [Disk("root", str(root), False, True)])
    spec.initrd = str(systemd_dir / "initrd.img")
    spec.cmdline += " root=/dev/vda rw pci=off"
    spec.mem_mib = 512
    runner = qemu_runner.create_runner("cloud-hypervisor")
    runners.append(runner)
    runner.boot(spec)
    uds = Path(spec.vsock.uds_path)

    conn, first = connect_agent(uds, vm_of(runner))
    assert run(conn, "systemctl is-active nixos-test-ng-agent.service") == (0, "active\n")
    status, table = run(conn, "cat /proc/net/tcp")
    assert [addr for addr in listening(table) if addr.endswith(":7001")] == ["10.0.2.15:7001"]
    start_and_hold(conn, "systemctl reboot")
    deadline = time.monotonic() + BOOT_GUARD_S
    while True:
        conn, hello = connect_agent(uds, vm_of(runner))
        if hello["boot_id"] != first["boot_id"]:
            break
        conn.close()
        assert time.monotonic() < deadline, "the guest did not come back from its reboot"
    assert run(conn, "cat /proc/sys/kernel/hostname") == (0, "standin\n")
    runner.shutdown()
    assert wait_until_gone(state_tmp) == {}


@pytest.mark.vm
def test_a_tap_nic_carries_the_guests_vlan_address(guest_dir, tmp_path):
    """A network interface of the spec is a TAP NIC with its MAC, which the guest names and
    addresses by `ntng.if`; run in a network namespace of its own (the TAP goes with it)."""
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a network namespace here (unshare -n): needs root")
    spec = make_spec(guest_dir, tmp_path)
    spec.cmdline += " ntng.if=eth1,52:54:00:12:01:01,192.168.1.1/24"
    spec.nets = [Net("eth1", "ntng-tap-t", "52:54:00:12:01:01")]
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec.to_json()))
    program = textwrap.dedent(
        f"""
        import json, subprocess, sys
        from pathlib import Path
        sys.path.insert(0, {str(TESTS)!r})
        import standins.test_qemu_runner as t
        from standins.qemu_runner import create_runner
        from standins.runner import VmSpec
        subprocess.run(
            "ip link set lo up && ip tuntap add dev ntng-tap-t mode tap && "
            "ip link set ntng-tap-t up && ip addr add 192.168.1.9/24 dev ntng-tap-t",
            shell=True, check=True,
        )
        spec = VmSpec.from_json(json.loads(open({str(spec_file)!r}).read()))
        runner = create_runner("firecracker")
        runner.boot(spec)
        try:
            conn, _ = t.connect_agent(Path(spec.vsock.uds_path), t.vm_of(runner))
            addr = t.run(conn, "ip -o -4 addr show eth1")
            ping = t.run(conn, "ping -c 1 -W 30 192.168.1.9")
            print(json.dumps({{"addr": addr, "ping": ping}}))
        finally:
            runner.shutdown()
        """
    )
    done = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", program],
        capture_output=True,
        text=True,
        env=dict(os.environ, TMPDIR=str(tmp_path)),
        timeout=BOOT_GUARD_S,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["addr"][0] == 0 and "192.168.1.1/24" in result["addr"][1]
    assert result["ping"][0] == 0, result["ping"]
    assert wait_until_gone(tmp_path) == {}
