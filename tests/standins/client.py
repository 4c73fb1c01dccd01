"""Driving a stand-in from a test: start the executable, talk HTTP over its unix socket."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FIRECRACKER = HERE / "firecracker"
CLOUD_HYPERVISOR = HERE / "cloud-hypervisor"

#: Bounds on waiting for an event (the socket appearing, the process ending); a test fails
#: when one expires, it never waits them out.
START_TIMEOUT_S = 15.0
EXIT_TIMEOUT_S = 15.0


def is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except FileNotFoundError:
        return False


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket (the Host header says localhost, as curl's would)."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


@dataclass
class Answer:
    status: int
    data: Any
    raw: bytes


class StandIn:
    """One stand-in process with the fake runner recording into `<tmp>/fake`."""

    def __init__(self, exe: Path, tmp: Path, name: str = "vmm") -> None:
        self.exe = exe
        self.tmp = tmp
        self.name = name
        self.socket = str(tmp / f"{name}.sock")
        self.record_dir = tmp / f"{name}-fake"
        self.record_dir.mkdir(exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.conn: UnixHTTPConnection | None = None
        self.stdout_path = tmp / f"{name}.stdout"
        self.stderr_path = tmp / f"{name}.stderr"

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        for key in list(env):
            if key.startswith("NTNG_FAKE_RUNNER_") or key == "NTNG_STANDIN_RUNNER":
                del env[key]
        env["NTNG_FAKE_RUNNER_DIR"] = str(self.record_dir)
        env.update(extra)
        return env

    def start(self, args: list[str] | None = None, wait: bool = True, **env: str) -> StandIn:
        if args is None:
            args = self.default_args()
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [str(self.exe), *args], stdout=out, stderr=err, env=self.env(**env)
            )
        if wait:
            self.wait_for_socket()
        return self

    def default_args(self) -> list[str]:
        if self.exe == FIRECRACKER:
            return ["--api-sock", self.socket]
        return ["--api-socket", self.socket]

    def wait_for_socket(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while not is_socket(self.socket):
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"the stand-in exited with {self.proc.returncode}: {self.stderr()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no API socket at {self.socket} after {START_TIMEOUT_S}s")
            time.sleep(0.01)

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None):
        if self.conn is None:
            self.conn = UnixHTTPConnection(self.socket)
        payload = raw if raw is not None else (None if body is None else json.dumps(body))
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        self.conn.request(method, path, body=payload, headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        return Answer(response.status, json.loads(data) if data else None, data)

    def put(self, path: str, body: Any = None) -> Answer:
        return self.request("PUT", path, body)

    def get(self, path: str) -> Answer:
        return self.request("GET", path)

    def patch(self, path: str, body: Any) -> Answer:
        return self.request("PATCH", path, body)

    def calls(self) -> list[dict]:
        path = self.record_dir / "calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def call_names(self) -> list[str]:
        return [c["call"] for c in self.calls()]

    def vm_exits(self, status: int) -> None:
        """The fake VM ends with `status` (the runner reports it; the stand-in follows)."""
        tmp = self.record_dir / "exit.tmp"
        tmp.write_text(str(status))
        tmp.rename(self.record_dir / "exit")

    def wait(self) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=EXIT_TIMEOUT_S)

    def signal(self, signum: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(signum)
        return self.wait()

    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=EXIT_TIMEOUT_S)
