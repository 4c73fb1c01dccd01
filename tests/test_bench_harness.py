"""The benchmark harness (benches/harness) without a VM: its figures reproduce the recorded
results from their raw measurements, and one run of a fake driver goes through the whole
runner (start scripts and their wrappers, the driver's command line, the result file, the
`connecting took` lines, the reaper). No figure is checked against a time."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import pytest
from nixos_test_ng import procs
from support.guest import make_fake_guest

BENCHES = Path(__file__).resolve().parent.parent / "benches"
sys.path.insert(0, str(BENCHES))

from harness import RESULTS, results  # noqa: E402
from harness.figures import per_run_figures  # noqa: E402
from harness.report import markdown  # noqa: E402
from harness.runner import Context, RunFailed, run_once  # noqa: E402
from harness.suites import Suite, suites  # noqa: E402

RECORDED = sorted(RESULTS.glob("*.json"))


@pytest.mark.parametrize("path", [p for p in RECORDED if p.stem != "check"], ids=lambda p: p.stem)
def test_recorded_results_are_what_the_harness_computes(path: Path):
    doc = json.loads(path.read_text())
    for suite, runs in doc["runs"].items():
        for raw in runs:
            assert per_run_figures(suite, raw) == raw["figures"], (suite, raw["figures"])
    assert results.metrics(doc["runs"]) == doc["metrics"]
    assert results.true_pooled(doc["runs"]) == doc["true_pooled"]
    table = markdown(doc)
    assert "| # | what | min | median | max | n | upstream | ratio | target | met |" in table


def test_suites_are_the_documented_ones():
    readme = (BENCHES / "README.md").read_text()
    for s in suites(200, 5, 5):
        assert f"`{s.name}`" in readme, s.name
        assert (BENCHES / "scripts" / s.script).is_file(), s.script


FAKE_DRIVER = """#!{python}
# A fake nixos-test-driver: runs each VM start script (a fake QEMU on PATH), says how long
# "connecting" took, writes the minimal suite's result, and leaves two processes behind:
# one in its session, one that left it but names the run's directory.
import json, os, subprocess, sys, time

args = sys.argv[1:]
scripts = args[args.index("--vm-start-scripts") + 1 : args.index("-o")]
env = dict(os.environ, PATH="{fakebin}:" + os.environ["PATH"], TMPDIR=os.getcwd(), USE_TMPDIR="1")
t_script = time.time()
for script in scripts:
    subprocess.run([script], env=env, check=True)
subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL)
subprocess.Popen(["sh", "-c", "sleep 600", "left-session", os.getcwd()], start_new_session=True)
print("machine: (connecting took 0.25 seconds)", file=sys.stderr)
now = time.time()
result = dict(t_script=t_script, t_started=now, t_first=now + 0.5, vm_hwm_kib=20000, t_end=now)
with open(os.environ["NTNG_BENCH_RESULT"], "w") as f:
    json.dump(result, f)
sys.exit(int(os.environ.get("FAKE_DRIVER_STATUS", "0")))
"""


@pytest.fixture
def bench(tmp_path: Path):
    """A runner context whose driver is the fake one above, and the reaper behind it."""
    fakebin = tmp_path / "fakebin"
    fakebin.mkdir()
    qemu = fakebin / "qemu-system-x86_64"
    qemu.write_text("#!/bin/sh\nexit 0\n")
    qemu.chmod(0o755)
    driver = tmp_path / "fake-driver"
    driver.write_text(FAKE_DRIVER.format(python=sys.executable, fakebin=shlex.quote(str(fakebin))))
    driver.chmod(0o755)
    root = tmp_path / "runs"
    root.mkdir()
    reaper = procs.Reaper()
    guest = make_fake_guest(tmp_path / "guest")
    yield Context(str(driver), guest, root, reaper, keep_tmp=False)
    reaper.reap_all()


MINIMAL = Suite("minimal", "minimal.py", {"machine": []})


def test_a_run_gives_its_figures_and_leaves_nothing(bench: Context):
    raw = run_once(bench, MINIMAL, "minimal-1")
    assert raw["exit_status"] == 0
    assert raw["connecting_s"] == {"machine": 0.25}
    assert set(raw["exec_stamps"]) == {"machine"}  # the wrapper ran the start script
    figures = per_run_figures("minimal", raw)
    assert figures["connecting_s"] == 0.25 and figures["rss_minimal_mb"] == 20.0
    # both leftovers were killed: the one in the driver's session, the one that left it
    killed = raw["leftover_processes"]
    assert len(killed) == 2, killed
    assert any("left-session" in k for k in killed), killed
    for entry in killed:
        assert not procs.alive(int(entry.split(":")[0])), entry
    assert list(bench.tmp_root.iterdir()) == []  # the run's directory is gone
    assert bench.reaper.runs == []


def test_a_failed_run_is_named_with_the_driver_status(bench: Context, monkeypatch):
    monkeypatch.setenv("FAKE_DRIVER_STATUS", "3")
    with pytest.raises(RunFailed, match=r"minimal-1: the driver exited with 3"):
        run_once(bench, MINIMAL, "minimal-1")
    assert bench.reaper.runs == []


def test_the_bench_script_keeps_its_command_line():
    import subprocess

    r = subprocess.run(
        [sys.executable, str(BENCHES / "run.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert r.returncode == 0, r.stderr
    for flag in ("--runs", "--quick", "--driver", "--only", "--name", "--note", "--keep-tmp"):
        assert flag in r.stdout, flag
    r = subprocess.run(
        [sys.executable, str(BENCHES / "run.py"), "--only", "nonesuch"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert r.returncode == 2 and "unknown suite(s): nonesuch" in r.stderr, r.stderr
