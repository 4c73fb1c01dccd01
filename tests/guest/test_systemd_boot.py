"""Real boots of the systemd guest: containers (about 0.2 s each) started exactly as the driver
starts them, and one systemd VM (about 10 s of a core under TCG, booted twice for keep-state)
with this test playing the driver's part. Skipped, with the reason, when the systemd guest
cannot be built."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from nixos_test_ng import procs
from nixos_test_ng.guest import systemd_dir, write_start_scripts
from nixos_test_ng.guest.systemd_guest import machine_id
from systemd_support import (
    Container,
    container_init,
    host_mounts,
    own_cgroup_dir,
    pid_namespace,
    processes_in_pid_namespace,
    require_nspawn,
    systemd_guest,  # noqa: F401  (a fixture)
    wait_gone,
)

pytestmark = pytest.mark.vm


def leftovers(nspawn: int, init: int, pidns: str, cgroup: Path) -> list[str]:
    """What of a container is still there."""
    left = []
    if procs.alive(nspawn):
        left.append(f"systemd-nspawn (pid {nspawn})")
    if procs.alive(init):
        left.append(f"the container's init (pid {init})")
    in_ns = processes_in_pid_namespace(pidns)
    if in_ns:
        left.append(f"processes in the container's PID namespace: {in_ns}")
    if cgroup.exists():
        left.append(f"the cgroup {cgroup}")
    return left


def test_containers(systemd_guest: Path, tmp_path: Path) -> None:  # noqa: F811
    require_nspawn()
    scripts = write_start_scripts(
        tmp_path / "bin",
        {"box": [], "other": []},  # VLANs: tests/e2e/test_systemd.py
        systemd_guest,
        kinds={"box": "systemd-nspawn", "other": "systemd-nspawn"},
    )
    rootfs = systemd_dir(systemd_guest) / "rootfs"
    shared = tmp_path / "shared-xchg"
    shared.mkdir()
    (shared / "from-host").write_text("hello container\n")
    mounts_before = host_mounts()
    box = Container(scripts["box"], tmp_path / "vm-state-box", shared)
    other = Container(scripts["other"], tmp_path / "vm-state-other", shared)
    try:
        nspawn = box.nspawn_pid()
        init = box.init_pid()
        assert box.lines[0] == f"systemd-nspawn's PID is {nspawn}"
        assert box.wait_running() == "running"
        assert other.wait_running() == "running"
        assert box.nsenter("systemctl is-system-running --wait").stdout.strip() == "running"
        # the upstream driver's command form, with an empty environment (/bin/sh is bash)
        r = subprocess.run(
            [
                *("nsenter", f"--target={init}", "--mount", "--uts", "--ipc", "--net", "--pid"),
                *("--cgroup", "/bin/sh", "-c"),
                "set -eo pipefail; source /etc/profile; set -u; echo $PATH; hostname",
            ],
            env={},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[1] == "box"
        assert "/usr/bin" in r.stdout.splitlines()[0]
        assert box.succeed("cat /etc/machine-id").strip() == machine_id("box")
        assert other.succeed("hostname").strip() == "other"
        assert box.succeed("systemctl list-units --failed --no-legend") == ""
        # the VM-only units stay out of the way
        assert box.succeed("systemctl show -p ActiveState --value backdoor.service") == "inactive\n"
        assert box.nsenter("systemctl is-active ntng-setup.service").stdout == "inactive\n"
        assert box.succeed("ip -o link show | cut -d: -f2").split() == ["lo"]
        assert box.succeed("command -v nc ip curl ping ps less").count("\n") == 6
        # the shared directory, both ways; the boot did not clean it
        assert box.succeed("cat /tmp/shared/from-host") == "hello container\n"
        box.succeed("echo from-box > /tmp/shared/from-box")
        assert (shared / "from-box").read_text() == "from-box\n"
        # writes land in the tmpfs overlay, never in the tree
        box.succeed("echo x > /root/written-in-box; touch /etc/written-in-box")
        assert not (rootfs / "root/written-in-box").exists()
        assert not (rootfs / "etc/written-in-box").exists()
        assert other.nsenter("test -e /root/written-in-box").returncode == 1
        # the journal: on the console (as `name # ...` in the driver's log) and on the host
        marker = f"journal-line-{uuid.uuid4().hex[:8]}"
        box.succeed(f"logger -p user.info {marker}")
        box.wait_for_line(lambda line: line.endswith(marker), timeout=10)
        # (journald prefixes a kernel-style timestamp when the host has printk.time=Y)
        box.wait_for_line(lambda line: "systemd[1]: Startup finished in" in line, 10)
        machine = machine_id("box")
        journal = tmp_path / "vm-state-box/var/log/journal"
        assert (journal / machine / "system.journal").is_file()
        box.succeed("journalctl --flush")
        shown = subprocess.run(
            ["journalctl", "-D", str(journal), "--no-pager", "-o", "cat"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert marker in shown.stdout, shown.stderr
        # one cgroup per container
        cg_box = own_cgroup_dir() / f"ntng-box.{nspawn}"
        cg_other = own_cgroup_dir() / f"ntng-other.{other.nspawn_pid()}"
        assert cg_box.is_dir() and cg_other.is_dir()
        pidns = pid_namespace(init)
        assert pidns is not None and pidns != pid_namespace(os.getpid())
        # killed as the driver kills it: nothing of it is left, the other one goes on
        box.kill()
        left = wait_gone(lambda: leftovers(nspawn, init, pidns, cg_box), 10)
        assert not left, left
        assert other.wait_running() == "running"
        assert not (rootfs / "root/written-in-box").exists()
    finally:
        box.kill()
        other.kill()
    assert not wait_gone(cg_other.exists, 10)
    assert host_mounts() == mounts_before


DRIVER = textwrap.dedent(
    """\
    import ctypes, signal, subprocess, sys, time
    def pdeathsig():
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    proc = subprocess.Popen(
        [sys.argv[1]],
        env={"RUN_NSPAWN_ROOT_DIR": sys.argv[2], "RUN_NSPAWN_SHARED_DIR": sys.argv[3]},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True,
        preexec_fn=pdeathsig,
    )
    print(proc.stdout.readline().decode().strip(), flush=True)
    time.sleep(600)
    """
)


def test_container_dies_with_its_driver(systemd_guest: Path, tmp_path: Path) -> None:  # noqa: F811
    """The driver spawns the script with PR_SET_PDEATHSIG=SIGKILL: when the driver is killed,
    systemd-nspawn is, and the container goes with it."""
    require_nspawn()
    (script,) = write_start_scripts(
        tmp_path / "bin", {"orphan": []}, systemd_guest, kinds={"orphan": "systemd-nspawn"}
    ).values()
    mounts_before = host_mounts()
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(script), str(tmp_path / "state"), str(tmp_path / "sh")],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert driver.stdout is not None
        line = driver.stdout.readline()
        assert line.startswith("systemd-nspawn's PID is "), line
        nspawn = int(line.split()[-1])
        init = container_init(nspawn)
        pidns = pid_namespace(init)
        assert pidns is not None
        cg = own_cgroup_dir() / f"ntng-orphan.{nspawn}"
        time.sleep(0.3)  # let it boot a little
        assert processes_in_pid_namespace(pidns)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    left = wait_gone(lambda: leftovers(nspawn, init, pidns, cg), 10)
    assert not left, left
    assert host_mounts() == mounts_before


def test_systemd_vm(
    systemd_guest: Path,  # noqa: F811
    tmp_path: Path,
    vde_switch: Any,
    vm_factory: Any,
) -> None:
    """A systemd VM ("server") and a busybox VM ("client") on VLAN 1."""
    vde = {"QEMU_VDE_SOCKET_1": str(vde_switch(tmp_path / "vde1.ctl"))}
    scripts = write_start_scripts(
        tmp_path / "bin",
        {"server": [1], "client": [1]},
        systemd_guest,
        kinds={"server": "systemd-vm"},
    )
    shared = tmp_path / "shared-xchg"
    shared.mkdir()
    (shared / "from-host").write_text("hello guest\n")
    state = tmp_path / "vm-state-server"
    client = vm_factory(scripts["client"], tmp_path / "vm-state-client", shared, vde)
    vm = vm_factory(scripts["server"], state, shared, vde)
    handshake = vm.connect(300)
    client.connect(120)
    running = vm.execute("systemctl is-system-running --wait", 300)
    print(f"systemd VM: handshake {handshake:.1f}s, running {time.monotonic() - vm.started:.1f}s")
    assert running == (0, "running\n"), vm.console()
    assert vm.succeed("systemctl show -p ActiveState --value multi-user.target") == "active\n"
    assert vm.succeed("systemctl list-units --failed --no-legend") == ""
    assert vm.succeed("systemctl is-active backdoor.service ntng-setup.service") == (
        "active\nactive\n"
    )
    # the backdoor: NixOS's environment; stderr on the serial console
    assert vm.succeed("pwd; echo $USER $HOME; id -u") == "/tmp\nroot /root\n0\n"
    assert vm.succeed("hostname; cat /etc/machine-id") == f"server\n{machine_id('server')}\n"
    assert vm.succeed("grep -c '^root::' /etc/shadow") == "1\n"
    # networking from the kernel command line, classic names
    assert vm.succeed("ip -o link show | cut -d: -f2 | tr -d ' '").split() == ["lo", "eth0", "eth1"]
    assert "inet 10.0.2.15/24" in vm.succeed("ip -4 addr show eth0")
    assert "inet 192.168.1.2/24" in vm.succeed("ip -4 addr show eth1")
    assert vm.succeed("cat /sys/class/net/eth1/address") == "52:54:00:12:01:02\n"
    hosts = vm.succeed("cat /etc/hosts").splitlines()
    assert "192.168.1.1 client" in hosts and "192.168.1.2 server" in hosts
    vm.wait_until_succeeds("ping -c 1 -W 1 client", 60)
    client.wait_until_succeeds("ping -c 1 -W 1 server", 60)
    vm.succeed("echo served | nc -l -N -p 8000 >/dev/null 2>&1 &")
    client.wait_until_succeeds("nc -z server 8000", 30)
    # the shares
    assert vm.succeed("cat /tmp/shared/from-host") == "hello guest\n"
    vm.succeed("echo from-server > /tmp/shared/out; echo x > /tmp/xchg/out")
    assert (shared / "out").read_text() == "from-server\n"
    assert (state / "xchg/out").read_text() == "x\n"
    # the journal on the serial console, volatile
    marker = f"journal-line-{uuid.uuid4().hex[:8]}"
    vm.succeed(f"logger -p user.info {marker}")
    deadline = time.monotonic() + 10
    while marker not in vm.serial_log.read_text(errors="replace"):
        assert time.monotonic() < deadline, vm.console()
        time.sleep(0.1)
    log = vm.serial_log.read_text(errors="replace")
    assert "systemd[1]: Startup finished in" in log
    assert vm.execute("test -d /run/log/journal && test ! -e /var/log/journal")[0] == 0
    # the disk: an overlay in the state dir; the image is never written
    assert (state / "server.qcow2").is_file()
    vm.succeed("echo kept > /root/persisted; sync")
    assert vm.shutdown(60) == 0
    # keep-state: the same state directory boots the same disk again
    vm2 = vm_factory(scripts["server"], state, shared, vde)
    vm2.connect(300)
    assert vm2.succeed("cat /root/persisted") == "kept\n"
    assert vm2.execute("systemctl is-system-running --wait", 300) == (0, "running\n")
    assert vm2.shutdown(60) == 0
    img = systemd_dir(systemd_guest) / "rootfs.ext4"
    debugfs = subprocess.run(
        ["debugfs", "-R", "stat /root/persisted", str(img)], capture_output=True, text=True
    )
    assert "File not found" in debugfs.stderr
