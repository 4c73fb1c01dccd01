"""Interactive mode (`--interactive`): a REPL over the namespace, no global timeout."""

from __future__ import annotations

import subprocess

from support.driver import driver_command
from support.terminal import CTRL_C, CTRL_D, Terminal


def test_repl_reads_commands_with_the_namespace(driver_env, fake_vm):
    vm = fake_vm("alpha")
    commands = (
        "print('machines:', [m.name for m in machines])\n"
        "print('answer:', alpha.succeed('echo $((6 * 7))').strip())\n"
        "print('symbols ok:', callable(start_all) and callable(subtest) and t is not None)\n"
    )
    args = ["--interactive", "--global-timeout", "1", "--vm-start-scripts", vm.script]
    p = subprocess.run(
        [*driver_command(), *args],
        input=commands,
        capture_output=True,
        text=True,
        env=driver_env.env,
        cwd=driver_env.work,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert "machines: ['alpha']" in p.stdout
    assert "answer: 42" in p.stdout
    assert "symbols ok: True" in p.stdout
    # no global timer in interactive mode, and the machine is cleaned up at exit
    assert "Test will time out" not in p.stderr
    assert "timing summary:" not in p.stderr  # for scripts, not for a REPL session
    assert "kill QemuMachine (pid " in p.stderr


def test_repl_and_shell_interact_through_a_terminal(driver_env, fake_vm):
    """Drives `--interactive` through a pseudo-terminal: the REPL prompt, shell_interact's
    prompt, a command, Ctrl-C interrupting a guest command (not the driver), Ctrl-D out."""
    vm = fake_vm("alpha")
    argv = [*driver_command(), "--interactive", "--vm-start-scripts", str(vm.script)]
    with Terminal(argv, driver_env.env, driver_env.work) as term:
        term.expect(b">>> ")
        term.type(b"alpha.shell_interact()\n")
        # the first prompt may be cut by a late console line ("alpha$alpha # FakeOS login:")
        term.expect(b"alpha$")
        term.type(b"echo hi-$((40 + 2))\n")
        term.expect(b"hi-42")
        term.expect(b"alpha$ ")
        term.type(b"echo started-$((2 * 3)); sleep 30; echo reached-$((3 * 3))\n")
        term.expect(b"started-6")  # the command runs in the guest now
        term.type(CTRL_C)  # the terminal sends SIGINT to the driver
        term.expect(b"[exit status 130]")
        term.expect(b"alpha$ ")
        term.type(b"echo still-$((1 + 1))\n")
        term.expect(b"still-2")
        term.expect(b"alpha$ ")
        term.type(CTRL_D)  # leaves shell_interact
        term.expect(b">>> ")
        term.type(b"print('repl', 6 * 7)\n")
        term.expect(b"repl 42")
        # the next prompt first: a Ctrl-D typed before readline has the terminal is lost
        term.expect(b">>> ")
        term.type(CTRL_D)  # and the REPL
        assert term.wait(timeout=30) == 0, term.text()
        assert b"reached-9" not in term.shown


def test_console_interact_sends_the_terminal_lines_to_the_serial_console(
    driver_env, fake_vm, write_script
):
    vm = fake_vm("alpha")
    test = write_script(
        "t.py",
        "alpha.start()\nalpha.console_interact()\n"
        "alpha.wait_for_console_text('serial input: second line', timeout=10)\n",
    )
    p = subprocess.run(
        [*driver_command(), "--vm-start-scripts", vm.script, "--", test],
        input="first line\nsecond line\n",  # then end of file, as Ctrl-D
        capture_output=True,
        text=True,
        env=driver_env.env,
        cwd=driver_env.work,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert "alpha # serial input: first line" in p.stderr
