"""VM end-to-end tests: real QEMU (TCG) on the busybox guest, driven by nixos-test-driver."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def guest_dir() -> Path:
    from nixos_test_ng.guest import ensure_built

    return ensure_built()


@pytest.fixture(scope="session")
def systemd_guest(guest_dir):
    from nixos_test_ng.guest import GuestError, ensure_systemd_built

    try:
        return ensure_systemd_built(guest_dir)
    except GuestError as e:
        pytest.skip(f"the Debian systemd guest cannot be built here: {e}")


@pytest.fixture
def vm_env(tmp_path: Path, guest_dir: Path):
    """Runs nixos-test-driver on start scripts for the busybox guest, isolated in tmp_path."""
    from nixos_test_ng.guest import write_start_scripts

    started: list[subprocess.Popen] = []

    class Env:
        root = tmp_path
        out = tmp_path / "out"

        def scripts(
            self, nodes: dict[str, list[int]], kinds: dict[str, str] | None = None
        ) -> dict[str, str]:
            paths = write_start_scripts(
                tmp_path / "scripts", nodes, guest_dir=guest_dir, kinds=kinds
            )
            return {name: str(p) for name, p in paths.items()}

        def environ(self) -> dict[str, str]:
            env = dict(os.environ)
            env["XDG_RUNTIME_DIR"] = str(tmp_path / "xdg")
            env.pop("DISPLAY", None)
            env.pop("WAYLAND_DISPLAY", None)
            return env

        def spawn(
            self,
            nodes: dict[str, list[int]],
            script: str,
            *extra: str,
            kinds: dict[str, str] | None = None,
            keep_scripts: bool = False,
            after: tuple[str, ...] = (),
        ) -> subprocess.Popen:
            (tmp_path / "xdg").mkdir(exist_ok=True)
            self.out.mkdir(exist_ok=True)
            test = tmp_path / "test.py"
            test.write_text(script)
            vlans = sorted({v for vs in nodes.values() for v in vs})
            kinds = kinds or {}
            if keep_scripts:  # as the test left them in scripts/
                scripts = {
                    n: str(
                        tmp_path
                        / "scripts"
                        / f"run-{n}-{'nspawn' if kinds.get(n) == 'systemd-nspawn' else 'vm'}"
                    )
                    for n in nodes
                }
            else:
                scripts = self.scripts(nodes, kinds)
            vms = [p for n, p in scripts.items() if kinds.get(n) != "systemd-nspawn"]
            containers = [p for n, p in scripts.items() if kinds.get(n) == "systemd-nspawn"]
            args = ["nixos-test-driver", "-o", str(self.out)]
            if vms:
                args += ["--vm-start-scripts", *vms]
            if containers:
                args += ["--container-start-scripts", *containers]
            if vlans:
                args += ["--vlans", *map(str, vlans)]
            args += [*extra, "--", str(test), *after]
            p = subprocess.Popen(
                args,
                env=self.environ(),
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
            )
            started.append(p)
            return p

        def run(
            self,
            nodes: dict[str, list[int]],
            script: str,
            *extra: str,
            timeout=300,
            kinds: dict[str, str] | None = None,
            keep_scripts: bool = False,
            after: tuple[str, ...] = (),
        ) -> Run:
            p = self.spawn(
                nodes, script, *extra, kinds=kinds, keep_scripts=keep_scripts, after=after
            )
            out, err = p.communicate(timeout=timeout)
            return Run(p.returncode, out, err)

    yield Env()
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert not leftover_processes(tmp_path), "processes survived the test"


def wait_for_line(p: subprocess.Popen, marker: str, timeout: float = 120) -> None:
    """Reads the driver's stdout until a line contains `marker` (a script's `print`)."""
    deadline = time.monotonic() + timeout
    line = ""
    while marker not in line and time.monotonic() < deadline:
        line = p.stdout.readline()
    assert marker in line, f"the driver never printed {marker!r}"


def leftover_processes(marker: Path, wait: float = 3.0) -> list[str]:
    """Processes whose command line mentions `marker` (QEMU, vde_switch of this test)."""
    deadline = time.monotonic() + wait
    while True:
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if str(marker) in cmdline and state != "Z" and int(proc.name) != os.getpid():
                found.append(f"{proc.name}: {cmdline[:200]}")
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


@pytest.fixture
def leftovers():
    """`leftovers(marker, wait)`: processes still running whose command line names `marker`."""
    return leftover_processes
