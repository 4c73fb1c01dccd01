#!/usr/bin/env python3
"""A VMM API stand-in of tests/standins that records, for the `vmm-*` bench suites, when it
came up and when each API request came and was answered, and how long its runner took.

    NTNG_BENCH_API_LOG=FILE vmm_standin.py firecracker|cloud-hypervisor ARGS...

ARGS are the VMM's own (the driver's). Each record is one JSON line appended to FILE, with the
stand-in's pid and CLOCK_REALTIME stamps (`time.time()`, the clock of the bench scripts):
- `{"event": "up", "t"}`: the interpreter is up (before the stand-in's imports);
- `{"event": "bound", "t"}`: the API socket is bound and listening (the stand-in then renames
  it to the path the driver gave, which makes it appear);
- `{"event": "accept", "t"}`: a connection to the API socket was accepted (the driver's probe
  that the socket is served, then its API calls);
- `{"event": "request", "method", "path", "status", "t_request", "t_answered", "handle_s",
  "runner_s"}`: one API call: `t_request` once its request line was read, `t_answered` when
  its answer is about to be written (recorded then: the driver may kill the stand-in as soon
  as it has the answer); `handle_s` is the time in the API layer (validation, state machine,
  runner), `runner_s` the part of it spent in the runner.

Nothing of the stand-in itself changes: the recording wraps its API object, its runner and
its HTTP handler and server classes. The stand-in is killed by the driver (a crash, a
restore's new process), so every record is written at once."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

T_UP = time.time()

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from standins import cli, server  # noqa: E402

LOG_VAR = "NTNG_BENCH_API_LOG"
MAINS = {"firecracker": cli.firecracker_main, "cloud-hypervisor": cli.cloud_hypervisor_main}

_log = open(os.environ[LOG_VAR], "a", buffering=1)  # noqa: SIM115 (open for the process's life)
_lock = threading.Lock()
# The time spent in the API layer and in the runner, for the request its thread is serving.
_spent = threading.local()


def record(**entry) -> None:
    line = json.dumps({"pid": os.getpid(), **entry})
    with _lock:
        _log.write(line + "\n")


class TimedRunner:
    """The runner, each call's time added to the current request's `runner_s`."""

    def __init__(self, runner) -> None:
        self._runner = runner

    def __getattr__(self, name: str):
        attr = getattr(self._runner, name)
        if not callable(attr) or name == "exited":  # `exited` is polled by the main loop
            return attr

        def timed(*args, **kwargs):
            tic = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                _spent.runner_s = getattr(_spent, "runner_s", 0.0) + time.perf_counter() - tic

        return timed


class TimedApi:
    """The API object, the time of each `handle` kept for the handler's record."""

    def __init__(self, api) -> None:
        self._api = api

    def handle(self, method, path, body):
        _spent.runner_s = 0.0
        tic = time.perf_counter()
        try:
            return self._api.handle(method, path, body)
        finally:
            _spent.handle_s = time.perf_counter() - tic

    def exit_status(self):
        return self._api.exit_status()

    def stop(self) -> None:
        self._api.stop()


_real_handler_class = server._handler_class


def timed_handler_class(api, lock, server_name):
    base = _real_handler_class(api, lock, server_name)

    class Timed(base):
        def parse_request(self):
            self._t_request = time.time()
            return super().parse_request()

        def send_response(self, code, message=None):
            self._status = code
            super().send_response(code, message)

        def end_headers(self):
            # Recorded before the answer goes out: once the driver has it, it may kill this
            # process (a crash, a restore's new process).
            record(
                event="request",
                method=self.command,
                path=self.path,
                status=getattr(self, "_status", None),
                t_request=self._t_request,
                t_answered=time.time(),
                handle_s=getattr(_spent, "handle_s", None),
                runner_s=getattr(_spent, "runner_s", None),
            )
            super().end_headers()

    return Timed


class TimedServer(server._Server):
    def server_activate(self):
        super().server_activate()
        record(event="bound", t=time.time())

    def process_request(self, request, client_address):
        record(event="accept", t=time.time())
        super().process_request(request, client_address)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in MAINS:
        print(f"usage: vmm_standin.py {'|'.join(MAINS)} ARGS...", file=sys.stderr)
        return 2
    real_create_runner, real_serve = cli.create_runner, cli.serve
    cli.create_runner = lambda vmm: TimedRunner(real_create_runner(vmm))
    cli.serve = lambda api, *args, **kwargs: real_serve(TimedApi(api), *args, **kwargs)
    server._handler_class = timed_handler_class
    server._Server = TimedServer
    record(event="up", t=T_UP)
    return MAINS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
