"""`nixos-test-ng run SCRIPT --watch` on the busybox VM, driven as a person would: the test
edits the script while the loop runs and reads the results it prints. Each save re-runs the
script on the machine restored to its ready state (a file the previous run wrote is gone, a
file it deleted is back); a syntax error is shown and waits for the next save; a hanging run
times out on its own and the next run starts clean; a run that powers the machine off is
followed by a machine booted again; Ctrl-C (SIGINT) ends the loop with the last run's status
and nothing left running. The loop's logic on a fake driver: tests/driver/test_watch_fake.py."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import pytest
from nixos_test_ng import procs
from support.leaks import MARKER_VAR

pytestmark = pytest.mark.vm

#: The hang detector of each step: the boot under TCG on a loaded host, or one run.
STEP_TIMEOUT = 240


class WatchProcess:
    """`nixos-test-ng run test.py --watch` in a session of its own; its stderr collected."""

    def __init__(self, root: Path, script: str, *args: str) -> None:
        self.root = root
        self.test = root / "test.py"
        self.test.write_text(script)
        (root / "xdg").mkdir(exist_ok=True)
        env = dict(os.environ, XDG_RUNTIME_DIR=str(root / "xdg"))
        env[MARKER_VAR] = str(root)
        for var in ("DISPLAY", "WAYLAND_DISPLAY", "NIXOS_TEST_NG_TRANSPORT"):
            env.pop(var, None)
        self.stdout = open(root / "stdout.txt", "w")  # noqa: SIM115 - closed in `close`
        self.p = subprocess.Popen(
            ["nixos-test-ng", "run", str(self.test), "--watch", "-m", "machine", *args],
            env=env,
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=self.stdout,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.p.stderr is not None
        for line in self.p.stderr:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            self.lines.append("<EOF>")
            self.changed.notify_all()

    def log(self) -> str:
        return "\n".join(line for line in self.lines if not line.startswith("machine # "))

    def wait_for(self, pattern: str, start: int = 0) -> int:
        """The index of the first line from `start` on matching `pattern`."""
        rx = re.compile(pattern)

        def found() -> int | None:
            for i in range(start, len(self.lines)):
                if rx.search(self.lines[i]):
                    return i
            return -1 if self.lines[-1:] == ["<EOF>"] else None

        with self.changed:
            i = self.changed.wait_for(found, timeout=STEP_TIMEOUT)
        if i is None or i < 0:
            pytest.fail(f"no line matching {pattern!r} (ended: {i == -1})\n{self.log()[-6000:]}")
        return i

    def result(self, number: int, start: int = 0) -> tuple[int, int, list[str]]:
        """Run `number`'s result block: where it starts, the index of the loop's next wait
        (the restore comes between), and the block's lines."""
        i = self.wait_for(rf"^==== watch: run {number} (PASSED|FAILED) in ", start)
        end = self.wait_for(r"^watch: waiting for .* to be saved", i)
        block = self.wait_for(r"^(restoring snapshot|watch: waiting for)", i)
        return i, end, self.lines[i:block]

    def save(self, text: str) -> None:
        """As an editor saves: a new file renamed over the script."""
        tmp = self.test.with_name("test.py.swp")
        tmp.write_text(text)
        os.replace(tmp, self.test)

    def interrupt(self) -> int:
        """Ctrl-C; the exit status."""
        os.kill(self.p.pid, signal.SIGINT)
        try:
            return self.p.wait(timeout=STEP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the loop did not end after SIGINT\n{self.log()[-4000:]}")

    def close(self) -> None:
        if self.p.poll() is None:
            procs.kill_group(self.p.pid)
            self.p.wait()
        self.reader.join(timeout=10)
        self.stdout.close()
        if self.p.stderr is not None:
            self.p.stderr.close()


@pytest.fixture
def watch_run(tmp_path, guest_dir, takes_snapshots):
    started: list[WatchProcess] = []

    def start(script: str, *args: str) -> WatchProcess:
        w = WatchProcess(tmp_path, script, *args)
        started.append(w)
        return w

    yield start
    for w in started:
        w.close()


FIRST = """\
machine.succeed("test ! -e /root/mark")
machine.succeed("echo one > /root/mark")
"""

# the guest state the first run left is gone; this run breaks the guest and fails
SECOND = """\
machine.succeed("test ! -e /root/mark && test -x /bin/ls")
machine.succeed("rm /bin/ls; echo two > /root/mark")
machine.succeed("echo this run fails here; false")
"""

BROKEN = 'machine.succeed("true"\n'

# the deleted file is back: the state was restored
FIXED = 'machine.succeed("test ! -e /root/mark && test -x /bin/ls")\n'


def test_each_save_reruns_the_script_on_the_restored_machine(watch_run, leftovers, tmp_path):
    w = watch_run(FIRST)
    w.wait_for(r"^watch: machines ready and snapshotted \(machine\) in ")
    _, end, first = w.result(1)
    assert "PASSED" in first[0], w.log()[-4000:]

    w.save(SECOND)
    at, end, second = w.result(2, end)
    assert "FAILED" in second[0], w.log()[-4000:]
    assert second[1] == f'  at {w.test}:3: machine.succeed("echo this run fails here; false")'
    assert "  RequestedAssertionFailed: command `echo this run fails here; false` failed" in (
        "\n".join(second)
    ), second
    w.wait_for(r"^\(finished: restoring snapshot ntng-watch-ready of all", at)

    w.save(BROKEN)
    at, end, third = w.result(3, end)
    assert "FAILED" in third[0] and "  syntax error: '(' was never closed" in third, third
    assert third[1].startswith(f"  at {w.test}:1:"), third
    # no run, no restore
    assert not any("restoring snapshot" in line for line in w.lines[at:end])

    w.save(FIXED)
    _, end, fourth = w.result(4, end)
    assert "PASSED" in fourth[0], w.log()[-4000:]

    assert w.interrupt() == 0, w.log()[-4000:]  # the last run passed
    assert "watch: interrupted; ending with the last run's status 0" in w.lines
    assert "(finished: cleanup" in w.log()
    assert not leftovers(tmp_path)


HANGS = """\
machine.succeed("touch /root/dirt")
machine.succeed("sleep 600")
"""

POWERS_OFF = """\
machine.succeed("test ! -e /root/dirt")
machine.shutdown()
"""

AFTER_POWER_OFF = """\
machine.succeed("test ! -e /root/dirt && test ! -e /root/after-off")
machine.succeed("touch /root/after-off")
assert False, "the last run fails"
"""


def test_a_hanging_run_times_out_and_a_powered_off_machine_comes_back(
    watch_run, leftovers, tmp_path
):
    w = watch_run(HANGS, "--", "--global-timeout", "15")
    _, end, first = w.result(1)
    assert "FAILED" in first[0] and "  timed out after 15s" in first, w.log()[-4000:]
    assert f'  at {w.test}:2: machine.succeed("sleep 600")' in first, first
    assert "!!! the run timed out after 15s" in w.lines[:end]

    w.save(POWERS_OFF)
    at, end, second = w.result(2, end)
    assert "PASSED" in second[0], w.log()[-4000:]
    booted = w.wait_for(r"^machine: watch: the run stopped this machine; booting it again", at)
    w.wait_for(r"^machine: \(finished: taking snapshot ntng-watch-ready", booted)

    w.save(AFTER_POWER_OFF)
    _, end, third = w.result(3, end)
    assert "FAILED" in third[0] and "  AssertionError: the last run fails" in third, third

    assert w.interrupt() == 1, w.log()[-4000:]  # the last run failed
    assert not leftovers(tmp_path)
