"""Fixtures of the Nix tests: Debian's nix-bin (Nix 2.8, installed by
scripts/setup-system.sh) evaluates nix/lib.nix and builds nix/selftest.nix, as root, without
a daemon, build users, a sandbox or a binary cache (there is no network).

- `nix.eval(expr)`: `nix-instantiate --eval --strict --json` of an expression in which
  `ntng` is nix/lib.nix, `root` the checkout and `standins` tests/nix/standins.nix;
  returns the value.
- `nix.eval_error(expr)`: the same for an expression that must fail; returns the message.
- `nix.build(attrs, **args)`: `nix-build nix/selftest.nix -A attr...`; returns the run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
NIX_DIR = ROOT / "nix"
STANDINS = Path(__file__).with_name("standins.nix")

# No nixbld group, no sandbox (the self-tests run QEMU from the host), no substituters.
NIX_CONFIG = "build-users-group =\nsandbox = false\nsubstituters =\n"


def nix_environ() -> dict[str, str]:
    env = dict(os.environ)
    env["NIX_CONFIG"] = NIX_CONFIG
    return env


@dataclass
class NixRun:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return (
            f"{' '.join(self.args)}\nexit status {self.returncode}\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr (last 6000) ---\n{self.stderr[-6000:]}"
        )


class Nix:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir

    def run(self, tool: str, args: list[str], timeout: float = 120) -> NixRun:
        argv = [str(self.bindir / tool), *args]
        r = subprocess.run(
            argv, capture_output=True, text=True, env=nix_environ(), timeout=timeout, cwd=ROOT
        )
        return NixRun(argv, r.returncode, r.stdout, r.stderr)

    def _expr(self, body: str) -> str:
        return (
            f"let ntng = import {NIX_DIR}/lib.nix; root = {ROOT}; "
            f"standins = import {STANDINS}; in {body}"
        )

    def eval(self, body: str) -> Any:
        # read-write: files the expression writes (builtins.toFile) land in the store
        args = ["--eval", "--strict", "--json", "--read-write-mode", "-E", self._expr(body)]
        r = self.run("nix-instantiate", args)
        assert r.returncode == 0, str(r)
        return json.loads(r.stdout)

    def eval_error(self, body: str) -> str:
        r = self.run("nix-instantiate", ["--eval", "--strict", "--json", "-E", self._expr(body)])
        assert r.returncode != 0, f"expected a failure\n{r}"
        return r.stderr

    def parse(self, path: Path) -> NixRun:
        return self.run("nix-instantiate", ["--parse", str(path)])


@pytest.fixture(scope="session")
def nix() -> Nix:
    found = shutil.which("nix-instantiate")
    if found is None:
        pytest.skip("Nix is not installed (scripts/setup-system.sh installs Debian's nix-bin)")
    if os.geteuid() != 0 and not os.access("/nix/store", os.W_OK):
        pytest.skip("Nix without a daemon needs root (or a writable /nix) to use its store")
    return Nix(Path(found).parent)
