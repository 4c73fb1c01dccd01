"""Helpers for the systemd guest's tests: the built guest (the test is skipped, with the reason,
when it cannot be built), a container started exactly as the driver starts one, and what is
left on the host afterwards (processes, cgroups, mounts)."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from nixos_test_ng import procs
from nixos_test_ng.guest import BuildError, ensure_systemd_built, systemd_dir
from nixos_test_ng.guest.cache import INITRD_FILE, MANIFEST_FILE

PID_LINE = "systemd-nspawn's PID is "
NSENTER = ["nsenter", "--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup"]


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (systemd-nspawn, unshare, mount)")


def require_nspawn() -> None:
    require_root()
    for tool in ("systemd-nspawn", "unshare", "nsenter"):
        if shutil.which(tool) is None:
            pytest.skip(f"`{tool}` is not installed (scripts/setup-system.sh installs it)")


@pytest.fixture(scope="session")
def systemd_guest() -> Path:
    """The guest directory with the busybox and the systemd guest built (or found cached);
    skips the test, with the reason, when the systemd guest cannot be built (no root, no
    debootstrap, the Debian mirror unreachable and nothing cached)."""
    if os.geteuid() != 0:
        pytest.skip("cannot build the systemd guest: debootstrap needs root")
    try:
        return ensure_systemd_built()
    except BuildError as e:
        pytest.skip(f"cannot build the systemd guest: {e}")


def make_fake_systemd_guest(path: Path, image_id: str = "0123456789abcdef") -> Path:
    """A guest directory with both manifests and empty artifacts (enough for start scripts)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "vmlinux").write_bytes(b"")
    (path / INITRD_FILE).write_bytes(b"")
    manifest = {"format": 1, "kernel_file": "vmlinux", "artifacts": {}, "kvm": {"usable": False}}
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    sd = systemd_dir(path)
    (sd / "rootfs/usr/lib").mkdir(parents=True, exist_ok=True)
    (sd / "rootfs/usr/lib/os-release").write_text("ID=debian\n")
    (sd / "rootfs.ext4").write_bytes(b"")
    (sd / INITRD_FILE).write_bytes(b"")
    (sd / MANIFEST_FILE).write_text(json.dumps({"format": 1, "image_id": image_id}))
    return path


def _pdeathsig() -> None:
    # what the driver does for its start scripts: die with the parent
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def processes_in_pid_namespace(ns: str) -> list[int]:
    return [p.pid for p in procs.snapshot() if pid_namespace(p.pid) == ns]


def cgroup2_root() -> Path:
    """Where this host's unified cgroup hierarchy is mounted."""
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if fields[2] == "cgroup2":
                return Path(fields[1])
    pytest.skip("no cgroup2 hierarchy mounted")


def own_cgroup_dir() -> Path:
    """This process's cgroup in the unified hierarchy (the start scripts' parent cgroup)."""
    with open("/proc/self/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return cgroup2_root() / line[3:].strip().lstrip("/")
    pytest.skip("no unified cgroup for this process")


def host_mounts() -> list[str]:
    """Mount points and types of this (the host's) mount namespace."""
    with open("/proc/self/mountinfo") as f:
        return sorted(" ".join((ln.split()[4], ln.split(" - ")[1].split()[0])) for ln in f)


def container_init(nspawn: int, timeout: float = 30, console: Any = lambda: "") -> int:
    """The container's init: the single child of systemd-nspawn that lives in a PID namespace
    of its own (nspawn's short-lived outer child does not), once it runs systemd."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{nspawn}/task/{nspawn}/children") as f:
                kids = f.read().split()
            if len(kids) == 1:
                kid = int(kids[0])
                with open(f"/proc/{kid}/comm") as f:
                    comm = f.read().strip()
                if pid_namespace(kid) not in (None, pid_namespace(nspawn)) and comm == "systemd":
                    return kid
        except OSError:
            if not procs.alive(nspawn):
                raise RuntimeError(f"systemd-nspawn exited; console:\n{console()}") from None
        time.sleep(0.005)
    raise TimeoutError(f"no container init; console:\n{console()}")


class Container:
    """Starts a `run-<name>-nspawn` script as the driver does: the environment replaced by
    RUN_NSPAWN_ROOT_DIR and RUN_NSPAWN_SHARED_DIR, stdin and stdout pipes, cwd the state
    directory, its own process group, PR_SET_PDEATHSIG=SIGKILL. Collects the console."""

    def __init__(self, script: Path, state: Path, shared: Path, env: dict[str, str] | None = None):
        state.mkdir(parents=True, exist_ok=True)
        self.script, self.state, self.shared = script, state, shared
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [str(script)],
            env=env
            if env is not None
            else {"RUN_NSPAWN_ROOT_DIR": str(state), "RUN_NSPAWN_SHARED_DIR": str(shared)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=state,
            start_new_session=True,
            preexec_fn=_pdeathsig,
        )
        self.lines: list[str] = []
        self.stderr = b""
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._threads:
            t.start()
        self._init: int | None = None

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                self.lines.append(raw.decode(errors="replace").replace("\r", "").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.lines.append("<EOF>")
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()

    def console(self) -> str:
        with self._cond:
            return "\n".join(self.lines[-60:])

    def wait_for_line(self, predicate: Any, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if predicate(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or "<EOF>" in self.lines:
                    raise TimeoutError(
                        f"no such console line; console:\n{self.console()}\n"
                        f"stderr: {self.stderr.decode(errors='replace')}"
                    )
                self._cond.wait(min(left, 0.5))

    def nspawn_pid(self, timeout: float = 30) -> int:
        """The pid of the PID line, which must be the first line on stdout."""
        self.wait_for_line(lambda _: True, timeout)
        first = self.lines[0]
        if not first.startswith(PID_LINE):
            pytest.fail(f"the first stdout line is not the PID line: {first!r}")
        return int(first[len(PID_LINE) :])

    def init_pid(self, timeout: float = 30) -> int:
        """The container's init (see `container_init`)."""
        if self._init is None:
            self._init = container_init(self.nspawn_pid(timeout), timeout, self.console)
        return self._init

    def nsenter(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`command` in the container's namespaces, as upstream's driver runs commands."""
        return subprocess.run(
            [*NSENTER, f"--target={self.init_pid()}", "/bin/bash", "-c", command],
            env={},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def succeed(self, command: str, timeout: float = 60) -> str:
        r = self.nsenter(f"set -eo pipefail; source /etc/profile; set -u; {command}", timeout)
        if r.returncode != 0:
            pytest.fail(f"`{command}` failed ({r.returncode}): {r.stdout}{r.stderr}")
        return r.stdout

    def wait_running(self, timeout: float = 60) -> str:
        """`systemctl is-system-running --wait`, retried while systemd is not far enough to
        answer: `offline` (no /run/systemd/system yet, just after the exec) or `Failed to
        connect to bus` (its private socket not up yet)."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.nsenter("systemctl is-system-running --wait", timeout)
            early = r.stdout.strip() == "offline" or "Failed to connect to bus" in r.stderr
            if not early or time.monotonic() > deadline:
                return r.stdout.strip()
            time.sleep(0.01)

    def kill(self) -> None:
        """What the driver does when it dies: SIGKILL to the script's process group."""
        procs.kill_group(self.proc.pid)
        self.proc.wait(timeout=30)
        for t in self._threads:
            t.join(timeout=10)


def wait_gone(check: Any, timeout: float = 10) -> Any:
    """Polls `check()` until it returns something false; returns the last value. `timeout`
    is the hang detector: the caller asserts on the value."""
    deadline = time.monotonic() + timeout
    while (value := check()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value
