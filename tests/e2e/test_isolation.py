"""Isolation of pytest-style tests on VMs that cannot be snapshotted, on the busybox guest.

A NixOS test VM has a qcow2 disk that its start script makes in `$TMPDIR` when it is missing,
and the host's Nix store over 9p (tag `nix-store`) at /nix/.ro-store, the lower layer of an
overlay on /nix/store; QEMU refuses to save a VM while that share is in use. The start scripts
here mimic that on the busybox guest (its kernel and initrd, plus a small initramfs layer whose
`/nixos-init` mounts the store as NixOS does and keeps it busy, then runs the guest's `/init`),
and a VM with no writable disk at all. Isolated tests get a restarted machine on a fresh disk,
the others run on, and the log and JUnit say which isolation and why. With the store as a
read-only disk image instead (`virtualisation.useNixStoreImage`, attached read-only by
nix/snapshots.nix), the same VM is isolated by snapshot."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from nixos_test_ng.guest.cpio import Entry, write_newc

# snapshots: no vhost-user vsock device (QEMU cannot save it)
pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("takes_snapshots")]

#: Where the guest's store user writes its pid (the process keeping /nix/.ro-store busy).
STORE_USER = "/run/nix-store-user.pid"

# Run as PID 1 (`rdinit=`): the store is mounted in the background once the guest's /init has
# mounted its shares, and a process working in /nix/.ro-store keeps it busy.
NIXOS_INIT = rf"""#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
(
	until grep -qs " /tmp/shared " /proc/mounts; do sleep 0.1; done
	mkdir -p /nix/.ro-store /nix/store /nix/.rw-store
	mount -t 9p -o trans=virtio,version=9p2000.L,msize=131072,cache=loose nix-store /nix/.ro-store
	mount -t tmpfs tmpfs /nix/.rw-store
	mkdir -p /nix/.rw-store/upper /nix/.rw-store/work
	mount -t overlay overlay \
		-o lowerdir=/nix/.ro-store,upperdir=/nix/.rw-store/upper,workdir=/nix/.rw-store/work \
		/nix/store
	cd /nix/.ro-store && exec sh -c 'echo $$ >{STORE_USER}; exec sleep 1000000'
) &
exec /init
"""


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"the start script no longer has {old!r}"
    return text.replace(old, new)


def nixos_like(vm_env, store: str) -> None:
    """Rewrites the busybox start script of `machine` as a NixOS VM's: the root disk
    `./machine.qcow2` (made by `qemu-img create` when missing, in the state directory, which
    is the script's working directory) and the store, `store` being "9p" (the host's store,
    mounted by the guest) or "image" (a raw image in `$TMPDIR`, attached read-only as
    nix/snapshots.nix does with `-set`)."""
    path = Path(vm_env.scripts({"machine": []})["machine"])
    text = path.read_text()
    text = replace_once(
        text,
        'snapshot_disk="$TMPDIR/machine-snapshots.qcow2"\n'
        '[ -e "$snapshot_disk" ] || qemu-img create -q -f qcow2 "$snapshot_disk" 16M >&2\n',
        'NIX_DISK_IMAGE=$(readlink -f "${NIX_DISK_IMAGE:-./machine.qcow2}")\n'
        'if ! test -e "$NIX_DISK_IMAGE"; then\n'
        '    qemu-img create -q -f qcow2 "$NIX_DISK_IMAGE" 64M >&2\n'
        "fi\n",
    )
    drives = [
        '-drive "cache=writeback,file=${NIX_DISK_IMAGE//,/,,},id=drive1,if=none,index=1,'
        'werror=report" -device virtio-blk-pci,bootindex=1,drive=drive1,serial=root'
    ]
    if store == "9p":
        host_store = vm_env.root / "host-store"
        host_store.mkdir()
        (host_store / "hello").write_text("from the host's store\n")
        layer = write_newc(
            [
                Entry("nixos-init", 0o100755, NIXOS_INIT.encode()),
                Entry("dev", 0o40755),
                Entry("dev/null", 0o20666, rdev=(1, 3)),  # for the background job's stdin
            ],
            mtime=0,
        )
        base = next(line for line in text.splitlines() if line.startswith("initrd="))
        initrd = vm_env.root / "initrd.img"
        # an uncompressed archive first: the kernel unpacks concatenated archives in order
        initrd.write_bytes(layer + Path(base.removeprefix("initrd=")).read_bytes())
        text = replace_once(text, base + "\n", f"initrd={initrd}\n")
        text = replace_once(
            text, "ntng.hostname=machine", "ntng.hostname=machine rdinit=/nixos-init"
        )
        drives.append(f"-virtfs local,path={host_store},security_model=none,mount_tag=nix-store")
    else:
        text = replace_once(
            text,
            'cd "$TMPDIR"\n',
            'cd "$TMPDIR"\nqemu-img create -q -f raw "$TMPDIR/store.img" 1M >&2\n',
        )
        drives.append(
            '-drive "index=2,id=drive2,if=none,file=$TMPDIR/store.img,format=raw"'
            " -device virtio-blk-pci,bootindex=2,drive=drive2"
            " -set drive.drive2.readonly=on"
        )
    text = replace_once(
        text,
        '-drive "if=none,id=ntng-snapshots,format=qcow2,file=${snapshot_disk//,/,,}"',
        " \\\n    ".join(drives),
    )
    path.write_text(text)


def isolation_properties(junit: Path) -> dict[str, str]:
    root = ET.parse(junit).getroot()
    return {
        case.get("name"): prop.get("value")
        for case in root.iter("testcase")
        for prop in case.iter("property")
        if prop.get("name") == "isolation"
    }


def run_pytest_style(vm_env, script: str):
    # -s: pytest captures nothing, so the driver's log is on stderr
    r = vm_env.run(
        {"machine": []}, script, "--junit-xml", "junit.xml", keep_scripts=True, after=("-s",)
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-6000:]
    return r, isolation_properties(vm_env.out / "junit.xml")


NIXOS_9P = rf"""
import pytest
from nixos_test_ng import SnapshotRefused

# NixOS has its store before the backdoor answers; here it comes just after
machine.wait_for_file("{STORE_USER}")

def test_writes(machine):
    machine.succeed("echo dirty > /etc/state")
    machine.succeed("printf dirty | dd of=/dev/vda conv=notrunc 2>/dev/null && sync")
    machine.succeed("head -c 5 /dev/vda | grep -q dirty")

@pytest.mark.isolated
def test_isolated_sees_a_clean_machine(machine):
    machine.fail("test -e /etc/state")
    machine.fail("head -c 5 /dev/vda | grep -q dirty")  # a new disk image
    machine.wait_for_file("{STORE_USER}")
    assert machine.succeed("cat /nix/store/hello") == "from the host's store\n"

def test_snapshot_says_why_and_names_the_fix(machine):
    def nine_p_mounts():
        return machine.succeed("grep -c ' 9p ' /proc/mounts").strip()

    machine.wait_for_file("{STORE_USER}")
    # QEMU's own word
    answer = machine.send_monitor_command("savevm s")
    assert "Error: Migration is disabled when VirtFS export path" in answer, answer
    # the store is the lower layer of the overlay on /nix/store: left mounted, refused
    with pytest.raises(SnapshotRefused) as held:
        machine.snapshot("s")
    assert str(held.value).startswith('machine: cannot take snapshot "s": QEMU cannot save')
    assert (
        "cannot let go of `nix-store` at /nix/.ro-store: it is a lower layer of the overlay"
        " on /nix/store" in held.value.reason
    )
    assert "virtualisation.useNixStoreImage = true;" in held.value.fix
    assert nine_p_mounts() == "3"
    # without the overlay, the store is still busy
    machine.succeed("umount /nix/store")
    with pytest.raises(SnapshotRefused) as busy:
        machine.snapshot("s")
    assert "the guest cannot unmount `nix-store` at /nix/.ro-store (umount: " in busy.value.reason
    assert "virtualisation.useNixStoreImage = true;" in busy.value.fix
    assert nine_p_mounts() == "3"  # the others were unmounted and are back, once
    # once the guest lets go of it, the VM can be saved
    machine.succeed("kill $(cat {STORE_USER})")
    machine.wait_until_succeeds("! fuser -m /nix/.ro-store")
    machine.snapshot("s")
    assert machine.snapshots == ["s"] and nine_p_mounts() == "3"
"""


def test_a_nixos_like_vm_is_isolated_by_restart(vm_env, monkeypatch):
    monkeypatch.setenv("NIXOS_TEST_NG_STANDBY", "0")  # the snapshot at the end needs none
    nixos_like(vm_env, "9p")
    r, props = run_pytest_style(vm_env, NIXOS_9P)
    assert "3 passed" in r.stdout, r.stdout[-3000:]
    why = (
        "snapshot impossible: QEMU cannot save a VM with a 9p share in use, and the guest"
        " cannot let go of `nix-store` at /nix/.ro-store: it is a lower layer of the overlay"
        " on /nix/store"
    )
    lines = [line for line in r.stderr.splitlines() if "isolation by restart" in line]
    assert len(lines) == 1, r.stderr[-6000:]
    assert lines[0].startswith(f"machine: isolation by restart ({why}")
    assert "to isolate by snapshot: " in lines[0] and "useNixStoreImage = true;" in lines[0]
    assert "machine: restarting with a fresh state directory" in r.stderr
    assert props["test_writes"] == "session machines"
    assert props["test_isolated_sees_a_clean_machine"].startswith(
        f"isolated: machine restarted ({why}"
    ), props
    assert props["test_snapshot_says_why_and_names_the_fix"] == "session machines"


ISOLATION = r"""
import pytest

def test_writes(machine):
    machine.succeed("echo dirty > /etc/state")

@pytest.mark.isolated
def test_isolated_sees_a_clean_machine(machine):
    machine.fail("test -e /etc/state")
"""


def test_with_the_store_as_a_read_only_image_isolation_is_by_snapshot(vm_env, monkeypatch):
    monkeypatch.setenv("NIXOS_TEST_NG_STANDBY", "0")  # one QEMU is enough to show it
    nixos_like(vm_env, "image")
    r, props = run_pytest_style(vm_env, ISOLATION)
    assert "2 passed" in r.stdout, r.stdout[-3000:]
    assert "isolation by restart" not in r.stderr
    assert props["test_isolated_sees_a_clean_machine"] == "isolated: machine restored"


NO_DISK = r"""
import pytest
from nixos_test_ng import SnapshotRefused

def test_snapshot_needs_a_disk(machine):
    with pytest.raises(SnapshotRefused) as e:
        machine.snapshot("s")
    assert "needs a writable qcow2 disk" in e.value.fix
    machine.succeed("grep -q ' /tmp/shared ' /proc/mounts")  # the shares are back
    machine.succeed("echo dirty > /etc/state")

@pytest.mark.isolated
def test_isolated_sees_a_clean_machine(machine):
    machine.fail("test -e /etc/state")
"""


def test_a_vm_without_a_writable_disk_is_isolated_by_restart(vm_env):
    path = Path(vm_env.scripts({"machine": []})["machine"])
    lines = path.read_text().splitlines()
    path.write_text("\n".join(line for line in lines if "ntng-snapshots" not in line) + "\n")
    r, props = run_pytest_style(vm_env, NO_DISK)
    assert "2 passed" in r.stdout, r.stdout[-3000:]
    assert r.stderr.count("machine: isolation by restart (snapshot impossible: QEMU refused: ") == 1
    assert props["test_isolated_sees_a_clean_machine"].startswith(
        "isolated: machine restarted (snapshot impossible: QEMU refused: "
    ), props
