"""The watch loop (`nixos-test-ng run --watch`, `watch.py`) on a fake driver, in this process:
a re-run at each save (by rename or in place) from the restored state, a syntax error shown
with no restore, the per-run timeout, a machine the run stopped booted again, Ctrl-C ending
the loop with the last run's status. The real VMs: tests/e2e/test_watch.py."""

from __future__ import annotations

import os
import queue
import signal
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from nixos_test_ng import watch
from nixos_test_ng.errors import MachineError, Terminated
from nixos_test_ng.exit_status import ExitStatus

#: The hang detector of each step (the test fails when it passes).
STEP_TIMEOUT = 30


class FakeMachine:
    def __init__(self, events: list) -> None:
        self.name = "alpha"
        self.booted = False
        self.events = events

    def connect(self) -> None:
        self.events.append("connect")

    def start(self) -> None:
        self.booted = True
        self.events.append("start")

    def snapshot(self, name: str) -> None:
        self.events.append(f"snapshot {name}")

    def log(self, message: str) -> None:
        self.events.append(message)


class FakeDriver:
    """What `Watch` uses of `driver.Driver`; `guest` plays the machines' state, which
    `snapshot_all` saves and `restore_all` brings back."""

    def __init__(self, script: Path, timeout: float, refuse: bool = False) -> None:
        self.script_path = str(script)
        self.config = SimpleNamespace(global_timeout=timeout)
        self.events: list = []
        self.machines = [FakeMachine(self.events)]
        self.logger = SimpleNamespace(log_test_error=self.events.append, failed=False)
        self.tests = ""
        self.guest: dict = {}
        self.saved: dict = {}
        self.refuse = refuse

    def start_all(self) -> None:
        for m in self.machines:
            m.start()

    def snapshot_all(self, name: str) -> None:
        if self.refuse:
            raise MachineError("alpha: QEMU refuses to save this VM")
        self.saved = dict(self.guest)
        self.events.append(f"snapshot_all {name}")

    def restore_all(self, name: str) -> None:
        self.guest = dict(self.saved)
        self.events.append(f"restore_all {name}")

    def test_script(self) -> None:
        symbols = {"guest": self.guest, "machine": self.machines[0], "log": self.logger}
        exec(compile(self.tests, self.script_path, "exec"), symbols, None)

    def report_failure(self, exc: BaseException) -> None:
        self.events.append(f"failure {type(exc).__name__}")


class Recorder(watch.Watch):
    """The loop with what it says in a queue."""

    def __init__(self, driver: FakeDriver) -> None:
        super().__init__(driver)
        self.said: queue.Queue[str] = queue.Queue()
        self.all: list[str] = []

    def say(self, text: str) -> None:
        self.all.append(text)
        self.said.put(text)


@pytest.fixture
def sigint_raises():
    """Ctrl-C raises KeyboardInterrupt here even when pytest was started with it ignored."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def save(path: Path, text: str, by_rename: bool) -> None:
    """As an editor saves: a new file renamed over the old one, or written in place."""
    if by_rename:
        tmp = path.with_name(path.name + ".swp")
        tmp.write_text(text)
        os.replace(tmp, path)
    else:
        path.write_text(text)


def drive(loop: Recorder, path: Path, versions: list[str]) -> tuple[int, list[str]]:
    """Runs the loop on `path`; saves each of `versions` once the loop waits for a save, then
    Ctrl-C. Returns the loop's status and what it said, one result per run."""
    problems: list[str] = []

    def editor() -> None:
        try:
            for i, text in enumerate([*versions, None]):
                while "waiting for" not in loop.said.get(timeout=STEP_TIMEOUT):
                    pass
                if text is None:
                    break
                save(path, text, by_rename=i % 2 == 0)
        except queue.Empty:
            problems.append(f"the loop said nothing for {STEP_TIMEOUT}s: {loop.all}")
        os.kill(os.getpid(), signal.SIGINT)

    t = threading.Thread(target=editor, daemon=True)
    t.start()
    try:
        status = loop.run()
    except KeyboardInterrupt:
        pytest.fail(f"Ctrl-C came during a run, not while waiting: {loop.all}")
    t.join()
    assert not problems, problems
    results = [s for s in loop.all if "==== watch: run" in s]
    return status, results


def test_each_save_runs_the_script_again_from_the_restored_state(tmp_path, sigint_raises):
    path = tmp_path / "test.py"
    path.write_text("assert 'mark' not in guest\nguest['mark'] = 1\n")
    driver = FakeDriver(path, timeout=60)
    status, results = drive(
        Recorder(driver),
        path,
        [
            "assert 'mark' not in guest\nguest['mark'] = 2\n",
            "assert 'mark' not in guest\nguest['mark'] = 3\nassert guest['mark'] == 4, 'three'\n",
        ],
    )
    assert status == ExitStatus.FAILED  # the last run's
    assert len(results) == 3
    assert "run 1 PASSED" in results[0] and "run 2 PASSED" in results[1]
    assert "run 3 FAILED" in results[2]
    assert f"at {path}:3: assert guest['mark'] == 4, 'three'" in results[2]
    assert "AssertionError: three" in results[2]
    assert driver.events.count("restore_all ntng-watch-ready") == 3  # after every run
    assert driver.events[:3] == ["start", "connect", "snapshot_all ntng-watch-ready"]


def test_a_syntax_error_is_shown_with_no_run_and_no_restore(tmp_path, sigint_raises):
    path = tmp_path / "test.py"
    path.write_text("guest['x'] = 1\n")
    driver = FakeDriver(path, timeout=60)
    loop = Recorder(driver)
    status, results = drive(loop, path, ["guest['x'] = (\n", "guest['x'] = 2\n"])
    assert status == ExitStatus.OK
    assert "run 2 FAILED" in results[1]
    assert f"at {path}:1:" in results[1] and "syntax error: '(' was never closed" in results[1]
    assert "run 3 PASSED" in results[2]
    assert driver.events.count("restore_all ntng-watch-ready") == 2  # runs 1 and 3


def test_the_last_run_being_a_syntax_error_ends_with_usage(tmp_path, sigint_raises):
    path = tmp_path / "test.py"
    path.write_text("pass\n")
    status, _ = drive(Recorder(FakeDriver(path, timeout=60)), path, ["def (\n"])
    assert status == ExitStatus.USAGE


def test_a_hanging_run_times_out_and_the_machines_are_restored(tmp_path, sigint_raises):
    path = tmp_path / "test.py"
    path.write_text("import time\nguest['dirt'] = 1\nwhile True:\n    time.sleep(0.01)\n")
    driver = FakeDriver(path, timeout=0.3)
    status, results = drive(Recorder(driver), path, ["assert 'dirt' not in guest\n"])
    assert "run 1 FAILED" in results[0] and "timed out after 0.3s" in results[0]
    assert f"at {path}:4: time.sleep(0.01)" in results[0]
    assert "the run timed out after 0.3s" in driver.events
    assert "run 2 PASSED" in results[1]
    assert status == ExitStatus.OK


def test_a_machine_the_run_stopped_boots_again_and_is_snapshotted(tmp_path, sigint_raises):
    path = tmp_path / "test.py"
    path.write_text("machine.booted = False\n")
    driver = FakeDriver(path, timeout=60)
    status, results = drive(Recorder(driver), path, ["assert machine.booted\n"])
    assert status == ExitStatus.OK
    assert "run 2 PASSED" in results[1]
    i = driver.events.index("watch: the run stopped this machine; booting it again")
    assert driver.events[i + 1 : i + 4] == ["start", "connect", "snapshot ntng-watch-ready"]


def test_a_pytest_style_script_is_refused_with_no_run(tmp_path, sigint_raises):
    path = tmp_path / "test.py"
    path.write_text("def test_one():\n    guest['ran'] = 1\n")
    driver = FakeDriver(path, timeout=60)
    status, results = drive(Recorder(driver), path, [])
    assert status == ExitStatus.USAGE
    assert "--watch runs plain scripts only" in results[0]
    assert "restore_all ntng-watch-ready" not in driver.events


def test_the_first_logged_error_fails_its_run(tmp_path, sigint_raises):
    path = tmp_path / "test.py"
    path.write_text("log.failed = True\n")
    status, results = drive(Recorder(FakeDriver(path, timeout=60)), path, [])
    assert status == ExitStatus.FAILED
    assert "run 1 FAILED" in results[0] and "an error was logged (log.error)" in results[0]


def test_sigterm_during_a_run_ends_the_session(tmp_path):
    path = tmp_path / "test.py"
    path.write_text("from nixos_test_ng.errors import Terminated\nraise Terminated('SIGTERM')\n")
    loop = Recorder(FakeDriver(path, timeout=60))
    with pytest.raises(Terminated):
        loop.run()
    assert not any("==== watch: run" in s for s in loop.all)


def test_machines_that_cannot_be_snapshotted_end_it_with_usage(tmp_path):
    path = tmp_path / "test.py"
    path.write_text("pass\n")
    loop = Recorder(FakeDriver(path, timeout=60, refuse=True))
    assert loop.run() == ExitStatus.USAGE
    assert any("cannot snapshot the machines" in s for s in loop.all)


def test_a_save_is_seen_by_rename_and_in_place(tmp_path):
    path = tmp_path / "test.py"
    path.write_text("one\n")
    for by_rename in (True, False):
        last = watch.stamp(path)
        t = threading.Timer(0.1, save, (path, f"{by_rename}\n", by_rename))
        t.start()
        watch.wait_for_save(path, last)  # returns: the hang detector is the test timeout
        t.join()
        assert path.read_text() == f"{by_rename}\n"


def test_the_watch_loop_sets_a_per_run_timeout_unless_one_is_given(monkeypatch):
    monkeypatch.delenv("globalTimeout", raising=False)
    timeout = ["--global-timeout", str(watch.DEFAULT_RUN_TIMEOUT)]
    assert watch.driver_arguments([], reuse_boots=False) == timeout
    assert watch.driver_arguments(["--global-timeout", "9"], reuse_boots=False) == []
    assert watch.driver_arguments(["--global-timeout=9"], reuse_boots=False) == []
    monkeypatch.setenv("globalTimeout", "9")
    assert watch.driver_arguments([], reuse_boots=False) == []


def test_the_watch_loop_uses_the_boot_cache_by_default(monkeypatch):
    monkeypatch.setenv("globalTimeout", "9")
    assert watch.driver_arguments([]) == ["--reuse-boots"]
    assert watch.driver_arguments(["--reuse-boots"]) == []
    assert watch.driver_arguments([], reuse_boots=False) == []
