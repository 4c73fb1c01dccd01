"""`nixos_test_ng.procs`: the process walker, the reaper and the driver's command line that
`nixos-test-ng run`, the benchmarks and the test suite share."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from nixos_test_ng import procs


def test_driver_arguments_split_vms_and_containers_and_sort_the_vlans():
    scripts = {"a": "/s/run-a-vm", "box": Path("/s/run-box-nspawn"), "b": "/s/run-b-vm"}
    kinds = {"box": "systemd-nspawn", "a": "busybox"}
    assert procs.driver_arguments(scripts, kinds, [2, 1, 2]) == [
        "--vm-start-scripts", "/s/run-a-vm", "/s/run-b-vm",
        "--container-start-scripts", "/s/run-box-nspawn",
        "--vlans", "1", "2",
    ]  # fmt: skip
    assert procs.driver_arguments({"m": "/s/run-m-vm"}) == ["--vm-start-scripts", "/s/run-m-vm"]
    assert procs.driver_arguments({}) == []


def test_driver_arguments_pass_firecracker_scripts_with_start_scripts():
    scripts = {"fc": "/s/run-fc-firecracker", "sd": "/s/run-sd-firecracker", "a": "/s/run-a-vm"}
    kinds = {"fc": "busybox-firecracker", "sd": "systemd-firecracker"}
    assert procs.driver_arguments(scripts, kinds) == [
        "--vm-start-scripts", "/s/run-a-vm",
        "--start-scripts", "/s/run-fc-firecracker", "/s/run-sd-firecracker",
    ]  # fmt: skip
    every = (None, "systemd-vm", "systemd-nspawn", *kinds.values())
    assert [procs.script_suffix(k) for k in every] == [
        "vm", "vm", "nspawn", "firecracker", "firecracker",
    ]  # fmt: skip


def test_driver_arguments_pass_every_vmm_script_in_one_start_scripts_flag():
    scripts = {
        "fc": "/s/run-fc-firecracker",
        "ch": "/s/run-ch-cloud-hypervisor",
        "sd": "/s/run-sd-cloud-hypervisor",
        "box": "/s/run-box-nspawn",
    }
    kinds = {
        "fc": "busybox-firecracker",
        "ch": "busybox-cloud-hypervisor",
        "sd": "systemd-cloud-hypervisor",
        "box": "systemd-nspawn",
    }
    # one --start-scripts for both VMMs (upstream's argparse keeps only a repeated flag's last)
    assert procs.driver_arguments(scripts, kinds, [1]) == [
        "--container-start-scripts", "/s/run-box-nspawn",
        "--start-scripts", "/s/run-fc-firecracker", "/s/run-ch-cloud-hypervisor",
        "/s/run-sd-cloud-hypervisor",
        "--vlans", "1",
    ]  # fmt: skip
    assert [procs.script_suffix(k) for k in kinds.values()] == [
        "firecracker", "cloud-hypervisor", "cloud-hypervisor", "nspawn",
    ]  # fmt: skip


def test_read_sees_this_process_and_a_zombie():
    me = procs.read(os.getpid())
    assert me is not None and me.alive
    assert (me.ppid, me.pgrp, me.session) == (os.getppid(), os.getpgrp(), os.getsid(0))
    child = subprocess.Popen(["true"])
    # not yet waited for: a zombie once it exited
    procs.wait_until(lambda: not procs.alive(child.pid), 30)
    zombie = procs.read(child.pid)
    assert zombie is not None and zombie.state == "Z" and not zombie.alive
    child.wait()
    assert procs.read(child.pid) is None
    assert procs.cmdline(child.pid) == "" and procs.environ(child.pid) == []


#: a process that puts itself in a process group of its own and sleeps
OWN_GROUP = f"{sys.executable} -c 'import os, time; os.setpgid(0, 0); time.sleep(600)'"


def test_descendants_and_markers(tmp_path):
    env = {**os.environ, "PROCS_TEST_MARK": str(tmp_path)}
    # a shell (named by tmp_path) with a child that leaves the shell's process group
    script = (
        f"{OWN_GROUP} & echo $!; exec {sys.executable} -c 'import time; time.sleep(600)' {tmp_path}"
    )
    shell = subprocess.Popen(
        ["sh", "-c", script], stdout=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        child = int(shell.stdout.readline())
        procs.wait_until(lambda: str(tmp_path) in procs.cmdline(shell.pid), 30)
        procs.wait_until(lambda: procs.read(child).pgrp == child, 30)
        assert procs.descendants([shell.pid]) == {child}
        assert procs.read(child).pgrp == child != procs.read(shell.pid).pgrp
        by_session = procs.marked(procs.Marker(session=shell.pid))
        assert set(by_session) == {shell.pid, child}
        assert set(procs.marked(procs.Marker(needles=(str(tmp_path),)))) == {shell.pid}
        by_env = procs.marked(procs.Marker(env=(f"PROCS_TEST_MARK={tmp_path}",)))
        assert set(by_env) == {shell.pid, child}
        assert set(procs.marked(procs.Marker(group=child))) == {child}
        assert procs.marked(procs.Marker()) == {}  # an empty marker matches nothing
    finally:
        procs.end_run(procs.Marker(session=shell.pid))
        shell.wait()
        shell.stdout.close()
    assert not procs.alive(child)


def test_the_reaper_ends_whole_runs(tmp_path):
    """A run's processes in other process groups and one that left its session (but names
    the run's directory) all go; a run that ended by itself leaves nothing to kill."""
    reaper = procs.Reaper()
    left = f"setsid {sys.executable} -c 'import time; time.sleep(600)' {tmp_path} &"
    proc = reaper.spawn(
        ["sh", "-c", f"{OWN_GROUP} & {left} echo started; exec sleep 600"],
        needles=[str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline() == "started\n"
    marker = procs.Marker(session=proc.pid, needles=(str(tmp_path),))
    procs.wait_until(lambda: len(procs.marked(marker)) == 3, 30)
    run = procs.marked(marker)
    assert len(run) == 3, run
    killed = reaper.reap(proc)
    assert set(killed) == set(run)
    assert not any(procs.alive(pid) for pid in run)
    assert proc.returncode is not None and proc.stdout.closed
    assert reaper.runs == []

    done = reaper.spawn(["true"])
    done.wait()
    assert reaper.reap_all(grace=5) == {}


def test_survivors_waits_for_processes_that_end_by_themselves(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)", str(tmp_path)])
    try:
        assert procs.survivors(procs.Marker(needles=(str(tmp_path),)), grace=60) == {}
    finally:
        p.wait()


@pytest.mark.parametrize("value", [0, "", None, [], {}])
def test_wait_until_returns_the_last_false_value_after_the_timeout(value):
    assert procs.wait_until(lambda: value, timeout=0) == value
