"""The systemd part of the Machine API on the Debian systemd guest, as a container and as a
VM, and the container backend's lifecycle and faults."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from support.driver import wait_for_line

pytestmark = pytest.mark.vm


SYSTEMD_API = r"""
m = machine
m.start()
with subtest("wait_for_unit"):
    m.wait_for_unit("multi-user.target", timeout=120)
    m.wait_for_unit("dbus.service", timeout=60)

with subtest("unit info and properties"):
    t.assertEqual(m.get_unit_info("dbus.service")["ActiveState"], "active")
    t.assertEqual(m.get_unit_property("dbus.service", "ActiveState"), "active")
    m.require_unit_state("dbus.service")
    m.require_unit_state("does-not-exist.service", "inactive")
    try:
        m.require_unit_state("dbus.service", "failed")
    except AssertionError as e:
        t.assertIn("to to be in state 'failed' but it is in state 'active'", str(e), e)
    else:
        raise SystemExit("require_unit_state did not fail")

with subtest("systemctl, start_job, stop_job"):
    m.succeed(
        "printf '[Service]\\nExecStart=/bin/sleep 600\\n' > /etc/systemd/system/sleeper.service"
    )
    t.assertEqual(m.systemctl("daemon-reload")[0], 0)
    t.assertEqual(m.start_job("sleeper.service")[0], 0)
    m.wait_for_unit("sleeper.service")
    t.assertEqual(m.stop_job("sleeper.service")[0], 0)
    m.require_unit_state("sleeper.service", "inactive")
    t.assertEqual(m.systemctl("is-active sleeper.service"), (3, "inactive\n"))

with subtest("upstream's failure rules, with status and journal"):
    m.succeed(
        "printf '[Service]\\nType=oneshot\\nExecStart=/bin/sh -c \"echo broken-unit-says-hi; exit 3\"\\n'"
        " > /etc/systemd/system/broken.service"
    )
    m.systemctl("daemon-reload")
    m.systemctl("start broken.service")
    try:
        m.wait_for_unit("broken.service", timeout=60)
    except AssertionError as e:
        t.assertIn('unit "broken.service" reached state "failed"', str(e), e)
        t.assertIn("broken-unit-says-hi", str(e), e)  # the journal tail is in the error
    else:
        raise SystemExit("wait_for_unit did not fail on a failed unit")
    try:
        m.wait_for_unit("never-started.service", timeout=60)
    except AssertionError as e:
        t.assertIn("is inactive and there are no pending jobs", str(e), e)
    else:
        raise SystemExit("wait_for_unit did not fail on an inactive unit")
    m.succeed(
        "printf '[Service]\\nType=oneshot\\nExecStart=/bin/sleep 600\\n' > /etc/systemd/system/slow.service"
    )
    m.systemctl("daemon-reload")
    m.systemctl("start --no-block slow.service")
    try:
        m.wait_for_unit("slow.service", timeout=3)
    except AssertionError as e:
        t.assertIn("timed out", str(e), e)
    else:
        raise SystemExit("wait_for_unit did not time out")

with subtest("user units of a lingering user"):
    m.succeed("useradd -m alice", "loginctl enable-linger alice")
    m.wait_for_unit("default.target", user="alice", timeout=120)
    m.succeed(
        "mkdir -p ~alice/.config/systemd/user",
        "printf '[Service]\\nExecStart=/bin/sleep 600\\n' > ~alice/.config/systemd/user/nap.service",
        "chown -R alice: ~alice/.config",
    )
    t.assertEqual(m.systemctl("daemon-reload", user="alice")[0], 0)
    t.assertEqual(m.start_job("nap.service", user="alice")[0], 0)
    m.wait_for_unit("nap.service", user="alice")
    t.assertEqual(m.get_unit_property("nap.service", "ActiveState", user="alice"), "active")
    t.assertEqual(m.stop_job("nap.service", user="alice")[0], 0)

with subtest("files"):
    import pathlib
    src = pathlib.Path(driver.config.out_dir) / "in.txt"
    src.write_text("to the machine\n")
    m.copy_from_host(str(src), "/root/in.txt")
    t.assertEqual(m.succeed("cat /root/in.txt"), "to the machine\n")
    m.succeed("echo from the machine > /root/out.txt")
    m.copy_from_machine("/root/out.txt")
    t.assertEqual((pathlib.Path(driver.config.out_dir) / "out.txt").read_text(), "from the machine\n")
"""


@pytest.mark.parametrize("kind", ["systemd-nspawn", "systemd-vm"])
def test_systemd_api(vm_env, systemd_guest, kind):
    r = vm_env.run({"machine": []}, SYSTEMD_API, kinds={"machine": kind}, timeout=600)
    assert r.returncode == 0, r.stderr[-8000:]
    assert "machine: waiting for unit multi-user.target" in r.stderr
    assert "machine: waiting for unit nap.service with user alice" in r.stderr
    if kind == "systemd-nspawn":
        assert "kill NspawnMachine (pid " in r.stderr
        assert "machine # " in r.stderr  # the container's journal in the log


def test_container_lifecycle_and_faults(vm_env, systemd_guest, leftovers):
    script = r"""
c = machine
c.start()
c.wait_for_unit("multi-user.target", timeout=120)
with subtest("shutdown and restart"):
    c.shutdown()
    t.assertFalse(c.booted)
    c.start()
    t.assertEqual(c.succeed("echo back"), "back\n")
with subtest("a command into a container that died"):
    os.kill(c.pid, 9)
    import time
    while c.booted:  # the start script is gone...
        time.sleep(0.05)
    time.sleep(1)  # ...and its watcher has torn the container down
    try:
        c.succeed("true")
    except Exception as e:
        t.assertTrue("machine" in str(e) and ("stopped" in str(e) or "not running" in str(e)), e)
    else:
        raise SystemExit("a command into a dead container succeeded")
"""
    r = vm_env.run({"machine": []}, script, kinds={"machine": "systemd-nspawn"})
    assert r.returncode == 0, r.stderr[-8000:]
    assert "machine: waiting for the container to power off" in r.stderr


def test_killing_the_driver_leaves_no_container(vm_env, systemd_guest, leftovers):
    script = 'machine.succeed("true")\nprint("ready", flush=True)\nimport time\ntime.sleep(600)\n'
    # on a VLAN, so that the container's vde_plug2tap must go too
    p = vm_env.spawn({"machine": [1]}, script, kinds={"machine": "systemd-nspawn"})
    wait_for_line(p, "ready")
    assert leftovers(vm_env.root, wait=0)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not leftovers(vm_env.root, wait=5)
    mounts = Path("/proc/mounts").read_text()
    assert str(vm_env.root) not in mounts


MIXED = r"""
start_all()
with subtest("the containers' VLAN NICs are a VM's"):
    out = c.succeed("ip -o link show eth1; ip -o -4 addr show eth1")
    t.assertTrue("52:54:00:12:01:01" in out and "192.168.1.1/24" in out, out)
    t.assertIn("192.168.1.3 vm", c.succeed("cat /etc/hosts"))
with subtest("ping by name, both ways and between containers"):
    vm.succeed("ping -c 1 -W 10 c")
    c.succeed("ping -c 1 -W 10 vm")
    c2.succeed("ping -c 1 -W 10 c")
with subtest("TCP from a container to the VM"):
    vm.succeed("nc -l -p 7000 >/tmp/got 2>/dev/null </dev/null &")
    c.wait_until_succeeds("echo hello from c | nc -N -w 5 vm 7000", timeout=30)
    vm.wait_until_succeeds("grep -q 'hello from c' /tmp/got", timeout=30)
with subtest("TCP from the VM to a container"):
    c2.succeed("systemd-run --unit=listen -p StandardOutput=file:/tmp/got nc -lk -p 7001")
    c2.wait_for_open_port(7001)  # its probe is one connection: hence -k
    vm.succeed("echo hello from vm | nc -N -w 5 c2 7001")
    c2.wait_until_succeeds("grep -q 'hello from vm' /tmp/got", timeout=30)
with subtest("block() cuts the VM off from the containers"):
    vm.block()
    c.fail("ping -c 1 -W 1 vm")
    vm.unblock()
    c.wait_until_succeeds("ping -c 1 -W 1 vm", timeout=30)
"""


def test_a_vm_and_containers_on_one_vlan(vm_env, systemd_guest, leftovers):
    nodes = {"c": [1], "c2": [1], "vm": [1]}
    kinds = {"c": "systemd-nspawn", "c2": "systemd-nspawn"}
    r = vm_env.run(nodes, MIXED, kinds=kinds)
    assert r.returncode == 0, r.stderr[-8000:]
    assert "plugged vde-tap1 into vlan 1" in r.stderr
    assert not leftovers(vm_env.root, wait=5)  # the plugs went with their containers
    assert "vde-tap1" not in Path("/proc/net/dev").read_text()


def test_a_container_that_fails_to_boot(tmp_path, leftovers):
    """Real systemd-nspawn, pointed at a root directory that does not exist."""
    import subprocess

    script = tmp_path / "run-broken-nspawn"
    script.write_text(
        "#!/bin/sh\nexport PATH=/usr/sbin:/usr/bin:/sbin:/bin\n"
        'echo "systemd-nspawn\'s PID is $$"\n'
        "exec systemd-nspawn --quiet --register=no --keep-unit "
        f"--directory={tmp_path}/no-such-root --boot\n"
    )
    script.chmod(0o755)
    test = tmp_path / "t.py"
    test.write_text('broken.succeed("true")\n')
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path / "xdg"))
    (tmp_path / "xdg").mkdir()
    r = subprocess.run(
        ["nixos-test-driver", "--container-start-scripts", str(script), "--", str(test)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 1, r.stderr
    assert (
        "broken: the container stopped before it booted (systemd-nspawn exit status: 1)" in r.stderr
    )
    assert not leftovers(tmp_path, wait=3)
