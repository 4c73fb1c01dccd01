"""`nixos-test-ng run`: run a test script on the built-in Debian guests, without Nix.

It builds the default guest if needed, writes `run-<name>-vm` start scripts for the
machines asked for, and calls the driver exactly as Nix would.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

from nixos_test_ng.cli import EXIT_USAGE, run_driver
from nixos_test_ng.procs import driver_arguments

MACHINE_SPEC = re.compile(r"^([A-Za-z0-9_][A-Za-z0-9_.-]*)(?::(\d+(?:,\d+)*))?(?:@([a-z-]+))?$")

#: `@KIND` of `--machine`: the guest kinds of `nixos_test_ng.guest`, with short aliases.
KIND_ALIASES = {
    "vm": "busybox",
    "busybox": "busybox",
    "systemd": "systemd-vm",
    "systemd-vm": "systemd-vm",
    "container": "systemd-nspawn",
    "nspawn": "systemd-nspawn",
    "systemd-nspawn": "systemd-nspawn",
}


def parse_machine(spec: str) -> tuple[str, list[int], str]:
    """`NAME[:VLAN,...][@KIND]` → (name, vlans, kind)."""
    m = MACHINE_SPEC.match(spec)
    if not m or (m.group(3) and m.group(3) not in KIND_ALIASES):
        raise ValueError(
            f"invalid machine `{spec}` (expected NAME[:VLAN[,VLAN...]][@KIND] with KIND one of "
            f"{', '.join(KIND_ALIASES)})"
        )
    vlans = [int(v) for v in m.group(2).split(",")] if m.group(2) else []
    return m.group(1), vlans, KIND_ALIASES[m.group(3) or "vm"]


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
        "systemd (a Debian systemd VM) or container (a Debian systemd-nspawn container); "
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
    args = parser.parse_args(argv)
    driver_args = [
        *(["--interactive"] if args.interactive else []),
        *(["--vnc"] if args.vnc else []),
        *driver_args,
    ]
    try:
        specs = [parse_machine(s) for s in (args.machine or ["machine"])]
    except ValueError as e:
        parser.print_usage()
        print(f"nixos-test-ng run: error: {e}")
        return EXIT_USAGE

    nodes = {name: vlans for name, vlans, _ in specs}
    kinds = {name: kind for name, _, kind in specs}
    from nixos_test_ng import guest

    guest_dir = guest.ensure_built()
    if any(k != "busybox" for k in kinds.values()):
        guest.ensure_systemd_built(guest_dir)
    with tempfile.TemporaryDirectory(prefix="nixos-test-ng-") as tmp:
        out = Path(args.scripts_dir or tmp)
        out.mkdir(parents=True, exist_ok=True)
        scripts = guest.write_start_scripts(
            out, nodes, guest_dir=guest_dir, memory=args.memory, kinds=kinds
        )
        vlans = [v for vs in nodes.values() for v in vs]
        cmd = driver_arguments(scripts, kinds, vlans)
        return run_driver([*cmd, *driver_args, "--", args.script])
