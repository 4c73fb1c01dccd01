"""What the API layer calls to run the VM: a VmSpec and the Runner protocol.

The API layer turns requests into a VmSpec and runner calls; it never starts processes itself.
`NTNG_STANDIN_RUNNER` picks the runner: `fake` (the default: FakeRunner) or `qemu` (the module
`qemu_runner.py` next to this one, which must define `create_runner(vmm: str) -> Runner`).

FakeRunner is steered by variables, for tests of the API side:
- `NTNG_FAKE_RUNNER_DIR`: a directory; each call is appended to `calls.jsonl` there (one JSON
  object a line: {"call": name, ...arguments}), and writing a file `exit` holding a number
  there makes the VM exit with that status (the stand-in then exits with it too).
- `NTNG_FAKE_RUNNER_FAIL`: `call=message[;call=message...]`: that call raises RunnerError
  (`snapshot_diff=message`: only a diff snapshot does, after it was recorded).
- `NTNG_FAKE_RUNNER_EXIT_ON`: `call=status[;...]`: after that call the VM has exited with the
  status (e.g. `ctrl_alt_del=0`: the guest powers off on Ctrl-Alt-Del, as Firecracker guests
  do with `reboot=k`).
- `NTNG_FAKE_RUNNER_DIE_ON`: `call=status[;...]`: the whole VMM process dies in that call,
  before it answers or writes anything (e.g. `snapshot=137`: killed mid-snapshot).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

Console = Literal["stdout"] | tuple[str, str] | None


@dataclass
class Disk:
    id: str
    path: str
    read_only: bool
    is_root: bool


@dataclass
class Net:
    id: str
    tap: str
    mac: str | None


@dataclass
class Vsock:
    cid: int
    uds_path: str


@dataclass
class VmSpec:
    """The VM to run: what both APIs configure, in one shape."""

    kernel: str
    initrd: str | None
    cmdline: str
    vcpus: int
    mem_mib: int
    disks: list[Disk] = field(default_factory=list)
    nets: list[Net] = field(default_factory=list)
    vsock: Vsock | None = None
    #: "stdout" (the VMM's stdout), ("file", path), or None (no console).
    console: Console = "stdout"

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        if isinstance(self.console, tuple):
            out["console"] = list(self.console)
        return out

    @classmethod
    def from_json(cls, data: dict) -> VmSpec:
        console = data.get("console")
        return cls(
            kernel=data["kernel"],
            initrd=data.get("initrd"),
            cmdline=data["cmdline"],
            vcpus=data["vcpus"],
            mem_mib=data["mem_mib"],
            disks=[Disk(**d) for d in data.get("disks", [])],
            nets=[Net(**n) for n in data.get("nets", [])],
            vsock=Vsock(**data["vsock"]) if data.get("vsock") else None,
            console=tuple(console) if isinstance(console, list) else console,
        )


class RunnerError(Exception):
    """A runner call failed; its message goes into the API's error answer."""


class Runner(Protocol):
    def boot(self, spec: VmSpec) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def snapshot(self, state_path: str, mem_path: str, diff: bool) -> None: ...

    def restore(self, state_path: str, mem_path: str, spec: VmSpec, resume: bool) -> None:
        """Brings the VM back from a snapshot, paused, or running when `resume`."""
        ...

    def ctrl_alt_del(self) -> None: ...

    def power_button(self) -> None: ...

    def reboot(self) -> None: ...

    def shutdown(self) -> None:
        """Kills the VM (no guest shutdown); exited() need not report it afterwards."""
        ...

    def exited(self) -> int | None:
        """The VM's exit status once it has ended by itself, else None."""
        ...


class RunnerSelectionError(Exception):
    """NTNG_STANDIN_RUNNER names no usable runner."""


def _pairs(text: str) -> dict[str, str]:
    out = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        name, sep, value = item.partition("=")
        if not sep:
            raise RunnerSelectionError(f"expected call=value, got {item!r}")
        out[name.strip()] = value
    return out


#: The fake runner's memory: pages of FAKE_PAGE bytes (a filesystem block, so that a diff's
#: holes stay holes).
FAKE_MEMORY_PAGES = 2
FAKE_PAGE = 65536


class FakeRunner:
    """Records calls; fails or exits when told to (see the module's text). No VM runs."""

    def __init__(
        self,
        record_dir: str | None = None,
        fail: dict[str, str] | None = None,
        exit_on: dict[str, int] | None = None,
        die_on: dict[str, int] | None = None,
    ) -> None:
        self.record_dir = Path(record_dir) if record_dir else None
        self.fail = dict(fail or {})
        self.exit_on = dict(exit_on or {})
        self.die_on = dict(die_on or {})
        self.calls: list[dict] = []
        self._status: int | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> FakeRunner:
        env = os.environ if env is None else env
        exit_on = _pairs(env.get("NTNG_FAKE_RUNNER_EXIT_ON", ""))
        try:
            statuses = {name: int(value) for name, value in exit_on.items()}
        except ValueError as err:
            raise RunnerSelectionError(f"NTNG_FAKE_RUNNER_EXIT_ON: {err}") from None
        try:
            die_on = {
                name: int(value)
                for name, value in _pairs(env.get("NTNG_FAKE_RUNNER_DIE_ON", "")).items()
            }
        except ValueError as err:
            raise RunnerSelectionError(f"NTNG_FAKE_RUNNER_DIE_ON: {err}") from None
        return cls(
            record_dir=env.get("NTNG_FAKE_RUNNER_DIR") or None,
            fail=_pairs(env.get("NTNG_FAKE_RUNNER_FAIL", "")),
            exit_on=statuses,
            die_on=die_on,
        )

    def _call(self, name: str, **args) -> None:
        entry = {"call": name, **args}
        with self._lock:
            self.calls.append(entry)
            if self.record_dir is not None:
                with open(self.record_dir / "calls.jsonl", "a") as out:
                    out.write(json.dumps(entry) + "\n")
        if name in self.die_on:
            os._exit(self.die_on[name])
        if name in self.fail:
            raise RunnerError(self.fail[name])
        if name in self.exit_on:
            self._status = self.exit_on[name]

    def _new_vm(self) -> None:
        """A new VM starts: an exit reported for the one before no longer counts."""
        self._status = None
        if self.record_dir is not None:
            (self.record_dir / "exit").unlink(missing_ok=True)

    def boot(self, spec: VmSpec) -> None:
        self._new_vm()
        self._call("boot", spec=spec.to_json())

    def pause(self) -> None:
        self._call("pause")

    def resume(self) -> None:
        self._call("resume")

    def snapshot(self, state_path: str, mem_path: str, diff: bool) -> None:
        """A fake memory of FAKE_MEMORY_PAGES pages, each starting with a line naming how it
        was written (`full <state file>`); a diff writes only its last page (the one the
        guest "dirtied") into a sparse file, as Firecracker writes a diff's dirty pages."""
        self._call("snapshot", state_path=state_path, mem_path=mem_path, diff=diff)
        if diff and "snapshot_diff" in self.fail:
            raise RunnerError(self.fail["snapshot_diff"])
        Path(state_path).write_text(json.dumps({"fake_state": True, "diff": diff}))
        kind = "diff" if diff else "full"
        page = f"{kind} {state_path}\n".encode().ljust(FAKE_PAGE, b"\0")
        with open(mem_path, "wb") as out:
            out.truncate(FAKE_MEMORY_PAGES * FAKE_PAGE)
            for i in [FAKE_MEMORY_PAGES - 1] if diff else range(FAKE_MEMORY_PAGES):
                out.seek(i * FAKE_PAGE)
                out.write(page)

    def restore(self, state_path: str, mem_path: str, spec: VmSpec, resume: bool) -> None:
        self._new_vm()
        self._call(
            "restore", state_path=state_path, mem_path=mem_path, spec=spec.to_json(), resume=resume
        )
        for path in (state_path, mem_path):
            if not Path(path).is_file():
                raise RunnerError(f"no snapshot file at {path}")

    def ctrl_alt_del(self) -> None:
        self._call("ctrl_alt_del")

    def power_button(self) -> None:
        self._call("power_button")

    def reboot(self) -> None:
        self._call("reboot")

    def shutdown(self) -> None:
        self._call("shutdown")

    def exited(self) -> int | None:
        if self._status is None and self.record_dir is not None:
            marker = self.record_dir / "exit"
            if marker.is_file():
                text = marker.read_text().strip()
                if text:
                    self._status = int(text)
        return self._status


def create_runner(vmm: str, env: dict[str, str] | None = None) -> Runner:
    """The runner NTNG_STANDIN_RUNNER names, for the VMM `vmm` ("firecracker" or
    "cloud-hypervisor"); RunnerSelectionError when it cannot be had."""
    env = os.environ if env is None else env
    kind = env.get("NTNG_STANDIN_RUNNER", "fake") or "fake"
    if kind == "fake":
        return FakeRunner.from_env(env)
    if kind == "qemu":
        name = f"{__package__}.qemu_runner"
        if importlib.util.find_spec(name) is None:
            raise RunnerSelectionError(
                "NTNG_STANDIN_RUNNER=qemu, but the QEMU runner is not there "
                f"({Path(__file__).with_name('qemu_runner.py')} does not exist)"
            )
        return importlib.import_module(name).create_runner(vmm)
    raise RunnerSelectionError(
        f"NTNG_STANDIN_RUNNER={kind!r} is not a runner (expected 'fake' or 'qemu')"
    )
