"""Shared fixtures: an isolated driver environment, fake VMs, running `nixos-test-driver`
as a subprocess, and a check that no process a test started outlives it. The classes behind
them live in `tests/support/` (importable as `support`).

- `driver_env`: a per-test `DriverEnv` (its own XDG_RUNTIME_DIR, output dir and cwd, an
  environment without upstream's env-variable defaults or a display); its `script_args(body,
  machines=("alpha",), extra=(), after=(), **knobs)` writes fake VMs and a test script and
  returns the VMs and the driver's arguments.
- `write_script(name, body, executable=False)`: a file in the work dir (dedented).
- `fake_container(name="box", before="")`: a `run-<name>-nspawn` script that announces its
  pid as upstream's contract says and runs one child as the "container init" in the host's
  own namespaces (so nsenter works without systemd); `before` is shell run first.
- `fake_vm(name, **knobs)`: a `run-<name>-vm` start script around `tests/fakes/fake_qemu.py`;
  knobs become `FAKE_QEMU_<KNOB>` variables (`no_handshake=True`, `exit_early=3`,
  `boot_delay=0.5`, `panic=5`, `console="..."`, `pidns=False`; see fake_qemu.py); every
  fake records its argv, env, monitor/QMP commands and exit to `vm.record` (JSON lines).
- `run_driver(args, timeout=60, env=None)`: runs the driver to completion (`DriverResult`);
  the timeout is the hang detector, the test fails when it expires.
- `start_driver(args, env=None)`: starts it in the background (`DriverProcess`), for tests
  that signal it while it runs.
- autouse `no_leaked_processes`: after the test, no process may remain whose command line
  contains the test's tmp dir or whose environment carries the test's marker variable
  (`support.leaks`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support.env import DriverEnv  # noqa: E402
from support.leaks import kill_leftovers  # noqa: E402


@pytest.fixture
def driver_env(tmp_path: Path) -> Iterator[DriverEnv]:
    env = DriverEnv(tmp_path)
    yield env
    env.close()


@pytest.fixture
def write_script(driver_env: DriverEnv):
    return driver_env.write_script


@pytest.fixture
def fake_vm(driver_env: DriverEnv):
    return driver_env.fake_vm


@pytest.fixture
def fake_container(driver_env: DriverEnv):
    return driver_env.fake_container


@pytest.fixture
def run_driver(driver_env: DriverEnv):
    return driver_env.run_driver


@pytest.fixture
def start_driver(driver_env: DriverEnv):
    return driver_env.start_driver


@pytest.fixture(autouse=True)
def no_leaked_processes(tmp_path: Path) -> Iterator[None]:
    yield
    survivors = kill_leftovers(tmp_path)
    if survivors:
        listing = "\n".join(f"  {pid}: {cmd}" for pid, cmd in sorted(survivors.items()))
        pytest.fail(f"processes started by the test outlived it:\n{listing}", pytrace=False)
