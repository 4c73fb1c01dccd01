"""The systemd guest's start scripts against fakes: `run-<name>-vm` (systemd-vm) with a fake QEMU
and qemu-img, and `run-<name>-nspawn` with a fake systemd-nspawn (the script's own namespace,
mount and cgroup steps are real, so those tests need root)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from nixos_test_ng import procs
from nixos_test_ng.guest import GuestError, LayoutError, systemd_dir, write_start_scripts
from nixos_test_ng.guest.nspawn import PATH, render_nspawn_script
from nixos_test_ng.guest.scripts import Node
from nixos_test_ng.guest.systemd_guest import container_uuid, machine_id
from systemd_support import (
    Container,
    host_mounts,
    make_fake_systemd_guest,
    own_cgroup_dir,
    require_root,
    wait_gone,
)

Reaper = Any  # conftest.Reaper


def option_values(args: list[str], option: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == option]


@pytest.fixture
def sd_guest(tmp_path: Path) -> Path:
    return make_fake_systemd_guest(tmp_path / "guest dir")


FAKE_QEMU_IMG = """\
#!/bin/bash
echo "$*" >>"$FAKE_QEMU_IMG_OUT"
touch "${@: -1}"
"""


@pytest.fixture
def fake_qemu_img(fake_qemu: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake `qemu-img` beside the fake QEMU; it logs its arguments, one call a line."""
    img = tmp_path / "fakebin" / "qemu-img"
    img.write_text(FAKE_QEMU_IMG)
    img.chmod(0o755)
    out = tmp_path / "qemu-img-calls"
    monkeypatch.setenv("FAKE_QEMU_IMG_OUT", str(out))
    monkeypatch.delenv("NIX_DISK_IMAGE", raising=False)
    return out


def run_vm(
    script: Path, state: Path, fake_qemu: Path, reaper: Reaper, env: dict[str, str] | None = None
) -> tuple[dict[str, Any], str]:
    full = {**os.environ, "TMPDIR": str(state), "USE_TMPDIR": "1", **(env or {})}
    proc = reaper.spawn(
        [str(script), "-serial", "stdio", "-no-reboot"], env=full, stderr=subprocess.PIPE
    )
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    return json.loads(fake_qemu.read_text()), err.decode()


# ---------------------------------------------------------------------------------------------
# systemd VMs


def test_systemd_vm_script_boots_the_image_through_an_overlay(
    sd_guest: Path, tmp_path: Path, fake_qemu: Path, fake_qemu_img: Path, reaper: Reaper
) -> None:
    scripts = write_start_scripts(
        tmp_path / "bin", {"server": [1], "client": [1]}, sd_guest, kinds={"server": "systemd-vm"}
    )
    assert scripts["server"].name == "run-server-vm"
    state = tmp_path / "vm-state-server"
    state.mkdir()
    call, _ = run_vm(
        scripts["server"],
        state,
        fake_qemu,
        reaper,
        {"QEMU_VDE_SOCKET_1": "/vde1", "QEMU_KERNEL_PARAMS": "x=1"},
    )
    args = call["argv"][1:]
    assert args[-3:] == ["-serial", "stdio", "-no-reboot"]  # the driver's arguments, last
    assert option_values(args, "-kernel") == [str(sd_guest / "vmlinux")]
    assert option_values(args, "-initrd") == [str(systemd_dir(sd_guest) / "initrd.img")]
    assert option_values(args, "-m") == ["512"]
    assert option_values(args, "-drive") == [f"file={state}/server.qcow2,if=virtio,cache=unsafe"]
    (append,) = option_values(args, "-append")
    words = append.split()
    assert "root=/dev/vda" in words
    assert f"systemd.machine_id={machine_id('server')}" in words
    assert re.fullmatch(r"[0-9a-f]{32}", machine_id("server"))
    assert machine_id("server") != machine_id("client")
    assert "ntng.hostname=server" in words
    assert "ntng.if=eth1,52:54:00:12:01:02,192.168.1.2/24" in words
    assert "ntng.hosts=192.168.1.1=client,192.168.1.2=server" in words
    assert words[-1] == "x=1"
    # the overlay: made once, on the image, raw backing format
    assert fake_qemu_img.read_text().splitlines() == [
        f"create -q -f qcow2 -b {systemd_dir(sd_guest)}/rootfs.ext4 -F raw {state}/server.qcow2"
    ]
    assert (state / "server.qcow2.base").read_text() == "0123456789abcdef\n"
    # the client stays a busybox VM
    client = scripts["client"].read_text()
    # no root disk, only the small qcow2 for snapshots, attached to no device
    assert "root=/dev/vda" not in client and "if=virtio" not in client
    assert client.count("-drive") == 1 and "if=none,id=ntng-snapshots" in client
    assert f"initrd={shlex.quote(str(sd_guest / 'initrd.img'))}" in client


def test_the_overlay_is_kept_and_remade_only_for_another_image(
    sd_guest: Path, tmp_path: Path, fake_qemu: Path, fake_qemu_img: Path, reaper: Reaper
) -> None:
    (script,) = write_start_scripts(
        tmp_path / "bin", {"m": []}, sd_guest, kinds={"m": "systemd-vm"}
    ).values()
    state = tmp_path / "state"
    state.mkdir()
    run_vm(script, state, fake_qemu, reaper)
    (state / "m.qcow2").write_text("guest data")
    run_vm(script, state, fake_qemu, reaper)  # keep-state: the same disk again
    assert (state / "m.qcow2").read_text() == "guest data"
    assert len(fake_qemu_img.read_text().splitlines()) == 1
    # a new build of the image: the old overlay would show a corrupt file system
    make_fake_systemd_guest(sd_guest, image_id="fedcba9876543210")
    (script,) = write_start_scripts(
        tmp_path / "bin", {"m": []}, sd_guest, kinds={"m": "systemd-vm"}
    ).values()
    _, err = run_vm(script, state, fake_qemu, reaper)
    assert "belongs to another build of the guest; making a new one" in err
    assert (state / "m.qcow2").read_text() == ""
    assert (state / "m.qcow2.base").read_text() == "fedcba9876543210\n"
    # NIX_DISK_IMAGE, as in NixOS: used as it is, never replaced
    own = tmp_path / "own.qcow2"
    own.write_text("mine")
    call, _ = run_vm(script, state, fake_qemu, reaper, {"NIX_DISK_IMAGE": str(own)})
    assert option_values(call["argv"], "-drive") == [f"file={own},if=virtio,cache=unsafe"]
    assert own.read_text() == "mine"


def test_memory_defaults_per_kind_and_explicit_memory(sd_guest: Path, tmp_path: Path) -> None:
    nodes: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    kinds = {"a": "busybox", "b": "systemd-vm", "c": "systemd-nspawn"}
    s = write_start_scripts(tmp_path / "d", nodes, sd_guest, kinds=kinds)
    assert "-m 256 " in s["a"].read_text() and "-m 512 " in s["b"].read_text()
    assert s["c"].name == "run-c-nspawn"
    s = write_start_scripts(tmp_path / "e", nodes, sd_guest, 1024, kinds)
    assert "-m 1024 " in s["a"].read_text() and "-m 1024 " in s["b"].read_text()


def test_containers_are_in_every_hosts_list(sd_guest: Path, tmp_path: Path) -> None:
    s = write_start_scripts(
        tmp_path / "bin",
        {"box": [1, 2], "vm": [1]},
        sd_guest,
        kinds={"box": "systemd-nspawn", "vm": "systemd-vm"},
    )
    assert "ntng.hosts=192.168.1.1=box,192.168.1.2=vm " in s["vm"].read_text()
    box = s["box"].read_text()
    assert "VLANs: 1, 2)" in box
    assert "'192.168.1.1 box' '192.168.1.2 vm' >\"$root_dir/hosts\"" in box
    # eth<i> is the node's i-th VLAN, with a VM's MAC and address
    assert "QEMU_VDE_SOCKET_2" in box and '"$sock" eth2 ' in box
    assert "link set eth2 address 52:54:00:12:02:01" in box
    assert "address add 192.168.2.1/24 dev eth2" in box
    assert "--private-network" not in box  # the script's own network namespace instead


def test_invalid_kinds_and_missing_systemd_build(
    sd_guest: Path, tmp_path: Path, fake_guest: Path
) -> None:
    with pytest.raises(LayoutError, match="unknown kind `qemu`"):
        write_start_scripts(tmp_path / "x", {"a": []}, sd_guest, kinds={"a": "qemu"})
    with pytest.raises(LayoutError, match="`b`, which is not a node"):
        write_start_scripts(tmp_path / "x", {"a": []}, sd_guest, kinds={"b": "systemd-vm"})
    # the busybox-only guest directory: the systemd kinds ask for `build --systemd`
    for kind in ("systemd-vm", "systemd-nspawn"):
        with pytest.raises(GuestError, match="guest build --systemd"):
            write_start_scripts(tmp_path / "x", {"a": []}, fake_guest, kinds={"a": kind})
    write_start_scripts(tmp_path / "x", {"a": []}, fake_guest)  # busybox still works


def test_cli_kinds(sd_guest: Path, tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "nixos_test_ng.guest", "scripts", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    out = tmp_path / "bin"
    r = cli("-o", str(out), "--guest-dir", str(sd_guest), "a@systemd-vm", "c:@systemd-nspawn", "b")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [
        str(out / "run-a-vm"),
        str(out / "run-b-vm"),
        str(out / "run-c-nspawn"),
    ]
    assert "root=/dev/vda" in (out / "run-a-vm").read_text()
    assert "root=/dev/vda" not in (out / "run-b-vm").read_text()
    r = cli(
        "-o", str(tmp_path / "k"), "--guest-dir", str(sd_guest), "--kind", "systemd-nspawn", "x"
    )
    assert r.returncode == 0 and (tmp_path / "k/run-x-nspawn").exists()
    r = cli("-o", str(tmp_path / "y"), "--guest-dir", str(sd_guest), "a@vmm")
    assert r.returncode == 2 and "unknown kind `vmm`" in r.stderr
    # the short kinds of `nixos-test-ng run -m` (one spec syntax: machine_spec.py)
    r = cli("-o", str(tmp_path / "z"), "--guest-dir", str(sd_guest), "a@vm", "b@container")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "z").iterdir()) == ["run-a-vm", "run-b-nspawn"]


# ---------------------------------------------------------------------------------------------
# containers, against a fake systemd-nspawn

FAKE_NSPAWN = textwrap.dedent(
    """\
    #!{python}
    # records what it got and what its namespace looks like, then plays a container
    import json, os, subprocess, sys, time
    def fstype(path):
        return subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True,
                              text=True).stdout.strip()
    info = {{
        "argv": sys.argv, "pid": os.getpid(), "env": dict(os.environ), "cwd": os.getcwd(),
        "cgroup": open("/proc/self/cgroup").read(), "mnt_ns": os.readlink("/proc/self/ns/mnt"),
        "run": fstype("/run"), "sys_fs_cgroup": fstype("/sys/fs/cgroup"),
        "net_ns": os.readlink("/proc/self/ns/net"),
        "links": [ln.split(": ")[1] for ln in subprocess.run(
            ["ip", "-o", "link"], capture_output=True, text=True).stdout.splitlines()],
        "lo_up": "UP" in subprocess.run(["ip", "-o", "link", "show", "lo"],
                                        capture_output=True, text=True).stdout,
        "eth1": subprocess.run(["ip", "-o", "link", "show", "eth1"], capture_output=True,
                               text=True).stdout,
        "addrs": subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True)
                 .stdout,
        "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
    }}
    with open({out!r} + ".tmp", "w") as f:
        json.dump(info, f)
    os.rename({out!r} + ".tmp", {out!r})
    print("Welcome to the fake container!", flush=True)
    time.sleep(600)
    """
)


@pytest.fixture
def fake_container(sd_guest: Path, tmp_path: Path) -> Any:
    """`make(name="box", shared=None)` -> (script, record path): a run-<name>-nspawn rendered
    with a fake systemd-nspawn first on its PATH."""
    require_root()
    bindir = tmp_path / "fake-nspawn-bin"
    bindir.mkdir()
    record = tmp_path / "nspawn-call.json"
    fake = bindir / "systemd-nspawn"
    fake.write_text(FAKE_NSPAWN.format(python=sys.executable, out=str(record)))
    fake.chmod(0o755)

    def make(name: str = "box", vlans: tuple[int, ...] = ()) -> tuple[Path, Path]:
        text = render_nspawn_script(
            Node(name, 3, vlans),
            hosts=[("192.168.1.1", "other"), ("192.168.1.3", name)],
            rootfs=systemd_dir(sd_guest) / "rootfs",
            rootfs_lock=systemd_dir(sd_guest) / "rootfs.lock",
            uuid=container_uuid(name),
            path=f"{bindir}:{PATH}",
        )
        script = tmp_path / "bin" / f"run-{name}-nspawn"
        script.parent.mkdir(exist_ok=True)
        script.write_text(text)
        script.chmod(0o755)
        return script, record

    return make


def wait_record(record: Path, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not record.exists():
        assert time.monotonic() < deadline, "the fake systemd-nspawn never ran"
        time.sleep(0.02)
    return json.loads(record.read_text())


def test_nspawn_script_contract(fake_container: Any, sd_guest: Path, tmp_path: Path) -> None:
    script, record = fake_container("box")
    state, shared = tmp_path / "vm-state-box", tmp_path / "shared-xchg"
    mounts_before = host_mounts()
    c = Container(script, state, shared)
    try:
        pid = c.nspawn_pid()
        call = wait_record(record)
        c.wait_for_line(lambda line: line == "Welcome to the fake container!")
        # the PID line comes first and is systemd-nspawn's own pid (the script execs it)
        assert call["pid"] == pid == c.proc.pid
        assert c.lines[:2] == [f"systemd-nspawn's PID is {pid}", "Welcome to the fake container!"]
        # the environment: only what the driver passed and what the script sets itself
        env = {k: v for k, v in call["env"].items() if k not in ("PWD", "SHLVL", "_")}
        assert env == {
            "RUN_NSPAWN_ROOT_DIR": str(state),
            "RUN_NSPAWN_SHARED_DIR": str(shared),
            "PATH": f"{record.parent / 'fake-nspawn-bin'}:{PATH}",
            "LC_ALL": "C",
            "SYSTEMD_NSPAWN_LOCK": "0",
        }
        assert call["argv"][1:] == [
            f"--directory={systemd_dir(sd_guest)}/rootfs",
            "--volatile=overlay",
            "--machine=box",
            f"--uuid={container_uuid('box')}",
            "--register=no",
            "--keep-unit",
            f"--network-namespace-path=/proc/{pid}/ns/net",
            "--console=read-only",
            f"--bind={state}/var/log/journal:/var/log/journal",
            f"--bind={shared}:/tmp/shared",
            f"--bind-ro={state}/hosts:/etc/hosts",
            "--boot",
        ]
        assert (state / "hosts").read_text() == (
            "127.0.0.1 localhost\n::1 localhost\n192.168.1.1 other\n192.168.1.3 box\n"
        )
        # a network namespace of its own, with only lo (no VLANs)
        assert call["net_ns"] != os.readlink("/proc/self/ns/net")
        assert call["links"] == ["lo"]
        assert call["cwd"] == str(state)
        assert (state / "var/log/journal").is_dir() and shared.is_dir()
        # its own mount namespace, with a tmpfs /run and the unified cgroup hierarchy
        assert call["mnt_ns"] != os.readlink("/proc/self/ns/mnt")
        assert call["run"] == "tmpfs" and call["sys_fs_cgroup"] == "cgroup2fs"
        # a cgroup of its own under the script's, and the shared lock on the tree
        own = own_cgroup_dir()
        (line,) = [ln for ln in call["cgroup"].splitlines() if ln.startswith("0::")]
        cg = own / f"ntng-box.{pid}"
        assert line.rstrip("/").endswith(f"/ntng-box.{pid}")
        assert cg.is_dir()
        assert 9 in call["fds"]
        assert host_mounts() == mounts_before
    finally:
        c.kill()
    # killed as the driver kills it: the watcher removes the cgroup, nothing stays mounted
    assert not procs.alive(pid)
    assert not wait_gone(cg.exists, 10), f"{cg} was not removed"
    assert host_mounts() == mounts_before


def test_nspawn_script_escapes_bind_paths(fake_container: Any, tmp_path: Path) -> None:
    script, record = fake_container("esc")
    state, shared = tmp_path / "st:a\\te", tmp_path / "sh:ared"
    c = Container(script, state, shared)
    try:
        call = wait_record(record)
    finally:
        c.kill()
    assert f"--bind={tmp_path}/st\\:a\\\\te/var/log/journal:/var/log/journal" in call["argv"]
    assert f"--bind={tmp_path}/sh\\:ared:/tmp/shared" in call["argv"]


def test_nspawn_script_removes_cgroups_of_dead_containers(
    fake_container: Any, tmp_path: Path
) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = own_cgroup_dir() / f"ntng-gone.{dead.pid}"
    stale.mkdir()
    (stale / "payload").mkdir()
    script, record = fake_container("fresh")
    c = Container(script, tmp_path / "state", tmp_path / "shared")
    try:
        wait_record(record)
        assert not stale.exists()
    finally:
        c.kill()
        if stale.exists():
            for d in (stale / "payload", stale):
                d.rmdir()


def test_nspawn_script_refusals(fake_container: Any, sd_guest: Path, tmp_path: Path) -> None:
    script, record = fake_container("box")

    def run(env: dict[str, str], user: list[str] | None = None) -> subprocess.CompletedProcess[str]:
        # as another user, bash reads the script from stdin (the tmp dir is root's alone)
        cmd = [*user, "/bin/bash", "-s"] if user else [str(script)]
        return subprocess.run(
            cmd,
            env=env,
            input=script.read_text() if user else None,
            capture_output=True,
            text=True,
            timeout=30,
        )

    state = {"RUN_NSPAWN_ROOT_DIR": str(tmp_path / "s"), "RUN_NSPAWN_SHARED_DIR": str(tmp_path)}
    r = run({"RUN_NSPAWN_SHARED_DIR": str(tmp_path)})
    assert r.returncode != 0 and r.stdout == ""
    assert "RUN_NSPAWN_ROOT_DIR is not set" in r.stderr
    r = run(state, ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
    assert r.returncode == 1 and r.stdout == ""
    assert "systemd-nspawn needs root" in r.stderr
    (systemd_dir(sd_guest) / "rootfs/usr/lib/os-release").unlink()
    r = run(state)
    assert r.returncode == 1 and r.stdout == ""
    assert "no systemd guest in" in r.stderr and "guest build --systemd" in r.stderr
    assert not record.exists()


def test_written_nspawn_script_parses_and_sets_its_own_path(sd_guest: Path, tmp_path: Path) -> None:
    (script,) = write_start_scripts(
        tmp_path / "bin", {"box": []}, sd_guest, kinds={"box": "systemd-nspawn"}
    ).values()
    text = script.read_text()
    assert text.startswith("#!/bin/bash\n")
    assert f"export PATH={PATH}\n" in text
    assert text.rstrip().endswith("--boot")
    assert re.search(r"^exec systemd-nspawn ", text, re.M)
    assert re.search(
        r"^    _NTNG_NSPAWN_INNER=1 exec unshare --mount --net --propagation private", text, re.M
    )
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


def plugs(switch_dir: Path) -> list[str]:
    """The vde_plug2tap processes plugged into `switch_dir`."""
    r = subprocess.run(["pgrep", "-f", f"vde_plug2tap -s {switch_dir} "], capture_output=True)
    return r.stdout.decode().split()


def test_nspawn_script_joins_vlans_from_its_own_network_namespace(
    fake_container: Any, tmp_path: Path
) -> None:
    switch_dir = tmp_path / "vde2.ctl"
    switch = subprocess.Popen(
        ["vde_switch", "--sock", str(switch_dir), "--hub"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert not wait_gone(lambda: not (switch_dir / "ctl").exists(), 10)
        script, record = fake_container("box", vlans=(2,))
        state, shared = tmp_path / "state", tmp_path / "shared"
        env = {
            "RUN_NSPAWN_ROOT_DIR": str(state),
            "RUN_NSPAWN_SHARED_DIR": str(shared),
            "QEMU_VDE_SOCKET_2": str(switch_dir),
        }
        c = Container(script, state, shared, env)
        try:
            call = wait_record(record)
            # node 3's first VLAN is VLAN 2: eth1, as a VM's first VLAN NIC would be
            assert call["links"] == ["lo", "eth1"] and call["lo_up"]
            assert "52:54:00:12:02:03" in call["eth1"] and ",UP," in call["eth1"]
            assert "eth1    inet 192.168.2.3/24" in call["addrs"]
            assert len(plugs(switch_dir)) == 1
        finally:
            c.kill()
        # the watcher ended the plug with the container
        assert not wait_gone(lambda: plugs(switch_dir), 10)
    finally:
        switch.stdin.close()  # type: ignore[union-attr]
        switch.wait(10)


def test_nspawn_script_refuses_a_vlan_without_a_switch(fake_container: Any, tmp_path: Path) -> None:
    script, record = fake_container("box", vlans=(1,))
    env = {"RUN_NSPAWN_ROOT_DIR": str(tmp_path / "s"), "RUN_NSPAWN_SHARED_DIR": str(tmp_path)}
    r = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and r.stdout == ""
    assert "VLAN 1: no switch at $QEMU_VDE_SOCKET_1" in r.stderr
    assert not record.exists()
