"""Driver tests of the VMM backends against the API stand-ins (`tests/standins`) with their
fake runner: the variables that run a stand-in, a start script printing a machine's
configuration, the driver run of a test script, the runner's recorded calls, and a fake
guest serving the machine's hybrid vsock socket with the real agent
(`tests/fakes/vsock_guest.py`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fakes import VSOCK_GUEST
from nixos_test_ng import _native

from support.env import DriverEnv

STANDINS = Path(__file__).resolve().parents[1] / "standins"


@dataclass(frozen=True)
class Vmm:
    """What differs between the VMMs in these tests."""

    #: the binary's name: the stand-in's file and the start script's suffix
    binary: str
    #: the variable naming the binary to the driver
    variable: str
    #: the kernel command line of the test configuration
    cmdline: str

    @property
    def standin(self) -> Path:
        return STANDINS / self.binary


FIRECRACKER = Vmm("firecracker", "NIXOS_TEST_NG_FIRECRACKER", "console=ttyS0 reboot=k panic=1")
CLOUD_HYPERVISOR = Vmm(
    "cloud-hypervisor", "NIXOS_TEST_NG_CLOUD_HYPERVISOR", "console=ttyS0 root=/dev/vda panic=1"
)


def standin_env(driver_env: DriverEnv, vmm: Vmm) -> tuple[Path, dict[str, str]]:
    """`fake/` in the test's tmp dir and the variables that run `vmm`'s stand-in with its
    fake runner recording into it."""
    fake = driver_env.tmp / "fake"
    fake.mkdir()
    return fake, {
        vmm.variable: str(vmm.standin),
        "NTNG_STANDIN_RUNNER": "fake",
        "NTNG_FAKE_RUNNER_DIR": str(fake),
    }


def start_script(driver_env: DriverEnv, vmm: Vmm, name: str, **extra: Any) -> Path:
    """`run-<name>-<vmm>` printing a configuration with a kernel, an initrd, a root disk and a
    data disk in the work dir (the stand-in opens them as the VMM would); `extra` fields
    are added to it or replace its own."""
    for f in ("vmlinux", "initrd", "root.img", "data.img"):
        (driver_env.work / f).write_text(f)
    config = {
        "kernel": str(driver_env.work / "vmlinux"),
        "initrd": str(driver_env.work / "initrd"),
        "root_disk": str(driver_env.work / "root.img"),
        "disks": [{"path": str(driver_env.work / "data.img"), "read_only": True}],
        "cmdline": vmm.cmdline,
        "vcpus": 2,
        "memory_mib": 256,
        **extra,
    }
    body = f"""\
        #!/bin/sh
        echo "state dir: $NIXOS_TEST_NG_STATE_DIR" >&2
        cat <<'EOF'
        {json.dumps(config)}
        EOF
        """
    return driver_env.write_script(f"run-{name}-{vmm.binary}", body, executable=True)


def run(driver_env: DriverEnv, run_driver, env: dict[str, str], script: Path, body: str):
    """Runs the driver on the test script `body` (dedented) with the start script `script`."""
    test = driver_env.write_script("t.py", textwrap.dedent(body))
    return run_driver(["--start-scripts", script, "--", test], env=env)


def calls(fake: Path) -> list[dict[str, Any]]:
    """What the fake runner was asked to do, in order."""
    path = fake / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@contextmanager
def vsock_guest(driver_env: DriverEnv, machine: str) -> Iterator[Path]:
    """A fake guest serving machine `machine`'s hybrid vsock socket with the real agent;
    yields its work dir (its `connects` file lists each `CONNECT` line)."""
    agent = driver_env.tmp / "nixos-test-ng-agent"
    agent.write_bytes(_native.agent_binary())
    agent.chmod(0o755)
    guest_dir = driver_env.tmp / "guest"
    guest_dir.mkdir()
    vsock = driver_env.state_dir(machine) / "vsock.sock"
    proc = subprocess.Popen(
        [sys.executable, str(VSOCK_GUEST), str(vsock), str(agent), str(guest_dir)],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        yield guest_dir
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
