"""The container backend against a fake `run-<name>-nspawn` (the `fake_container` fixture
of tests/conftest.py). Real containers are tested in tests/e2e."""

from __future__ import annotations

import re
import textwrap


def run(driver_env, run_driver, scripts: list[str], body: str, timeout: float = 60):
    test = driver_env.write_script("t.py", textwrap.dedent(body))
    return run_driver(["--container-start-scripts", *scripts, "--", test], timeout=timeout)


def test_commands_run_with_the_profile_and_an_empty_environment(
    driver_env, run_driver, fake_container
):
    script = fake_container()
    r = run(
        driver_env,
        run_driver,
        [script],
        """
        t.assertTrue(isinstance(box, NspawnMachine) and machines_nspawn == [box])
        t.assertEqual(machines_qemu, [])
        box.start()
        t.assertTrue(box.booted)
        t.assertTrue(box.succeed("echo $PATH").startswith("/"))  # from /etc/profile
        t.assertEqual(box.succeed("echo ${RUN_NSPAWN_ROOT_DIR:-unset}"), "unset\\n")
        t.assertEqual(box.execute("exit 3"), (3, ""))
        box.fail("false")
        try:
            box.succeed("echo $UNDEFINED_VARIABLE")  # set -u, as upstream
        except AssertionError:
            pass
        else:
            raise SystemExit("set -u is not in effect")
        box.wait_for_console_text("Welcome to the fake")
        t.assertIn("Welcome to the fake container!", box.get_console_log())
        print("PID", box.pid)
        """,
    )
    assert r.returncode == 0, r
    assert "box: systemd-nspawn running (pid " in r.stderr
    assert "box # Welcome to the fake container!" in r.stderr
    # the start script's environment is replaced by the two upstream variables
    env_line = next(line for line in r.stderr.splitlines() if "box # env:" in line)
    assert "RUN_NSPAWN_ROOT_DIR=" in env_line and "RUN_NSPAWN_SHARED_DIR=" in env_line
    assert "PATH=" not in env_line.replace("RUN_NSPAWN", "")
    assert "vm-state-box" in env_line and "shared-xchg" in env_line
    assert "kill NspawnMachine (pid " in r.stderr


def test_a_container_that_fails_to_boot(driver_env, run_driver, fake_container):
    script = fake_container(before='echo "cannot set up the container" >&1; exit 7')
    r = run(driver_env, run_driver, [script], "box.succeed('true')\n")
    assert r.returncode == 1, r
    assert "exited (exit status: 7) before printing `systemd-nspawn's PID is N`" in r.stderr
    assert "cannot set up the container" in r.stderr


def test_a_command_after_release_restarts_the_container(driver_env, run_driver, fake_container):
    """As for VMs (upstream's connect() starts the machine), not an error."""
    script = fake_container()
    r = run(
        driver_env,
        run_driver,
        [script],
        """
        box.succeed("true")
        first = box.pid
        box.release()
        t.assertTrue(not box.booted and box.pid is None)
        t.assertEqual(box.succeed("echo back"), "back\\n")
        t.assertNotEqual(box.pid, first)
        """,
    )
    assert r.returncode == 0, r
    assert r.stderr.count("systemd-nspawn running (pid ") == 2


def test_wait_for_shutdown_and_restart(driver_env, run_driver, fake_container):
    script = fake_container()
    r = run(
        driver_env,
        run_driver,
        [script],
        """
        box.succeed("true")
        first = box.pid
        # the fake "poweroff": end the start script
        box.execute(f"kill {first}", check_return=False, check_output=False)
        box.wait_for_shutdown()
        t.assertTrue(not box.is_up() and not box.booted)
        box.start()
        t.assertEqual(box.succeed("echo again"), "again\\n")
        t.assertNotEqual(box.pid, first)
        """,
    )
    assert r.returncode == 0, r
    assert "box: waiting for the container to power off" in r.stderr


def test_containers_and_machine_names(driver_env, run_driver, fake_container):
    scripts = [fake_container("c1"), fake_container("my-box")]
    r = run(
        driver_env,
        run_driver,
        scripts,
        """
        start_all()
        t.assertEqual([m.name for m in machines], ["c1", "my-box"])
        t.assertEqual(my_box.succeed("echo hi"), "hi\\n")
        t.assertEqual(c1.succeed("echo ho"), "ho\\n")
        t.assertEqual(repr(my_box), "<NspawnMachine 'my-box'>")
        """,
    )
    assert r.returncode == 0, r


def test_a_helper_child_running_nspawns_own_program_is_never_taken_for_the_init(
    driver_env, run_driver
):
    """Real nspawn's outer child runs alone for a while (longer under load), in the host's
    namespaces and as nspawn's own binary: commands entered through it ran on the host. Here
    the fake's helper is a bash subshell (the fake's own program) that stays the single child
    for a second before the "init" starts."""
    script = driver_env.write_script(
        "run-box-nspawn",
        """#!/bin/bash
echo "systemd-nspawn's PID is $$"
( sleep 1; : )
sleep 600 &
echo "fake init is $!"
wait
""",
        True,
    )
    r = run(
        driver_env,
        run_driver,
        [str(script)],
        """
        box.succeed("true")
        box.wait_for_console_text("fake init is")
        print(f"entered {box.get_systemd_process}")
        """,
    )
    assert r.returncode == 0, r.stderr
    init = re.search(r"fake init is (\d+)", r.stderr).group(1)
    assert f"entered {init}\n" in r.stdout, r
