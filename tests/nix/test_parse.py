"""Every Nix file of the project parses (`nix-instantiate --parse`), including the ones that
need nixpkgs and are only evaluated with stand-ins here."""

from __future__ import annotations

import subprocess

import pytest

from .conftest import ROOT


def nix_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.nix"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return sorted(set(out.split()))


def test_the_nix_files_are_all_there():
    files = nix_files()
    for expected in (
        "flake.nix",
        "nix/lib.nix",
        "nix/selftest.nix",
        "nix/package.nix",
        "nix/overlay.nix",
        "nix/test-module.nix",
        "nix/snapshots.nix",
        "nix/agent.nix",
        "nix/split.nix",
        "nix/checks.nix",
    ):
        assert expected in files


@pytest.mark.parametrize("path", nix_files())
def test_parses(nix, path):
    r = nix.parse(ROOT / path)
    assert r.returncode == 0, str(r)
