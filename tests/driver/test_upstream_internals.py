"""Upstream's machine internals as scripts use them, on the fake QEMU and the fake container:
`qmp_client`, `process`, `shell`, `monitor`, `last_lines`, `serial_thread`, the socket
paths, `start_command`, `log_serial`, `cleanup_statedir`, `callbacks`, `connected = False`,
and `driver.out_dir`. Each script asserts inside and prints a marker at its end."""

from __future__ import annotations

import textwrap

import pytest

# Prepended to every script: which exception a call raises, and its message.
PRELUDE = """
def raises(name, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except BaseException as e:
        t.assertEqual(type(e).__name__, name, f"expected {name}, got {type(e).__name__}: {e}")
        return e
    raise AssertionError(f"{fn} did not raise {name}")
"""


@pytest.fixture
def run_vm_script(driver_env, run_driver):
    """`run_vm_script(body, extra=(), **knobs)`: runs `body` on one fake VM `alpha`
    (`@G@` is a directory the guest and the script share); asserts exit 0."""

    def run(body, extra=(), **knobs):
        scratch = driver_env.tmp / "guest"
        scratch.mkdir(exist_ok=True)
        text = PRELUDE + textwrap.dedent(body).replace("@G@", str(scratch))
        vms, args = driver_env.script_args(text, extra=extra, **knobs)
        r = run_driver(args)
        assert r.returncode == 0, str(r)
        r.vm = vms["alpha"]
        return r

    return run


def test_qmp_client_send_returns_the_answer_and_raises_on_an_error(run_vm_script):
    r = run_vm_script(
        """
        from nixos_test_ng import MachineError, QMPAPIError
        t.assertIsNone(alpha.qmp_client)  # as upstream: none before the start
        alpha.start()
        t.assertIsNotNone(alpha.qmp_client)
        answer = alpha.qmp_client.send("query-status")
        status = {"status": "running", "singlestep": False, "running": True}
        t.assertEqual(answer, {"return": status}, answer)
        answer = alpha.qmp_client.send("human-monitor-command", {"command-line": "info status"})
        t.assertIn("VM status: running", answer["return"], answer)
        e = raises("QMPAPIError", alpha.qmp_client.send, "device_del", {"id": "disk3dev"})
        t.assertEqual(e.class_name, "CommandNotFound", e.class_name)
        t.assertEqual(e.description, "The command device_del has not been found", e.description)
        t.assertIsNone(e.transaction_id)
        t.assertTrue(isinstance(e, MachineError) and isinstance(e, RuntimeError))
        t.assertIn("device_del has not been found", str(e))
        # upstream's keyword, and events through the session
        alpha.qmp_client.send("stop", args={})
        t.assertEqual(alpha.qmp_client.wait_for_event()["event"], "STOP")
        alpha.qmp_client.send("cont")
        t.assertEqual([e["event"] for e in alpha.qmp_client.events()], ["RESUME"])
        t.assertEqual(list(alpha.qmp_client.events()), [])
        print("QMP-OK")
        """
    )
    assert "QMP-OK" in r.stdout, r
    sent = [(q["execute"], q["arguments"]) for q in r.vm.records("qmp")]
    assert ("device_del", {"id": "disk3dev"}) in sent, sent
    assert ("query-status", {}) in sent and ("stop", {}) in sent, sent


def test_process_is_a_popen_for_scripts(run_vm_script):
    r = run_vm_script(
        """
        import subprocess
        t.assertIsNone(alpha.process)
        alpha.start()
        p = alpha.process
        t.assertTrue(p.pid == alpha.pid and p.poll() is None and p.returncode is None)
        raises("TimeoutExpired", p.wait, timeout=0.2)
        # nixpkgs' pattern: power off through the raw shell, wait for QEMU, then the driver
        alpha.connect()
        alpha.shell.send(b"poweroff\\n")
        t.assertEqual(p.wait(timeout=30), 0)
        alpha.wait_for_shutdown()
        t.assertTrue(not alpha.booted and alpha.pid is None)
        t.assertEqual(alpha.process.returncode, 0)  # a VM keeps its last process, as upstream
        alpha.start()
        t.assertNotEqual(alpha.process.pid, p.pid)
        alpha.process.kill()
        t.assertTrue(alpha.process.returncode == -9 and alpha.process.poll() == -9)
        alpha.wait_for_shutdown()
        alpha.start()
        alpha.process.terminate()  # QEMU (the fake too) ends cleanly on SIGTERM
        t.assertEqual(alpha.process.wait(timeout=30), 0)
        alpha.wait_for_shutdown()
        t.assertIn("terminating on signal 15", alpha.get_console_log())
        print("PROCESS-OK")
        """
    )
    assert "PROCESS-OK" in r.stdout, r


def test_out_dir_and_the_socket_paths_are_paths(run_vm_script, driver_env):
    r = run_vm_script(
        f"""
        import pathlib
        t.assertEqual(driver.out_dir, pathlib.Path({str(driver_env.out)!r}))
        (driver.out_dir / "artifact.txt").write_text("written by the script")
        state = alpha.state_dir
        t.assertEqual(alpha.tmp_dir, pathlib.Path({str(driver_env.runtime)!r}))
        t.assertEqual(state, alpha.tmp_dir / "vm-state-alpha")
        paths = (alpha.monitor_path, alpha.qmp_path, alpha.shell_path)
        t.assertEqual(paths, (state / "monitor", state / "qmp", state / "shell"), paths)
        alpha.start()
        alpha.connect()
        t.assertTrue(all(p.is_socket() for p in paths), paths)
        print("PATHS-OK")
        """,
        extra=["-o", str(driver_env.out)],
    )
    assert "PATHS-OK" in r.stdout, r
    assert (driver_env.out / "artifact.txt").read_text() == "written by the script"


def test_shell_monitor_and_connected(run_vm_script):
    r = run_vm_script(
        """
        t.assertTrue(alpha.shell is None and alpha.monitor is None)
        alpha.start()
        alpha.connect()
        t.assertTrue(alpha.shell is alpha.shell and alpha.monitor is alpha.monitor)
        # a command handed to the guest's shell without framing, its output elsewhere
        alpha.shell.send(b"echo raw > @G@/raw\\n")
        alpha.wait_until_succeeds("test -e @G@/raw", timeout=10)
        # raw output, read raw
        alpha.shell.sendall(b"echo hi-raw\\n")
        got = b""
        while not got.endswith(b"hi-raw\\n"):
            chunk = alpha.shell.recv(3)
            t.assertTrue(0 < len(chunk) <= 3, chunk)
            got += chunk
        t.assertEqual(got, b"hi-raw\\n", got)
        t.assertEqual(alpha.succeed("echo framed"), "framed\\n")
        # the monitor: lines are commands, the answers are read back
        t.assertEqual(alpha.monitor.send(b"info status\\n"), len(b"info status\\n"))
        answer = alpha.monitor.recv(4096).decode()
        t.assertTrue("VM status: running" in answer and answer.endswith("(qemu) "), answer)
        t.assertEqual(alpha.monitor.recv(4096), b"")
        print("SHELL-OK")
        """
    )
    assert "SHELL-OK" in r.stdout, r
    assert "info status" in r.vm.monitor_commands()


def test_connected_false_waits_for_a_new_handshake(run_vm_script):
    """As after `machine.shell.send(b"reboot\\n"); machine.connected = False`: here the fake
    initrd's switch to the real root brings the new shell and handshake."""
    r = run_vm_script(
        """
        t.assertEqual(alpha.succeed("echo $FAKE_QEMU_SHELL"), "0\\n")
        alpha.connected = True  # already: nothing to do
        alpha.shell.send(
            b"systemctl isolate --no-block initrd-switch-root.target >/dev/null 2>&1\\n"
        )
        alpha.connected = False
        t.assertTrue(not alpha.connected and alpha.booted)
        t.assertEqual(alpha.succeed("echo $FAKE_QEMU_SHELL"), "1\\n")
        t.assertTrue(alpha.connected)
        alpha.connected = False
        e = raises("ValueError", setattr, alpha, "connected", True)
        t.assertIn("connect()", str(e))
        print("RECONNECT-OK")
        """,
        initrd=True,
    )
    assert "RECONNECT-OK" in r.stdout, r
    assert r.stderr.count("alpha: connected to guest root shell") == 2, r


def test_last_lines_serial_thread_and_log_serial(run_vm_script):
    r = run_vm_script(
        """
        import queue
        t.assertIsNone(alpha.serial_thread)
        alpha.start()
        alpha.connect()
        lines = alpha.last_lines
        t.assertTrue(lines.qsize() > 0 and not lines.empty())
        t.assertTrue(lines.get_nowait().startswith("SeaBIOS"))  # the console's first line
        alpha.succeed("echo marker-line >&2")
        seen = []
        while "marker-line" not in seen:
            seen.append(lines.get(timeout=10))
        for _ in range(1000):  # the rest, until none is left
            try:
                lines.get(timeout=0.5)
            except queue.Empty:
                break
        else:
            raise AssertionError("the console never went quiet")
        raises("Empty", lines.get_nowait)
        # lines taken here are gone for the waits too, as with upstream's shared queue
        alpha.succeed("echo again-line >&2")
        alpha.wait_for_console_text("again-line", timeout=10)
        t.assertIn("marker-line", alpha.get_console_log())

        alpha.log_serial("said through log_serial")
        reader = alpha.serial_thread
        t.assertTrue(reader.is_alive())
        reader.join(timeout=0.1)  # the console is open: returns after the timeout
        t.assertTrue(reader.is_alive())
        alpha.crash()
        reader.join()
        t.assertTrue(not reader.is_alive() and alpha.serial_thread is None)
        print("CONSOLE-OK")
        """
    )
    assert "CONSOLE-OK" in r.stdout, r
    assert "alpha # said through log_serial" in r.stderr, r
    assert "said through log_serial" not in r.stdout


def test_cleanup_statedir(run_vm_script, driver_env):
    r = run_vm_script(
        """
        alpha.start()
        e = raises("MachineError", alpha.cleanup_statedir)
        t.assertIn("running machine", str(e), e)
        alpha.release()
        (alpha.state_dir / "disk.qcow2").write_text("old state")
        alpha.cleanup_statedir()
        t.assertTrue(alpha.state_dir.is_dir() and list(alpha.state_dir.iterdir()) == [])
        t.assertEqual(alpha.succeed("echo fresh"), "fresh\\n")  # starts again in the new dir
        print("CLEANUP-OK")
        """
    )
    assert "CLEANUP-OK" in r.stdout, r
    state = driver_env.state_dir("alpha")
    assert f"alpha: deleting machine state directory {state}" in r.stderr, r
    assert "alpha: if you want to keep the machine state, pass --keep-machine-state" in r.stderr


def test_start_command_callbacks_and_create_machine(run_vm_script, fake_vm):
    extra = fake_vm("extra")
    r = run_vm_script(
        f"""
        import os
        cmd = alpha.start_command
        t.assertTrue(isinstance(cmd, str) and cmd.endswith("run-alpha-vm"), cmd)
        t.assertEqual(cmd.machine_name, "alpha")
        line = cmd.cmd("/s/monitor", "/s/qmp", "/s/shell", allow_reboot=True)
        t.assertEqual(line, cmd + " -qmp unix:/s/qmp,server=on,wait=off -monitor unix:/s/monitor"
            " -chardev socket,id=shell,path=/s/shell -device virtio-serial"
            " -device virtconsole,chardev=shell -device virtio-rng-pci -serial stdio"
            " -nographic", line)
        t.assertIn("-no-reboot", cmd.cmd("/s/m", "/s/q", "/s/s"))
        env = cmd.build_environment(alpha.state_dir, alpha.shared_dir)
        t.assertEqual((env["TMPDIR"], env["USE_TMPDIR"]), (str(alpha.state_dir), "1"))
        t.assertEqual(env["SHARED_DIR"], str(alpha.shared_dir))
        t.assertEqual(env["PATH"], os.environ["PATH"])
        e = raises("NotImplementedError", cmd.run)
        t.assertIn("machine.start()", str(e))

        # callbacks run before every command, the driver's polling check among them
        calls = []
        t.assertEqual(alpha.callbacks, [driver.check_polling_conditions])
        alpha.callbacks.append(lambda: calls.append("called"))
        alpha.succeed("true")
        alpha.send_monitor_command("info status")
        t.assertEqual(calls, ["called", "called"], calls)
        alpha.run_callbacks()
        t.assertEqual(len(calls), 3)

        other = create_machine({str(extra.script)!r})
        t.assertTrue(other.callbacks == [] and other.logger is log)
        t.assertIs(other.keep_machine_state, False)
        t.assertEqual(other.start_command.machine_name, "extra")
        print("START-COMMAND-OK")
        """
    )
    assert "START-COMMAND-OK" in r.stdout, r


def test_container_members(driver_env, run_driver, fake_container):
    script = fake_container("box")
    body = PRELUDE + textwrap.dedent(
        f"""
        import os, pathlib
        t.assertEqual(box.start_command, {script!r})
        t.assertIs(type(box.start_command), str)
        t.assertEqual(NspawnMachine.machine_name_from_start_command("/x/run-c12-nspawn"), "c12")
        raises("AssertionError", box.machine_name_from_start_command, "/x/run-box-vm")
        t.assertIsNone(box.process)
        t.assertEqual(box.tmp_dir, pathlib.Path({str(driver_env.runtime)!r}))
        init = box.get_systemd_process  # starts the container, as upstream's first command
        t.assertTrue(box.booted and box.process.pid == box.pid)
        t.assertTrue(isinstance(init, int) and init != box.pid)
        children = pathlib.Path(f"/proc/{{box.pid}}/task/{{box.pid}}/children").read_text()
        t.assertEqual(children.split(), [str(init)], children)
        t.assertEqual(box.ssh_backdoor_command(3), 'ssh -o User=root -o ProxyCommand='
            '"socat - UNIX-CLIENT:/run/systemd/nspawn/unix-export/box/ssh" bash')
        for name in ("qmp_client", "shell", "monitor", "monitor_path"):
            t.assertFalse(hasattr(box, name), name)  # VM-only, as upstream
        box.log_serial("container line")
        box.release()
        t.assertIsNone(box.process)  # as upstream's release()
        print("CONTAINER-OK")
        """
    )
    test = driver_env.write_script("t.py", body)
    r = run_driver(["--container-start-scripts", script, "--dump-vsocks", "2", "--", test])
    assert r.returncode == 0, r
    assert "CONTAINER-OK" in r.stdout, r
    assert "box # container line" in r.stderr
    # dump_machine_ssh asks each machine for its command, as upstream
    assert "box:  ssh -o User=root -o ProxyCommand=" in r.stdout, r
