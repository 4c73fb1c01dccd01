"""`pytest -n 2` (pytest-xdist) on a suite that uses the plugin, with real machines: two
systemd-nspawn containers on a VLAN per worker, and the busybox VM on a VLAN per worker (on
both transports). Each worker runs its tests on machines of its own; the inner run's JUnit has
every test and subtest; an isolated test gets its worker's machine back (restored from its
snapshot, or restarted on the agent transport); the merged XML log keeps each worker's block
apart; no process outlives the run."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from support.xdist import pytest_n2

pytestmark = pytest.mark.vm
pytest.importorskip("xdist")

RECORD = """
import json
import os
from pathlib import Path


def record(request, machine):
    (Path(os.environ["XDIST_RECORDS"]) / f"{request.node.name}.json").write_text(
        json.dumps({
            "worker": os.environ["PYTEST_XDIST_WORKER"],
            "state_dir": str(machine.state_dir),
            "hostname": machine.succeed("hostname").strip(),
        })
    )
"""

# Two files of two tests; `--dist loadfile` keeps a file's tests on one worker, in order.
CONTAINER_SUITE = {
    "test_net.py": """
from conftest import record


def test_reach(request, c1, c2, subtest):
    with subtest("c1 reaches c2 on the worker's VLAN"):
        c1.succeed("ping -c 1 -W 10 c2")
    record(request, c1)


def test_mark(request, c1):
    c1.succeed("touch /root/marker")
    record(request, c1)
""",
    "test_state.py": """
import pytest
from conftest import record


def test_dirty(request, c1):
    c1.succeed("touch /root/marker")
    record(request, c1)


@pytest.mark.isolated
def test_clean(request, c1, subtest):
    with subtest("the marker of the earlier test is gone"):
        c1.fail("test -e /root/marker")
    record(request, c1)
""",
}


def run_inner_pytest(
    vm_env, suite: Path, machine_args: list[str], *extra: str, env: dict[str, str] | None = None
):
    records = vm_env.root / "records"
    records.mkdir()
    junit = vm_env.root / "junit.xml"
    (vm_env.root / "xdg").mkdir(exist_ok=True)
    vm_env.out.mkdir(exist_ok=True)
    r = subprocess.run(
        pytest_n2(
            suite,
            *machine_args,
            "--nixos-out",
            str(vm_env.out),
            f"--junitxml={junit}",
            *extra,
        ),
        capture_output=True,
        text=True,
        env={**vm_env.environ(), "XDIST_RECORDS": str(records), **(env or {})},
        cwd=suite,
        timeout=600,
    )
    runs = {p.stem: json.loads(p.read_text()) for p in records.glob("*.json")}
    cases = (
        {
            f"{c.get('classname').rsplit('.', 1)[-1]}/{c.get('name')}": c
            for c in ET.parse(junit).getroot().iter("testcase")
        }
        if junit.exists()
        else {}
    )
    return r, runs, cases


def write_suite(root: Path, files: dict[str, str]) -> Path:
    suite = root / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text(RECORD)
    for name, text in files.items():
        (suite / name).write_text(text)
    return suite


@pytest.mark.one_transport  # containers take no guest agent
def test_two_workers_each_with_their_own_containers(vm_env, systemd_guest, leftovers):
    scripts = vm_env.scripts(
        {"c1": [1], "c2": [1]}, kinds={"c1": "systemd-nspawn", "c2": "systemd-nspawn"}
    )
    suite = write_suite(vm_env.root, CONTAINER_SUITE)
    args = [a for name in ("c1", "c2") for a in ("--nixos-container-start-script", scripts[name])]
    r, runs, cases = run_inner_pytest(
        vm_env, suite, [*args, "--nixos-vlan", "1"], "--dist", "loadfile"
    )
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-6000:]
    assert "6 passed" in r.stdout.splitlines()[-1], r.stdout  # four tests, two subtests

    assert sorted(runs) == ["test_clean", "test_dirty", "test_mark", "test_reach"]
    workers = {run["worker"] for run in runs.values()}
    assert workers == {"gw0", "gw1"}, runs  # both workers ran tests
    assert runs["test_reach"]["worker"] == runs["test_mark"]["worker"]
    assert runs["test_dirty"]["worker"] == runs["test_clean"]["worker"]
    for run in runs.values():
        tmp = vm_env.root / "xdg" / f"ntng-{run['worker']}"
        assert run["state_dir"] == str(tmp / "vm-state-c1"), run
        assert run["hostname"] == "c1"
    assert runs["test_reach"]["state_dir"] != runs["test_clean"]["state_dir"]

    assert sorted(cases) == sorted(
        [
            "test_net/test_reach",
            "test_net/test_mark",
            "test_state/test_dirty",
            "test_state/test_clean",
            "test_reach/c1 reaches c2 on the worker's VLAN",
            "test_clean/the marker of the earlier test is gone",
        ]
    )
    assert not any(c.find("failure") is not None for c in cases.values())
    props = {p.get("name"): p.get("value") for p in cases["test_state/test_clean"].iter("property")}
    assert props["isolation"] == "isolated: c1 restored"
    assert not leftovers(vm_env.root, wait=5)


VM_SUITE = {
    "test_one.py": """
from conftest import record


def test_a(request, server, subtest):
    with subtest("uname"):
        server.succeed("uname")
    record(request, server)


def test_b(request, server):
    server.succeed("true")
    record(request, server)
""",
    "test_two.py": """
import pytest
from conftest import record


def test_c(request, server):
    server.succeed("touch /tmp/marker")
    record(request, server)


@pytest.mark.isolated
def test_d(request, server):
    server.fail("test -e /tmp/marker")
    record(request, server)
""",
}


def test_vm_workers(vm_env, vm_transport, leftovers):
    scripts = vm_env.scripts({"server": [1]})
    suite = write_suite(vm_env.root, VM_SUITE)
    r, runs, cases = run_inner_pytest(
        vm_env,
        suite,
        ["--nixos-vm-start-script", scripts["server"], "--nixos-vlan", "1"],
        "--dist",
        "loadfile",
        env={"LOGFILE": str(vm_env.root / "log.xml")},
    )
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-6000:]
    assert "5 passed" in r.stdout.splitlines()[-1], r.stdout
    assert {run["worker"] for run in runs.values()} == {"gw0", "gw1"}, runs
    assert len({run["state_dir"] for run in runs.values()}) == 2
    assert len(cases) == 5
    # isolation on the worker that ran test_two.py: its own VM, back to its first-ready state
    props = {p.get("name"): p.get("value") for p in cases["test_two/test_d"].iter("property")}
    if vm_transport == "agent":  # QEMU cannot save the agent's vhost-user device
        assert props["isolation"].startswith("isolated: server restarted"), props
    else:
        assert props["isolation"] == "isolated: server restored", props
    # the merged XML log: each worker's block names its own switch and state directory
    root = ET.parse(vm_env.root / "log.xml").getroot()
    blocks = {n.findtext("head"): ET.tostring(n, encoding="unicode") for n in root.findall("nest")}
    assert sorted(blocks) == ["pytest-xdist worker gw0", "pytest-xdist worker gw1"]
    for worker in ("gw0", "gw1"):
        text = blocks[f"pytest-xdist worker {worker}"]
        assert f"ntng-{worker}/vde1.ctl" in text
        other = "gw1" if worker == "gw0" else "gw0"
        assert f"ntng-{other}" not in text
    assert not leftovers(vm_env.root, wait=5)
