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


def _numeric_timeout_defaults(objects):
    """(where, default) of every parameter named *timeout* with a number as its default."""
    import inspect

    out = []
    for obj in objects:
        functions = [obj] if inspect.isfunction(obj) else vars(obj).values()
        for fn in functions:
            try:
                params = inspect.signature(fn).parameters.values()
            except (TypeError, ValueError):
                continue
            for p in params:
                if "timeout" in p.name and type(p.default) in (int, float):
                    out.append((f"{getattr(fn, '__qualname__', fn)}({p.name})", p.default))
    return out


def test_the_default_command_timeout_is_the_engines():
    """Python's defaults (retry, Poll.wait, the machine classes' screen waits) are the
    engine's 900 s."""
    from nixos_test_ng import machine, retry

    objects = [retry.retry, retry.seconds, retry.Poll, *vars(machine).values()]
    found = _numeric_timeout_defaults(o for o in objects if isinstance(o, type) or callable(o))
    assert len(found) >= 3
    assert {w: d for w, d in found if d != _native.DEFAULT_COMMAND_TIMEOUT} == {}
    assert _native.DEFAULT_COMMAND_TIMEOUT == 900


def test_the_stubs_show_the_engines_default_timeout():
    """The native methods take None for "the default"; the stub shows that default."""
    stub = (PACKAGE / "_native.pyi").read_text()
    defaults = [
        (f"{fn.name}({arg.arg})", default.value)
        for fn in ast.walk(ast.parse(stub))
        if isinstance(fn, ast.FunctionDef)
        for arg, default in zip(
            fn.args.args[len(fn.args.args) - len(fn.args.defaults) :], fn.args.defaults, strict=True
        )
        if "timeout" in arg.arg
        and isinstance(default, ast.Constant)
        and type(default.value) in (int, float)
    ]
    assert len(defaults) >= 10
    others = [(w, d) for w, d in defaults if d != _native.DEFAULT_COMMAND_TIMEOUT]
    assert others == [("wait_for_qmp_event(timeout)", 600)]  # upstream's 10 minutes


def test_every_user_of_the_namespace_names_takes_the_engines_list(tmp_path, monkeypatch):
    from nixos_test_ng import check, check_cli, driver, driver_symbols

    symbols = _native.GENERAL_SYMBOLS
    assert symbols[:3] == ("start_all", "test_script", "machines") and len(set(symbols)) == 26
    # the namespace the driver builds (its own assertion checks the dict against this tuple)
    assert driver.GENERAL_SYMBOLS == symbols
    # the pre-boot check
    assert check.namespace_names([], []) == set(symbols)
    # the editor stubs: a declaration for every name, and none for a name the list lacks
    assert set(check_cli.DECLARATIONS) | check_cli.IMPORTED_SYMBOLS == set(symbols)
    assert set(check_cli.DECLARATIONS).isdisjoint(check_cli.IMPORTED_SYMBOLS)
    # generate-driver-symbols (nixpkgs' driver.nix feeds the file to pyflakes)
    monkeypatch.chdir(tmp_path)
    driver_symbols.main()
    assert (tmp_path / driver_symbols.FILE).read_text() == ",".join(symbols)
