"""The default nixos-test-ng test guest: a Debian kernel with a busybox initramfs that runs
NixOS's root-shell backdoor on hvc0, and `run-<node>-vm` start scripts for it that follow the
NixOS start-script contract (see docs/guests.md).

    guest_dir = ensure_built()                       # build once, cached afterwards
    scripts = write_start_scripts("out", {"server": [1], "client": [1]}, guest_dir)

Command line: `nixos-test-ng guest build|scripts ...` (`python -m nixos_test_ng.guest`).
"""

from .builder import (
    BuildError,
    BuildResult,
    GuestError,
    build,
    default_guest_dir,
    ensure_built,
    load_manifest,
)
from .scripts import LayoutError, Node, layout, parse_node_spec, write_start_scripts

__all__ = [
    "BuildError",
    "BuildResult",
    "GuestError",
    "LayoutError",
    "Node",
    "build",
    "default_guest_dir",
    "ensure_built",
    "layout",
    "load_manifest",
    "parse_node_spec",
    "write_start_scripts",
]
