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
        assert type(e).__name__ == name, f"expected {name}, got {type(e).__name__}: {e}"
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
        assert alpha.qmp_client is None  # as upstream: none before the start
        alpha.start()
        assert alpha.qmp_client is not None
        answer = alpha.qmp_client.send("query-status")
        status = {"status": "running", "singlestep": False, "running": True}
        assert answer == {"return": status}, answer
        answer = alpha.qmp_client.send("human-monitor-command", {"command-line": "info status"})
        assert "VM status: running" in answer["return"], answer
        e = raises("QMPAPIError", alpha.qmp_client.send, "device_del", {"id": "disk3dev"})
        assert e.class_name == "CommandNotFound", e.class_name
        assert e.description == "The command device_del has not been found", e.description
        assert e.transaction_id is None
        assert isinstance(e, MachineError) and isinstance(e, RuntimeError)
        assert "device_del has not been found" in str(e)
        # upstream's keyword, and events through the session
        alpha.qmp_client.send("stop", args={})
        assert alpha.qmp_client.wait_for_event()["event"] == "STOP"
        alpha.qmp_client.send("cont")
        assert [e["event"] for e in alpha.qmp_client.events()] == ["RESUME"]
        assert list(alpha.qmp_client.events()) == []
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
        assert alpha.process is None
        alpha.start()
        p = alpha.process
        assert p.pid == alpha.pid and p.poll() is None and p.returncode is None
        raises("TimeoutExpired", p.wait, timeout=0.2)
        # nixpkgs' pattern: power off through the raw shell, wait for QEMU, then the driver
        alpha.connect()
        alpha.shell.send(b"poweroff\\n")
        assert p.wait(timeout=30) == 0
        alpha.wait_for_shutdown()
        assert not alpha.booted and alpha.pid is None
        assert alpha.process.returncode == 0  # a VM keeps its last process, as upstream
        alpha.start()
        assert alpha.process.pid != p.pid
        alpha.process.kill()
        assert alpha.process.returncode == -9 and alpha.process.poll() == -9
        alpha.wait_for_shutdown()
        alpha.start()
        alpha.process.terminate()  # QEMU (the fake too) ends cleanly on SIGTERM
        assert alpha.process.wait(timeout=30) == 0
        alpha.wait_for_shutdown()
        assert "terminating on signal 15" in alpha.get_console_log()
        print("PROCESS-OK")
        """
    )
    assert "PROCESS-OK" in r.stdout, r


def test_out_dir_and_the_socket_paths_are_paths(run_vm_script, driver_env):
    r = run_vm_script(
        f"""
        import pathlib
        assert driver.out_dir == pathlib.Path({str(driver_env.out)!r}), driver.out_dir
        (driver.out_dir / "artifact.txt").write_text("written by the script")
        state = alpha.state_dir
        assert alpha.tmp_dir == pathlib.Path({str(driver_env.runtime)!r}), alpha.tmp_dir
        assert state == alpha.tmp_dir / "vm-state-alpha"
        paths = (alpha.monitor_path, alpha.qmp_path, alpha.shell_path)
        assert paths == (state / "monitor", state / "qmp", state / "shell"), paths
        alpha.start()
        alpha.connect()
        assert all(p.is_socket() for p in paths), paths
        print("PATHS-OK")
        """,
        extra=["-o", str(driver_env.out)],
    )
    assert "PATHS-OK" in r.stdout, r
    assert (driver_env.out / "artifact.txt").read_text() == "written by the script"


def test_shell_monitor_and_connected(run_vm_script):
    r = run_vm_script(
        """
        assert alpha.shell is None and alpha.monitor is None
        alpha.start()
        alpha.connect()
        assert alpha.shell is alpha.shell and alpha.monitor is alpha.monitor
        # a command handed to the guest's shell without framing, its output elsewhere
        alpha.shell.send(b"echo raw > @G@/raw\\n")
        alpha.wait_until_succeeds("test -e @G@/raw", timeout=10)
        # raw output, read raw
        alpha.shell.sendall(b"echo hi-raw\\n")
        got = b""
        while not got.endswith(b"hi-raw\\n"):
            chunk = alpha.shell.recv(3)
            assert 0 < len(chunk) <= 3, chunk
            got += chunk
        assert got == b"hi-raw\\n", got
        assert alpha.succeed("echo framed") == "framed\\n"
        # the monitor: lines are commands, the answers are read back
        assert alpha.monitor.send(b"info status\\n") == len(b"info status\\n")
        answer = alpha.monitor.recv(4096).decode()
        assert "VM status: running" in answer and answer.endswith("(qemu) "), answer
        assert alpha.monitor.recv(4096) == b""
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
        assert alpha.succeed("echo $FAKE_QEMU_SHELL") == "0\\n"
        alpha.connected = True  # already: nothing to do
        alpha.shell.send(
            b"systemctl isolate --no-block initrd-switch-root.target >/dev/null 2>&1\\n"
        )
        alpha.connected = False
        assert not alpha.connected and alpha.booted
        assert alpha.succeed("echo $FAKE_QEMU_SHELL") == "1\\n"
        assert alpha.connected
        alpha.connected = False
        e = raises("ValueError", setattr, alpha, "connected", True)
        assert "connect()" in str(e)
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
        assert alpha.serial_thread is None
        alpha.start()
        alpha.connect()
        lines = alpha.last_lines
        assert lines.qsize() > 0 and not lines.empty()
        assert lines.get_nowait().startswith("SeaBIOS")  # the console's first line
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
        assert "marker-line" in alpha.get_console_log()

        alpha.log_serial("said through log_serial")
        reader = alpha.serial_thread
        assert reader.is_alive()
        reader.join(timeout=0.1)  # the console is open: returns after the timeout
        assert reader.is_alive()
        alpha.crash()
        reader.join()
        assert not reader.is_alive() and alpha.serial_thread is None
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
        assert "running machine" in str(e), e
        alpha.release()
        (alpha.state_dir / "disk.qcow2").write_text("old state")
        alpha.cleanup_statedir()
        assert alpha.state_dir.is_dir() and list(alpha.state_dir.iterdir()) == []
        assert alpha.succeed("echo fresh") == "fresh\\n"  # starts again in the new dir
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
        assert isinstance(cmd, str) and cmd.endswith("run-alpha-vm"), cmd
        assert cmd.machine_name == "alpha"
        line = cmd.cmd("/s/monitor", "/s/qmp", "/s/shell", allow_reboot=True)
        assert line == (
            cmd + " -qmp unix:/s/qmp,server=on,wait=off -monitor unix:/s/monitor"
            " -chardev socket,id=shell,path=/s/shell -device virtio-serial"
            " -device virtconsole,chardev=shell -device virtio-rng-pci -serial stdio"
            " -nographic"
        ), line
        assert "-no-reboot" in cmd.cmd("/s/m", "/s/q", "/s/s")
        env = cmd.build_environment(alpha.state_dir, alpha.shared_dir)
        assert env["TMPDIR"] == str(alpha.state_dir) and env["USE_TMPDIR"] == "1"
        assert env["SHARED_DIR"] == str(alpha.shared_dir) and env["PATH"] == os.environ["PATH"]
        e = raises("NotImplementedError", cmd.run)
        assert "machine.start()" in str(e)

        # callbacks run before every command, the driver's polling check among them
        calls = []
        assert alpha.callbacks == [driver.check_polling_conditions]
        alpha.callbacks.append(lambda: calls.append("called"))
        alpha.succeed("true")
        alpha.send_monitor_command("info status")
        assert calls == ["called", "called"], calls
        alpha.run_callbacks()
        assert len(calls) == 3

        other = create_machine({str(extra.script)!r})
        assert other.callbacks == [] and other.logger is log
        assert other.keep_machine_state is False
        assert other.start_command.machine_name == "extra"
        print("START-COMMAND-OK")
        """
    )
    assert "START-COMMAND-OK" in r.stdout, r


def test_container_members(driver_env, run_driver, fake_container):
    script = fake_container("box")
    body = PRELUDE + textwrap.dedent(
        f"""
        import os, pathlib
        assert box.start_command == {script!r} and type(box.start_command) is str
        assert NspawnMachine.machine_name_from_start_command("/x/run-c12-nspawn") == "c12"
        raises("AssertionError", box.machine_name_from_start_command, "/x/run-box-vm")
        assert box.process is None
        assert box.tmp_dir == pathlib.Path({str(driver_env.runtime)!r})
        init = box.get_systemd_process  # starts the container, as upstream's first command
        assert box.booted and box.process.pid == box.pid
        assert isinstance(init, int) and init != box.pid
        children = pathlib.Path(f"/proc/{{box.pid}}/task/{{box.pid}}/children").read_text()
        assert children.split() == [str(init)], children
        assert box.ssh_backdoor_command(3) == (
            'ssh -o User=root -o ProxyCommand='
            '"socat - UNIX-CLIENT:/run/systemd/nspawn/unix-export/box/ssh" bash'
        )
        for name in ("qmp_client", "shell", "monitor", "monitor_path"):
            assert not hasattr(box, name), name  # VM-only, as upstream
        box.log_serial("container line")
        box.release()
        assert box.process is None  # as upstream's release()
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
