"""Snapshots and per-test isolation on real machines: TCG VMs and nspawn containers."""

from __future__ import annotations

import os
import signal
import socket
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from support.driver import wait_for_line

# snapshots: no vhost-user vsock device (QEMU cannot save it)
pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("takes_snapshots")]

ISOLATION = r"""
import pytest

def test_writes(machine):
    machine.succeed("echo dirty > /etc/ntng-state")

@pytest.mark.isolated
def test_isolated_sees_a_clean_machine(machine):
    machine.fail("test -e /etc/ntng-state")
    machine.succeed("echo again > /etc/ntng-state")

@pytest.mark.isolated
def test_isolated_again(machine):
    machine.fail("test -e /etc/ntng-state")
"""


def isolation_properties(junit) -> dict[str, str]:
    root = ET.parse(junit).getroot()
    return {
        case.get("name"): prop.get("value")
        for case in root.iter("testcase")
        for prop in case.iter("property")
        if prop.get("name") == "isolation"
    }


def test_isolated_tests_start_from_the_ready_snapshot_on_a_vm(vm_env):
    r = vm_env.run({"machine": []}, ISOLATION, "--junit-xml", "junit.xml")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "3 passed" in r.stdout
    # (the driver's log is pytest's captured output here; JUnit records the isolation)
    assert isolation_properties(vm_env.out / "junit.xml") == {
        "test_writes": "session machines",
        "test_isolated_sees_a_clean_machine": "isolated: machine restored",
        "test_isolated_again": "isolated: machine restored",
    }


def test_isolated_tests_on_a_container(vm_env, systemd_guest):
    r = vm_env.run(
        {"machine": []}, ISOLATION, "--junit-xml", "junit.xml", kinds={"machine": "systemd-nspawn"}
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "3 passed" in r.stdout
    props = isolation_properties(vm_env.out / "junit.xml")
    assert props["test_isolated_again"] == "isolated: machine restored", props


RESTORE_ALL = r"""
import os
start_all()
for m in machines:
    m.wait_for_file("/tmp/shared")  # booted
driver.snapshot_all("both")
standby = os.environ.get("NIXOS_TEST_NG_STANDBY") != "0"
for m in machines:
    t.assertEqual(m.wait_for_standby(), standby)
client.succeed("echo changed > /etc/state")
driver.restore_all("both")
client.fail("test -e /etc/state")
for a, b in [(client, server), (server, client)]:
    out = a.succeed(f"ping -c 3 -i 0.2 -W 10 {b.name} 2>&1")
    t.assertTrue("3 packets received" in out and "DUP!" not in out, out)
for m in machines:
    t.assertEqual(m.succeed("cat /proc/mounts | grep -c ' 9p '").strip(), "2")
with subtest("bad input"):
    try:
        server.restore("never-taken")
    except Exception as e:
        t.assertIn("no snapshot named \"never-taken\" (taken: both)", str(e), e)
    else:
        raise AssertionError("an unknown snapshot was restored")
    try:
        server.snapshot("no spaces")
    except Exception as e:
        t.assertIn("invalid snapshot name", str(e), e)
    else:
        raise AssertionError("an invalid name was taken")
    client.shutdown()
    try:
        client.restore("both")
    except Exception as e:
        t.assertIn("the machine is not running", str(e), e)
    else:
        raise AssertionError("a stopped machine was restored")
"""


@pytest.mark.parametrize("standby", ["1", "0"], ids=["warm-standby", "loadvm"])
def test_restore_all_of_two_vms_on_a_vlan(vm_env, monkeypatch, standby):
    monkeypatch.setenv("NIXOS_TEST_NG_STANDBY", standby)
    r = vm_env.run({"client": [1], "server": [1]}, RESTORE_ALL)
    assert r.returncode == 0, r.stderr[-6000:]
    assert "restoring snapshot both of all machines" in r.stderr
    for name in ("client", "server"):
        if standby == "1":
            assert f"{name}: restored snapshot both: switched to the warm standby" in r.stderr
        else:
            assert (
                f"{name}: warm standby off: NIXOS_TEST_NG_STANDBY=0; restores will use loadvm"
                in r.stderr
            )
            assert (
                f"{name}: restoring snapshot both with loadvm (warm standby off:"
                " NIXOS_TEST_NG_STANDBY=0)" in r.stderr
            )


WARM_STANDBY = r"""
import os
with subtest("a restore switches to the warm standby"):
    machine.start()
    machine.succeed("true")
    machine.snapshot("ready")
    t.assertTrue(machine.wait_for_standby())
    machine.succeed("echo dirty > /etc/dirty")
    machine.restore("ready")
    machine.fail("test -e /etc/dirty")
    t.assertEqual(machine.succeed("grep -c ' 9p ' /proc/mounts").strip(), "2")
    machine.succeed("echo hi > /tmp/shared/from-guest")
    shared = os.path.join(os.environ["XDG_RUNTIME_DIR"], "shared-xchg")
    t.assertEqual(open(os.path.join(shared, "from-guest")).read(), "hi\n")

with subtest("the restored machine's disk is its own, and writes persist until a restore"):
    info = machine.send_monitor_command("info block")
    t.assertIn("/vm-state-machine/standby-", info, info)
    machine.succeed("echo kept > /etc/kept && sync")
    machine.succeed("test -e /etc/kept")
    machine.snapshot("second")
    machine.restore("ready")
    machine.fail("test -e /etc/kept")
    t.assertTrue(machine.wait_for_standby())
    machine.restore("ready")  # the standby's disk copy knows nothing of "second"
    machine.restore("second")  # so it comes back from its golden copy
    machine.succeed("test -e /etc/kept")

with subtest("restores back to back"):
    for i in range(3):
        machine.succeed(f"echo {i} > /etc/dirty")
        machine.restore("second")
        machine.fail("test -e /etc/dirty")
        machine.succeed("test -e /etc/kept")
        t.assertEqual(machine.succeed("grep -c ' 9p ' /proc/mounts").strip(), "2")
"""


def test_warm_standby_on_a_busybox_vm(vm_env):
    r = vm_env.run({"machine": [1]}, WARM_STANDBY)
    assert r.returncode == 0, r.stderr[-6000:]
    err = r.stderr
    assert "machine: golden copy of snapshot ready:" in err
    assert "machine: warm standby ready for snapshot ready" in err
    assert "machine: restored snapshot ready: switched to the warm standby" in err
    assert (
        "machine: the disk of the running QEMU does not hold snapshot second:"
        " restoring it from its golden copy" in err
    )
    assert "machine: restored snapshot second: switched to the warm standby" in err
    # back to back, the next standby is still on its way: loadvm
    assert (
        "machine: restoring snapshot second with loadvm (the standby for snapshot second is not ready yet)"
        in err
    )


def test_warm_standby_on_a_systemd_vm(vm_env, systemd_guest):
    script = r"""
machine.start()
machine.wait_for_unit("multi-user.target", timeout=120)
machine.snapshot("ready")
t.assertTrue(machine.wait_for_standby())
machine.succeed("echo dirty > /etc/dirty")
machine.restore("ready")
machine.fail("test -e /etc/dirty")
machine.wait_for_unit("multi-user.target")
machine.succeed("echo kept > /var/kept && sync", "test -e /var/kept")
machine.systemctl("restart systemd-journald")
machine.succeed("test -e /var/kept")
"""
    r = vm_env.run({"machine": [1]}, script, kinds={"machine": "systemd-vm"}, timeout=600)
    assert r.returncode == 0, r.stderr[-6000:]
    assert "machine: restored snapshot ready: switched to the warm standby" in r.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FALLBACK = r"""
machine.start()
machine.succeed("true")
machine.snapshot("ready")
t.assertFalse(machine.wait_for_standby())
machine.succeed("echo dirty > /etc/dirty")
machine.restore("ready")
machine.fail("test -e /etc/dirty")
"""


@pytest.mark.parametrize("case", ["port-forward", "disk-outside", "standby-fails"])
def test_warm_standby_fallbacks(vm_env, monkeypatch, case):
    scripts = vm_env.scripts({"machine": []})
    text = open(scripts["machine"]).read()
    if case == "port-forward":
        monkeypatch.setenv("QEMU_NET_OPTS", f"hostfwd=tcp:127.0.0.1:{free_port()}-:80")
        off = "port forwards are configured (host ports cannot be held by two QEMUs)"
    elif case == "disk-outside":
        disks = vm_env.root / "disks"
        disks.mkdir()
        text = text.replace('snapshot_disk="$TMPDIR/', f'snapshot_disk="{disks}/')
        off = "lives outside the machine's TMPDIR"
    else:  # a start script that cannot start a second QEMU
        text = text.replace("set -e\n", 'set -e\ncase "$TMPDIR" in */standby-*) exit 3 ;; esac\n')
        off = None
    open(scripts["machine"], "w").write(text)
    r = vm_env.run({"machine": []}, FALLBACK, keep_scripts=True)
    assert r.returncode == 0, r.stderr[-6000:]
    if off:
        assert "machine: warm standby off: " in r.stderr and off in r.stderr, r.stderr[-3000:]
        assert "machine: restoring snapshot ready with loadvm (warm standby off: " in r.stderr
    else:
        failed = "machine: warm standby for snapshot ready failed: its QEMU exited (exit status: 3)"
        assert failed in r.stderr, r.stderr[-3000:]
        assert "machine: restoring snapshot ready with loadvm (the standby failed: " in r.stderr


def test_killing_the_driver_leaves_no_standby(vm_env, leftovers):
    script = (
        "machine.start()\n"
        "machine.snapshot('ready')\n"
        "assert machine.wait_for_standby()\n"
        "print('ready', flush=True)\n"
        "import time\n"
        "time.sleep(600)\n"
    )
    p = vm_env.spawn({"machine": [1]}, script)
    wait_for_line(p, "ready")
    running = [proc for proc in leftovers(vm_env.root, wait=0) if "qemu-system" in proc]
    assert len(running) == 2, running  # the machine and its standby
    cmdlines = [Path(f"/proc/{proc.split(':')[0]}/cmdline").read_bytes() for proc in running]
    assert any(b"\0-loadvm\0ready" in c for c in cmdlines), cmdlines
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not leftovers(vm_env.root, wait=5)
