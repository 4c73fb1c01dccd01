"""What nixpkgs' testing/driver.nix runs on the driver package while it builds a test's driver,
run here on nixos-test-ng as the overlay puts it in place: `generate-driver-symbols` feeding
pyflakes (the lint step), and mypy on the script after the type hints of
test-script-prepend.py, whose `test_driver` imports nix/test-driver-types answers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import NIX_DIR, ROOT

EXAMPLE = ROOT / "examples" / "vlan_echo.py"

# The names test-script-prepend.py imports (generation B and C; A's `Machine` and `Logger`
# too) and the hints driver.nix appends for the nodes and VLANs.
PREPEND = """\
from test_driver.debug import DebugAbstract
from test_driver.driver import Driver
from test_driver.vlan import VLan
from test_driver.machine import BaseMachine, Machine, NspawnMachine, QemuMachine
from test_driver.logger import AbstractLogger, Logger
from typing import Callable, ContextManager, List
from unittest import TestCase

start_all: Callable[[], None]
subtest: Callable[[str], ContextManager[None]]
machines: List[BaseMachine]
vlans: List[VLan]
driver: Driver
log: AbstractLogger
debug: DebugAbstract
t: TestCase
server: QemuMachine;
client: QemuMachine;
box: NspawnMachine;
vlan1: VLan
"""


def tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"`{name}` is not installed")
    return found


def test_generate_driver_symbols_feeds_pyflakes(tmp_path):
    subprocess.run([tool("generate-driver-symbols")], cwd=tmp_path, check=True, timeout=60)
    symbols = (tmp_path / "driver-symbols").read_text()
    assert {"start_all", "subtest", "machines", "t", "debug", "retry"} <= set(symbols.split(","))
    env = {**os.environ, "PYFLAKES_BUILTINS": f"server,client,{symbols}"}
    pyflakes = [sys.executable, "-m", "pyflakes"]
    r = subprocess.run([*pyflakes, str(EXAMPLE)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    bad = tmp_path / "bad.py"
    bad.write_text("start_all()\nclinet.succeed('x')\n")
    r = subprocess.run([*pyflakes, str(bad)], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "undefined name 'clinet'" in r.stdout


def mypy(path: Path) -> subprocess.CompletedProcess:
    if shutil.which("mypy") is None and not (Path(sys.executable).parent / "mypy").exists():
        pytest.skip("mypy is not installed (requirements-dev.txt installs it)")
    env = {**os.environ, "MYPYPATH": str(NIX_DIR / "test-driver-types")}
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--no-implicit-optional", "--pretty", "--no-color-output",
         "--cache-dir", str(path.parent / ".mypy_cache"), str(path)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_mypy_step_type_checks_scripts_against_nixos_test_ng(tmp_path):
    good = tmp_path / "testScriptWithTypes"
    good.write_text(PREPEND + EXAMPLE.read_text() + "box.succeed('true')\n")
    r = mypy(good)
    assert r.returncode == 0, r.stdout + r.stderr
    bad = tmp_path / "bad"
    bad.write_text(PREPEND + "server.succed('true')\nserver.wait_for_open_port('80')\n")
    r = mypy(bad)
    assert r.returncode == 1
    assert '"QemuMachine" has no attribute "succed"' in r.stdout
    assert "wait_for_open_port" in r.stdout
