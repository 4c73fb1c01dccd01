"""Facts the engine and the Python package share live once, in the engine, and Python takes
them from the bindings: exit statuses, the default command timeout, the namespace's general
names, generation C's JSON. These tests pin the values and that no copy comes back."""

from __future__ import annotations

import ast
from pathlib import Path

import nixos_test_ng
import pytest
from nixos_test_ng import _native
from nixos_test_ng.exit_status import ExitStatus

PACKAGE = Path(nixos_test_ng.__file__).parent

#: The modules that end in an exit status: every command line of the package.
CLI_MODULES = [
    "cli.py",
    "run.py",
    "check_cli.py",
    "doctor.py",
    "new.py",
    "pytest_style.py",
    "guest/cli.py",
]


def test_exit_statuses_are_the_engines():
    assert {s.name: int(s) for s in ExitStatus} == {"OK": 0, "FAILED": 1, "USAGE": 2}
    assert (_native.EXIT_OK, _native.EXIT_FAILED, _native.EXIT_USAGE) == (0, 1, 2)


@pytest.mark.parametrize("module", CLI_MODULES)
def test_no_command_spells_a_status_as_a_number(module):
    """`return 2`, `EXIT_USAGE = 2`: a status written as a number is a second definition."""
    tree = ast.parse((PACKAGE / module).read_text())
    numbers = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Return) and isinstance(node.value, ast.Constant):
            value = node.value.value
            if isinstance(value, int) and not isinstance(value, bool):
                numbers.append(f"line {node.lineno}: return {value}")
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            if any("EXIT" in n for n in names):
                numbers.append(f"line {node.lineno}: {names[0]} = {node.value.value}")
    assert numbers == []
