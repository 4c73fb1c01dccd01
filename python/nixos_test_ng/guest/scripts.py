"""Start scripts (`run-<node>-vm`) for the busybox guest, following NixOS's start-script contract.

What the test driver relies on (nixos/modules/virtualisation/qemu-vm.nix, test-driver machine
code), all reproduced here:

- a bash script that ends in `exec qemu-system-x86_64 ...`, so the driver's kill reaches QEMU;
- `$QEMU_OPTS` (word-split) and then the script's own arguments (`"$@"`: the driver's `-qmp`,
  `-monitor`, `-chardev`, `-device virtconsole`, `-serial stdio`, ...) come last;
- `TMPDIR` is used when `USE_TMPDIR` is also set, else a fresh `mktemp -d nix-vm.XXXXXXXXXX`;
  `$TMPDIR/xchg` is created and shared over 9p as tag `xchg`, and `${SHARED_DIR:-$TMPDIR/xchg}`
  as tag `shared`;
- eth0 is a user-mode NIC (`$QEMU_NET_OPTS` appended to its netdev), and VLAN `i` of the node
  (1-based, in order) adds `-device virtio-net-pci,netdev=vlan<i>,mac=52:54:00:12:<vlan>:<node>`
  and `-netdev vde,id=vlan<i>,sock="$QEMU_VDE_SOCKET_<vlan>"`, without device ids, so QEMU names
  the first VLAN NIC `virtio-net-pci.1` (the driver's `block()` uses that name);
- nodes are numbered from 1 by sorted name (nixpkgs' network.nix), VLAN NIC addresses are
  `192.168.<vlan>.<node>/24`, and `/etc/hosts` lists every node's first address;
- `$QEMU_KERNEL_PARAMS` is appended to the kernel command line, and
  `NIXPKGS_QEMU_KERNEL_<node>` (`-` as `_`) replaces the kernel.

They also name `NIXOS_TEST_NG_VHOST_USER_VSOCK` and `NIXOS_TEST_NG_VSOCK_CID`: that announces to
nixos-test-ng's driver that they take the guest agent's vsock device (the driver sets one of them).

Each node has a kind (`kinds`): "busybox" (the default), "systemd-vm" (the same script plus the
systemd guest's disk: a qcow2 overlay `$TMPDIR/<node>.qcow2` on its ext4 image, `root=/dev/vda`)
or "systemd-nspawn" (a `run-<node>-nspawn` container script, see nspawn.py); "busybox-firecracker"
and "systemd-firecracker" write `run-<node>-firecracker`, "busybox-cloud-hypervisor" and
"systemd-cloud-hypervisor" `run-<node>-cloud-hypervisor` (see vmm.py).
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nixos_test_ng import machine_spec
from nixos_test_ng.machine_spec import KINDS, MAX_VLAN, VMM_KINDS

from .cache import INITRD_FILE, default_guest_dir, load_manifest
from .common import GuestError
from .nspawn import render_nspawn_script
from .systemd_guest import (
    IMAGE_FILE,
    ROOTFS_DIR,
    ROOTFS_LOCK,
    check_built,
    container_uuid,
    machine_id,
    systemd_dir,
)
from .vmm import VMMS, render_vmm_script

__all__ = [
    "KINDS",
    "LayoutError",
    "Node",
    "layout",
    "parse_node_spec",
    "render_start_script",
    "write_start_scripts",
]

MAX_NODES = 254
#: The VLANs of a node whose spec names none (NixOS's default `virtualisation.vlans = [ 1 ]`).
DEFAULT_VLANS = (1,)
DEFAULT_MEMORY = 256
#: Default RAM (MiB) per kind (the systemd VM as in guest-recipe.md).
KIND_MEMORY = {
    "busybox": DEFAULT_MEMORY,
    "systemd-vm": 512,
    "busybox-firecracker": DEFAULT_MEMORY,
    "systemd-firecracker": 512,
    "busybox-cloud-hypervisor": DEFAULT_MEMORY,
    "systemd-cloud-hypervisor": 512,
}
#: The kinds that boot the systemd guest's disk image.
SYSTEMD_DISK_KINDS = ("systemd-vm", "systemd-firecracker", "systemd-cloud-hypervisor")
#: The guest's own kernel parameters on a Firecracker or Cloud Hypervisor machine, after the
#: VMM's.
VMM_GUEST_PARAMS = "loglevel=4"
#: Kernel parameters of every node (NixOS test VMs: consoles, panic=1, clocksource=acpi_pm).
BASE_KERNEL_PARAMS = "console=tty0 console=ttyS0 panic=1 clocksource=acpi_pm loglevel=4"
#: Above this many bytes of generated kernel command line, the host list moves from the command
#: line (at most 2047 bytes on x86, shared with $QEMU_KERNEL_PARAMS) to a QEMU fw_cfg file.
HOSTS_INLINE_LIMIT = 1024
FW_CFG_HOSTS = "opt/nixos-test-ng/hosts"

_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?")


class LayoutError(GuestError, ValueError):
    """Invalid nodes, VLANs or memory size for the start scripts."""


@dataclass(frozen=True)
class Node:
    """One machine of the network: `number` is its 1-based index among the sorted names."""

    name: str
    number: int
    vlans: tuple[int, ...]

    def mac(self, vlan: int) -> str:
        return f"52:54:00:12:{vlan:02x}:{self.number:02x}"

    def address(self, vlan: int) -> str:
        return f"192.168.{vlan}.{self.number}"


def parse_node_spec(spec: str) -> tuple[str, list[int]]:
    """`NODE[:VLAN[,VLAN...]]` -> (name, vlans), as `nixos_test_ng.machine_spec` reads it. A
    bare `NODE` is on VLAN 1 (NixOS's default `virtualisation.vlans = [ 1 ]`); `NODE:` is on
    no VLAN."""
    try:
        parsed = machine_spec.parse(spec)
    except machine_spec.MachineSpecError as e:
        raise LayoutError(str(e)) from None
    if parsed.kind is not None:
        raise LayoutError(f"`{spec}`: a kind is not part of NODE[:VLAN[,VLAN...]] here")
    return parsed.name, list(DEFAULT_VLANS if parsed.vlans is None else parsed.vlans)


def layout(nodes: Mapping[str, Sequence[int]]) -> list[Node]:
    """Validate the nodes and number them by sorted name, as nixpkgs' network.nix does."""
    if not nodes:
        raise LayoutError("no nodes given")
    if len(nodes) > MAX_NODES:
        raise LayoutError(
            f"{len(nodes)} nodes given; at most {MAX_NODES} fit in one 192.168.<vlan>.0/24 network"
        )
    out = []
    for number, name in enumerate(sorted(nodes), start=1):
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise LayoutError(
                f"invalid node name `{name}`\n"
                "(a host name: letters, digits, `-` and `_`, starting and ending with a letter "
                "or digit, at most 63)"
            )
        vlans = list(nodes[name])
        for v in vlans:
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_VLAN:
                raise LayoutError(f"node `{name}`: VLAN `{v}` is outside 1..{MAX_VLAN}")
        if len(set(vlans)) != len(vlans):
            raise LayoutError(f"node `{name}`: a VLAN is listed twice in {vlans}")
        out.append(Node(name, number, tuple(vlans)))
    return out


def _kernel_params(
    node: Node, hosts: str, hosts_inline: bool, extra: str = "", base: str = BASE_KERNEL_PARAMS
) -> str:
    params = [base, *([extra] if extra else []), f"ntng.hostname={node.name}"]
    params += [
        f"ntng.if=eth{i},{node.mac(v)},{node.address(v)}/24"
        for i, v in enumerate(node.vlans, start=1)
    ]
    if hosts:
        params.append(
            f"ntng.hosts={hosts.replace(' ', ',')}" if hosts_inline else "ntng.hosts=fw_cfg"
        )
    return " ".join(params)


def _hosts(nodes: Sequence[Node]) -> str:
    """Every node's first address: `IP=NAME IP=NAME ...`."""
    return " ".join(f"{n.address(n.vlans[0])}={n.name}" for n in nodes if n.vlans)


def render_start_script(
    node: Node,
    nodes: Sequence[Node],
    *,
    kernel: Path,
    initrd: Path,
    accel: str = "tcg",
    memory: int = DEFAULT_MEMORY,
    hosts_inline_limit: int = HOSTS_INLINE_LIMIT,
    disk_image: Path | None = None,
    disk_id: str = "",
) -> str:
    """The text of `run-<node>-vm` for `node` of the network `nodes` (the nodes whose first
    address goes into /etc/hosts). With `disk_image` (the systemd guest's ext4 image, whose
    build is `disk_id`), the VM boots from a qcow2 overlay on it with `root=/dev/vda`."""
    hosts = _hosts(nodes)
    extra = f"root=/dev/vda systemd.machine_id={machine_id(node.name)}" if disk_image else ""
    params = _kernel_params(node, hosts, True, extra)
    hosts_inline = len(params) <= hosts_inline_limit
    if not hosts_inline:
        params = _kernel_params(node, hosts, False, extra)
    kernel_var = "NIXPKGS_QEMU_KERNEL_" + node.name.replace("-", "_")
    guest = "systemd" if disk_image else "busybox"

    lines = [
        "#!/usr/bin/env bash",
        f"# run-{node.name}-vm: start the nixos-test-ng {guest} guest as node `{node.name}`",
        f"# (node number {node.number}; VLANs: {', '.join(map(str, node.vlans)) or 'none'}).",
        "# Written by `nixos-test-ng guest scripts`; follows NixOS's run-<name>-vm contract.",
        "# Environment: TMPDIR + USE_TMPDIR, SHARED_DIR, QEMU_OPTS, QEMU_NET_OPTS,",
        "# QEMU_KERNEL_PARAMS,"
        f" QEMU_VDE_SOCKET_<vlan>, NIXOS_TEST_NG_ACCEL (default {accel}), {kernel_var}"
        + (", NIX_DISK_IMAGE," if disk_image else ",")
        + " NIXOS_TEST_NG_VHOST_USER_VSOCK, NIXOS_TEST_NG_VSOCK_CID.",
        "set -e",
        "",
        f"kernel=${{{kernel_var}:-{shlex.quote(str(kernel))}}}",
        f"initrd={shlex.quote(str(initrd))}",
        f"accel=${{NIXOS_TEST_NG_ACCEL:-{accel}}}",
        "",
        "# a directory for the VM's temporary data, as NixOS does",
        'if [ -z "$TMPDIR" ] || [ -z "$USE_TMPDIR" ]; then',
        "    TMPDIR=$(mktemp -d nix-vm.XXXXXXXXXX --tmpdir)",
        "fi",
        "# the directory for exchanging data with the VM",
        'mkdir -p "$TMPDIR/xchg"',
        'cd "$TMPDIR"',
        "",
        'xchg_dir="$TMPDIR/xchg"',
        'shared_dir="${SHARED_DIR:-$TMPDIR/xchg}"',
        'net_opts="${QEMU_NET_OPTS#,}"',
        "cpu=()",
        'case "$accel" in kvm*) cpu=(-cpu max) ;; esac',
    ]
    for v in sorted(set(node.vlans)):
        lines += [
            f'if [ -z "${{QEMU_VDE_SOCKET_{v}+set}}" ]; then',
            f'    echo "run-{node.name}-vm: QEMU_VDE_SOCKET_{v} is not set (the test driver sets'
            f' it to the vde_switch socket of VLAN {v})" >&2',
            "    exit 1",
            "fi",
        ]
    if disk_image is not None:
        lines += [
            "",
            "# the disk: a qcow2 overlay on the systemd guest's image, kept with the machine's",
            "# state (keep-state keeps it); remade when it was made for another build of the image",
            f'disk_image="${{NIX_DISK_IMAGE:-$TMPDIR/{node.name}.qcow2}}"',
            f"base_image={shlex.quote(str(disk_image))}",
            f"base_id={disk_id}",
            'if [ -e "$disk_image" ] && [ -e "$disk_image.base" ] &&',
            '    [ "$(cat "$disk_image.base")" != "$base_id" ]; then',
            f'    echo "run-{node.name}-vm: $disk_image belongs to another build of the guest;'
            ' making a new one" >&2',
            '    rm -f "$disk_image"',
            "fi",
            'if [ ! -e "$disk_image" ]; then',
            '    qemu-img create -q -f qcow2 -b "$base_image" -F raw "$disk_image" >&2',
            '    echo "$base_id" >"$disk_image.base"',
            "fi",
        ]
    if disk_image is None:
        lines += [
            "",
            "# a small qcow2 disk, not attached to any device, for QEMU's snapshots (savevm needs",
            "# one); it grows with the snapshots saved in it",
            f'snapshot_disk="$TMPDIR/{node.name}-snapshots.qcow2"',
            '[ -e "$snapshot_disk" ] || qemu-img create -q -f qcow2 "$snapshot_disk" 16M >&2',
        ]
    lines += [
        "",
        "# the guest agent's vsock device, when the test driver asks for one: the socket of a",
        "# vhost-device-vsock daemon (vhost-user; the guest's memory must then be shared with it)",
        "# or a guest CID for the kernel's vhost-vsock",
        "vsock=()",
        'if [ -n "${NIXOS_TEST_NG_VHOST_USER_VSOCK:-}" ]; then',
        f'    vsock=(-object "memory-backend-memfd,id=ntng-mem,size={memory}M,share=on"',
        "        -machine memory-backend=ntng-mem",
        '        -chardev "socket,id=ntng-vsock,path=${NIXOS_TEST_NG_VHOST_USER_VSOCK//,/,,}"',
        "        -device vhost-user-vsock-pci,chardev=ntng-vsock)",
        'elif [ -n "${NIXOS_TEST_NG_VSOCK_CID:-}" ]; then',
        '    vsock=(-device "vhost-vsock-pci,guest-cid=$NIXOS_TEST_NG_VSOCK_CID")',
        "fi",
    ]
    qemu = [
        "exec qemu-system-x86_64",
        f"-name {shlex.quote(node.name)}",
        '-accel "$accel" "${cpu[@]}"',
        f"-m {memory}",
        "-smp 1",
        "-vga std",
        '-kernel "$kernel"',
        '-initrd "$initrd"',
        *(['-drive "file=${disk_image//,/,,},if=virtio,cache=unsafe"'] if disk_image else []),
        *(
            []
            if disk_image
            else ['-drive "if=none,id=ntng-snapshots,format=qcow2,file=${snapshot_disk//,/,,}"']
        ),
        f'-append "{params} $QEMU_KERNEL_PARAMS"',
        "-net nic,netdev=user.0,model=virtio",
        '-netdev "user,id=user.0${net_opts:+,$net_opts}"',
        '"${vsock[@]}"',
    ]
    for i, v in enumerate(node.vlans, start=1):
        qemu.append(f"-device virtio-net-pci,netdev=vlan{i},mac={node.mac(v)}")
        qemu.append(f'-netdev vde,id=vlan{i},sock="${{QEMU_VDE_SOCKET_{v}//,/,,}}"')
    qemu += [
        '-virtfs "local,path=${xchg_dir//,/,,},security_model=none,mount_tag=xchg"',
        '-virtfs "local,path=${shared_dir//,/,,},security_model=none,mount_tag=shared"',
    ]
    if not hosts_inline:
        qemu.append(f'-fw_cfg "name={FW_CFG_HOSTS},string={hosts}"')
    qemu += ["$QEMU_OPTS", '"$@"']
    lines += [
        "",
        "# ${var//,/,,}: QEMU option lists escape a comma by doubling it",
        "# shellcheck disable=SC2086  # QEMU_OPTS is word-split on purpose, as in NixOS",
    ]
    lines.append(" \\\n    ".join(qemu))
    return "\n".join(lines) + "\n"


def _artifact(path: Path, gdir: Path, build: str) -> Path:
    if not path.exists():
        raise GuestError(
            f"`{path}` is missing\n(rebuild: `nixos-test-ng guest build{build} --out {gdir}`)"
        )
    return path


def write_start_scripts(
    out_dir: Path | str,
    nodes: Mapping[str, Sequence[int]],
    guest_dir: Path | str | None = None,
    memory: int | None = None,
    kinds: Mapping[str, str] | None = None,
    *,
    hosts_inline_limit: int = HOSTS_INLINE_LIMIT,
) -> dict[str, Path]:
    """Write one executable start script per node and return them by node name:
    `out_dir/run-<node>-vm` for VMs, `out_dir/run-<node>-nspawn` for containers,
    `out_dir/run-<node>-firecracker` for Firecracker machines,
    `out_dir/run-<node>-cloud-hypervisor` for Cloud Hypervisor machines.

    `nodes` maps node names to their VLAN numbers (in NIC order). `kinds` maps node names to
    one of `KINDS`: "busybox" (the default), "systemd-vm", "systemd-nspawn",
    "busybox-firecracker", "systemd-firecracker", "busybox-cloud-hypervisor" or
    "systemd-cloud-hypervisor". `guest_dir` is a built guest
    (default: `default_guest_dir()`); its manifests decide the kernel file and whether KVM is
    used by default. `memory` (MiB) applies to every VM; by default 256 for busybox, 512 for
    systemd VMs. Containers join their VLANs as VMs do (same interface names, MACs and
    addresses; see nspawn.py). Raises `LayoutError` for invalid
    input and `GuestError` when a guest a node needs is not built there."""
    if memory is not None and (
        isinstance(memory, bool) or not isinstance(memory, int) or memory < 64
    ):
        raise LayoutError(f"memory must be at least 64 (MiB), got `{memory}`")
    network = layout(nodes)
    kind_of = dict(kinds or {})
    for name, kind in kind_of.items():
        if name not in nodes:
            raise LayoutError(f"a kind is given for `{name}`, which is not a node")
        if kind not in KINDS:
            raise LayoutError(
                f"node `{name}`: unknown kind `{kind}` (expected one of {', '.join(KINDS)})"
            )
    used = {kind_of.get(n.name, "busybox") for n in network}
    gdir = Path(guest_dir).absolute() if guest_dir is not None else default_guest_dir()
    manifest = load_manifest(gdir)
    if manifest is None or "kernel_file" not in manifest:
        raise GuestError(
            f"no guest built in `{gdir}`\n(run `nixos-test-ng guest build --out {gdir}` first)"
        )
    kernel = _artifact(gdir / str(manifest["kernel_file"]), gdir, "")
    initrd = _artifact(gdir / INITRD_FILE, gdir, "")
    accel = "kvm" if (manifest.get("kvm") or {}).get("usable") is True else "tcg"
    sd_manifest: dict[str, object] = {}
    sd = systemd_dir(gdir)
    if used & {*SYSTEMD_DISK_KINDS, "systemd-nspawn"}:
        sd_manifest = check_built(gdir)
        for artifact in (IMAGE_FILE, INITRD_FILE, ROOTFS_DIR):
            _artifact(sd / artifact, gdir, " --systemd")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for node in network:
        kind = kind_of.get(node.name, "busybox")
        if kind == "systemd-nspawn":
            text = render_nspawn_script(
                node,
                rootfs=sd / ROOTFS_DIR,
                rootfs_lock=sd / ROOTFS_LOCK,
                uuid=container_uuid(node.name),
                hosts=[(n.address(n.vlans[0]), n.name) for n in network if n.vlans],
            )
            path = out / f"run-{node.name}-nspawn"
        elif kind in VMM_KINDS:
            vmm = VMMS[VMM_KINDS[kind]]
            systemd = kind in SYSTEMD_DISK_KINDS
            # no virtio console (neither VMM gets one): the backdoor's dev-hvc0.device never
            # comes, and its start job would hold multi-user.target back for good
            extra = (
                f"systemd.machine_id={machine_id(node.name)} systemd.mask=backdoor.service"
                if systemd
                else ""
            )
            text = render_vmm_script(
                vmm,
                node.name,
                kernel=kernel,
                initrd=sd / INITRD_FILE if systemd else initrd,
                params=_kernel_params(node, _hosts(network), True, extra, base=VMM_GUEST_PARAMS),
                memory=memory if memory is not None else KIND_MEMORY[kind],
                vlans=node.vlans,
                disk_image=sd / IMAGE_FILE if systemd else None,
                disk_id=str(sd_manifest.get("image_id", "")) if systemd else "",
            )
            path = out / f"run-{node.name}-{vmm.word}"
        else:
            systemd = kind == "systemd-vm"
            text = render_start_script(
                node,
                network,
                kernel=kernel,
                initrd=sd / INITRD_FILE if systemd else initrd,
                accel=accel,
                memory=memory if memory is not None else KIND_MEMORY[kind],
                hosts_inline_limit=hosts_inline_limit,
                disk_image=sd / IMAGE_FILE if systemd else None,
                disk_id=str(sd_manifest.get("image_id", "")) if systemd else "",
            )
            path = out / f"run-{node.name}-vm"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.chmod(0o755)
        os.replace(tmp, path)
        written[node.name] = path
    return written
