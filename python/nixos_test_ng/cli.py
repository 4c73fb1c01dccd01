"""Entry points: `nixos-test-driver` (the drop-in driver) and `nixos-test-ng` (everything else).

Exit statuses (`exit_status.py`): 0 the test passed (nothing escaped the script, and it logged
no `log.error`); 1 the test failed; 2 bad command line, configuration or script. The global
timeout and SIGTERM kill the process with SIGTERM (143 in a shell), Ctrl-C with SIGINT (130),
after the cleanup and the reports, as upstream's driver dies of them (`ending.py`).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

from nixos_test_ng import _native
from nixos_test_ng.ending import (
    KILLED_BY_SIGINT,
    KILLED_BY_SIGTERM,
    Ending,
    ending_exception,
    exit_process,
)
from nixos_test_ng.errors import ConfigError, GlobalTimeout, Terminated
from nixos_test_ng.exit_status import ExitStatus


def _usage_error(message: str) -> int:
    print(f"nixos-test-driver: error: {message}", file=sys.stderr)
    return ExitStatus.USAGE


def run_driver(argv: list[str], session: Callable[[Any], int] | None = None) -> int:
    """`nixos-test-driver ARGS`; returns the exit status, or minus the signal the process
    is to die of (`ending.exit_process`). `session(driver)`, when given, runs instead of the
    script and returns the status (the watch loop: it reads and checks the script itself)."""
    try:
        parsed = _native.parse_args(argv, dict(os.environ))
    except ConfigError as e:
        return _usage_error(str(e))
    if isinstance(parsed, str):
        print(parsed, end="")
        return ExitStatus.OK
    config = parsed

    script = ""
    if config.test_script is not None and session is None:
        try:
            with open(config.test_script, encoding="utf-8") as f:
                script = f.read()
            compile(script, config.test_script, "exec")
        except OSError as e:
            return _usage_error(f"cannot read test script: {e}")
        except SyntaxError as e:
            where = f"{e.filename}:{e.lineno}:{e.offset or 0}"
            return _usage_error(f"{where}: syntax error in the test script: {e.msg}")

    if script and not config.skip_check and not config.interactive:
        from nixos_test_ng.check import check_source

        machines = {name: _native.machine_kind(kind).spec_word for name, _, kind in config.machines}
        problems = check_source(script, config.test_script, machines, config.vlans, names_only=True)
        if problems:
            for problem in problems:
                print(problem.render(config.test_script), file=sys.stderr)
            return _usage_error(
                "the test script uses names that do not exist (checked before booting;"
                " --skip-check turns this off)"
            )

    from nixos_test_ng.pytest_style import is_pytest_style, run_pytest

    pytest_style = bool(script) and is_pytest_style(script)
    if config.pytest_args and not pytest_style:
        return _usage_error(
            f"arguments after the test script ({' '.join(config.pytest_args)}) are for pytest,"
            " and this script is not pytest-style (it defines no test_* function)"
        )
    tty = sys.stderr.isatty()
    # no status line under the REPL: it would redraw over what the user types
    progress = tty and not config.interactive
    logger = _native.Logger(color=tty and "NO_COLOR" not in os.environ, progress=progress)
    for w in config.warnings:
        logger.warning(w)
    script_name = os.path.basename(config.test_script) if config.test_script else "interactive"
    junit = bool(config.junit_xml) and not pytest_style  # pytest writes a pytest-style one's
    logger.start_run(config, f"run {script_name}", junit=junit)
    if not config.keep_machine_state:
        logger.log("Machine state will be reset. To keep it, pass --keep-machine-state")

    run = _Run(config, logger, pytest_style)
    ending = Ending(run.end_now)
    ending.install()
    from nixos_test_ng.driver import Driver

    try:
        run.driver = Driver(config, logger, script)
        driver = run.driver
        if config.dump_vsocks is not None:
            driver.dump_machine_ssh(config.dump_vsocks)
        if session is not None:
            run.status = session(driver)
        elif config.interactive:
            from nixos_test_ng.repl import interact

            interact(driver)
        elif pytest_style:
            tic = time.monotonic()
            try:
                run.status = run_pytest(driver, script, config.test_script, config.pytest_args)
            finally:
                logger.log(f"test script finished in {time.monotonic() - tic:.2f}s")
        else:
            tic = time.monotonic()
            try:
                driver.run_tests()
            finally:
                logger.log(f"test script finished in {time.monotonic() - tic:.2f}s")
        ending.raise_if_ending()
    except ConfigError as e:
        logger.log_test_error(str(e))
        run.status, run.failure = ExitStatus.USAGE, str(e)
    except (GlobalTimeout, Terminated) as e:
        run.ended_by(e)
    except KeyboardInterrupt:
        logger.log_test_error("interrupted; cleaning up")
        run.status, run.failure = KILLED_BY_SIGINT, "interrupted (SIGINT)"
    except SystemExit as e:
        run.status = e.code if isinstance(e.code, int) else ExitStatus.FAILED
    except BaseException as e:  # noqa: BLE001 - every failure of the script ends here
        if run.driver is not None:
            run.driver.report_failure(e)
        else:
            logger.log_test_error(f"{type(e).__name__}: {e}")
        run.status, run.failure = ExitStatus.FAILED, f"{type(e).__name__}: {e}"
    finally:
        ending.disarm()
        try:
            run.finish()
        finally:
            ending.restore_defaults()
    return run.status


class _Run:
    """One run's outcome and its end: cleanup, reports, the exit status."""

    def __init__(self, config: _native.Config, logger: _native.Logger, pytest_style: bool):
        self.config = config
        self.logger = logger
        self.pytest_style = pytest_style
        self.driver: Any = None
        #: An exit status, or minus the signal the process dies of (`ending.exit_process`).
        self.status = ExitStatus.OK
        self.failure: str | None = None

    def ended_by(self, e: GlobalTimeout | Terminated) -> None:
        """The global timeout or SIGTERM ended the run: the process dies of SIGTERM."""
        if isinstance(e, GlobalTimeout):
            self.logger.log_test_error("the global timeout expired; the test was terminated")
            self.failure = "global timeout"
        else:
            self.logger.log_test_error("received SIGTERM; cleaning up")
            self.failure = "terminated (SIGTERM)"
        self.status = KILLED_BY_SIGTERM

    def end_now(self, e: GlobalTimeout | Terminated) -> NoReturn:
        """From inside a script that caught `e` and went on: end the run anyway."""
        self.logger.log_test_error(
            f"the test script caught `{type(e).__name__}: {e}` and went on; ending the run"
        )
        self.ended_by(e)
        self.finish()
        exit_process(self.status)

    def finish(self) -> None:
        """Cleanup (machines, VLANs), JUnit, the run's span and trace flush, the HTML report,
        the timing summary; settles the status."""
        if self.status >= 0 and (late := ending_exception()) is not None:
            self.ended_by(late)  # the timer fired, or SIGTERM came, as the script ended
        if self.driver is not None:
            self.driver.cleanup()
        if self.config.junit_xml and not self.pytest_style:
            self.logger.write_junit(self.config.junit_xml)
        if self.status == ExitStatus.OK and self.logger.failed:
            self.status = ExitStatus.FAILED  # log.error(), or a subtest failed under --keep-going
        if self.status != ExitStatus.OK and self.failure is None:
            self.failure = "the test failed"
        _finish_reports(self.config, self.logger, self.driver, self.failure)
        if self.status == ExitStatus.OK and self.logger.failed:
            self.status = ExitStatus.FAILED  # the XML log's last write failed (a full disk)


def _finish_reports(
    config: _native.Config, logger: _native.Logger, driver: Any, failure: str | None
) -> None:
    """End the run's span (flushing exported spans), write the HTML report, and print the
    timing summary."""
    logger.finish_run(failure)
    if driver is not None and config.html_report:
        try:
            driver._native.write_html_report(config.html_report)
            logger.log(f"HTML report: {config.html_report}")
        except OSError as e:
            logger.warning(str(e))
    if not config.interactive:
        for line in logger.timing_summary():
            logger.log(line)


def driver_main() -> None:
    """The `nixos-test-driver` command."""
    exit_process(run_driver(sys.argv[1:]))


NG_USAGE = """\
usage: nixos-test-ng COMMAND ...

commands:
  run SCRIPT [--machine NAME[:VLAN,...][@KIND]]... [-- DRIVER-ARGS...]
                      run a test script on the built-in Debian guests (no Nix needed)
  guest build|scripts  build the default guest, or write run-<name>-vm start scripts
  check SCRIPT --machines NAME[:VLAN,...][@KIND]... [--vlans N...]
                      check a script before booting: undefined names, misspelled machine
                      methods, wrong arguments (also --vm-start-scripts, --config, ...)
  stubs --machines NAME[:VLAN,...][@KIND]... [--vlans N...] -o FILE
                      declarations of the script's globals for type checkers and editors
  doctor               what this host can do (QEMU, KVM, containers, OCR, guests, Nix),
                      each line ok / missing / degraded with the command that fixes it
  new TEMPLATE [-o FILE.py] [--stubs] [--nix] [--force] | new --list
                      write a working test from a template (minimal, network, systemd,
                      pytest, graphical, traced), with editor stubs and a Nix expression
  cache list|clear     the boot cache of VMs (--reuse-boots): its entries, or delete them
  driver ARGS...       the same as nixos-test-driver ARGS...
  version              print the version
"""


def run_ng(argv: list[str]) -> int:
    """`nixos-test-ng ARGS`; returns the exit status."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(NG_USAGE, end="")
        return ExitStatus.OK if argv else ExitStatus.USAGE
    command, rest = argv[0], argv[1:]
    if command == "guest":
        from nixos_test_ng.guest.cli import main as guest_main

        return guest_main(rest)
    if command == "run":
        from nixos_test_ng.run import main as run_main

        return run_main(rest)
    if command == "driver":
        return run_driver(rest)
    if command == "cache":
        from nixos_test_ng.cache_cli import main as cache_main

        return cache_main(rest)
    if command == "doctor":
        from nixos_test_ng.doctor import main as doctor_main

        return doctor_main(rest)
    if command == "new":
        from nixos_test_ng.new import main as new_main

        return new_main(rest)
    if command in ("check", "stubs"):
        from nixos_test_ng import check_cli

        return check_cli.check_main(rest) if command == "check" else check_cli.stubs_main(rest)
    if command == "version":
        from importlib.metadata import version

        print(f"nixos-test-ng {version('nixos-test-ng')}")
        return ExitStatus.OK
    print(
        f"nixos-test-ng: error: unknown command `{command}`\n\n{NG_USAGE}", file=sys.stderr, end=""
    )
    return ExitStatus.USAGE


def ng_main() -> None:
    """The `nixos-test-ng` command."""
    exit_process(run_ng(sys.argv[1:]))
