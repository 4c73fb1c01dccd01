"""The Firecracker backend against the Firecracker API stand-in (`tests/standins/firecracker`)
with its fake runner: no guest runs, the runner records what the API was asked to boot. The
stand-in validates every request against the official spec's operations and fields, so a
call the driver got wrong is a fault that fails the start.

The shell and snapshots run against a fake guest (`tests/fakes/vsock_guest.py`: the real guest
agent on the host, behind a socket that answers `CONNECT` as Firecracker's vsock does). A
real guest, VLANs and `block`/`unblock` come with the stand-in's QEMU runner in tests/e2e."""

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
def firecracker_env(driver_env):
    """The variables that run the stand-in with its fake runner recording into `fake/`."""
    return vmm.standin_env(driver_env, vmm.FIRECRACKER)


def firecracker_script(driver_env, name: str = "fc", **extra):
    return vmm.start_script(driver_env, vmm.FIRECRACKER, name, **extra)


def test_firecracker_start_configures_the_microvm_through_the_api(
    driver_env, run_driver, firecracker_env
):
    fake, env = firecracker_env
    script = firecracker_script(driver_env)
    r = run(
        driver_env,
        run_driver,
        env,
        script,
        """
        t.assertTrue(isinstance(fc, FirecrackerMachine))
        t.assertEqual(machines_qemu, [])
        fc.start()
        t.assertTrue(fc.booted)
        print("STARTED")
        """,
    )
    assert r.returncode == 0, r
    assert "STARTED" in r.stdout, r
    assert "fc: starting vm" in r.stderr, r
    assert "fc: Firecracker running (pid " in r.stderr, r
    assert "kill FirecrackerMachine (pid " in r.stderr, r
    state = driver_env.state_dir("fc")
    work = driver_env.work
    (boot,) = calls(fake)
    assert boot["call"] == "boot"
    assert boot["spec"] == {
        "kernel": f"{work}/vmlinux",
        "initrd": f"{work}/initrd",
        # Firecracker appends the root device to the boot arguments
        "cmdline": "console=ttyS0 reboot=k panic=1 root=/dev/vda rw",
        "vcpus": 2,
        "mem_mib": 256,
        "disks": [
            {"id": "rootfs", "path": f"{work}/root.img", "read_only": False, "is_root": True},
            {"id": "disk1", "path": f"{work}/data.img", "read_only": True, "is_root": False},
        ],
        "nets": [],
        "vsock": {"cid": 3, "uds_path": f"{state}/vsock.sock"},
        "console": "stdout",
    }


def test_a_firecracker_api_fault_is_a_machine_error_naming_the_machine_and_the_fault(
    driver_env, run_driver, firecracker_env
):
    fake, env = firecracker_env
    env = {**env, "NTNG_FAKE_RUNNER_FAIL": "boot=KVM is not available"}
    script = firecracker_script(driver_env)
    r = run(
        driver_env,
        run_driver,
        env,
        script,
        """
        from nixos_test_ng import MachineError
        try:
            fc.start()
        except MachineError as e:
            print("ERROR:", e)
        else:
            raise SystemExit("the start did not fail")
        t.assertFalse(fc.booted)
        """,
    )
    assert r.returncode == 0, r
    assert (
        "ERROR: fc: Firecracker API call PUT /actions failed: "
        "Start microvm error: KVM is not available (HTTP 400)"
    ) in r.stdout, r
    assert [c["call"] for c in calls(fake)] == ["boot"]


def test_firecracker_reboot_is_ctrl_alt_del_and_a_new_launch(
    driver_env, run_driver, firecracker_env
):
    fake, env = firecracker_env
    # The guest resets on Ctrl-Alt-Delete, which ends Firecracker.
    env = {**env, "NTNG_FAKE_RUNNER_EXIT_ON": "ctrl_alt_del=0"}
    script = firecracker_script(driver_env)
    r = run(
        driver_env,
        run_driver,
        env,
        script,
        """
        fc.start()
        first = fc.pid
        fc.reboot()
        t.assertTrue(fc.booted)
        t.assertNotEqual(fc.pid, first)
        fc.crash()
        t.assertFalse(fc.booted)
        print("REBOOTED")
        """,
    )
    assert r.returncode == 0, r
    assert "REBOOTED" in r.stdout, r
    assert "fc: sending key 'ctrl-alt-delete'" in r.stderr, r
    assert [c["call"] for c in calls(fake)] == ["boot", "ctrl_alt_del", "boot"]


def test_firecracker_machines_have_no_backdoor_and_no_display(
    driver_env, run_driver, firecracker_env
):
    fake, env = firecracker_env
    env = {**env, "NIXOS_TEST_NG_TRANSPORT": "backdoor"}
    script = firecracker_script(driver_env)
    r = run(
        driver_env,
        run_driver,
        env,
        script,
        """
        from nixos_test_ng import MachineError, Unsupported
        try:
            fc.screenshot("x")
        except Unsupported as e:
            t.assertEqual((e.operation, e.backend), ("screenshot", "Firecracker"))
            print("UNSUPPORTED:", e)
        try:
            fc.succeed("true")
        except MachineError as e:
            print("NO-BACKDOOR:", e)
        else:
            raise SystemExit("a command ran over a backdoor that does not exist")
        """,
    )
    assert r.returncode == 0, r
    assert (
        "UNSUPPORTED: fc: screenshot: not supported by the Firecracker backend (no display)"
        in r.stdout
    ), r
    assert (
        "NO-BACKDOOR: fc: firecracker machines have no console backdoor; their shell is the "
        "guest agent over vsock"
    ) in r.stdout, r


@pytest.fixture
def vsock_guest(driver_env):
    """A fake guest serving machine `fc`'s hybrid vsock socket with the real agent."""
    with vmm.vsock_guest(driver_env, "fc") as guest_dir:
        yield guest_dir


def test_firecracker_commands_snapshot_and_restore_over_the_agent(
    driver_env, run_driver, firecracker_env, vsock_guest
):
    fake, env = firecracker_env
    script = firecracker_script(driver_env)
    r = run(
        driver_env,
        run_driver,
        env,
        script,
        f"""
        fc.start()
        t.assertEqual(fc.succeed("echo hi"), "hi\\n")
        fc.succeed("echo one > {vsock_guest}/mark")
        fc.snapshot("ready")
        fc.restore("ready")
        t.assertEqual(fc.succeed("cat {vsock_guest}/mark"), "one\\n")
        print("RESTORED")
        """,
    )
    assert r.returncode == 0, r
    assert "RESTORED" in r.stdout, r
    state = driver_env.state_dir("fc")
    recorded = calls(fake)
    assert [c["call"] for c in recorded] == ["boot", "pause", "snapshot", "resume", "restore"]
    files = {
        "state_path": f"{state}/snapshot-ready.vmstate",
        "mem_path": f"{state}/snapshot-ready.mem",
    }
    assert {k: recorded[2][k] for k in files} == files
    assert recorded[2]["diff"] is False
    assert {k: recorded[4][k] for k in files} == files
    assert recorded[4]["resume"] is True
    # the restored microVM is a new Firecracker, and the agent is reached again
    assert r.stderr.count("fc: Firecracker running (pid ") == 2, r
    connects = (vsock_guest / "connects").read_text().splitlines()
    assert len(connects) == 2 and len(set(connects)) == 1, connects
    assert connects[0].startswith("CONNECT "), connects


@pytest.mark.skipif(os.geteuid() != 0, reason="TAP devices need root")
def test_firecracker_vlan_nic_is_a_tap_bridged_to_the_switch_and_block_cuts_its_link(
    driver_env, run_driver, firecracker_env
):
    fake, env = firecracker_env
    script = firecracker_script(driver_env, vlans=[1])
    test = driver_env.write_script(
        "t.py",
        """
        import re
        import subprocess

        def link(name):
            out = subprocess.run(
                ["nsenter", f"--net=/proc/{fc.pid}/ns/net", "ip", "-o", "link", "show", name],
                capture_output=True, text=True, check=True,
            ).stdout
            flags = re.search(r"<([^>]*)>", out).group(1).split(",")
            return "UP" in flags, re.search(r"master (\\S+)", out).group(1)

        fc.start()
        t.assertEqual(link("ntng1n1"), (True, "ntngb1n1"))
        t.assertEqual(link("ntngp1n1"), (True, "ntngb1n1"))
        fc.block()
        t.assertEqual(link("ntng1n1"), (False, "ntngb1n1"))
        fc.unblock()
        t.assertEqual(link("ntng1n1"), (True, "ntngb1n1"))
        # the run's network namespace is not the driver's
        t.assertNotEqual(os.readlink(f"/proc/{fc.pid}/ns/net"), os.readlink("/proc/self/ns/net"))
        print("LINKS-OK")
        """,
    )
    r = run_driver(["--start-scripts", script, "--vlans", "1", "--", test], env=env)
    assert r.returncode == 0, r
    assert "LINKS-OK" in r.stdout, r
    (boot,) = calls(fake)
    assert boot["spec"]["nets"] == [{"id": "eth0", "tap": "ntng1n1", "mac": "52:54:00:12:01:01"}]


def test_firecracker_vlans_name_the_missing_switch(driver_env, run_driver, firecracker_env):
    fake, env = firecracker_env
    script = firecracker_script(driver_env, vlans=[2])
    r = run(
        driver_env,
        run_driver,
        env,
        script,
        """
        from nixos_test_ng import ConfigError
        try:
            fc.start()
        except ConfigError as e:
            print("ERROR:", e)
        """,
    )
    assert r.returncode == 0, r
    want = "VLAN 2 is not one of the run's VLANs" if os.geteuid() == 0 else "needs root"
    assert "ERROR: machine `fc`: " in r.stdout and want in r.stdout, r
    assert calls(fake) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="TAP devices need root")
def test_sigkill_of_the_driver_leaves_no_firecracker_tap_or_namespace(
    driver_env, start_driver, firecracker_env
):
    fake, env = firecracker_env
    script = firecracker_script(driver_env, vlans=[1])
    test = driver_env.write_script(
        "t.py",
        """
        import time
        fc.start()
        print("PID", fc.pid, os.readlink(f"/proc/{fc.pid}/ns/net"), flush=True)
        time.sleep(600)
        """,
    )
    proc = start_driver(["--start-scripts", script, "--vlans", "1", "--", test], env=env)
    out = proc.wait_for_output(r"PID \d+ net:\[\d+\]", stream="stdout")
    pid = int(re.search(r"PID (\d+)", out).group(1))
    assert procs.alive(pid)
    # the namespace's holder (`unshare --net` exec'd `sleep infinity`), the switch plug and the
    # stand-in carry the test's marker
    cmdlines = list(procs.marked(marker(driver_env.tmp)).values())
    assert "sleep infinity" in cmdlines, cmdlines
    assert any(c.startswith("vde_plug2tap ") for c in cmdlines), cmdlines
    os.kill(proc.pid, signal.SIGKILL)  # the driver only, not its process group
    proc.popen.wait(5)
    assert not wait_until_gone(driver_env.tmp, timeout=20)


def test_a_firecracker_snapshot_fault_names_it_and_the_machine_runs_on(
    driver_env, run_driver, firecracker_env, vsock_guest
):
    fake, env = firecracker_env
    env = {**env, "NTNG_FAKE_RUNNER_FAIL": "snapshot=no space left on device"}
    script = firecracker_script(driver_env)
    r = run(
        driver_env,
        run_driver,
        env,
        script,
        """
        from nixos_test_ng import MachineError
        fc.start()
        try:
            fc.snapshot("ready")
        except MachineError as e:
            print("ERROR:", e)
        else:
            raise SystemExit("the snapshot did not fail")
        t.assertEqual(fc.succeed("echo still"), "still\\n")
        try:
            fc.restore("ready")
        except MachineError as e:
            print("NO-SNAPSHOT:", e)
        """,
    )
    assert r.returncode == 0, r
    assert (
        "ERROR: fc: Firecracker API call PUT /snapshot/create failed: "
        "Create snapshot error: no space left on device (HTTP 400)"
    ) in r.stdout, r
    assert 'NO-SNAPSHOT: fc: no snapshot named "ready" (taken: none)' in r.stdout, r
    # paused for the snapshot, resumed after its failure
    assert [c["call"] for c in calls(fake)] == ["boot", "pause", "snapshot", "resume"]


def test_firecracker_pytest_isolation_restores_its_snapshot(
    driver_env, run_driver, firecracker_env, vsock_guest
):
    import xml.etree.ElementTree as ET

    fake, env = firecracker_env
    script = firecracker_script(driver_env)
    test = driver_env.write_script(
        "test_fc.py",
        """
        import pytest

        def test_first(fc):
            fc.succeed("true")

        @pytest.mark.isolated
        def test_isolated(fc):
            fc.succeed("true")
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
    assert isolation["test_isolated"] == "isolated: fc restored", isolation
    # the snapshot at the first ready, and its restore by a new Firecracker
    assert [c["call"] for c in calls(fake)] == ["boot", "pause", "snapshot", "resume", "restore"]


def test_firecracker_guest_reset_with_allow_reboot_is_a_new_launch(
    driver_env, run_driver, firecracker_env, vsock_guest
):
    fake, env = firecracker_env
    script = firecracker_script(driver_env)
    exit_marker = fake / "exit"
    r = run(
        driver_env,
        run_driver,
        env,
        script,
        f"""
        from pathlib import Path
        fc.start(allow_reboot=True)
        first = fc.pid
        # the guest resets: Firecracker ends (the fake runner's VM exits 0)
        Path("{exit_marker}").write_text("0")
        t.assertEqual(fc.process.wait(60), 0)
        Path("{exit_marker}").unlink()
        t.assertEqual(fc.succeed("echo back"), "back\\n")
        t.assertNotEqual(fc.pid, first)
        print("BACK")
        """,
    )
    assert r.returncode == 0, r
    assert "BACK" in r.stdout, r
    assert "fc: the guest's reset ended its process: starting it again" in r.stderr, r
    assert [c["call"] for c in calls(fake)] == ["boot", "boot"]


def test_firecracker_guest_reset_without_allow_reboot_ends_the_machine(
    driver_env, run_driver, firecracker_env
):
    fake, env = firecracker_env
    env = {**env, "NTNG_FAKE_RUNNER_EXIT_ON": "boot=0"}
    script = firecracker_script(driver_env)
    r = run(
        driver_env,
        run_driver,
        env,
        script,
        """
        from nixos_test_ng import MachineError
        fc.start()
        t.assertEqual(fc.process.wait(60), 0)
        try:
            fc.succeed("true")
        except MachineError as e:
            print("STOPPED:", e)
        """,
    )
    assert r.returncode == 0, r
    assert "STOPPED: fc: " in r.stdout, r
    assert [c["call"] for c in calls(fake)] == ["boot"]


def test_a_dead_firecracker_fails_the_snapshot_naming_its_exit(
    driver_env, run_driver, firecracker_env, vsock_guest
):
    fake, env = firecracker_env
    script = firecracker_script(driver_env)
    r = run(
        driver_env,
        run_driver,
        env,
        script,
        """
        import signal
        from nixos_test_ng import MachineError
        fc.start()
        fc.succeed("true")
        os.kill(fc.pid, signal.SIGKILL)  # the VMM dies; the (fake) guest's agent does not
        try:
            fc.snapshot("ready")
        except MachineError as e:
            print("ERROR:", e)
        else:
            raise SystemExit("the snapshot did not fail")
        """,
    )
    assert r.returncode == 0, r
    # (its socket file is left behind: a connection is refused or reset, as it happens)
    assert "ERROR: fc: Firecracker API call PATCH /vm failed: " in r.stdout, r
    assert "(Firecracker exited: signal: 9 (SIGKILL))" in r.stdout, r
    assert [c["call"] for c in calls(fake)] == ["boot"]


def test_firecracker_later_snapshots_are_diffs_merged_into_a_complete_memory_file(
    driver_env, run_driver, firecracker_env, vsock_guest
):
    fake, env = firecracker_env
    script = firecracker_script(driver_env)
    r = run(
        driver_env,
        run_driver,
        env,
        script,
        """
        fc.start()
        fc.succeed("true")
        fc.snapshot("first")
        fc.snapshot("second")
        fc.restore("second")
        fc.succeed("true")
        fc.snapshot("third")  # the restored microVM is a new launch: full again
        fc.snapshot("fourth")
        print("DONE")
        """,
    )
    assert r.returncode == 0, r
    assert "DONE" in r.stdout, r
    state = driver_env.state_dir("fc")
    snapshots = [c for c in calls(fake) if c["call"] == "snapshot"]
    assert [(c["diff"], c["mem_path"]) for c in snapshots] == [
        (False, f"{state}/snapshot-first.mem"),
        # Firecracker writes a diff beside the complete file the engine builds from it
        (True, f"{state}/snapshot-second.mem.diff"),
        (False, f"{state}/snapshot-third.mem"),
        (True, f"{state}/snapshot-fourth.mem.diff"),
    ]
    (restore,) = [c for c in calls(fake) if c["call"] == "restore"]
    assert restore["mem_path"] == f"{state}/snapshot-second.mem"
    # the fake runner's full memory names its snapshot on each page, a diff's only on its
    # last: the merged file is the first snapshot's memory with the diff's page over it
    page = 65536
    merged = (state / "snapshot-second.mem").read_bytes()
    assert len(merged) == 2 * page
    assert merged[:page].startswith(f"full {state}/snapshot-first.vmstate\n".encode())
    assert merged[page:].startswith(f"diff {state}/snapshot-second.vmstate\n".encode())
    fourth = (state / "snapshot-fourth.mem").read_bytes()
    assert fourth[:page].startswith(f"full {state}/snapshot-third.vmstate\n".encode())
    assert fourth[page:].startswith(f"diff {state}/snapshot-fourth.vmstate\n".encode())
    assert sorted(p.name for p in state.glob("snapshot-*.mem*")) == [
        f"snapshot-{n}.mem" for n in ("first", "fourth", "second", "third")
    ]


def test_a_refused_diff_snapshot_falls_back_to_full_for_the_launch(
    driver_env, run_driver, firecracker_env, vsock_guest
):
    fake, env = firecracker_env
    env = {**env, "NTNG_FAKE_RUNNER_FAIL": "snapshot_diff=diff snapshots are not supported"}
    script = firecracker_script(driver_env)
    r = run(
        driver_env,
        run_driver,
        env,
        script,
        """
        fc.start()
        fc.succeed("true")
        fc.snapshot("a")
        fc.snapshot("b")
        fc.snapshot("c")
        fc.restore("b")
        print("DONE")
        """,
    )
    assert r.returncode == 0, r
    assert "DONE" in r.stdout, r
    state = driver_env.state_dir("fc")
    snapshots = [c for c in calls(fake) if c["call"] == "snapshot"]
    # b's diff was refused and taken in full; c is full too, without trying a diff again
    assert [(c["diff"], c["mem_path"]) for c in snapshots] == [
        (False, f"{state}/snapshot-a.mem"),
        (True, f"{state}/snapshot-b.mem.diff"),
        (False, f"{state}/snapshot-b.mem"),
        (False, f"{state}/snapshot-c.mem"),
    ]
    assert r.stderr.count("Firecracker refused a diff snapshot") == 1, r
    assert (
        "fc: Firecracker refused a diff snapshot (fc: Firecracker API call PUT /snapshot/create "
        "failed: Create snapshot error: diff snapshots are not supported (HTTP 400)): this "
        "launch takes full snapshots"
    ) in r.stderr, r
    (restore,) = [c for c in calls(fake) if c["call"] == "restore"]
    assert restore["mem_path"] == f"{state}/snapshot-b.mem"
    assert not (state / "snapshot-b.mem.diff").exists()


def test_firecracker_vmm_metrics_flushes_and_reads_the_metrics_file(
    driver_env, run_driver, firecracker_env, vsock_guest
):
    fake, env = firecracker_env
    script = firecracker_script(driver_env)
    r = run(
        driver_env,
        run_driver,
        env,
        script,
        """
        fc.start()
        fc.succeed("true")
        print("METRICS:", fc.vmm_metrics())
        fc.snapshot("s")
        fc.restore("s")
        # the restored Firecracker writes its metrics to the same file
        print("AFTER-RESTORE:", fc.vmm_metrics())
        """,
    )
    assert r.returncode == 0, r
    # the stand-in's FlushMetrics appends {"standin": true, "state": <its state>}
    assert "METRICS: {'standin': True, 'state': 'Running'}" in r.stdout, r
    assert "AFTER-RESTORE: {'standin': True, 'state': 'Running'}" in r.stdout, r
    lines = (driver_env.state_dir("fc") / "firecracker-metrics.json").read_text().splitlines()
    assert len(lines) == 2, lines


def test_firecracker_vmm_metrics_names_a_bad_metrics_line(
    driver_env, run_driver, firecracker_env, vsock_guest
):
    fake, env = firecracker_env
    script = firecracker_script(driver_env)
    r = run(
        driver_env,
        run_driver,
        env,
        script,
        """
        from nixos_test_ng import MachineError
        try:
            fc.vmm_metrics()
        except MachineError as e:
            print("NOT-RUNNING:", e)
        fc.start()
        fc.succeed("true")
        fc.vmm_metrics()
        # a line cut off in the file: the next flush's object lands after it, on its line
        with open(fc.state_dir / "firecracker-metrics.json", "a") as f:
            f.write('{"cut": ')
        try:
            fc.vmm_metrics()
        except MachineError as e:
            print("BAD:", e)
        else:
            raise SystemExit("a bad metrics line was taken")
        """,
    )
    assert r.returncode == 0, r
    assert "NOT-RUNNING: fc: the machine is not running (call start() first)" in r.stdout, r
    metrics = driver_env.state_dir("fc") / "firecracker-metrics.json"
    assert f"BAD: fc: cannot read Firecracker's metrics {metrics}: its last line is not JSON (" in (
        r.stdout
    ), r


def test_a_firecracker_snapshot_whose_base_is_gone_is_full(
    driver_env, run_driver, firecracker_env, vsock_guest
):
    fake, env = firecracker_env
    script = firecracker_script(driver_env)
    r = run(
        driver_env,
        run_driver,
        env,
        script,
        """
        fc.start()
        fc.succeed("true")
        fc.snapshot("a")
        (fc.state_dir / "snapshot-a.mem").unlink()
        fc.snapshot("b")
        fc.snapshot("c")
        print("DONE")
        """,
    )
    assert r.returncode == 0, r
    assert "DONE" in r.stdout, r
    snapshots = [c for c in calls(fake) if c["call"] == "snapshot"]
    # nothing to lay b's diff over: b is full, and c a diff over it
    assert [c["diff"] for c in snapshots] == [False, False, True]
    assert "refused" not in r.stderr, r
