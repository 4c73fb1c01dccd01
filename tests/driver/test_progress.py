"""The terminal reporter's extras: a status line while machines boot when stderr is a
terminal, plain lines otherwise, and the timing summary at the end of a run."""

from __future__ import annotations

from support.driver import driver_command
from support.terminal import Terminal

SCRIPT = "start_all()\nalpha.succeed('true')\nbeta.succeed('echo hi')\n"


def run_on_terminal(argv: list[str], env: dict[str, str], cwd, timeout: float = 60) -> bytes:
    """Runs `argv` with stdin, stdout and stderr on a pseudo-terminal; returns what it showed."""
    with Terminal(argv, env, cwd) as term:
        assert term.wait(timeout) == 0, term.text()
        return term.shown


def test_a_terminal_shows_which_machines_are_booting(driver_env, fake_vm):
    alpha, beta = fake_vm("alpha", boot_delay=1.5), fake_vm("beta", boot_delay=1.0)
    test = driver_env.write_script("t.py", SCRIPT)
    argv = [*driver_command(), "--vm-start-scripts", alpha.script, beta.script, "--", str(test)]
    env = {**driver_env.env, "NO_COLOR": "1"}
    shown = run_on_terminal(argv, env, driver_env.work).decode(errors="replace")
    # redrawn while both boot, then only the slower one, each time after clearing the line
    assert "\r\x1b[2Kbooting: alpha " in shown.replace("\x1b[2m", ""), shown
    assert "booting: alpha 0." in shown and "· beta " in shown, shown
    assert "booting: alpha 1." in shown, "the ticker redraws the elapsed time"
    # the line is gone before the next log line and at the end
    last = shown.rstrip().splitlines()[-1]
    assert "booting:" not in last
    assert "timing summary:" in shown


def test_without_a_terminal_the_log_is_plain_lines(driver_env, fake_vm, run_driver):
    alpha, beta = fake_vm("alpha", boot_delay=1.5), fake_vm("beta", boot_delay=1.0)
    test = driver_env.write_script("t.py", SCRIPT)
    r = run_driver(["--vm-start-scripts", alpha.script, beta.script, "--", test])
    assert r.returncode == 0, r
    assert "booting:" not in r.stderr and "\x1b[" not in r.stderr and "\r" not in r.stderr
    lines = r.stderr.splitlines()
    summary = lines.index("timing summary:")
    total, boots, slowest = lines[summary + 1 : summary + 4]
    assert total.startswith("  total: ") and total.endswith(" s")
    assert boots.startswith("  boot (start → connected): ")
    assert "alpha " in boots and "beta " in boots
    assert slowest == "  slowest operations (without waiting for a boot):"
    ops = lines[summary + 4 :]
    # alpha's first command waited for its boot (1.5 s); that wait is shown, not counted
    (alpha_true,) = [op for op in ops if "alpha: must succeed: true" in op]
    assert alpha_true.endswith(" s waiting for the boot)"), alpha_true
    assert any("beta: must succeed: echo hi" in op for op in ops), ops
    assert any(op.endswith("alpha: execute: sync") for op in ops), ops  # the driver's own
