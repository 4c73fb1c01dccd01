"""`nixos-test-ng run`: run a test script on the built-in Debian guests, without Nix.

It builds the default guest if needed, writes `run-<name>-vm` (or `-nspawn`, `-firecracker`,
`-cloud-hypervisor`) start scripts for the machines asked for, and calls the driver exactly as
Nix would. With `--watch` the driver runs the watch loop (`watch.py`) instead of the script.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from nixos_test_ng import machine_spec, watch
from nixos_test_ng.cli import run_driver
from nixos_test_ng.exit_status import ExitStatus
from nixos_test_ng.procs import driver_arguments


def parse_machine(text: str) -> tuple[str, list[int], str]:
    """`-m NAME[:VLAN,...][@KIND]` (`machine_spec`) -> (name, vlans: none by default, kind)."""
    spec = machine_spec.parse(text)
    return spec.name, list(spec.vlans or ()), spec.kind or "busybox"


def main(argv: list[str]) -> int:
    driver_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, driver_args = argv[:i], argv[i + 1 :]
    parser = argparse.ArgumentParser(
        prog="nixos-test-ng run",
        description="Run a test script on the built-in busybox guest (one VM per --machine).",
    )
    parser.add_argument("script", help="the Python test script")
    parser.add_argument(
        "--machine",
        "-m",
        action="append",
        default=[],
        metavar="NAME[:VLAN,...][@KIND]",
        help="a machine, the VLANs it joins and its kind: vm (the busybox VM, the default), "
        "systemd (a Debian systemd VM), container (a Debian systemd-nspawn container), "
        "firecracker (the busybox guest as a Firecracker microVM) or firecracker-systemd "
        "(the systemd guest's disk as a Firecracker microVM), cloud-hypervisor or "
        "cloud-hypervisor-systemd (the same as Cloud Hypervisor VMs); "
        "repeatable; default: one busybox VM called `machine`",
    )
    parser.add_argument("--memory", type=int, default=None, help="MiB of RAM per VM")
    parser.add_argument(
        "--scripts-dir", help="where to write the start scripts (default: a temp dir)"
    )
    # the driver's own flags most used here; any other goes after `--`
    parser.add_argument(
        "-I",
        "--interactive",
        action="store_true",
        help="open the driver's REPL instead of running the script (the driver's --interactive)",
    )
    parser.add_argument(
        "--vnc",
        action="store_true",
        help="show each VM's display over VNC on 127.0.0.1 (the driver's --vnc)",
    )
    parser.add_argument(
        "--watch",
        "-w",
        action="store_true",
        help="boot the machines once, run the script, and run it again each time it is saved,"
        " the machines restored to their ready state first (docs/watch.md)",
    )
    parser.add_argument(
        "--reuse-boots",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="start each VM from the boot cache when an unchanged one was saved there, and save"
        " it when it first becomes ready (the driver's --reuse-boots, docs/boot-cache.md);"
        " default: on with --watch, off otherwise",
    )
    args = parser.parse_args(argv)
    if args.watch and args.interactive:
        parser.print_usage()
        print("nixos-test-ng run: error: --watch and --interactive exclude each other")
        return ExitStatus.USAGE
    driver_args = [
        *(["--interactive"] if args.interactive else []),
        *(["--vnc"] if args.vnc else []),
        *(["--reuse-boots"] if args.reuse_boots and not args.watch else []),
        *driver_args,
    ]
    from nixos_test_ng import guest

    try:
        specs = [parse_machine(s) for s in (args.machine or ["machine"])]
        nodes = {name: vlans for name, vlans, _ in specs}
        kinds = {name: kind for name, _, kind in specs}
        guest.layout(nodes)  # valid names, before any guest is built
    except ValueError as e:
        parser.print_usage()
        print(f"nixos-test-ng run: error: {e}")
        return ExitStatus.USAGE

    guest_dir = guest.ensure_built()
    if any(k not in machine_spec.BUSYBOX_KINDS for k in kinds.values()):
        guest.ensure_systemd_built(guest_dir)
    with tempfile.TemporaryDirectory(prefix="nixos-test-ng-") as tmp:
        out = Path(args.scripts_dir or tmp)
        out.mkdir(parents=True, exist_ok=True)
        scripts = guest.write_start_scripts(
            out, nodes, guest_dir=guest_dir, memory=args.memory, kinds=kinds
        )
        vlans = [v for vs in nodes.values() for v in vs]
        cmd = driver_arguments(scripts, kinds, vlans)
        if not args.watch:
            return run_driver([*cmd, *driver_args, "--", args.script])
        watch.watch_environment()
        extra = watch.driver_arguments(driver_args, reuse_boots=args.reuse_boots is not False)
        return run_driver([*cmd, *extra, *driver_args, "--", args.script], watch.session)
