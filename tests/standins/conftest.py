"""Fixtures for the stand-in tests: `standin(exe, name)` starts nothing by itself; it returns a
StandIn bound to the test's tmp dir, closed (killed if still running) after the test."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from standins.client import StandIn  # noqa: E402


@pytest.fixture
def standin(tmp_path: Path) -> Iterator:
    made: list[StandIn] = []

    def make(exe: Path, name: str = "vmm") -> StandIn:
        made.append(StandIn(exe, tmp_path, name))
        return made[-1]

    yield make
    for one in made:
        one.close()
