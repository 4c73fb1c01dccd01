"""The default nixos-test-ng test guests, built from Debian packages without Nix: a Debian
kernel with a busybox initramfs that runs NixOS's root-shell backdoor on hvc0, and a Debian
systemd guest (debootstrap) used as a VM or as a systemd-nspawn container; plus start scripts
for them that follow the NixOS start-script contracts (see docs/guests.md).

    guest_dir = ensure_built()                       # build once, cached afterwards
    scripts = write_start_scripts("out", {"server": [1], "client": [1]}, guest_dir)

    guest_dir = ensure_systemd_built()               # the busybox guest and the systemd guest
    scripts = write_start_scripts(
        "out", {"server": [1], "c1": []}, guest_dir,
        kinds={"server": "systemd-vm", "c1": "systemd-nspawn"},
    )                                                # run-server-vm, run-c1-nspawn

Command line: `nixos-test-ng guest build [--systemd]|scripts ...` (`python -m nixos_test_ng.guest`).
"""

from .busybox_guest import BuildResult, build, ensure_built
from .cache import default_guest_dir, load_manifest
from .common import BuildError, GuestError
from .scripts import KINDS, LayoutError, Node, layout, parse_node_spec, write_start_scripts
from .systemd_guest import (
    SystemdBuildResult,
    build_systemd,
    ensure_systemd_built,
    load_systemd_manifest,
    systemd_dir,
)

__all__ = [
    "KINDS",
    "BuildError",
    "BuildResult",
    "GuestError",
    "LayoutError",
    "Node",
    "SystemdBuildResult",
    "build",
    "build_systemd",
    "default_guest_dir",
    "ensure_built",
    "ensure_systemd_built",
    "layout",
    "load_manifest",
    "load_systemd_manifest",
    "parse_node_spec",
    "systemd_dir",
    "write_start_scripts",
]
