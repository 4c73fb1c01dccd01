"""The systemd guest's figures quoted in docs/guests.md. Not part of the test suite (the file
name does not match test_*.py); run it by naming it:

    pytest -s tests/guest/measure_systemd.py

Prints one JSON line per measurement (median, min, max and every run). Nothing here asserts on
a time: figures are reported, never checked. NIXOS_TEST_NG_GUEST_MEASURE_RUNS sets the runs
(default 5)."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from nixos_test_ng.guest import write_start_scripts
from systemd_support import (
    Container,
    own_cgroup_dir,
    require_nspawn,
    systemd_guest,  # noqa: F401  (a fixture)
    wait_gone,
)

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


def test_measure_build_cached(systemd_guest: Path) -> None:  # noqa: F811
    runs = []
    for _ in range(RUNS):
        start = time.monotonic()
        res = subprocess.run(
            [sys.executable, "-m", "nixos_test_ng.guest", "build", "--systemd"],
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert res.returncode == 0, res.stderr
        runs.append(time.monotonic() - start)
    report("build --systemd, both guests cached (CLI process included)", runs)


def test_measure_container(systemd_guest: Path, tmp_path: Path) -> None:  # noqa: F811
    """Script start (the driver's spawn) to: the PID line; the first command that works via
    nsenter in the container (its init runs systemd); `systemctl is-system-running --wait`
    returning `running` (multi-user.target reached, no job left); and, after SIGKILL to the
    process group, the container's cgroup gone (everything killed and cleaned up)."""
    require_nspawn()
    (script,) = write_start_scripts(
        tmp_path / "bin", {"c": []}, systemd_guest, kinds={"c": "systemd-nspawn"}
    ).values()
    pid_line, first, running, gone = [], [], [], []
    for i in range(RUNS):
        c = Container(script, tmp_path / f"state{i}", tmp_path / "shared")
        try:
            nspawn = c.nspawn_pid()
            pid_line.append(time.monotonic() - c.started)
            while c.nsenter("true").returncode != 0:
                time.sleep(0.005)
            first.append(time.monotonic() - c.started)
            assert c.wait_running() == "running"
            running.append(time.monotonic() - c.started)
        finally:
            t = time.monotonic()
            c.kill()
        cg = own_cgroup_dir() / f"ntng-c.{nspawn}"
        assert not wait_gone(cg.exists, 10)
        gone.append(time.monotonic() - t)
    report("container: script start -> PID line", pid_line)
    report("container: script start -> first nsenter command", first)
    report("container: script start -> is-system-running --wait = running", running)
    report("container: SIGKILL to the process group -> cgroup removed", gone)


def test_measure_vm_boot(
    systemd_guest: Path,  # noqa: F811
    tmp_path: Path,
    vm_factory: Any,
) -> None:
    """Start script spawned (the driver's arguments, no VLAN, 512 MB) to the handshake and to
    `systemctl is-system-running --wait` returning `running`, with the journal forwarded to
    the console (the default) and without (`systemd.journald.forward_to_console=0`),
    alternating; then `poweroff` on the backdoor to QEMU's exit."""
    scripts = write_start_scripts(
        tmp_path / "bin", {"m": []}, systemd_guest, kinds={"m": "systemd-vm"}
    )
    variants = {"console": "", "no console": "systemd.journald.forward_to_console=0"}
    figures: dict[str, dict[str, list[float]]] = {v: {"hs": [], "run": []} for v in variants}
    poweroff = []
    for i in range(RUNS):
        for name, params in variants.items():
            state = tmp_path / f"state-{i}-{name.replace(' ', '-')}"
            vm = vm_factory(
                scripts["m"], state, tmp_path / "shared", {"QEMU_KERNEL_PARAMS": params}
            )
            figures[name]["hs"].append(vm.connect(300))
            assert vm.execute("systemctl is-system-running --wait", 300) == (0, "running\n")
            figures[name]["run"].append(time.monotonic() - vm.started)
            t = time.monotonic()
            assert vm.shutdown(60) == 0
            poweroff.append(time.monotonic() - t)
            shutil.rmtree(state, ignore_errors=True)
    for name, d in figures.items():
        report(f"systemd VM ({name}): spawn -> handshake", d["hs"])
        report(f"systemd VM ({name}): spawn -> is-system-running = running", d["run"])
    report("systemd VM: poweroff -> QEMU exit", poweroff)
