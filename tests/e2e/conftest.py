"""VM end-to-end tests: real QEMU (TCG) on the busybox guest, driven by nixos-test-driver.

- `vm_env`: runs `nixos-test-driver` on start scripts for the built guests, isolated in the
  test's tmp dir (`run(nodes, script, ...)` to the end, `spawn(...)` in the background, in a
  session of its own); its processes carry the leak check's marker (`support.leaks`).
- `vm_transport`: every VM test runs twice, on the backdoor and on the guest agent
  (`NIXOS_TEST_NG_TRANSPORT`), as `test[backdoor]` and `test[agent]`; not the tests that take
  snapshots (QEMU cannot save the agent's vhost-user device) nor those marked `one_transport`
  (they set the transport themselves).
- `takes_snapshots`: the run takes snapshots (`NIXOS_TEST_NG_SNAPSHOTS=1`): VMs start without
  the guest agent's vhost-user vsock device, which QEMU cannot save, and use the backdoor.
- `leftovers(marker, wait=3)`: the processes still running after `wait` s whose command line
  names `marker` or that carry the marker variable, as `pid: command line` strings.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from nixos_test_ng import procs
from support.leaks import GRACE_S, MARKER_VAR, wait_until_gone


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


def script_name(name: str, kind: str | None) -> str:
    """The start script `write_start_scripts` writes for a machine of `kind`."""
    return f"run-{name}-{procs.script_suffix(kind)}"


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
            env[MARKER_VAR] = str(tmp_path)
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
            stdin: int | None = subprocess.DEVNULL,
        ) -> subprocess.Popen:
            (tmp_path / "xdg").mkdir(exist_ok=True)
            self.out.mkdir(exist_ok=True)
            test = tmp_path / "test.py"
            test.write_text(script)
            kinds = kinds or {}
            if keep_scripts:  # as the test left them in scripts/
                scripts = {
                    n: str(tmp_path / "scripts" / script_name(n, kinds.get(n))) for n in nodes
                }
            else:
                scripts = self.scripts(nodes, kinds)
            vlans = [v for vs in nodes.values() for v in vs]
            args = [
                "nixos-test-driver",
                "-o",
                str(self.out),
                *procs.driver_arguments(scripts, kinds, vlans),
                *extra,
                "--",
                str(test),
                *after,
            ]
            p = subprocess.Popen(
                args,
                env=self.environ(),
                cwd=tmp_path,
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                start_new_session=True,
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
            input: str | None = None,
        ) -> Run:
            """Runs the driver to its end, `input` on its stdin (else /dev/null); `timeout`
            is the hang detector (the test fails)."""
            stdin = subprocess.PIPE if input is not None else subprocess.DEVNULL
            p = self.spawn(
                nodes, script, *extra, kinds=kinds, keep_scripts=keep_scripts, after=after,
                stdin=stdin,
            )  # fmt: skip
            try:
                out, err = p.communicate(input, timeout=timeout)
            except subprocess.TimeoutExpired:
                procs.kill_group(p.pid)
                out, err = p.communicate()
                pytest.fail(f"the driver did not exit within {timeout}s\n{out}\n{err[-5000:]}")
            return Run(p.returncode, out, err)

    yield Env()
    # a driver still running (the test failed half-way): end it; what it left behind is the
    # leak check's (tests/conftest.py)
    for p in started:
        if p.poll() is None:
            procs.kill_group(p.pid)
            p.wait()
        for stream in (p.stdout, p.stderr):
            if stream is not None:
                stream.close()


TRANSPORTS = ("backdoor", "agent")


def pytest_generate_tests(metafunc):
    definition = metafunc.definition
    if (
        "vm_transport" in metafunc.fixturenames
        and definition.get_closest_marker("vm")
        and not definition.get_closest_marker("one_transport")
        and "takes_snapshots" not in metafunc.fixturenames
    ):
        metafunc.parametrize("vm_transport", TRANSPORTS, indirect=True)


@pytest.fixture(autouse=True)
def vm_transport(request, monkeypatch) -> str | None:
    """The transport this run of a VM test forces (see `pytest_generate_tests`)."""
    transport = getattr(request, "param", None)
    if transport is not None:
        monkeypatch.setenv("NIXOS_TEST_NG_TRANSPORT", transport)
    return transport


@pytest.fixture
def takes_snapshots(monkeypatch):
    monkeypatch.setenv("NIXOS_TEST_NG_SNAPSHOTS", "1")


@pytest.fixture
def leftovers():
    """`leftovers(marker, wait=3)`: processes still running after up to `wait` s whose command
    line names `marker` or that carry the marker variable for it (`pid: command line`)."""

    def find(marker: Path, wait: float = GRACE_S) -> list[str]:
        return [f"{pid}: {cmd[:200]}" for pid, cmd in sorted(wait_until_gone(marker, wait).items())]

    return find
