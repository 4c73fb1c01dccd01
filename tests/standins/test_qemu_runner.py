"""The stand-ins' QEMU runner on the busybox guest (TCG): hybrid vsock over the user-mode network
to the guest agent, pause/resume, snapshot/restore, the guest's power-off, Ctrl-Alt-Del and
reset, and QEMU dying with the stand-in. Each test boots at most one guest (slow under TCG)."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.leaks import wait_until_gone

from standins import qemu_runner
from standins.runner import Disk, RunnerError, VmSpec, Vsock

pytestmark = pytest.mark.vm

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


# --- the tests -------------------------------------------------------------------------------


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
