"""`nixos-test-ng run SCRIPT --watch`: boot once, then run the script again at every save.

The machines boot once and are snapshotted at their ready state (`READY_SNAPSHOT`, which
prepares warm standbys: docs/snapshots.md). After every run they are restored to it, so the
next run starts from the ready state within milliseconds of the save. Each run executes the
script in a fresh namespace, in this process, with the driver's global timeout applied per run
(the engine's own global timer, which kills the machines and ends the process, is not used).

Exit status on Ctrl-C: the last run's, as `run` would give for it (0 passed, 1 failed, 2 a
syntax error); Ctrl-C during a run interrupts that run and ends the process as `run` does
(SIGINT, after the cleanup).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nixos_test_ng import _native
from nixos_test_ng.errors import GlobalTimeout, MachineError, Terminated
from nixos_test_ng.exit_status import ExitStatus

#: The snapshot every machine is restored to after each run.
READY_SNAPSHOT = "ntng-watch-ready"
#: How often the script's path is stat'ed while waiting for a save.
POLL_SECONDS = 0.05
#: A change is taken once the file has kept the same stat this long (a save written in
#: several pieces is read whole).
SETTLE_SECONDS = 0.02
#: The per-run timeout when neither `--global-timeout` nor `globalTimeout` sets one.
DEFAULT_RUN_TIMEOUT = 300
#: Tells the QEMU backend that the run takes snapshots.
SNAPSHOTS_ENV = _native.SNAPSHOTS_VAR


def driver_arguments(user_args: list[str], reuse_boots: bool = True) -> list[str]:
    """The driver arguments the watch loop adds to the user's (the one place for them): the
    boot cache (docs/boot-cache.md) unless `reuse_boots` is false, and a per-run timeout
    unless one is given."""
    extra = ["--reuse-boots"] if reuse_boots and "--reuse-boots" not in user_args else []
    given = any(a == "--global-timeout" or a.startswith("--global-timeout=") for a in user_args)
    if given or "globalTimeout" in os.environ:
        return extra
    return [*extra, "--global-timeout", str(DEFAULT_RUN_TIMEOUT)]


def watch_environment() -> None:
    """What the loop needs of the process: snapshot-capable VMs, and Ctrl-C to end it (a
    shell starting it in the background may have left SIGINT ignored). Before the driver
    installs its own signal handlers, which chain to this one."""
    os.environ[SNAPSHOTS_ENV] = "1"
    signal.signal(signal.SIGINT, signal.default_int_handler)


@dataclass
class Outcome:
    """One run's result, for the summary."""

    number: int
    status: int  # ExitStatus
    seconds: float
    where: str = ""  # `file:line: source` of the failing line
    error: str = ""

    @property
    def passed(self) -> bool:
        return self.status == ExitStatus.OK


class RunTimedOut(Exception):
    """The run took longer than the per-run timeout."""


def stamp(path: Path) -> tuple[int, int, int, int] | None:
    """What changes when the file is saved (in place or by rename), or None when it is gone."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


def wait_for_save(path: Path, last: tuple[int, int, int, int] | None) -> None:
    """Returns once `path` exists with a stat other than `last`, settled."""
    while True:
        time.sleep(POLL_SECONDS)
        now = stamp(path)
        if now is None or now == last:
            continue
        time.sleep(SETTLE_SECONDS)
        if stamp(path) == now:
            return


def failing_line(exc: BaseException, script_path: str, source: str) -> str:
    """`file:line: source line` of the script's innermost frame in `exc`'s traceback."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == script_path]
    if not frames:
        return ""
    frame = frames[-1]
    lines = source.splitlines()
    text = lines[frame.lineno - 1].strip() if frame.lineno and frame.lineno <= len(lines) else ""
    return f"{script_path}:{frame.lineno}: {text}"


class Watch:
    """The loop: `run()` returns the exit status when Ctrl-C ends it."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        self.path = Path(driver.script_path)
        self.timeout = float(driver.config.global_timeout)
        self.runs = 0
        self._fired = False

    def say(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> int:
        if not self.boot_and_snapshot():
            return ExitStatus.USAGE
        status: int = ExitStatus.OK
        while True:
            last = stamp(self.path)
            status = self.one_round()
            try:
                self.say(f"watch: waiting for {self.path} to be saved (Ctrl-C ends)")
                wait_for_save(self.path, last)
            except KeyboardInterrupt:
                _native.clear_interrupt()
                self.say(f"watch: interrupted; ending with the last run's status {status}")
                return status

    def boot_and_snapshot(self) -> bool:
        """Every machine booted and connected, then snapshotted together; False (said why)
        when a snapshot is impossible."""
        driver = self.driver
        tic = time.monotonic()
        driver.start_all()
        for m in driver.machines:
            m.connect()
        try:
            driver.snapshot_all(READY_SNAPSHOT)
        except MachineError as e:
            fix = getattr(e, "fix", "")
            self.say(f"watch: cannot snapshot the machines, which --watch needs: {e}")
            if fix:
                self.say(f"watch: to make them snapshot-capable: {fix}")
            return False
        names = ", ".join(m.name for m in driver.machines)
        took = time.monotonic() - tic
        self.say(f"watch: machines ready and snapshotted ({names}) in {took:.2f}s")
        return True

    def one_round(self) -> int:
        """Read, compile and run the script once; restore the machines after a run."""
        self.runs += 1
        try:
            source = self.path.read_text(encoding="utf-8")
            code = compile(source, str(self.path), "exec")
        except OSError as e:
            self.show(Outcome(self.runs, ExitStatus.USAGE, 0.0, error=f"cannot read: {e}"))
            return ExitStatus.USAGE
        except SyntaxError as e:
            where = f"{e.filename}:{e.lineno}:{e.offset or 0}"
            self.show(Outcome(self.runs, ExitStatus.USAGE, 0.0, where, f"syntax error: {e.msg}"))
            return ExitStatus.USAGE
        del code  # compiled again by the driver, with its namespace
        from nixos_test_ng.pytest_style import is_pytest_style

        if is_pytest_style(source):
            error = "a pytest-style script (test_* functions): --watch runs plain scripts only"
            self.show(Outcome(self.runs, ExitStatus.USAGE, 0.0, error=error))
            return ExitStatus.USAGE
        outcome = self.execute(source)
        self.show(outcome)
        self.restore()
        return outcome.status

    def execute(self, source: str) -> Outcome:
        """Run `source` in a fresh namespace under the per-run timeout."""
        driver = self.driver
        driver.tests = source
        self._fired = False
        timer = threading.Timer(self.timeout, self._time_out)
        timer.daemon = True
        # log.error() (or a subtest failing under --keep-going) fails a run; the logger
        # remembers it for good, so only the first run that logs one can be told from it
        errors_before = driver.logger.failed
        tic = time.monotonic()
        try:
            try:
                timer.start()
                driver.test_script()
                timer.cancel()
                if self._fired:  # it fired as the script ended: its SIGINT is on its way
                    time.sleep(1)
            finally:
                timer.cancel()
            status, where, error = ExitStatus.OK, "", ""
            if driver.logger.failed and not errors_before:
                status, error = ExitStatus.FAILED, "an error was logged (log.error)"
        except KeyboardInterrupt as e:
            if not self._fired:
                raise
            driver.logger.log_test_error(f"the run timed out after {self.timeout:g}s")
            where = failing_line(e, driver.script_path, source)
            status, error = ExitStatus.FAILED, f"timed out after {self.timeout:g}s"
        except (GlobalTimeout, Terminated):
            raise  # SIGTERM ends the session, as it ends `run`
        except Exception as e:  # noqa: BLE001 - every failure of the script is shown
            driver.report_failure(e)
            where = failing_line(e, driver.script_path, source)
            status, error = ExitStatus.FAILED, f"{type(e).__name__}: {e}"
        finally:
            _native.clear_interrupt()
        return Outcome(self.runs, status, time.monotonic() - tic, where, error)

    def _time_out(self) -> None:
        self._fired = True
        os.kill(os.getpid(), signal.SIGINT)

    def restore(self) -> None:
        """Every machine back at its ready state; a machine the run powered off boots again."""
        driver = self.driver
        driver.restore_all(READY_SNAPSHOT)
        for m in driver.machines:
            if not m.booted:
                m.log("watch: the run stopped this machine; booting it again")
                m.start()
                m.connect()
                m.snapshot(READY_SNAPSHOT)

    def show(self, o: Outcome) -> None:
        """The one-screen result of a run."""
        word = "PASSED" if o.passed else "FAILED"
        lines = ["", f"==== watch: run {o.number} {word} in {o.seconds:.2f}s ===="]
        if o.where:
            lines.append(f"  at {o.where}")
        if o.error:
            lines += [f"  {line}" for line in o.error.splitlines()[:10]]
        self.say("\n".join(lines))


def session(driver: Any) -> int:
    """The watch loop on `driver`'s machines and script; the exit status."""
    return Watch(driver).run()


def main(argv: list[str]) -> int:
    """`python -m nixos_test_ng.watch DRIVER-ARGS... -- SCRIPT`: the loop on the driver's own
    command line (start scripts from anywhere, e.g. Nix-built); `run --watch` is this on the
    built-in guests."""
    from nixos_test_ng.cli import run_driver

    watch_environment()
    return run_driver([*driver_arguments(argv), *argv], session)


if __name__ == "__main__":
    from nixos_test_ng.ending import exit_process

    exit_process(main(sys.argv[1:]))
