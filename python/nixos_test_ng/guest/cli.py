"""`nixos-test-ng guest`: build the default test guests and write start scripts for them.

Exit statuses: 0 success, 1 the build failed or no guest is built, 2 bad arguments or nodes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nixos_test_ng import machine_spec
from nixos_test_ng.exit_status import ExitStatus
from nixos_test_ng.machine_spec import KIND_ALIASES

from .busybox_guest import DEFAULT_FLAVOUR, KERNEL_META, build
from .cache import default_guest_dir
from .common import BuildError, GuestError
from .scripts import DEFAULT_VLANS, MAX_NODES, LayoutError, write_start_scripts
from .systemd_guest import DEFAULT_MIRROR, MIRROR_ENV, build_systemd

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nixos-test-ng guest",
        description="Build the default test guests from Debian packages (the busybox guest; "
        "with `build --systemd`, also the Debian systemd guest) and write NixOS-style start "
        "scripts.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser(
        "build",
        help="build the guest (kernel + initramfs) unless the cached build has the same inputs",
        description="Download the kernel, busybox-static and bash-static .debs (apt-get download, "
        "no install) and build the guest; a second build with unchanged inputs does nothing.",
    )
    b.add_argument(
        "--out",
        metavar="DIR",
        type=Path,
        help="guest directory (default: $NIXOS_TEST_NG_GUEST_DIR, else "
        f"$XDG_CACHE_HOME/nixos-test-ng/guest; now {default_guest_dir()})",
    )
    b.add_argument(
        "--kernel",
        choices=sorted(KERNEL_META),
        default=DEFAULT_FLAVOUR,
        help=f"Debian kernel flavour (default: {DEFAULT_FLAVOUR}; `cloud` has no 9p, so no "
        "shared directories)",
    )
    b.add_argument(
        "--force",
        action="store_true",
        help="rebuild even if the cached build is up to date (with --systemd: the systemd "
        "guest, debootstrap included)",
    )
    b.add_argument(
        "--systemd",
        action="store_true",
        help="also build the Debian systemd guest (debootstrap, needs root and the Debian "
        "mirror) into DIR-systemd: the tree for containers, its ext4 image for VMs",
    )
    b.add_argument(
        "--x11",
        action=argparse.BooleanOptionalAction,
        help="with --systemd: the variant with an X server (Xvfb, xwd, xmessage, core fonts), "
        "for screenshots and OCR on Firecracker and Cloud Hypervisor; build it into its own "
        "--out DIR (default: the variant already built there, else the one without)",
    )
    b.add_argument(
        "--mirror",
        metavar="URL",
        help=f"Debian mirror for --systemd (default: ${MIRROR_ENV}, else {DEFAULT_MIRROR})",
    )

    s = sub.add_parser(
        "scripts",
        help="write run-<node>-vm / run-<node>-nspawn start scripts",
        description="Write one executable DIR/run-<node>-vm (VMs) or DIR/run-<node>-nspawn "
        "(containers) per node. Nodes are numbered by sorted name; VLAN v gives node n the NIC "
        "address 192.168.v.n/24, for VMs and containers alike.",
    )
    s.add_argument(
        "-o",
        "--out",
        dest="out_dir",
        metavar="DIR",
        type=Path,
        required=True,
        help="output directory",
    )
    s.add_argument(
        "--guest-dir",
        metavar="G",
        type=Path,
        help="built guest directory (default: as for `build`)",
    )
    s.add_argument(
        "--memory",
        metavar="MB",
        type=int,
        help="RAM of every VM (default: 256 for busybox, 512 for systemd VMs)",
    )
    s.add_argument(
        "--kind",
        choices=list(KIND_ALIASES),
        default="busybox",
        help="the kind of the nodes without `@KIND` (default: busybox)",
    )
    s.add_argument(
        "nodes",
        metavar="NODE[:VLAN[,VLAN...]][@KIND]",
        nargs="+",
        help="a node and its VLANs in NIC order (eth1, eth2, ...); a bare NODE is on VLAN 1, "
        f"`NODE:` on none; `@KIND` is one of {', '.join(KIND_ALIASES)}; at most {MAX_NODES} nodes",
    )
    return parser


def _scripts(args: argparse.Namespace) -> int:
    nodes: dict[str, list[int]] = {}
    kinds: dict[str, str] = {}
    for text in args.nodes:
        try:
            spec = machine_spec.parse(text)
        except machine_spec.MachineSpecError as e:
            raise LayoutError(str(e)) from None
        if spec.name in nodes:
            raise LayoutError(f"node `{spec.name}` is given twice")
        nodes[spec.name] = list(DEFAULT_VLANS if spec.vlans is None else spec.vlans)
        kinds[spec.name] = spec.kind or KIND_ALIASES[args.kind]
    written = write_start_scripts(args.out_dir, nodes, args.guest_dir, args.memory, kinds)
    for path in written.values():
        print(path)
    return ExitStatus.OK


def main(argv: list[str]) -> int:
    """Run `nixos-test-ng guest` with `argv` (without the program name); returns the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits on --help (0) and on usage errors (2)
        return int(e.code) if isinstance(e.code, int) else ExitStatus.USAGE
    try:
        if args.command == "build":
            if args.x11 is not None and not args.systemd:
                raise LayoutError("--x11 needs --systemd (it is a variant of the systemd guest)")
            if args.systemd:
                guest_dir = build_systemd(
                    args.out,
                    flavour=args.kernel,
                    force=args.force,
                    mirror=args.mirror,
                    x11=args.x11,
                ).guest_dir
            else:
                guest_dir = build(args.out, flavour=args.kernel, force=args.force).guest_dir
            print(guest_dir)
            return ExitStatus.OK
        return _scripts(args)
    except LayoutError as e:
        print(f"nixos-test-ng guest: error: {e}", file=sys.stderr)
        return ExitStatus.USAGE
    except (BuildError, GuestError, OSError) as e:
        print(f"nixos-test-ng guest: error: {e}", file=sys.stderr)
        return ExitStatus.FAILED
