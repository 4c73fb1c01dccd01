"""How a run ends on SIGTERM, the global timeout or Ctrl-C, as upstream's driver does: by
dying of the signal (a shell sees 128 + its number), here after the cleanup and the reports.

SIGTERM (from outside, from the global timer, or from `driver.terminate_test()`) raises
`Terminated` or `GlobalTimeout` into the script once, so that it unwinds and its subtest is
reported failed; the engine then fails every later call. A script that catches that exception
and goes on cannot keep the run alive: `GRACE_SECONDS` later (or at a second SIGTERM) the
signal handler ends the run from inside the script. A script that catches it and returns
ends the same way (`raise_if_ending`).

A run's status is an exit status, or minus a signal's number: the process dies of that
signal (`exit_process`), as `subprocess` reports such a death.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

from nixos_test_ng import _native
from nixos_test_ng.errors import GlobalTimeout, Terminated

#: How long a script may go on after the global timeout or SIGTERM was raised into it (its
#: `except`/`finally` blocks run) before the run is ended from inside it.
GRACE_SECONDS = 5.0

KILLED_BY_SIGTERM = -signal.SIGTERM
KILLED_BY_SIGINT = -signal.SIGINT


def ending_exception() -> GlobalTimeout | Terminated | None:
    """The exception of an ending run (the global timeout, SIGTERM), or None."""
    reason = _native.interrupt_reason()
    if reason == "timeout":
        return GlobalTimeout("the global timeout expired")
    if reason == "terminate":
        return Terminated("received SIGTERM")
    return None


class Ending:
    """The SIGTERM handling of one run. `end_now(exc)` finishes the run and exits the process;
    it is called from inside the script when the script swallowed `exc`."""

    def __init__(self, end_now: Callable[[GlobalTimeout | Terminated], NoReturn]) -> None:
        self._end_now = end_now
        self._raised = False
        self._disarmed = False
        self._watchdog: threading.Timer | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        # After Python's handlers, so the engine's flag handler chains to them.
        _native.install_signal_handlers()

    def _on_sigterm(self, _signum: int, _frame: Any) -> None:
        if self._disarmed:
            return
        exc = ending_exception() or Terminated("received SIGTERM")
        if self._raised:  # the script caught the first one and went on
            self.disarm()
            self._end_now(exc)
        self._raised = True
        self._watchdog = threading.Timer(GRACE_SECONDS, os.kill, (os.getpid(), signal.SIGTERM))
        self._watchdog.daemon = True
        self._watchdog.start()
        raise exc

    def raise_if_ending(self) -> None:
        """After the script returned: a timeout or SIGTERM it caught still ends the run."""
        exc = ending_exception()
        if exc is not None:
            raise exc

    def disarm(self) -> None:
        """The driver ends the run itself now: signals are ignored until it exits."""
        self._disarmed = True
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if self._watchdog is not None:
            self._watchdog.cancel()

    def restore_defaults(self) -> None:
        """Python's own handlers again, once the run has ended."""
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def exit_process(status: int) -> NoReturn:
    """Exits with `status`, or dies of signal `-status` when it is negative."""
    if status < 0:
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
        time.sleep(5)  # delivered to another thread: it takes the process down meanwhile
        status = 128 - status
    sys.exit(status)
