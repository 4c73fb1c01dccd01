"""One test's isolated world for the driver (`DriverEnv`) and the fake machines in it: fake
QEMU start scripts (`FakeVM`) and fake container start scripts."""

from __future__ import annotations

import json
import os
import shlex
import sys
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fakes import FAKE_QEMU
from nixos_test_ng import procs

from support.driver import DriverProcess, DriverResult
from support.leaks import MARKER_VAR

# Variables the driver reads as defaults (upstream generations A/B) or that change how it
# runs; a test sets the ones it wants explicitly.
_SCRUBBED_ENV = (
    "DISPLAY",
    "WAYLAND_DISPLAY",
    "startScripts",
    "vmStartScripts",
    "vmNames",
    "containerStartScripts",
    "containerNames",
    "vlans",
    "globalTimeout",
    "testScript",
    "NIXOS_TEST_NG_BOOT_TIMEOUT",
    "NIXOS_TEST_NG_SHELL_FRAMING",
    "XDG_RUNTIME_DIR",
    "TMPDIR",
)

FAKE_CONTAINER = """\
#!/bin/bash
# a fake container: announce the pid, print the environment, run one "init" child
{before}
echo "systemd-nspawn's PID is $$"
echo "env: $(env | grep -v '^_=' | sort | tr '\\n' ' ')"
sleep 600 &
echo "Welcome to the fake container!"
wait
"""


@dataclass
class FakeVM:
    """A `run-<name>-vm` start script around the fake QEMU."""

    name: str
    script: Path
    record: Path
    knobs: dict[str, str] = field(default_factory=dict)

    def records(self, event: str | None = None) -> list[dict[str, Any]]:
        """The fake's JSON-lines record (every start, monitor/QMP/control command, exit)."""
        if not self.record.exists():
            return []
        entries = [json.loads(line) for line in self.record.read_text().splitlines() if line]
        return [e for e in entries if event is None or e["event"] == event]

    @property
    def start_count(self) -> int:
        return len(self.records("start"))

    def monitor_commands(self) -> list[str]:
        return [e["command"] for e in self.records("monitor")]

    def exits(self) -> list[dict[str, Any]]:
        return self.records("exit")


class DriverEnv:
    """One test's isolated world: XDG_RUNTIME_DIR (the driver's tmp dir), the output dir,
    the work dir (cwd, where scripts are written) and the environment."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.work = tmp / "work"
        self.runtime = tmp / "xdg"
        self.out = tmp / "out"
        for d in (self.work, self.runtime, self.out):
            d.mkdir(mode=0o700, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        env.update(
            XDG_RUNTIME_DIR=str(self.runtime),
            NO_COLOR="1",
            PYTHONUNBUFFERED="1",
            PYTHONDONTWRITEBYTECODE="1",
            **{MARKER_VAR: str(tmp)},
        )
        self.env = env
        self.processes: list[DriverProcess] = []

    def state_dir(self, machine: str) -> Path:
        return self.runtime / f"vm-state-{machine}"

    def write_script(self, name: str, body: str, executable: bool = False) -> Path:
        """Writes `body` (dedented) to `<work>/<name>`."""
        path = self.work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(body).lstrip("\n"))
        if executable:
            path.chmod(0o755)
        return path

    def fake_vm(self, name: str, *, script_name: str | None = None, **knobs: Any) -> FakeVM:
        """Writes `run-<name>-vm` (or `script_name`) starting the fake QEMU.

        Keyword knobs become `FAKE_QEMU_<KNOB>`: True → "1", False → "0", None → unset."""
        record = self.tmp / f"fake-{name}.record.jsonl"
        env = {"FAKE_QEMU_RECORD": str(record)}
        for key, value in knobs.items():
            if value is None:
                continue
            if isinstance(value, bool):
                value = "1" if value else "0"
            env[f"FAKE_QEMU_{key.upper()}"] = str(value)
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
        script = self.write_script(
            script_name or f"run-{name}-vm",
            f'#!/bin/sh\n{exports}exec {shlex.quote(sys.executable)} {FAKE_QEMU} "$@"\n',
            executable=True,
        )
        return FakeVM(name=name, script=script, record=record, knobs=env)

    def fake_container(self, name: str = "box", before: str = "") -> str:
        """Writes `run-<name>-nspawn`: a fake container that announces its pid as upstream's
        contract says and runs one child as the "container init" in the host's own
        namespaces (so nsenter works without systemd); `before` is shell run first."""
        body = FAKE_CONTAINER.format(before=before)
        return str(self.write_script(f"run-{name}-nspawn", body, True))

    def script_args(
        self,
        body: str,
        machines: Iterable[str] = ("alpha",),
        *,
        extra: Sequence[str | Path] = (),
        after: Sequence[str | Path] = (),
        name: str = "t.py",
        **knobs: Any,
    ) -> tuple[dict[str, FakeVM], list[str | Path]]:
        """Fake VMs `machines` (with the fake QEMU's `knobs`) and `body` (dedented) as the
        test script `name`: the VMs by name and the driver's arguments, `extra` before the
        script and `after` after it."""
        vms = {m: self.fake_vm(m, **knobs) for m in machines}
        script = self.write_script(name, body)
        args = procs.driver_arguments({m: vm.script for m, vm in vms.items()})
        return vms, [*args, *extra, "--", script, *after]

    def start_driver(
        self, args: Sequence[str | Path], env: dict[str, str] | None = None
    ) -> DriverProcess:
        full_env = dict(self.env)
        if env:
            full_env.update(env)
        proc = DriverProcess([str(a) for a in args], full_env, self.work)
        self.processes.append(proc)
        return proc

    def run_driver(
        self,
        args: Sequence[str | Path],
        timeout: float = 60,
        env: dict[str, str] | None = None,
    ) -> DriverResult:
        """Runs the driver to its end; `timeout` is the hang detector (the test fails)."""
        return self.start_driver(args, env).wait(timeout)

    def close(self) -> None:
        for p in self.processes:
            p.close()
