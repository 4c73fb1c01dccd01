"""The inner `pytest -n 2` run the xdist tests start on a suite of their own."""

from __future__ import annotations

import sys
from pathlib import Path


def pytest_n2(suite: Path, *args: str) -> list[str]:
    """`python -m pytest -n 2` on `suite`, its own rootdir, without the cache provider; then
    `args`."""
    return [
        sys.executable,
        *("-m", "pytest", "-n", "2", "-p", "no:cacheprovider", str(suite)),
        *("--rootdir", str(suite), *args),
    ]
