"""The README's examples run as documented."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize(
    ("example", "machines"),
    [
        ("vlan_echo.py", ["-m", "server:1", "-m", "client:1"]),
        ("vlan_echo.py", ["-m", "server:1@container", "-m", "client:1"]),
        ("vlan_echo_pytest.py", ["-m", "server:1", "-m", "client:1"]),
        ("systemd_service.py", ["-m", "server@container"]),
    ],
)
def test_example(example, machines, tmp_path, guest_dir, leftovers):
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path))
    r = subprocess.run(
        ["nixos-test-ng", "run", str(EXAMPLES / example), *machines],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    if example.endswith("_pytest.py"):
        assert "4 passed" in r.stdout, r.stdout
    else:
        assert "(finished: subtest: " in r.stderr
    assert "!!!" not in r.stderr
    assert not leftovers(tmp_path, wait=3)
