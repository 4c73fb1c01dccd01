"""The Cloud Hypervisor backend against the Cloud Hypervisor API stand-in
(`tests/standins/cloud-hypervisor`) with its fake runner: no guest runs, the runner records
what the API was asked to boot. The stand-in validates every request against the official
spec's operations and fields, so a call the driver got wrong is a fault that fails the start.

The shell and snapshots run against a fake guest (`tests/fakes/vsock_guest.py`: the real guest
agent on the host, behind a socket that answers `CONNECT` as Cloud Hypervisor's hybrid vsock
does)."""

from __future__ import annotations

import os
import re
import signal

import pytest
from nixos_test_ng import procs
from support import vmm
from support.leaks import marker, wait_until_gone
from support.vmm import calls, run


@pytest.fixture
def cloud_hypervisor_env(driver_env):
    """The variables that run the stand-in with its fake runner recording into `fake/`."""
    return vmm.standin_env(driver_env, vmm.CLOUD_HYPERVISOR)


def cloud_hypervisor_script(driver_env, name: str = "ch", **extra):
    return vmm.start_script(driver_env, vmm.CLOUD_HYPERVISOR, name, **extra)


def test_cloud_hypervisor_start_creates_and_boots_the_vm_through_the_api(
    driver_env, run_driver, cloud_hypervisor_env
):
    fake, env = cloud_hypervisor_env
    script = cloud_hypervisor_script(driver_env)
    r = run(
        driver_env,
        run_driver,
        env,
        script,
        """
        t.assertTrue(isinstance(ch, CloudHypervisorMachine))
        t.assertEqual(machines_qemu, [])
        ch.start()
        t.assertTrue(ch.booted)
        print("STARTED")
        """,
    )
    assert r.returncode == 0, r
    assert "STARTED" in r.stdout, r
    assert "ch: starting vm" in r.stderr, r
    assert "ch: Cloud Hypervisor running (pid " in r.stderr, r
    assert "kill CloudHypervisorMachine (pid " in r.stderr, r
    state = driver_env.state_dir("ch")
    work = driver_env.work
    (boot,) = calls(fake)
    assert boot["call"] == "boot"
    assert boot["spec"] == {
        "kernel": f"{work}/vmlinux",
        "initrd": f"{work}/initrd",
        "cmdline": "console=ttyS0 root=/dev/vda panic=1",
        "vcpus": 2,
        "mem_mib": 256,
        "disks": [
            {"id": "_disk0", "path": f"{work}/root.img", "read_only": False, "is_root": False},
            {"id": "_disk1", "path": f"{work}/data.img", "read_only": True, "is_root": False},
        ],
        "nets": [],
        "vsock": {"cid": 3, "uds_path": f"{state}/vsock.sock"},
        # the serial port (Tty) on the process's stdout, the machine's console
        "console": "stdout",
    }


def test_a_cloud_hypervisor_api_fault_is_a_machine_error_naming_the_machine_and_the_fault(
    driver_env, run_driver, cloud_hypervisor_env
):
    fake, env = cloud_hypervisor_env
    env = {**env, "NTNG_FAKE_RUNNER_FAIL": "boot=KVM is not available"}
    script = cloud_hypervisor_script(driver_env)
    r = run(
        driver_env,
        run_driver,
        env,
        script,
        """
        from nixos_test_ng import MachineError
        try:
            ch.start()
        except MachineError as e:
            print("ERROR:", e)
        else:
            raise SystemExit("the start did not fail")
        t.assertFalse(ch.booted)
        """,
    )
    assert r.returncode == 0, r
    assert (
        "ERROR: ch: Cloud Hypervisor API call PUT /api/v1/vm.boot failed: "
        "Error from API: The VM could not boot: KVM is not available (HTTP 500)"
    ) in r.stdout, r
    assert [c["call"] for c in calls(fake)] == ["boot"]


def test_cloud_hypervisor_reboot_is_vm_reboot_in_the_same_process(
    driver_env, run_driver, cloud_hypervisor_env
):
    fake, env = cloud_hypervisor_env
    script = cloud_hypervisor_script(driver_env)
    r = run(
        driver_env,
        run_driver,
        env,
        script,
        """
        ch.start()
        first = ch.pid
        ch.reboot()
        t.assertTrue(ch.booted)
        t.assertEqual(ch.pid, first)
        ch.crash()
        t.assertFalse(ch.booted)
        print("REBOOTED")
        """,
    )
    assert r.returncode == 0, r
    assert "REBOOTED" in r.stdout, r
    assert "ch: sending key 'ctrl-alt-delete'" in r.stderr, r
    assert [c["call"] for c in calls(fake)] == ["boot", "reboot"]


def test_cloud_hypervisor_shutdown_before_the_agent_is_vm_and_vmm_shutdown(
    driver_env, run_driver, cloud_hypervisor_env
):
    fake, env = cloud_hypervisor_env
    script = cloud_hypervisor_script(driver_env)
    r = run(
        driver_env,
        run_driver,
        env,
        script,
        """
        ch.start()
        ch.shutdown()
        t.assertFalse(ch.booted)
        # vmm.shutdown ends the process cleanly
        t.assertEqual(ch.process.wait(60), 0)
        print("STOPPED")
        """,
    )
    assert r.returncode == 0, r
    assert "STOPPED" in r.stdout, r
    assert "ch: waiting for the VM to power off" in r.stderr, r
    assert [c["call"] for c in calls(fake)] == ["boot", "shutdown"]


def test_cloud_hypervisor_machines_have_no_backdoor_and_no_display(
    driver_env, run_driver, cloud_hypervisor_env
):
    fake, env = cloud_hypervisor_env
    env = {**env, "NIXOS_TEST_NG_TRANSPORT": "backdoor"}
    script = cloud_hypervisor_script(driver_env)
    r = run(
        driver_env,
        run_driver,
        env,
        script,
        """
        from nixos_test_ng import MachineError, Unsupported
        try:
            ch.screenshot("x")
        except Unsupported as e:
            t.assertEqual((e.operation, e.backend), ("screenshot", "Cloud Hypervisor"))
            print("UNSUPPORTED:", e)
        try:
            ch.succeed("true")
        except MachineError as e:
            print("NO-BACKDOOR:", e)
        else:
            raise SystemExit("a command ran over a backdoor that does not exist")
        """,
    )
    assert r.returncode == 0, r
    assert (
        "UNSUPPORTED: ch: screenshot: not supported by the Cloud Hypervisor backend (no display)"
        in r.stdout
    ), r
    assert (
        "NO-BACKDOOR: ch: cloud-hypervisor machines have no console backdoor; their shell is the "
        "guest agent over vsock"
    ) in r.stdout, r


@pytest.fixture
def vsock_guest(driver_env):
    """A fake guest serving machine `ch`'s hybrid vsock socket with the real agent."""
    with vmm.vsock_guest(driver_env, "ch") as guest_dir:
        yield guest_dir


def test_cloud_hypervisor_commands_snapshot_and_restore_over_the_agent(
    driver_env, run_driver, cloud_hypervisor_env, vsock_guest
):
    fake, env = cloud_hypervisor_env
    script = cloud_hypervisor_script(driver_env)
    r = run(
        driver_env,
        run_driver,
        env,
        script,
        f"""
        ch.start()
        t.assertEqual(ch.succeed("echo hi"), "hi\\n")
        ch.succeed("echo one > {vsock_guest}/mark")
        ch.snapshot("ready")
        ch.restore("ready")
        t.assertEqual(ch.succeed("cat {vsock_guest}/mark"), "one\\n")
        print("RESTORED")
        """,
    )
    assert r.returncode == 0, r
    assert "RESTORED" in r.stdout, r
    folder = driver_env.state_dir("ch") / "snapshot-ready"
    recorded = calls(fake)
    assert [c["call"] for c in recorded] == [
        "boot",
        "pause",
        "snapshot",
        "resume",
        "restore",
        "resume",
    ]
    files = {"state_path": f"{folder}/state.json", "mem_path": f"{folder}/memory-ranges"}
    assert {k: recorded[2][k] for k in files} == files
    assert {k: recorded[4][k] for k in files} == files
    # restored paused, then resumed through vm.resume
    assert recorded[4]["resume"] is False
    # the restored VM is a new Cloud Hypervisor, and the agent is reached again
    assert r.stderr.count("ch: Cloud Hypervisor running (pid ") == 2, r
    connects = (vsock_guest / "connects").read_text().splitlines()
    assert len(connects) == 2 and len(set(connects)) == 1, connects
    assert connects[0].startswith("CONNECT "), connects


def test_a_cloud_hypervisor_snapshot_fault_names_it_and_the_machine_runs_on(
    driver_env, run_driver, cloud_hypervisor_env, vsock_guest
):
    fake, env = cloud_hypervisor_env
    env = {**env, "NTNG_FAKE_RUNNER_FAIL": "snapshot=no space left on device"}
    script = cloud_hypervisor_script(driver_env)
    r = run(
        driver_env,
        run_driver,
        env,
        script,
        """
        from nixos_test_ng import MachineError
        ch.start()
        try:
            ch.snapshot("ready")
        except MachineError as e:
            print("ERROR:", e)
        else:
            raise SystemExit("the snapshot did not fail")
        t.assertEqual(ch.succeed("echo still"), "still\\n")
        """,
    )
    assert r.returncode == 0, r
    assert (
        "ERROR: ch: Cloud Hypervisor API call PUT /api/v1/vm.snapshot failed: "
        "Error from API: The VM could not be snapshotted: no space left on device (HTTP 500)"
    ) in r.stdout, r
    # paused for the snapshot, resumed after its failure
    assert [c["call"] for c in calls(fake)] == ["boot", "pause", "snapshot", "resume"]


def test_cloud_hypervisor_pytest_isolation_restores_its_snapshot(
    driver_env, run_driver, cloud_hypervisor_env, vsock_guest
):
    import xml.etree.ElementTree as ET

    fake, env = cloud_hypervisor_env
    script = cloud_hypervisor_script(driver_env)
    test = driver_env.write_script(
        "test_ch.py",
        """
        import pytest

        def test_first(ch):
            ch.succeed("true")

        @pytest.mark.isolated
        def test_isolated(ch):
            ch.succeed("true")
        """,
    )
    junit = driver_env.out / "junit.xml"
    r = run_driver(
        [
            "--start-scripts",
            script,
            "-o",
            driver_env.out,
            "--junit-xml",
            "junit.xml",
            "--",
            test,
            "-s",
        ],
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r
    assert "2 passed" in r.stdout, r
    isolation = {
        case.get("name"): prop.get("value")
        for case in ET.parse(junit).getroot().iter("testcase")
        for prop in case.iter("property")
        if prop.get("name") == "isolation"
    }
    assert isolation["test_isolated"] == "isolated: ch restored", isolation
    assert [c["call"] for c in calls(fake)] == [
        "boot",
        "pause",
        "snapshot",
        "resume",
        "restore",
        "resume",
    ]


def test_a_dead_cloud_hypervisor_fails_the_snapshot_naming_its_exit(
    driver_env, run_driver, cloud_hypervisor_env, vsock_guest
):
    fake, env = cloud_hypervisor_env
    script = cloud_hypervisor_script(driver_env)
    r = run(
        driver_env,
        run_driver,
        env,
        script,
        """
        import signal
        from nixos_test_ng import MachineError
        ch.start()
        ch.succeed("true")
        os.kill(ch.pid, signal.SIGKILL)  # the VMM dies; the (fake) guest's agent does not
        try:
            ch.snapshot("ready")
        except MachineError as e:
            print("ERROR:", e)
        else:
            raise SystemExit("the snapshot did not fail")
        """,
    )
    assert r.returncode == 0, r
    assert "ERROR: ch: Cloud Hypervisor API call PUT /api/v1/vm.pause failed: " in r.stdout, r
    assert "(Cloud Hypervisor exited: signal: 9 (SIGKILL))" in r.stdout, r
    assert [c["call"] for c in calls(fake)] == ["boot"]


@pytest.mark.skipif(os.geteuid() != 0, reason="TAP devices need root")
def test_cloud_hypervisor_vlan_nic_is_a_tap_bridged_to_the_switch_and_block_cuts_its_link(
    driver_env, run_driver, cloud_hypervisor_env
):
    fake, env = cloud_hypervisor_env
    script = cloud_hypervisor_script(driver_env, vlans=[1])
    test = driver_env.write_script(
        "t.py",
        """
        import re
        import subprocess

        def link(name):
            out = subprocess.run(
                ["nsenter", f"--net=/proc/{ch.pid}/ns/net", "ip", "-o", "link", "show", name],
                capture_output=True, text=True, check=True,
            ).stdout
            flags = re.search(r"<([^>]*)>", out).group(1).split(",")
            return "UP" in flags, re.search(r"master (\\S+)", out).group(1)

        ch.start()
        t.assertEqual(link("ntng1n1"), (True, "ntngb1n1"))
        ch.block()
        t.assertEqual(link("ntng1n1"), (False, "ntngb1n1"))
        ch.unblock()
        t.assertEqual(link("ntng1n1"), (True, "ntngb1n1"))
        t.assertNotEqual(os.readlink(f"/proc/{ch.pid}/ns/net"), os.readlink("/proc/self/ns/net"))
        print("LINKS-OK")
        """,
    )
    r = run_driver(["--start-scripts", script, "--vlans", "1", "--", test], env=env)
    assert r.returncode == 0, r
    assert "LINKS-OK" in r.stdout, r
    (boot,) = calls(fake)
    assert boot["spec"]["nets"] == [{"id": "_net0", "tap": "ntng1n1", "mac": "52:54:00:12:01:01"}]


def test_cloud_hypervisor_vlans_name_the_missing_switch(
    driver_env, run_driver, cloud_hypervisor_env
):
    fake, env = cloud_hypervisor_env
    script = cloud_hypervisor_script(driver_env, vlans=[2])
    r = run(
        driver_env,
        run_driver,
        env,
        script,
        """
        from nixos_test_ng import ConfigError
        try:
            ch.start()
        except ConfigError as e:
            print("ERROR:", e)
        """,
    )
    assert r.returncode == 0, r
    want = "VLAN 2 is not one of the run's VLANs" if os.geteuid() == 0 else "needs root"
    assert "ERROR: machine `ch`: " in r.stdout and want in r.stdout, r
    assert calls(fake) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="TAP devices need root")
def test_sigkill_of_the_driver_leaves_no_cloud_hypervisor_tap_or_namespace(
    driver_env, start_driver, cloud_hypervisor_env
):
    fake, env = cloud_hypervisor_env
    script = cloud_hypervisor_script(driver_env, vlans=[1])
    test = driver_env.write_script(
        "t.py",
        """
        import time
        ch.start()
        print("PID", ch.pid, os.readlink(f"/proc/{ch.pid}/ns/net"), flush=True)
        time.sleep(600)
        """,
    )
    proc = start_driver(["--start-scripts", script, "--vlans", "1", "--", test], env=env)
    out = proc.wait_for_output(r"PID \d+ net:\[\d+\]", stream="stdout")
    pid = int(re.search(r"PID (\d+)", out).group(1))
    assert procs.alive(pid)
    cmdlines = list(procs.marked(marker(driver_env.tmp)).values())
    assert "sleep infinity" in cmdlines, cmdlines
    assert any(c.startswith("vde_plug2tap ") for c in cmdlines), cmdlines
    os.kill(proc.pid, signal.SIGKILL)  # the driver only, not its process group
    proc.popen.wait(5)
    assert not wait_until_gone(driver_env.tmp, timeout=20)
