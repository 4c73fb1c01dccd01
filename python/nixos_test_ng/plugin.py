"""The pytest plugin of nixos-test-ng: machines as fixtures.

Registered through the `pytest11` entry point. It does nothing until it is given machines:

- by the driver, for a pytest-style test script (`nixos_test_ng.pytest_style`);
- or on plain `pytest`'s command line, so that a suite can live in ordinary `tests/test_*.py`
  files: `--nixos-vm-start-script PATH`, `--nixos-container-start-script PATH` (each
  repeatable), `--nixos-vlan N` (repeatable), or `--nixos-config FILE` (the generation-C
  JSON), and `--nixos-out DIR` for screenshots, copied files and the HTML report
  (`report.html`).

Fixtures (session scope): each machine under its pythonized name (`my-box` -> `my_box`),
started when first requested and returned once it is connected; `machines`, `driver`,
`vlans`, `vlan<N>`, `subtest`, `log`, `t`. A test that names a fixture no machine or plugin
provides fails with the list of the machines. A failed test's report gets the last console
lines of each machine it used.

Isolation: a test marked `isolated` (every test with `--isolated`) starts with the machines it
uses as they were when first ready. A machine is snapshotted then (`ntng-ready`) and restored
before each isolated test; a machine that cannot be snapshotted (QEMU refuses: a 9p share the
guest keeps, NixOS's host store; no disk for the state) is restarted on a fresh state directory
instead, which the log says once with the reason and the fix, and each test's `isolation`
property too. Tests that are not isolated never depend on the snapshot. With isolation in use
the plugin sets `NIXOS_TEST_NG_SNAPSHOTS=1` before any machine starts: with the transport
unset, VMs then start without the guest agent's vhost-user vsock device (QEMU cannot save a VM
that has one) and use the backdoor; `NIXOS_TEST_NG_TRANSPORT=agent` keeps the device, and the
machines are then isolated by restart.

Parallel workers: plain `pytest -n N` (pytest-xdist) gives each worker a driver and machines
of its own (its own tmp dir, output directory `<out>/<worker>` and report file names); the
controller starts none and merges the workers' XML logs (`nixos_test_ng.workers`). A script
the driver runs cannot be spread over workers (a usage error).

Reports: every test is a span (`nixos_test_ng.trace` of the run: OTLP, the HTML report), and
every subtest inside a test is reported to pytest as a result of its own, with node id
`<test>::<subtest>`, so JUnit lists it with its own status and time.
"""

from __future__ import annotations

import os
import types
from typing import Any

import pytest

from nixos_test_ng import _native
from nixos_test_ng.errors import GlobalTimeout, MachineError, Terminated
from nixos_test_ng.workers import (
    SUBTEST_NODEID,
    Controller,
    is_controller,
    report_html,
    report_xml_log,
    worker_id,
)

CONSOLE_LINES = 30
#: The snapshot taken when a machine is first ready, which isolated tests start from.
READY_SNAPSHOT = "ntng-ready"
#: Tells the QEMU backend that the run takes snapshots.
SNAPSHOTS_ENV = _native.SNAPSHOTS_VAR


class DriverPlugin:
    """The fixtures and hooks for one driver's machines."""

    def __init__(self, driver: Any, owns_driver: bool = False) -> None:
        self.driver = driver
        self.owns_driver = owns_driver
        self.finished = False
        #: The pytest-xdist worker this driver is (`gw0`, ...), or None.
        self.worker: str | None = driver.config.worker
        #: The XML log a pytest-xdist worker's log is merged into (`workers.py`).
        self.xml_log_target: str | None = None
        #: Where the HTML report goes (plain pytest with `--nixos-out`), or None.
        self.html_report: str | None = None
        self.isolate_all = False
        self.isolation_in_use = False
        self.ready: set[str] = set()
        #: Why a machine is restarted instead of restored, by pythonized name.
        self.restart_reason: dict[str, str] = {}
        self.machine_names = {_native.pythonize_name(m.name): m for m in driver.machines}
        self.current_item: pytest.Item | None = None
        driver.subtest_listener = self._report_subtest

    def fixture_module(self) -> types.ModuleType:
        """One fixture per machine and VLAN, and `driver`, `machines`, `vlans`, `subtest`, `log`
        and `t`, in a module (pytest reads fixtures of plugin objects from their type, so
        per-driver fixtures cannot live on this instance; pytest 9 deprecates session fixtures
        that are methods)."""
        module = types.ModuleType("nixos_test_ng_machine_fixtures")
        for pyname, machine in self.machine_names.items():
            setattr(module, f"_ntng_machine_{pyname}", _machine_fixture(self, pyname, machine))
        for vlan in self.driver.vlans:
            setattr(module, f"_ntng_vlan_{vlan.nr}", _value_fixture(f"vlan{vlan.nr}", vlan))
        driver = self.driver
        general = {
            "driver": lambda: driver,
            "machines": lambda: driver.machines,
            "vlans": lambda: driver.vlans,
            "subtest": lambda: driver.subtest,
            "log": lambda: driver.logger,
            "t": lambda: driver.test_symbols()["t"],
        }
        for name, value in general.items():
            setattr(module, f"_ntng_{name}", _lazy_fixture(name, value))
        return module

    def plugins(self) -> list[object]:
        """What to register with pytest: this object and the fixture module."""
        return [self, self.fixture_module()]

    def pytest_configure(self, config: pytest.Config) -> None:
        if not self.owns_driver and getattr(config.option, "dist", "no") != "no":
            # the workers would be new processes without this driver's machines
            raise pytest.UsageError(
                "nixos-test-ng: pytest-xdist's -n/--dist cannot spread a test script the"
                " driver runs; run plain pytest with the machines on its command line"
                " (--nixos-vm-start-script, ...) instead: see docs/pytest.md"
            )

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        # After the session fixtures' teardown, and in a pytest-xdist worker before it tells
        # the controller it has finished (the controller then merges the XML logs).
        self._finish(session.config)

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self._finish(config)  # a run that ended before its session did

    def _finish(self, config: pytest.Config) -> None:
        if self.owns_driver and not self.finished:
            self.finished = True
            self.driver.cleanup()
            self.driver.logger.finish_run(None)
            parsed = self.driver.config
            report_xml_log(config, self.xml_log_target, parsed.xml_log)
            if self.html_report:
                try:
                    self.driver._native.write_html_report(self.html_report)
                    self.driver.logger.log(f"HTML report: {self.html_report}")
                    report_html(config, self.html_report)
                except OSError as e:
                    self.driver.logger.warning(str(e))

    def _report_subtest(self, name: str, seconds: float, error: BaseException | None) -> None:
        item = self.current_item
        if item is None:  # a subtest at module level: the log and spans have it
            return
        nodeid = f"{item.nodeid}::{name.replace('::', ': ')}"
        report = pytest.TestReport(
            # a pytest-xdist worker sends only reports of its test (`workers.py`)
            nodeid=item.nodeid if self.worker else nodeid,
            location=item.location,
            keywords={},
            outcome="failed" if error is not None else "passed",
            longrepr=None if error is None else self._subtest_failure(item, error),
            when="call",
            duration=seconds,
            user_properties=[("subtest", name)],
        )
        if self.worker:
            setattr(report, SUBTEST_NODEID, nodeid)
        item.ihook.pytest_runtest_logreport(report=report)

    def _subtest_failure(self, item: pytest.Item, error: BaseException) -> str:
        parts = [f"{type(error).__name__}: {error}"]
        parts += [
            f"{'-' * 8} {title} {'-' * 8}\n{tail}" for title, tail in self._console_tails(item)
        ]
        return "\n\n".join(parts)

    # -- hooks ----------------------------------------------------------------------------

    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[Any]) -> None:
        self.isolate_all = bool(config.getoption("nixos_isolated", False))
        self.isolation_in_use = self.isolate_all or any(
            item.get_closest_marker("isolated") for item in items
        )
        if self.isolation_in_use:
            os.environ.setdefault(SNAPSHOTS_ENV, "1")

    def pytest_report_header(self, config: pytest.Config) -> str:
        machines = ", ".join(sorted(self.machine_names)) or "none"
        mode = (
            "every test starts from its machines' first-ready state"
            if config.getoption("nixos_isolated", False)
            else "machines boot once; tests marked isolated start from their first-ready state"
        )
        return f"nixos-test-ng: machines {machines}; {mode}"

    def _isolated(self, item: pytest.Item) -> bool:
        return self.isolate_all or item.get_closest_marker("isolated") is not None

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        info = getattr(item, "_fixtureinfo", None)
        if info is None:
            return
        missing = [
            n for n in item.fixturenames if n not in info.name2fixturedefs and n != "request"
        ]
        if missing:
            names = ", ".join(sorted(self.machine_names)) or "none"
            pytest.fail(
                f"{item.name}: no machine or fixture named {', '.join(map(repr, missing))};"
                f" the machines are: {names}",
                pytrace=False,
            )
        used = [n for n in item.fixturenames if n in self.machine_names]
        if self._isolated(item):
            # The machines earlier tests have used go back to their first-ready state; the
            # others boot fresh for this test anyway.
            notes = [self._isolate(n) for n in used if n in self.ready]
            notes += [f"{n} fresh" for n in used if n not in self.ready]
            note = "isolated: " + ", ".join(notes)
        else:
            note = "session machines" if used else "no machines"
        item.user_properties.append(("isolation", note))

    def _isolate(self, name: str) -> str:
        """Brings machine `name` back to its first-ready state; says how."""
        machine = self.machine_names[name]
        reason = self.restart_reason.get(name)
        if reason is None:
            machine.restore(READY_SNAPSHOT)
            return f"{name} restored"
        kept = machine._restart_fresh()
        state = ", state directory kept: --keep-machine-state" if kept else ""
        return f"{name} restarted (snapshot impossible: {reason}{state})"

    def prepare_isolation(self, name: str, machine: Any) -> None:
        """At a machine's first ready: the snapshot its isolated tests start from, or, when it
        cannot be taken, isolation by restart (one log line saying why)."""
        if name in self.restart_reason or READY_SNAPSHOT in machine.snapshots:
            return
        try:
            machine.snapshot(READY_SNAPSHOT)
        except MachineError as e:
            reason = getattr(e, "reason", None) or str(e).removeprefix(f"{machine.name}: ")
            fix = getattr(e, "fix", "")
            self.restart_reason[name] = reason
            machine.log(
                f"isolation by restart (snapshot impossible: {reason})"
                + (f"; to isolate by snapshot: {fix}" if fix else "")
            )

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: Any) -> Any:
        self.current_item = item
        try:
            with self.driver.logger.test(item.nodeid) as span:
                result = yield
                failure = getattr(item, "_ntng_failure", None)
                if failure:
                    span.fail(failure)
                return result
        finally:
            self.current_item = None

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: Any) -> Any:
        report = yield
        if call.excinfo is not None and call.excinfo.errisinstance((GlobalTimeout, Terminated)):
            # the run is ending (the engine fails every later call): no further test runs
            item.session.shouldstop = str(call.excinfo.value)
        if report.failed and not getattr(item, "_ntng_failure", None):
            item._ntng_failure = f"{call.when}: {report.longreprtext}"  # type: ignore[attr-defined]
        if call.when == "call":
            for key, value in item.user_properties:
                if key == "isolation":
                    report.sections.append(("nixos-test-ng isolation", value))
        if report.failed and call.when == "call":
            for title, tail in self._console_tails(item):
                # in the failure itself, so JUnit's <failure> carries it too
                if hasattr(report.longrepr, "addsection"):
                    report.longrepr.addsection(title, tail)
                else:
                    report.sections.append((title, tail))
        return report

    def _console_tails(self, item: pytest.Item) -> list[tuple[str, str]]:
        """The last console lines of each machine the test uses."""
        funcargs = getattr(item, "funcargs", {})
        return [
            (
                f"last console lines of {machine.name}",
                "\n".join(machine.get_console_log().splitlines()[-CONSOLE_LINES:]),
            )
            for name, machine in self.machine_names.items()
            if name in funcargs
        ]


def _machine_fixture(plugin: DriverPlugin, pyname: str, machine: Any) -> Any:
    @pytest.fixture(scope="session", name=pyname)
    def fixture() -> Any:
        if not machine.booted:
            machine.start()
        machine.connect()
        if plugin.isolation_in_use:
            plugin.prepare_isolation(pyname, machine)
        plugin.ready.add(pyname)
        return machine

    return fixture


def _lazy_fixture(name: str, value: Any) -> Any:
    """A session fixture `name` returning `value()`, computed when first requested."""

    @pytest.fixture(scope="session", name=name)
    def fixture() -> Any:
        return value()

    return fixture


def _value_fixture(name: str, value: Any) -> Any:
    @pytest.fixture(scope="session", name=name)
    def fixture() -> Any:
        return value

    return fixture


# -- plain pytest: options name the machines --------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nixos-test-ng", "machines as fixtures (nixos-test-ng)")
    group.addoption(
        "--nixos-vm-start-script",
        action="append",
        default=[],
        metavar="PATH",
        help="a run-<name>-vm start script: the VM becomes a fixture (repeatable)",
    )
    group.addoption(
        "--nixos-container-start-script",
        action="append",
        default=[],
        metavar="PATH",
        help="a run-<name>-nspawn start script: the container becomes a fixture (repeatable)",
    )
    group.addoption(
        "--nixos-vlan", action="append", default=[], metavar="N", help="a VLAN (repeatable)"
    )
    group.addoption("--nixos-config", metavar="FILE", help="a generation-C driver configuration")
    group.addoption(
        "--nixos-out", metavar="DIR", help="output directory (screenshots, copies); default: ."
    )
    group.addoption(
        "--isolated",
        dest="nixos_isolated",
        action="store_true",
        help="every test starts from its machines' first-ready state (as if marked isolated)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "isolated: the machines this test uses start as they were when first ready: restored"
        " from a snapshot, or restarted when they cannot be snapshotted (nixos-test-ng)",
    )
    opt = config.option
    vms, containers = opt.nixos_vm_start_script, opt.nixos_container_start_script
    if not (vms or containers or opt.nixos_config):
        return
    from nixos_test_ng.driver import Driver

    args: list[str] = []
    if vms:
        args += ["--vm-start-scripts", *vms]
    if containers:
        args += ["--container-start-scripts", *containers]
    if opt.nixos_vlan:
        args += ["--vlans", *opt.nixos_vlan]
    if opt.nixos_config:
        args += ["--config", opt.nixos_config]
    args += ["-o", opt.nixos_out or ".", "--interactive"]  # --interactive: no script needed

    try:
        parsed = _native.parse_args(args, {})
        # the machines come from the options only; the XML log, spans and transport from
        # the environment
        parsed = parsed.with_reporting_from(dict(os.environ))
        xml_log = parsed.xml_log
        if (worker := worker_id(config)) is not None:
            # a pytest-xdist worker: its own tmp dir, output directory and report files
            parsed = parsed.for_worker(worker)
    except Exception as e:
        raise pytest.UsageError(f"nixos-test-ng: {e}") from None
    if is_controller(config):
        # pytest-xdist's controller runs no tests (each worker starts the machines), but it
        # has checked the options above: a usage error once, not one per worker
        config.pluginmanager.register(Controller(), "nixos-test-ng-controller")
        return
    logger = _native.Logger(color=False)
    logger.start_run(parsed, "run pytest" if worker is None else f"run pytest ({worker})")
    driver = Driver(parsed, logger)
    plugin = DriverPlugin(driver, owns_driver=True)
    plugin.xml_log_target = xml_log
    if opt.nixos_out:  # as the driver writes one with an explicit -o
        plugin.html_report = parsed.html_report
    for i, obj in enumerate(plugin.plugins()):
        config.pluginmanager.register(obj, f"nixos-test-ng-driver-{i}")
