"""The script-facing driver: machines as Python objects, the namespace of a test script,
and running it with upstream's error reporting."""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from nixos_test_ng import _native
from nixos_test_ng.debug import Debug, DebugNop
from nixos_test_ng.ending import ending_exception
from nixos_test_ng.errors import GlobalTimeout, MachineError, RequestedAssertionFailed, Terminated
from nixos_test_ng.machine import (
    BaseMachine,
    CloudHypervisorMachine,
    FirecrackerMachine,
    Machine,
    NspawnMachine,
    QemuMachine,
    wrap,
)
from nixos_test_ng.retry import LazyAssertionTester, Poll, PollingCondition, retry

#: The names every test script sees besides the machines and VLANs (upstream's namespace).
GENERAL_SYMBOLS = tuple(_native.GENERAL_SYMBOLS)


class RaceTimer:
    """The global timer, as upstream's `driver.race_timer` (a `threading.Timer` running
    `terminate_test` after `global_timeout` seconds): `start()`, `cancel()`, `is_alive()`,
    `interval`. The engine runs it; `cancel()` lets the test run without a time limit."""

    def __init__(self, native: _native.Driver, interval: float) -> None:
        self._native = native
        #: Seconds from `start()` to `terminate_test` (the global timeout).
        self.interval = interval

    def start(self) -> None:
        """Start the timer (`run_tests()` does); a second call does nothing."""
        self._native.start_timer()

    def cancel(self) -> None:
        """Stop the timer if it has not fired yet."""
        self._native.cancel_timer()

    def is_alive(self) -> bool:
        """True from `start()` until the timer fired and ended, or was cancelled."""
        return self._native.timer_alive()


class Driver:
    """A test run: its machines, VLANs, polling conditions and script."""

    def __init__(self, config: _native.Config, logger: _native.Logger, script: str = "") -> None:
        self.config = config
        self.logger = logger
        self.tests = script
        self.script_path = config.test_script or "<string>"
        self.polling_conditions: list[PollingCondition] = []
        #: Told of every subtest that ended: its name, seconds, and the exception if it
        #: failed (the pytest plugin reports subtests to pytest with it).
        self.subtest_listener: Callable[[str, float, BaseException | None], None] | None = None
        self.debug: Debug | DebugNop = (
            Debug(logger, config.debug_hook_attach, self.script_path)
            if config.debug_hook_attach
            else DebugNop()
        )
        self._native = _native.Driver(config, logger)
        for key, value in self._native.vlan_env():
            os.environ[key] = value
        self.machines: list[BaseMachine] = [
            wrap(h, logger, [self.check_polling_conditions], config.keep_machine_state)
            for h in self._native.machine_handles()
        ]
        self.vlans = self._native.vlans()
        #: The global timer (upstream's `threading.Timer` of `terminate_test`).
        self.race_timer = RaceTimer(self._native, config.global_timeout)
        #: Where screenshots and copied files go (`-o`), as upstream's `Driver.out_dir`.
        self.out_dir = Path(config.out_dir)

    # -- machines -----------------------------------------------------------------------

    @property
    def machines_qemu(self) -> list[QemuMachine]:
        return [m for m in self.machines if isinstance(m, QemuMachine)]

    @property
    def machines_nspawn(self) -> list[NspawnMachine]:
        return [m for m in self.machines if isinstance(m, NspawnMachine)]

    def start_all(self) -> None:
        """Start every machine (in parallel); returns before they have booted."""
        self._native.start_all()

    def snapshot_all(self, name: str = "snapshot") -> None:
        """Snapshot every running machine as `name`; the VMs are paused together meanwhile."""
        self._native.snapshot_all(name)

    def restore_all(self, name: str = "snapshot") -> None:
        """Restore every running machine to snapshot `name`; the VMs resume together."""
        self._native.restore_all(name)

    def join_all(self) -> None:
        """Wait until every machine has shut down."""
        self._native.join_all()

    def partition(self, groups: Sequence[Sequence[BaseMachine]], vlan: int = 1) -> None:
        """Partition VLAN `vlan`: machines in different `groups` cannot exchange packets on
        it, machines in one group still can; machines in no group reach everyone. Done in
        the guests (drops by MAC address); replaces an earlier partition of that VLAN."""
        self._native.partition(groups, vlan)

    def heal(self, vlan: int | None = None) -> None:
        """Heal the partition of VLAN `vlan`, or of every VLAN (None)."""
        self._native.heal(vlan)

    def create_machine(
        self,
        start_command: str,
        *,
        name: str | None = None,
        keep_machine_state: bool = False,
        keep_vm_state: bool = False,
    ) -> QemuMachine:
        """A machine not managed by the driver (no polling conditions, no cleanup)."""
        keep = keep_machine_state or keep_vm_state
        handle = self._native.create_machine(start_command, name, keep)
        machine = wrap(handle, self.logger, [], keep)
        assert isinstance(machine, QemuMachine)
        return machine

    def check_polling_conditions(self) -> None:
        for condition in self.polling_conditions:
            condition.maybe_raise()

    def polling_condition(
        self,
        fun_: Callable[[], Any] | None = None,
        *,
        seconds_interval: float = 2.0,
        description: str | None = None,
    ) -> Any:
        """Decorator: the condition is checked before every command while `with` it."""

        def wrapper(fun: Callable[[], Any]) -> Poll:
            return Poll(PollingCondition(fun, self, seconds_interval, description))

        return wrapper if fun_ is None else wrapper(fun_)

    def serial_stdout_on(self) -> None:
        self.logger.print_serial_logs(True)

    def serial_stdout_off(self) -> None:
        self.logger.print_serial_logs(False)

    def dump_machine_ssh(self, offset: int = 2) -> None:
        """Print how to reach each machine through the vsock SSH backdoor."""
        print("SSH backdoor enabled, the machines can be accessed like this:")
        print(
            "Note: this requires systemd-ssh-proxy(1) to be enabled"
            " (default on NixOS 25.05 and newer)."
        )
        width = max((len(m.name) for m in self.machines), default=0)
        for index, m in enumerate(self.machines, start=offset + 1):
            pad = " " * (width - len(m.name) + 2)
            print(f"    {m.name}:{pad}{m.ssh_backdoor_command(index)}")

    @contextlib.contextmanager
    def subtest(self, name: str) -> Iterator[None]:
        """Group steps; the log and JUnit show each subtest with its own status.

        A failure is logged (`Test "<name>" failed with error: "<error>"`), marks this
        subtest failed in JUnit, the XML log and the report, and propagates: it ends the
        script unless the script catches it (the run then passes, as upstream). With
        `--keep-going` the driver catches it: the script goes on after the block, and the
        run fails at the end.
        """
        tic = time.monotonic()
        error: BaseException | None = None
        try:
            with self.logger.subtest(name) as block:
                try:
                    yield
                except Exception as e:
                    error = e
                    if not self.config.keep_going or isinstance(e, GlobalTimeout | Terminated):
                        raise
                    self.on_failure(e)
                    block.fail(e)  # logs the failure as if it had escaped the block
                    self.report_failure(e)
                    # log.error: the run fails although the failure escapes no further
                    self.logger.error("--keep-going: going on with the script")
        finally:
            if self.subtest_listener is not None:
                self.subtest_listener(name, time.monotonic() - tic, error)

    def on_failure(self, exc: BaseException) -> None:
        """Breakpoint-on-failure (`--debug-hook-attach`), once per exception: after a failed
        check or an unexpected error, not after a `MachineError`, as upstream."""
        if isinstance(exc, MachineError) or getattr(exc, "_ntng_debugged", False):
            return
        with contextlib.suppress(AttributeError):
            exc._ntng_debugged = True  # type: ignore[attr-defined]
        self.debug.post_mortem(exc.__traceback__)

    # -- the namespace ---------------------------------------------------------------------

    def test_symbols(self) -> dict[str, Any]:
        """The globals of a test script (upstream's `test_symbols`)."""
        general: dict[str, Any] = {
            "start_all": self.start_all,
            "test_script": self.test_script,
            "machines": self.machines,
            "machines_qemu": self.machines_qemu,
            "machines_nspawn": self.machines_nspawn,
            "vlans": self.vlans,
            "driver": self,
            "log": self.logger,
            "os": os,
            "create_machine": self.create_machine,
            "subtest": self.subtest,
            "run_tests": self.run_tests,
            "join_all": self.join_all,
            "retry": retry,
            "serial_stdout_off": self.serial_stdout_off,
            "serial_stdout_on": self.serial_stdout_on,
            "polling_condition": self.polling_condition,
            "Machine": Machine,
            "BaseMachine": BaseMachine,
            "QemuMachine": QemuMachine,
            "NspawnMachine": NspawnMachine,
            "FirecrackerMachine": FirecrackerMachine,
            "CloudHypervisorMachine": CloudHypervisorMachine,
            "t": LazyAssertionTester(),
            "debug": self.debug,
            "dump_machine_ssh": self.dump_machine_ssh,
        }
        assert tuple(general) == GENERAL_SYMBOLS
        machine_symbols = {_native.pythonize_name(m.name): m for m in self.machines}
        if len(self.machines) == 1:
            machine_symbols["machine"] = self.machines[0]
        vlan_symbols = {f"vlan{v.nr}": v for v in self.vlans}
        print(
            "additionally exposed symbols:\n    "
            + ", ".join(m.name for m in self.machines)
            + ",\n    "
            + ", ".join(vlan_symbols)
            + ",\n    "
            + ", ".join(general)
        )
        return {**general, **machine_symbols, **vlan_symbols}

    # -- running ---------------------------------------------------------------------------

    def test_script(self) -> None:
        """Run the test script."""
        name = os.path.basename(self.script_path)
        with self.logger.test(name) as test, self.logger.nested("run the VM test script"):
            symbols = self.test_symbols()
            code = compile(self.tests, self.script_path, "exec")
            try:
                exec(code, symbols, None)
            except Exception as e:
                if not isinstance(e, GlobalTimeout | Terminated):
                    self.on_failure(e)
                raise
            if self.logger.failed:
                test.fail("an error was logged (log.error, or a subtest under --keep-going)")

    def run_tests(self) -> None:
        """Run the script under the global timeout, then `sync` every running machine."""
        self.race_timer.start()
        self.test_script()
        ending = ending_exception()
        if ending is not None:  # the script caught the timeout or SIGTERM and returned
            raise ending
        self._native.sync_all()

    # -- the global timeout ----------------------------------------------------------------

    @property
    def global_timeout(self) -> float:
        """Seconds the test may run (`--global-timeout`, upstream's `global_timeout`)."""
        return self.config.global_timeout

    def terminate_test(self) -> None:
        """End the test now, as the global timeout does (upstream's `terminate_test`): the
        block "timeout reached; test terminating...", every machine killed, then SIGTERM to
        the driver, which raises `Terminated` here, cleans up, writes its reports and dies
        of SIGTERM."""
        self._native.terminate_test()

    def cleanup(self) -> None:
        """Kill every machine and VLAN."""
        self._native.cleanup()

    def report_failure(self, exc: BaseException) -> None:
        """Print a failure as upstream does: only the script's frames, `!!! ` prefixed."""
        log = self.logger
        tb = exc.__traceback__
        frames = [f for f in traceback.extract_tb(tb) if f.filename == self.script_path]
        if isinstance(exc, RequestedAssertionFailed | MachineError) or frames:
            log.log_test_error("Traceback (most recent call last):")
            lines = self.tests.splitlines()
            for frame, text in zip(frames, traceback.format_list(frames), strict=True):
                log.log_test_error(text.splitlines()[0].rstrip())
                if frame.lineno and 0 < frame.lineno <= len(lines):
                    log.log_test_error(f"    {lines[frame.lineno - 1].strip()}")
            log.log_test_error("")
            for line in f"{type(exc).__name__}: {exc}".splitlines():
                log.log_test_error(line)
        else:
            for chunk in traceback.format_exception(exc):
                for line in chunk.rstrip("\n").splitlines():
                    log.log_test_error(line)
