"""Snapshots and per-test isolation on real machines: TCG VMs and nspawn containers."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

pytestmark = pytest.mark.vm

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
start_all()
for m in machines:
    m.wait_for_file("/tmp/shared")  # booted
driver.snapshot_all("both")
client.succeed("echo changed > /etc/state")
driver.restore_all("both")
client.fail("test -e /etc/state")
client.succeed("ping -c 1 -W 10 server")
server.succeed("ping -c 1 -W 10 client")
assert server.succeed("cat /proc/mounts | grep -c ' 9p '").strip() == "2"
with subtest("bad input"):
    try:
        server.restore("never-taken")
    except Exception as e:
        assert "no snapshot named \"never-taken\" (taken: both)" in str(e), e
    else:
        raise AssertionError("an unknown snapshot was restored")
    try:
        server.snapshot("no spaces")
    except Exception as e:
        assert "invalid snapshot name" in str(e), e
    else:
        raise AssertionError("an invalid name was taken")
    client.shutdown()
    try:
        client.restore("both")
    except Exception as e:
        assert "the machine is not running" in str(e), e
    else:
        raise AssertionError("a stopped machine was restored")
"""


def test_restore_all_of_two_vms_on_a_vlan(vm_env, leftovers):
    r = vm_env.run({"client": [1], "server": [1]}, RESTORE_ALL)
    assert r.returncode == 0, r.stderr[-6000:]
    assert "restoring snapshot both of all machines" in r.stderr


def test_a_vm_without_a_snapshot_disk(vm_env, leftovers):
    scripts = vm_env.scripts({"machine": []})
    path = scripts["machine"]
    text = open(path).read()
    text = "\n".join(line for line in text.splitlines() if "ntng-snapshots" not in line) + "\n"
    open(path, "w").write(text)
    script = (
        "machine.start()\n"
        "try:\n"
        "    machine.snapshot('s')\n"
        "except Exception as e:\n"
        "    assert 'needs a writable qcow2 disk' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('a snapshot without a disk')\n"
        "machine.succeed('test -e /tmp/shared')  # the shares are back\n"
    )
    r = vm_env.run({"machine": []}, script, keep_scripts=True)
    assert r.returncode == 0, r.stderr[-6000:]
