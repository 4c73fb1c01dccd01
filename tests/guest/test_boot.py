"""Real boots of the built guest through its start scripts, with this test playing the upstream
driver's part (listening sockets, appended arguments, handshake, execute framing, reboot,
poweroff). Each boot costs about 3 s of a core under TCG, so there are only two tests."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import pytest
from nixos_test_ng.guest import write_start_scripts

pytestmark = pytest.mark.vm


def test_boot_backdoor_network_shares_and_poweroff(
    built_guest: Path, tmp_path: Path, vde_switch: Any, vm_factory: Any
) -> None:
    vde_switch(tmp_path / "vde1.ctl")
    vde_switch(tmp_path / "vde2.ctl")
    vde = {
        "QEMU_VDE_SOCKET_1": str(tmp_path / "vde1.ctl"),
        "QEMU_VDE_SOCKET_2": str(tmp_path / "vde2.ctl"),
    }
    # server sorts after client: client is node 1, server node 2
    scripts = write_start_scripts(tmp_path / "bin", {"server": [2, 1], "client": [1]}, built_guest)
    shared = tmp_path / "shared-xchg"
    shared.mkdir()
    (shared / "from-host").write_text("hello guest\n")
    state = tmp_path / "vm-state-server"
    # started as the driver starts a machine with `allow_reboot = true`: without -no-reboot
    vm = vm_factory(scripts["server"], state, shared, vde, allow_reboot=True)
    vm.connect()

    # exactly what the driver sends for execute("hostname; ip -4 addr show eth1; cat /etc/hosts")
    assert vm.shell is not None
    vm.shell.sendall(
        b"bash -c 'hostname; ip -4 addr show eth1; cat /etc/hosts' | (base64 -w 0; echo)\n"
    )
    out = base64.b64decode(vm._line(60)).decode()
    vm.shell.sendall(b"echo ${PIPESTATUS[0]}\n")
    assert vm._line(60) == b"0"
    lines = out.splitlines()
    assert lines[0] == "server"
    assert "inet 192.168.2.2/24" in out  # eth1 is on the node's first VLAN, 2
    assert "192.168.1.1 client" in lines and "192.168.2.2 server" in lines

    assert vm.execute("exit 3") == (3, "")
    assert vm.succeed(
        "cat /sys/class/net/eth0/address /sys/class/net/eth1/address /sys/class/net/eth2/address"
    ).split() == [
        "52:54:00:12:34:56",  # QEMU's user-mode NIC
        "52:54:00:12:02:02",
        "52:54:00:12:01:02",
    ]
    assert "inet 192.168.1.2/24" in vm.succeed("ip -4 addr show eth2")
    assert vm.succeed("cat /tmp/shared/from-host") == "hello guest\n"
    vm.succeed("echo from-guest > /tmp/xchg/out; echo shared-out > /tmp/shared/out")
    assert (state / "xchg" / "out").read_text() == "from-guest\n"
    assert (shared / "out").read_text() == "shared-out\n"
    # the backdoor's environment and stderr, as in NixOS
    assert vm.succeed("pwd; echo $USER $HOME; id -u") == "/tmp\nroot /root\n0\n"
    vm.succeed("echo marker-on-stderr >&2")

    # OpenBSD netcat as /bin/nc, with its loader and libraries found from the initramfs alone
    assert vm.succeed("command -v nc") == "/bin/nc\n"
    assert "OpenBSD netcat" in vm.succeed("nc -h 2>&1; true")
    libs = vm.succeed("/lib64/ld-linux-x86-64.so.2 --list /bin/nc")
    assert "not found" not in libs
    for lib in ("libbsd.so.0", "libmd.so.0", "libc.so.6"):
        assert f"{lib} => /lib/x86_64-linux-gnu/{lib}" in libs
    assert "BusyBox" in vm.succeed("busybox nc --help 2>&1; true")  # busybox's, still there
    # the driver's wait_for_open_port / wait_for_closed_port: `nc -z <addr> <port>`
    assert vm.execute("nc -z 127.0.0.1 8000")[0] == 1
    vm.succeed("nc -lk -p 8000 </dev/null >/dev/null 2>&1 &")
    vm.wait_until_succeeds("nc -z 127.0.0.1 8000", timeout=30)
    vm.succeed("nc -z localhost 8000")  # the driver's default addr
    vm.succeed("kill $(pidof nc)")
    vm.wait_until_succeeds("! nc -z 127.0.0.1 8000", timeout=30)
    # wait_for_open_unix_socket: `nc -z -U <path>`, and `nc -z -uU <path>` for datagrams
    assert vm.execute("nc -z -U /tmp/sock")[0] == 1
    vm.succeed("nc -lkU /tmp/sock </dev/null >/dev/null 2>&1 &")
    vm.wait_until_succeeds("nc -z -U /tmp/sock", timeout=30)
    assert vm.execute("nc -z -uU /tmp/dgram")[0] == 1
    vm.succeed("nc -lkuU /tmp/dgram </dev/null >/dev/null 2>&1 &")
    vm.wait_until_succeeds("nc -z -uU /tmp/dgram", timeout=30)

    # the driver's reboot(): ctrl-alt-delete, then the handshake again on the same shell socket;
    # the kernel hands it to /init (kernel.ctrl-alt-del=0), which reboots cleanly
    assert vm.succeed("cat /proc/sys/kernel/ctrl-alt-del") == "0\n"
    vm.hmp("sendkey ctrl-alt-delete")
    vm.wait_for_handshake()
    assert vm.succeed("ls /tmp") == "shared\nxchg\n"  # a fresh boot: no sockets left
    assert vm.succeed("cat /tmp/shared/from-host") == "hello guest\n"
    console = vm.console()
    assert "init: reboot" in console and "reboot: Restarting system" in console
    assert console.count("init: started the backdoor") == 2
    # `poweroff -f` typed into the backdoor (no /init trap involved) ends QEMU
    assert vm.shell is not None
    vm.shell.sendall(b"poweroff -f\n")
    assert vm.proc.wait(timeout=30) == 0
    assert "marker-on-stderr" in vm.console()
    assert "connecting to host..." in vm.console()


def test_two_nodes_on_a_vlan_ping_and_block(
    built_guest: Path, tmp_path: Path, vde_switch: Any, vm_factory: Any
) -> None:
    vde_switch(tmp_path / "vde1.ctl")
    vde = {"QEMU_VDE_SOCKET_1": str(tmp_path / "vde1.ctl")}
    # hosts_inline_limit=0 sends the host list through fw_cfg, the path long lists take
    scripts = write_start_scripts(
        tmp_path / "bin", {"a": [1], "b": [1]}, built_guest, hosts_inline_limit=0
    )
    shared = tmp_path / "shared"
    # a as by default (-no-reboot), b with `allow_reboot = true`
    vms = {
        name: vm_factory(
            scripts[name], tmp_path / f"vm-state-{name}", shared, vde, allow_reboot=name == "b"
        )
        for name in ("a", "b")
    }
    for vm in vms.values():
        vm.connect()
    a = vms["a"]
    assert "192.168.1.2 b" in a.succeed("cat /etc/hosts").splitlines()
    a.wait_until_succeeds("ping -c 1 -W 1 b", timeout=60)
    # the driver's block(): QEMU's automatic name of the first VLAN NIC
    assert a.hmp("set_link virtio-net-pci.1 off").strip().endswith("(qemu)")
    rc, _ = a.execute("ping -c 1 -W 1 192.168.1.2")
    assert rc != 0
    a.hmp("set_link virtio-net-pci.1 on")
    a.wait_until_succeeds("ping -c 1 -W 1 192.168.1.2", timeout=30)
    b = vms["b"]
    assert b.succeed("hostname") == "b\n"

    # OpenBSD netcat across the VLAN: a one-shot server (-q 1: quit 1 s after stdin's EOF) and
    # a client that half-closes after its stdin's EOF (-N), by host name
    b.succeed("echo pong | nc -l -p 8000 -q 1 >/tmp/nc-server.out 2>&1 &")
    deadline = time.monotonic() + 30
    while (got := a.execute("nc -N b 8000 </dev/null"))[1] != "pong\n":
        assert time.monotonic() < deadline, f"no pong from b: {got}"
        time.sleep(0.2)
    assert got[0] == 0
    b.wait_until_succeeds("! pidof nc", timeout=30)  # the server quit by itself
    assert b.succeed("cat /tmp/nc-server.out") == ""

    # under -no-reboot, ctrl-alt-delete (the driver's reboot()) ends QEMU
    a.hmp("sendkey ctrl-alt-delete")
    assert a.proc.wait(timeout=30) == 0
    # with reboots allowed, busybox `reboot` (SIGTERM to PID 1) reboots the guest, the handshake
    # comes again on the same socket, and the driver's shutdown() (`poweroff`) ends QEMU
    assert b.shell is not None
    b.shell.sendall(b"reboot\n")
    b.wait_for_handshake()
    assert b.succeed("hostname; ls /tmp") == "b\nshared\nxchg\n"
    assert b.shutdown() == 0
