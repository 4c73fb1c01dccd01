"""`nixos-test-ng check` and `nixos-test-ng stubs`: the machines of a test given as names,
start scripts or a generation-C `--config` JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nixos_test_ng import _native, machine_spec
from nixos_test_ng.check import check_source, machine_name_from_script
from nixos_test_ng.exit_status import ExitStatus


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument(
        "--machines",
        nargs="+",
        default=[],
        metavar="NAME[:VLAN,...][@KIND]",
        help="machines as `nixos-test-ng run -m` takes them; NAME@container (or NAME:nspawn) "
        "is a container, NAME@firecracker a Firecracker machine, NAME@cloud-hypervisor a Cloud "
        "Hypervisor machine",
    )
    p.add_argument("--vlans", nargs="+", type=int, default=[], metavar="N")
    p.add_argument("--vm-start-scripts", nargs="+", default=[], metavar="S")
    p.add_argument("--container-start-scripts", nargs="+", default=[], metavar="S")
    p.add_argument("--config", metavar="FILE", help="a generation-C driver configuration")
    return p


def _machines(args: argparse.Namespace) -> tuple[dict[str, str], list[int]]:
    machines: dict[str, str] = {}
    vlans = list(args.vlans)
    for text in args.machines:
        spec = machine_spec.parse(text)
        machines[spec.name] = spec.word
        vlans += spec.vlans or ()
    for s in args.vm_start_scripts:
        machines[machine_name_from_script(s)] = "vm"
    for s in args.container_start_scripts:
        machines[machine_name_from_script(s, "nspawn")] = "nspawn"
    if args.config:  # read as the driver reads it: the same names, the same errors
        config = _native.read_config_file(args.config)
        for name, _, kind in config.machines:
            machines[name] = _native.machine_kind(kind).spec_word
        vlans += config.vlans
    return machines, list(dict.fromkeys(vlans))


def check_main(argv: list[str]) -> int:
    p = _parser(
        "nixos-test-ng check",
        "Check a test script before booting anything: undefined names, misspelled machine "
        "methods, wrong arguments. Prints file:line:col: message; exit 1 on problems.",
    )
    p.add_argument("script")
    args = p.parse_args(argv)
    try:
        machines, vlans = _machines(args)
        source = Path(args.script).read_text()
    except (OSError, ValueError) as e:
        print(f"nixos-test-ng check: error: {e}", file=sys.stderr)
        return ExitStatus.USAGE
    problems = check_source(source, args.script, machines, vlans)
    for problem in problems:
        print(problem.render(args.script))
    return ExitStatus.FAILED if problems else ExitStatus.OK


STUB_HEADER = """\
# The globals of a nixos-test-ng test script, for type checkers and editors: written by
# `nixos-test-ng stubs`. Pyright, basedpyright and Pylance read a `__builtins__.pyi` at the
# project root as extra builtins, so a test script in its own .py file gets completion and
# checking for its machines and the driver's namespace.
import os as os
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any

from nixos_test_ng._native import Logger, VLan
from nixos_test_ng.debug import Debug, DebugNop
from nixos_test_ng.driver import Driver
# `X as X`: re-exported, so scripts see upstream's class names
from nixos_test_ng.machine import BaseMachine as BaseMachine
from nixos_test_ng.machine import CloudHypervisorMachine as CloudHypervisorMachine
from nixos_test_ng.machine import FirecrackerMachine as FirecrackerMachine
from nixos_test_ng.machine import Machine as Machine
from nixos_test_ng.machine import NspawnMachine as NspawnMachine
from nixos_test_ng.machine import QemuMachine as QemuMachine
from nixos_test_ng.retry import LazyAssertionTester, Poll, PollingCondition
"""

#: The general names the header's imports declare (`X as X`).
IMPORTED_SYMBOLS = frozenset(
    {
        "os",
        "Machine",
        "BaseMachine",
        "QemuMachine",
        "NspawnMachine",
        "FirecrackerMachine",
        "CloudHypervisorMachine",
    }
)

#: The declaration of every other general name (`_native.GENERAL_SYMBOLS`, the engine's
#: list, decides which are written, in its order).
DECLARATIONS = {
    "start_all": "def start_all() -> None: ...",
    "test_script": "def test_script() -> None: ...",
    "machines": "machines: list[BaseMachine]",
    "machines_qemu": "machines_qemu: list[QemuMachine]",
    "machines_nspawn": "machines_nspawn: list[NspawnMachine]",
    "vlans": "vlans: list[VLan]",
    "driver": "driver: Driver",
    "log": "log: Logger",
    "create_machine": """\
def create_machine(
    start_command: str,
    *,
    name: str | None = None,
    keep_machine_state: bool = False,
    keep_vm_state: bool = False,
) -> QemuMachine: ...""",
    "subtest": "def subtest(name: str) -> AbstractContextManager[None]: ...",
    "run_tests": "def run_tests() -> None: ...",
    "join_all": "def join_all() -> None: ...",
    "retry": f"""\
def retry(
    fn: Callable[[bool], Any],
    timeout_seconds: float | timedelta = {_native.DEFAULT_COMMAND_TIMEOUT},
    *,
    timeout: float | timedelta | None = None,
) -> None: ...""",
    "serial_stdout_off": "def serial_stdout_off() -> None: ...",
    "serial_stdout_on": "def serial_stdout_on() -> None: ...",
    "polling_condition": """\
def polling_condition(
    fun_: Callable[[], Any] | None = None,
    *,
    seconds_interval: float = 2.0,
    description: str | None = None,
) -> Any: ...""",
    "t": "t: LazyAssertionTester",
    "debug": "debug: Debug | DebugNop",
    "dump_machine_ssh": "def dump_machine_ssh(offset: int = 2) -> None: ...",
}


def render_stubs(machines: dict[str, str], vlans: list[int]) -> str:
    lines = [STUB_HEADER]
    for name in _native.GENERAL_SYMBOLS:
        if name not in IMPORTED_SYMBOLS:
            lines.append(DECLARATIONS[name])
    for name, kind in machines.items():
        cls = _native.machine_kind(kind).python_class
        lines.append(f"{_native.pythonize_name(name)}: {cls}")
    if len(machines) == 1:
        kind = next(iter(machines.values()))
        lines.append(f"machine: {_native.machine_kind(kind).python_class}")
    for v in vlans:
        lines.append(f"vlan{v}: VLan")
    return "\n".join(lines) + "\n"


def stubs_main(argv: list[str]) -> int:
    p = _parser(
        "nixos-test-ng stubs",
        "Write declarations of a test script's globals (its machines and the driver's "
        "namespace) for type checkers: save them as __builtins__.pyi for pyright/Pylance.",
    )
    p.add_argument("-o", "--output", required=True, metavar="FILE")
    args = p.parse_args(argv)
    try:
        machines, vlans = _machines(args)
        Path(args.output).write_text(render_stubs(machines, vlans))
    except (OSError, ValueError) as e:
        print(f"nixos-test-ng stubs: error: {e}", file=sys.stderr)
        return ExitStatus.USAGE
    return ExitStatus.OK
