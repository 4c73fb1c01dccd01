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

MACHINE_SPEC = re.compile(r"^([A-Za-z0-9_][A-Za-z0-9_.-]*)(?::(\d+(?:,\d+)*))?$")


def parse_machine(spec: str) -> tuple[str, list[int]]:
    """`NAME[:VLAN,...]` → (name, vlans)."""
    m = MACHINE_SPEC.match(spec)
    if not m:
        raise ValueError(f"invalid machine `{spec}` (expected NAME or NAME:VLAN[,VLAN...])")
    vlans = [int(v) for v in m.group(2).split(",")] if m.group(2) else []
    return m.group(1), vlans


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
        metavar="NAME[:VLAN,...]",
        help="a VM and the VLANs it joins (repeatable; default: one VM called `machine`)",
    )
    parser.add_argument("--memory", type=int, default=256, help="MiB of RAM per VM")
    parser.add_argument(
        "--scripts-dir", help="where to write the start scripts (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    try:
        nodes = dict(parse_machine(s) for s in (args.machine or ["machine"]))
    except ValueError as e:
        parser.print_usage()
        print(f"nixos-test-ng run: error: {e}")
        return EXIT_USAGE

    from nixos_test_ng.guest import ensure_built, write_start_scripts

    guest_dir = ensure_built()
    with tempfile.TemporaryDirectory(prefix="nixos-test-ng-run-") as tmp:
        out = Path(args.scripts_dir or tmp)
        out.mkdir(parents=True, exist_ok=True)
        scripts = write_start_scripts(out, nodes, guest_dir=guest_dir, memory=args.memory)
        vlans = sorted({v for vs in nodes.values() for v in vs})
        cmd = ["--vm-start-scripts", *[str(p) for p in scripts.values()]]
        if vlans:
            cmd += ["--vlans", *map(str, vlans)]
        return run_driver([*cmd, *driver_args, "--", args.script])
