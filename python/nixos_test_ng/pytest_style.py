"""pytest-style test scripts: how a script is recognised, and how the driver runs one.

A script is pytest-style when it defines a test function (`def test_...`) or a test class
(`class Test...`) at its top level; the decision reads the script's syntax tree, never its
text. Such a script runs under pytest, in the driver's process, with the `nixos_test_ng.plugin`
fixtures: each machine under its pythonized name, `machines`, `driver`, `vlans`, `vlanN`,
`subtest`, `log`, `t`.

What module-level statements mean: the script is imported once, as a pytest module, before any
test runs; its top-level statements run then, in order, with the legacy namespace available
(`start_all`, `subtest`, the machines by name, ...), so setup that every test shares (e.g.
`start_all()` or `server.wait_for_unit("nginx")`) can stay at the top. Tests then run in file
order (or as `-k`, `--lf`, ... select), each getting its machines from the fixtures.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nixos_test_ng.ending import KILLED_BY_SIGINT
from nixos_test_ng.exit_status import ExitStatus

if TYPE_CHECKING:
    from nixos_test_ng.driver import Driver

__all__ = ["is_pytest_style", "run_pytest"]


def is_pytest_style(source: str) -> bool:
    """True when the script defines `test_*` functions or `Test*` classes at its top level."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith(
            "test"
        ):
            return True
        if isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            return True
    return False


@contextlib.contextmanager
def _namespace_as_builtins(symbols: dict[str, Any]) -> Iterator[None]:
    """The legacy namespace, visible to the script's top-level code (names it defines
    itself take precedence, as with builtins)."""
    saved = {k: getattr(builtins, k) for k in symbols if hasattr(builtins, k)}
    for k, v in symbols.items():
        setattr(builtins, k, v)
    try:
        yield
    finally:
        for k in symbols:
            if k in saved:
                setattr(builtins, k, saved[k])
            else:
                with contextlib.suppress(AttributeError):
                    delattr(builtins, k)


def _module_name(script_path: str) -> str:
    # a Nix store path's hash would change the module name (and JUnit's classname) per build
    name = re.sub(r"^[0-9a-z]{32}-", "", Path(script_path).stem)
    stem = re.sub(r"\W", "_", name) or "script"
    return stem if stem.startswith("test") else f"test_{stem}"


# pytest's exit codes -> the driver's: tests failed, interrupted (Ctrl-C: the driver dies of
# SIGINT), internal error, usage error, no tests collected (a test that runs nothing fails).
_EXIT = {0: 0, 1: 1, 2: KILLED_BY_SIGINT, 3: 1, 4: 2, 5: 1}


def run_pytest(driver: Driver, source: str, script_path: str, args: list[str]) -> int:
    """Runs the script under pytest with the driver's machines; returns the exit status."""
    try:
        import pytest
    except ImportError:
        driver.logger.log_test_error(
            "this is a pytest-style script (it defines test functions), but pytest is not"
            " installed: `pip install pytest`"
        )
        return ExitStatus.USAGE
    from nixos_test_ng.plugin import DriverPlugin

    with tempfile.TemporaryDirectory(prefix="ntng-pytest-") as tmp:
        # pytest collects files, by name: the script keeps its lines, under a test_ name.
        module = Path(tmp) / f"{_module_name(script_path)}.py"
        module.write_text(source)
        # An empty configuration of our own: none is read from the working directory, and
        # the temporary directory becomes the root, whose (random) name `-k` does not match.
        ini = Path(tmp) / "pytest.ini"
        ini.write_text("[pytest]\n")
        pytest_args = [
            str(module),
            "--rootdir",
            tmp,
            "-c",
            str(ini),
            "-o",
            f"cache_dir={Path.cwd() / '.pytest_cache'}",  # --lf and --ff across runs
            "-W",
            "ignore::pytest.PytestAssertRewriteWarning",  # our own, already imported, modules
        ]
        if driver.config.junit_xml:
            pytest_args.append(f"--junit-xml={driver.config.junit_xml}")
        pytest_args += args
        plugin = DriverPlugin(driver)
        driver.race_timer.start()
        with _namespace_as_builtins(driver.test_symbols()):
            code = pytest.main(pytest_args, plugins=plugin.plugins())
        driver._native.sync_all()
    return _EXIT.get(int(code), 1)
