"""`pytest -n 2` (pytest-xdist) on a suite that uses the plugin, on the fake QEMU: each worker
has its own driver, tmp dir (state directories, sockets, VLAN switch, shared directory) and
output directory; the controller starts no machines; pytest's JUnit has every test and
subtest; the XML log of `LOGFILE` is one merged file; isolation works per worker."""

from __future__ import annotations

import json
import os
import subprocess
import xml.etree.ElementTree as ET

import pytest
from support.xdist import pytest_n2

pytest.importorskip("xdist")

# Two files, two tests each; every test records where its worker's machine lives.
SUITE = """
import json
import os
from pathlib import Path

import pytest


def record(request, alpha, driver, vlan1):
    (Path(os.environ["XDIST_RECORDS"]) / f"{{request.node.name}}.json").write_text(
        json.dumps({{
            "worker": os.environ["PYTEST_XDIST_WORKER"],
            "pid": os.getpid(),
            "state_dir": str(alpha.state_dir),
            "shared_dir": str(alpha.shared_dir),
            "vlan_socket": vlan1.socket_dir,
            "out_dir": str(driver.out_dir),
        }})
    )


def test_{name}_plain(request, alpha, driver, vlan1, subtest):
    with subtest("{name} echoes"):
        assert alpha.succeed("echo hi") == "hi\\n"
    record(request, alpha, driver, vlan1)


@pytest.mark.isolated
def test_{name}_isolated(request, alpha, driver, vlan1, subtest):
    with subtest("{name} writes"):
        alpha.succeed("true")
    record(request, alpha, driver, vlan1)
"""


def test_two_workers_run_four_tests_each_with_machines_of_its_own(driver_env, fake_vm):
    vm = fake_vm("alpha")
    suite = driver_env.tmp / "suite"
    suite.mkdir()
    for name in ("first", "second"):
        (suite / f"test_{name}.py").write_text(SUITE.format(name=name))
    records = driver_env.tmp / "records"
    records.mkdir()
    out, junit, log = driver_env.out, driver_env.tmp / "junit.xml", driver_env.tmp / "log.xml"
    r = subprocess.run(
        pytest_n2(
            suite,
            "--nixos-vm-start-script",
            str(vm.script),
            "--nixos-vlan",
            "1",
            "--nixos-out",
            str(out),
            f"--junitxml={junit}",
        ),
        capture_output=True,
        text=True,
        env={
            **driver_env.env,
            "PATH": os.environ["PATH"],
            "XDIST_RECORDS": str(records),
            "LOGFILE": str(log),
        },
        cwd=suite,
        timeout=240,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "8 passed" in r.stdout.splitlines()[-1], r.stdout  # four tests, four subtests

    runs = {p.stem: json.loads(p.read_text()) for p in records.glob("*.json")}
    assert sorted(runs) == sorted(
        f"test_{n}_{kind}" for n in ("first", "second") for kind in ("plain", "isolated")
    )
    by_worker: dict[str, list[dict]] = {}
    for run in runs.values():
        by_worker.setdefault(run["worker"], []).append(run)
    assert sorted(by_worker) == ["gw0", "gw1"], runs  # both workers ran tests
    for worker, worker_runs in by_worker.items():
        # one driver per worker: every test of a worker saw the same paths ...
        for key in ("pid", "state_dir", "shared_dir", "vlan_socket", "out_dir"):
            assert len({run[key] for run in worker_runs}) == 1, (worker, key, worker_runs)
        run = worker_runs[0]
        tmp = driver_env.runtime / f"ntng-{worker}"
        assert run["state_dir"] == str(tmp / "vm-state-alpha")
        assert run["shared_dir"] == str(tmp / "shared-xchg")
        assert run["vlan_socket"] == str(tmp / "vde1.ctl")
        assert run["out_dir"] == str(out / worker)
        assert (out / worker).is_dir()
    # ... and the two workers' paths differ
    first, second = (by_worker[w][0] for w in ("gw0", "gw1"))
    for key in ("pid", "state_dir", "shared_dir", "vlan_socket", "out_dir"):
        assert first[key] != second[key], key
    # the controller started no machine: nothing of a driver in the tmp dir itself
    assert not (driver_env.runtime / "vm-state-alpha").exists()
    assert not (driver_env.runtime / "vde1.ctl").exists()

    # pytest's JUnit, written by the controller: the four tests and their subtests (a
    # subtest's case is named after it, its class after its test)
    cases = {
        f"{c.get('classname').rsplit('.', 1)[-1]}/{c.get('name')}": c
        for c in ET.parse(junit).getroot().iter("testcase")
    }
    assert sorted(cases) == sorted(
        [
            "test_first/test_first_plain",
            "test_first/test_first_isolated",
            "test_second/test_second_plain",
            "test_second/test_second_isolated",
            "test_first_plain/first echoes",
            "test_first_isolated/first writes",
            "test_second_plain/second echoes",
            "test_second_isolated/second writes",
        ]
    )
    assert not any(c.find("failure") is not None for c in cases.values())
    props = {
        name: {p.get("name"): p.get("value") for p in c.iter("property")}
        for name, c in cases.items()
    }
    for n in ("first", "second"):
        assert props[f"test_{n}/test_{n}_plain"]["isolation"] == "session machines"
        isolated = props[f"test_{n}/test_{n}_isolated"]["isolation"]
        assert isolated.startswith("isolated: alpha"), isolated

    # the HTML reports: one per worker beside each other, each with its worker's tests,
    # listed by the controller
    for worker, worker_runs in by_worker.items():
        report = out / f"report-{worker}.html"
        html = report.read_text()
        for test in runs:
            ran_here = any(runs[test] is run for run in worker_runs)
            assert (test in html) == ran_here, (worker, test)
        assert f"{worker}: {report}" in r.stdout
    assert not (out / "report.html").exists()

    # the XML log: one file, each worker's log in a block of its own, no parts left
    root = ET.parse(log).getroot()
    assert root.tag == "logfile"
    heads = [nest.findtext("head") for nest in root.findall("nest")]
    assert heads == ["pytest-xdist worker gw0", "pytest-xdist worker gw1"]
    for nest in root.findall("nest"):
        text = ET.tostring(nest, encoding="unicode")
        assert "alpha" in text  # the worker's own machine's log is in its block
    assert sorted(p.name for p in log.parent.glob("log*.xml")) == ["log.xml"]


def test_the_controller_merges_what_it_can_read_and_keeps_the_rest(tmp_path):
    from nixos_test_ng.workers import merge_xml_logs

    good, broken = tmp_path / "log-gw1.xml", tmp_path / "log-gw0.xml"
    good.write_text('<?xml version="1.0"?>\n<logfile>\n<line>from gw1</line>\n</logfile>\n')
    broken.write_text("<logfile>\n<line>cut off by a kill")  # a worker that died mid-write
    target = tmp_path / "log.xml"
    warnings = merge_xml_logs(target, {"gw1": good, "gw0": broken})
    root = ET.parse(target).getroot()
    assert [n.findtext("head") for n in root.findall("nest")] == [
        "pytest-xdist worker gw0",
        "pytest-xdist worker gw1",
    ]
    gw0, gw1 = root.findall("nest")
    assert "cannot be read" in gw0.findtext("line") and str(broken) in gw0.findtext("line")
    assert gw1.findtext("line") == "from gw1"
    assert len(warnings) == 1 and str(broken) in warnings[0]
    assert broken.exists() and not good.exists()  # the unreadable part is kept for a look


def test_workers_sort_by_number():
    from nixos_test_ng.workers import _worker_order

    assert sorted(["gw10", "gw2", "gw0"], key=_worker_order) == ["gw0", "gw2", "gw10"]


def test_a_script_the_driver_runs_cannot_be_spread_over_workers(driver_env, run_driver):
    _, args = driver_env.script_args(
        "def test_x(alpha):\n    alpha.succeed('true')\n", after=["-n", "2"]
    )
    r = run_driver(args, timeout=120)
    assert r.returncode == 2, r
    assert "cannot spread a test script the driver runs" in r.stderr + r.stdout, r


def test_a_bad_option_is_one_usage_error_from_the_controller(driver_env, fake_vm):
    vm = fake_vm("alpha")
    suite = driver_env.tmp / "suite"
    suite.mkdir()
    (suite / "test_x.py").write_text("def test_x(alpha):\n    pass\n")
    r = subprocess.run(
        pytest_n2(
            suite,
            "--nixos-vm-start-script",
            str(vm.script),
            "--nixos-out",
            str(driver_env.tmp / "missing"),
        ),
        capture_output=True,
        text=True,
        env={**driver_env.env, "PATH": os.environ["PATH"]},
        cwd=suite,
        timeout=120,
    )
    assert r.returncode == 4, r.stdout + r.stderr  # pytest's usage error
    assert "nixos-test-ng: output directory" in r.stderr, r.stderr
    assert "crashed" not in r.stdout + r.stderr  # no worker was started


FAILING = """
def test_steps(alpha, subtest):
    with subtest("works"):
        alpha.succeed("true")
    with subtest("breaks"):
        alpha.succeed("echo about-to-break; exit 5")


def test_other(alpha):
    alpha.succeed("true")
"""


def test_a_failing_subtest_on_a_worker_is_a_failure_in_the_controllers_junit(driver_env, fake_vm):
    vm = fake_vm("alpha")
    suite = driver_env.tmp / "suite"
    suite.mkdir()
    (suite / "test_steps.py").write_text(FAILING)
    junit = driver_env.tmp / "junit.xml"
    r = subprocess.run(
        pytest_n2(
            suite,
            "--nixos-vm-start-script",
            str(vm.script),
            f"--junitxml={junit}",
        ),
        capture_output=True,
        text=True,
        env={**driver_env.env, "PATH": os.environ["PATH"]},
        cwd=driver_env.out,
        timeout=120,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert "2 failed, 2 passed" in r.stdout.splitlines()[-1], r.stdout  # test_steps, "breaks"
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert set(cases) == {"works", "breaks", "test_steps", "test_other"}, set(cases)
    assert cases["works"].find("failure") is None
    breaks = cases["breaks"].find("failure")
    assert breaks is not None and "exit code 5" in breaks.get("message"), ET.tostring(breaks)
    assert "last console lines of alpha" in breaks.text, breaks.text
    assert cases["test_steps"].find("failure") is not None
