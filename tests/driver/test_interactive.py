"""Interactive mode (`--interactive`): a REPL over the namespace, no global timeout."""

from __future__ import annotations

import subprocess

from tests.conftest import close_terminal, driver_command, spawn_on_terminal


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
    import contextlib
    import os
    import select
    import time

    vm = fake_vm("alpha")
    argv = [*driver_command(), "--interactive", "--vm-start-scripts", str(vm.script)]
    pid, fd = spawn_on_terminal(argv, driver_env.env, driver_env.work)
    seen = b""

    def expect(marker: bytes, timeout: float = 30) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while marker not in seen:
            left = deadline - time.monotonic()
            assert left > 0, (
                f"no {marker!r} on the terminal; it shows:\n{seen.decode(errors='replace')}"
            )
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    chunk = b""
                assert chunk, (
                    f"the terminal closed waiting for {marker!r}:\n{seen.decode(errors='replace')}"
                )
                seen += chunk
        seen = seen[seen.index(marker) + len(marker) :]

    try:
        expect(b">>> ")
        os.write(fd, b"alpha.shell_interact()\n")
        # the first prompt may be cut by a late console line ("alpha$alpha # FakeOS login:")
        expect(b"alpha$")
        time.sleep(0.5)
        os.write(fd, b"echo hi-$((40 + 2))\n")
        expect(b"hi-42")
        expect(b"alpha$ ")
        os.write(fd, b"sleep 30; echo not-reached\n")
        time.sleep(1)
        os.write(fd, b"\x03")  # Ctrl-C: the terminal sends SIGINT to the driver
        expect(b"[exit status 130]", timeout=10)
        expect(b"alpha$ ")
        os.write(fd, b"echo still-$((1 + 1))\n")
        expect(b"still-2")
        expect(b"alpha$ ")
        os.write(fd, b"\x04")  # Ctrl-D leaves shell_interact
        expect(b">>> ")
        os.write(fd, b"print('repl', 6 * 7)\n")
        expect(b"repl 42")
        # the next prompt first: a Ctrl-D typed before readline has the terminal is lost
        expect(b">>> ")
        os.write(fd, b"\x04")  # and the REPL
        deadline = time.monotonic() + 30
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            assert time.monotonic() < deadline, f"the driver did not exit:\n{seen!r}"
            with contextlib.suppress(OSError):
                if select.select([fd], [], [], 0.1)[0]:
                    seen += os.read(fd, 4096)
        assert os.waitstatus_to_exitcode(status) == 0, seen.decode(errors="replace")
        assert b"not-reached" not in seen
    finally:
        close_terminal(pid, fd)


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
