"""Real boots of the built guest through its start scripts, with this test playing the upstream
driver's part (listening sockets, appended arguments, handshake, execute framing, poweroff).
Each boot costs about 3 s of a core under TCG, so there are only two tests."""

from __future__ import annotations

import base64
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
    vm = vm_factory(scripts["server"], state, shared, vde)
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
    assert vm.shutdown() == 0
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
    vms = {
        name: vm_factory(scripts[name], tmp_path / f"vm-state-{name}", shared, vde)
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
    assert vms["b"].succeed("hostname") == "b\n"
    # reboots end QEMU under the driver's -no-reboot: busybox `reboot` (SIGTERM to PID 1) on a,
    # ctrl-alt-delete (the driver's reboot()) on b
    assert a.shell is not None
    a.shell.sendall(b"reboot\n")
    assert a.proc.wait(timeout=30) == 0
    vms["b"].hmp("sendkey ctrl-alt-delete")
    assert vms["b"].proc.wait(timeout=30) == 0
