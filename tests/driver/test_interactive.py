"""Interactive mode (`--interactive`): a REPL over the namespace, no global timeout."""

from __future__ import annotations

import subprocess

from tests.conftest import driver_command


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
    assert "kill QemuMachine (pid " in p.stderr
