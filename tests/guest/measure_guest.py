"""The figures quoted in docs/guests.md. Not part of the test suite (the file name does not
match test_*.py); run it by naming it:

    pytest -s tests/guest/measure_guest.py

Prints one JSON line per measurement (medians over the runs, plus every run). Nothing here
asserts on a time: figures are reported, never checked."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from nixos_test_ng.guest import write_start_scripts

pytestmark = [pytest.mark.vm]

RUNS = int(os.environ.get("NIXOS_TEST_NG_GUEST_MEASURE_RUNS", "5"))


def report(name: str, values: list[float], **extra: Any) -> None:
    line = {
        "measure": name,
        "median_s": round(statistics.median(values), 3),
        "min_s": round(min(values), 3),
        "max_s": round(max(values), 3),
        "n": len(values),
        "runs_s": [round(v, 3) for v in values],
        **extra,
    }
    print(json.dumps(line), flush=True)


def cli_build(out: Path) -> tuple[float, str]:
    start = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "nixos_test_ng.guest", "build", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr
    return time.monotonic() - start, res.stderr


def test_measure_build(tmp_path: Path) -> None:
    cold, log = cli_build(tmp_path / "cold")
    report("build cold (download, build, KVM probe)", [cold], log=log.splitlines())
    warm = [cli_build(tmp_path / "cold")[0] for _ in range(RUNS)]
    report("build warm (cached, CLI process included)", warm)


def test_measure_boot(built_guest: Path, tmp_path: Path, vde_switch: Any, vm_factory: Any) -> None:
    vde_switch(tmp_path / "vde1.ctl")
    vde = {"QEMU_VDE_SOCKET_1": str(tmp_path / "vde1.ctl")}
    (script,) = write_start_scripts(tmp_path / "bin", {"m": [1]}, built_guest).values()
    handshake, first_cmd, poweroff = [], [], []
    for i in range(RUNS):
        vm = vm_factory(script, tmp_path / f"state{i}", tmp_path / "shared", vde)
        handshake.append(vm.connect())
        start = time.monotonic()
        vm.succeed("echo hi")
        first_cmd.append(time.monotonic() - start)
        start = time.monotonic()
        assert vm.shutdown() == 0
        poweroff.append(time.monotonic() - start)
    report("boot: start-script spawn to handshake (1 VLAN, 256 MB, TCG)", handshake)
    report("execute('echo hi') right after the handshake", first_cmd)
    report("poweroff on the backdoor to QEMU exit", poweroff)
