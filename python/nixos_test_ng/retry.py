"""`retry`, `polling_condition` and the `t` assertion helper of the script namespace."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from nixos_test_ng._native import DEFAULT_COMMAND_TIMEOUT
from nixos_test_ng.errors import PollingConditionError, RequestedAssertionFailed


def seconds(
    value: float | timedelta | None, default: float | None = DEFAULT_COMMAND_TIMEOUT
) -> float | None:
    """Seconds from a number or a `timedelta` (None gives `default`)."""
    if value is None:
        return default
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


def retry(
    fn: Callable[[bool], Any],
    timeout_seconds: float | timedelta = DEFAULT_COMMAND_TIMEOUT,
    *,
    timeout: float | timedelta | None = None,
) -> None:
    """Call `fn(False)` until it returns true, sleeping one second between calls, for at
    most `timeout_seconds` (or `timeout`); then call `fn(True)` one last time. Raises
    `RequestedAssertionFailed` when that fails too."""
    limit = seconds(timeout if timeout is not None else timeout_seconds)
    start = time.monotonic()
    while limit is None or time.monotonic() - start < limit:
        if fn(False):
            return
        time.sleep(1)
    elapsed = time.monotonic() - start
    if not fn(True):
        shown = int(limit) if limit is not None and float(limit).is_integer() else limit
        raise RequestedAssertionFailed(
            f"action timed out after {elapsed:.2f} seconds (timeout={shown})"
        )


class LazyAssertionTester:
    """`t`: unittest's assertions (`t.assertEqual`, ...), failing with
    `RequestedAssertionFailed`. `unittest` is imported on first use: it costs 8 ms of
    start-up that most scripts never need."""

    _tester: Any = None

    def __getattr__(self, name: str) -> Any:
        if LazyAssertionTester._tester is None:
            import unittest

            class AssertionTester(unittest.TestCase):
                failureException = RequestedAssertionFailed

                def runTest(self) -> None:  # noqa: N802 - unittest's name
                    pass

            LazyAssertionTester._tester = AssertionTester()
        return getattr(LazyAssertionTester._tester, name)


class PollingCondition:
    """A condition checked before every command while active (`with condition:`)."""

    def __init__(
        self,
        condition: Callable[[], Any],
        driver: Any,
        seconds_interval: float = 2.0,
        description: str | None = None,
    ) -> None:
        self.condition = condition
        self.driver = driver
        self.seconds_interval = seconds_interval
        if description is None:
            description = condition.__doc__ or condition.__name__
        self.description = str(description)
        self.entry_count = 0
        self.last_called = float("-inf")

    @property
    def overdue(self) -> bool:
        return self.last_called + self.seconds_interval < time.monotonic()

    def check(self, force: bool = False) -> bool:
        if (self.entered or not self.overdue) and not force:
            return True
        log = self.driver.logger
        with self, log.nested(f"Checking polling condition {self.description!r}"):
            if self.last_called == float("-inf"):
                log.info("(not called yet)")
            else:
                log.info(f"Time since last: {time.monotonic() - self.last_called:.2f}s")
            try:
                result = self.condition()
                ok = result is None or bool(result)
            except Exception:
                ok = False
            log.info(f"Polling condition {'succeeded' if ok else 'failed'}: {self.description}")
            return ok

    def maybe_raise(self) -> None:
        if not self.check():
            raise PollingConditionError(f"Polling condition failed: {self.description}")

    @property
    def entered(self) -> bool:
        return self.entry_count > 0

    def __enter__(self) -> PollingCondition:
        self.entry_count += 1
        return self

    def __exit__(self, *_: object) -> None:
        self.entry_count -= 1
        self.last_called = time.monotonic()


class Poll:
    """What `polling_condition` returns: a context manager activating the condition."""

    def __init__(self, condition: PollingCondition) -> None:
        self.condition = condition

    def __enter__(self) -> None:
        self.condition.driver.polling_conditions.append(self.condition)

    def __exit__(self, *_: object) -> None:
        popped = self.condition.driver.polling_conditions.pop()
        assert popped is self.condition

    def wait(self, timeout: float | timedelta = DEFAULT_COMMAND_TIMEOUT) -> None:
        """Wait until the condition holds."""
        log = self.condition.driver.logger
        description = self.condition.description
        with log.nested(f"waiting for {description}"):

            def attempt(last: bool) -> bool:
                if last:
                    log.info(f"Last chance for {description}")
                ok = self.condition.check(force=True)
                if not ok and not last:
                    log.info(f"({description} failure not fatal yet)")
                return ok

            retry(attempt, timeout)
