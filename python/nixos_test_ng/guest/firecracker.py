"""`run-<node>-firecracker`: the built-in guests as Firecracker microVMs, following the driver's
start-script contract for Firecracker machines (docs/firecracker.md): the script prints one JSON
object (kernel, initrd, root disk, command line, vCPUs, memory, VLANs) on stdout and exits 0;
the driver then starts Firecracker itself.

- kernel: the busybox guest's uncompressed vmlinux (Firecracker on x86_64 boots no bzImage);
- command line: `console=ttyS0 reboot=k panic=1` (serial console in the log, a guest reset ends
  Firecracker) and the guest's own parameters as the VM script passes them (hostname, one
  `ntng.if=` per VLAN NIC by its MAC, the host list inline: Firecracker has no fw_cfg);
- the systemd guest (`systemd-firecracker`) boots from a private copy of its ext4 image, made
  in the machine's state directory (Firecracker writes to its disks; `keep-state` keeps the
  copy) and remade when it was made for another build of the image. Firecracker appends
  `root=/dev/vda rw` itself.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from pathlib import Path

from .common import GuestError

__all__ = ["FIRECRACKER_KERNEL_PARAMS", "MAX_CMDLINE", "render_firecracker_script"]

#: Firecracker's own parameters (docs/firecracker.md): serial console, reset ends the VMM.
FIRECRACKER_KERNEL_PARAMS = "console=ttyS0 reboot=k panic=1"
#: Linux's x86 command line limit, which Firecracker enforces too (2048 bytes with the NUL),
#: less room for the `root=/dev/vda rw` Firecracker appends and the stand-in's `ntng.agent=tcp`.
MAX_CMDLINE = 2000


def render_firecracker_script(
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
    """The text of `run-<name>-firecracker`. `params` are the guest's own kernel parameters
    (after `FIRECRACKER_KERNEL_PARAMS`); with `disk_image` (the systemd guest's ext4 image,
    whose build is `disk_id`) the root disk is a copy of it in the state directory."""
    cmdline = f"{FIRECRACKER_KERNEL_PARAMS} {params}"
    if len(cmdline) > MAX_CMDLINE:
        raise GuestError(
            f"node `{name}`: the kernel command line is {len(cmdline)} bytes, more than "
            f"Firecracker's {MAX_CMDLINE} (too many nodes for the host list in it)"
        )
    config: dict[str, object] = {
        "kernel": str(kernel),
        "initrd": str(initrd),
        "cmdline": cmdline,
        "vcpus": 1,
        "memory_mib": memory,
        "vlans": list(vlans),
    }
    guest = "systemd" if disk_image else "busybox"
    lines = [
        "#!/usr/bin/env bash",
        f"# run-{name}-firecracker: the nixos-test-ng {guest} guest as Firecracker machine",
        f"# `{name}` (VLANs: {', '.join(map(str, vlans)) or 'none'}).",
        "# Written by `nixos-test-ng guest scripts`; prints the microVM's configuration for the",
        "# test driver, which starts Firecracker (docs/firecracker.md). Runs in the machine's",
        "# state directory.",
        "set -e",
    ]
    if disk_image is not None:
        disk = f"{name}-root.ext4"
        config["root_disk"] = disk  # relative: in the state directory
        lines += [
            "",
            "# the root disk: a private sparse copy of the systemd guest's image (Firecracker has",
            "# no copy-on-write overlay), remade when it was made for another build of the image",
            f"disk={shlex.quote(disk)}",
            f"base_image={shlex.quote(str(disk_image))}",
            f"base_id={shlex.quote(disk_id)}",
            'if [ -e "$disk" ] && [ "$(cat "$disk.base" 2>/dev/null)" != "$base_id" ]; then',
            f'    echo "run-{name}-firecracker: $disk belongs to another build of the guest;'
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
