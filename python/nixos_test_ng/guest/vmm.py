"""`run-<node>-firecracker` and `run-<node>-cloud-hypervisor`: the built-in guests as
Firecracker microVMs or Cloud Hypervisor VMs, following the driver's start-script contract for
REST-API VMM machines (docs/firecracker.md, docs/cloud-hypervisor.md): the script prints one
JSON object (kernel, initrd, root disk, command line, vCPUs, memory, VLANs) on stdout and exits
0; the driver then starts the VMM itself.

- kernel: the busybox guest's uncompressed vmlinux (Firecracker on x86_64 boots no bzImage;
  Cloud Hypervisor's direct kernel boot takes it too);
- command line: the VMM's own parameters (`VMMS`: the serial console in the log; on
  Firecracker a guest reset ends the VMM) and the guest's own parameters as the VM script passes
  them (hostname, one `ntng.if=` per VLAN NIC by its MAC, the host list inline: neither VMM has
  fw_cfg);
- the systemd guest (`systemd-firecracker`, `systemd-cloud-hypervisor`) boots from a private
  copy of its ext4 image, made in the machine's state directory (the VMM writes to its disks;
  `keep-state` keeps the copy) and remade when it was made for another build of the image.
  Firecracker appends `root=/dev/vda rw` itself, Cloud Hypervisor does not: its command line
  carries it.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .common import GuestError

__all__ = ["MAX_CMDLINE", "VMMS", "Vmm", "render_vmm_script"]

#: Linux's x86 command line limit, which both VMMs enforce too (2048 bytes with the NUL), less
#: room for the `root=/dev/vda rw` Firecracker appends and the stand-in's `ntng.agent=tcp`.
MAX_CMDLINE = 2000


@dataclass(frozen=True)
class Vmm:
    """What a start script for one VMM says."""

    #: The driver's kind word, the end of the script's name (`run-<node>-<word>`).
    word: str
    #: Its name in prose.
    title: str
    #: Its own kernel parameters, before the guest's.
    params: str
    #: The parameters a root disk needs (the VMM does not add them).
    root_params: str


VMMS = {
    # serial console in the log; `reboot=k`: a guest reset ends Firecracker
    "firecracker": Vmm("firecracker", "Firecracker", "console=ttyS0 reboot=k panic=1", ""),
    # a guest reset resets the VM in the same process
    "cloud-hypervisor": Vmm(
        "cloud-hypervisor", "Cloud Hypervisor", "console=ttyS0 panic=1", "root=/dev/vda rw"
    ),
}


def render_vmm_script(
    vmm: Vmm,
    name: str,
    *,
    kernel: Path,
    initrd: Path,
    params: str,
    memory: int,
    vlans: Sequence[int],
    disk_image: Path | None = None,
    disk_id: str = "",
) -> str:
    """The text of `run-<name>-<vmm.word>`. `params` are the guest's own kernel parameters
    (after `vmm.params`); with `disk_image` (the systemd guest's ext4 image, whose build is
    `disk_id`) the root disk is a copy of it in the state directory."""
    root = f" {vmm.root_params}" if disk_image is not None and vmm.root_params else ""
    cmdline = f"{vmm.params}{root} {params}"
    if len(cmdline) > MAX_CMDLINE:
        raise GuestError(
            f"node `{name}`: the kernel command line is {len(cmdline)} bytes, more than "
            f"{vmm.title}'s {MAX_CMDLINE} (too many nodes for the host list in it)"
        )
    config: dict[str, object] = {
        "kernel": str(kernel),
        "initrd": str(initrd),
        "cmdline": cmdline,
        "vcpus": 1,
        "memory_mib": memory,
        "vlans": list(vlans),
    }
    script = f"run-{name}-{vmm.word}"
    guest = "systemd" if disk_image else "busybox"
    lines = [
        "#!/usr/bin/env bash",
        f"# {script}: the nixos-test-ng {guest} guest as {vmm.title} machine",
        f"# `{name}` (VLANs: {', '.join(map(str, vlans)) or 'none'}).",
        "# Written by `nixos-test-ng guest scripts`; prints the VM's configuration for the",
        f"# test driver, which starts {vmm.title} (docs/{vmm.word}.md). Runs in the machine's",
        "# state directory.",
        "set -e",
    ]
    if disk_image is not None:
        disk = f"{name}-root.ext4"
        config["root_disk"] = disk  # relative: in the state directory
        lines += [
            "",
            f"# the root disk: a private sparse copy of the systemd guest's image ({vmm.title}",
            "# has no copy-on-write overlay), remade when it was made for another build of it",
            f"disk={shlex.quote(disk)}",
            f"base_image={shlex.quote(str(disk_image))}",
            f"base_id={shlex.quote(disk_id)}",
            'if [ -e "$disk" ] && [ "$(cat "$disk.base" 2>/dev/null)" != "$base_id" ]; then',
            f'    echo "{script}: $disk belongs to another build of the guest;'
            ' making a new one" >&2',
            '    rm -f "$disk"',
            "fi",
            'if [ ! -e "$disk" ]; then',
            '    cp --sparse=always "$base_image" "$disk.tmp"',
            '    mv "$disk.tmp" "$disk"',
            '    echo "$base_id" >"$disk.base"',
            "fi",
        ]
    lines += ["", "cat <<'EOF'", json.dumps(config, indent=1), "EOF"]
    return "\n".join(lines) + "\n"
