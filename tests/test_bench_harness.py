"""The benchmark harness (benches/harness) without a VM: its figures reproduce the recorded
results from their raw measurements, and one run of a fake driver goes through the whole
runner (start scripts and their wrappers, the driver's command line, the result file, the
`connecting took` lines, the reaper), for our driver and for upstream's (`--upstream`): its
command line, its wrappers, its provenance, and a report that compares only with upstream's
runs of the same run. No figure is checked against a time."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path

import pytest
from nixos_test_ng import procs
from support.guest import make_fake_guest

BENCHES = Path(__file__).resolve().parent.parent / "benches"
sys.path.insert(0, str(BENCHES))

from harness import RESULTS, results, runner, upstream  # noqa: E402
from harness.figures import per_run_figures  # noqa: E402
from harness.report import markdown  # noqa: E402
from harness.runner import Context, Driver, RunFailed, command_line, run_once  # noqa: E402
from harness.suites import GROUPS, TRANSPORT_VAR, Suite, suites  # noqa: E402

RECORDED = sorted(RESULTS.glob("*.json"))
#: Results written by standalone bench scripts (benches/scripts/check.py, boot_cache.py), not
#: by the harness.
STANDALONE = {"check", "boot-cache"}


def standalone(path: Path) -> bool:
    """The soak harness's results (benches/soak.py) are `soak-NAME`; boot_cache.py's, under a
    name of their own, `boot-cache-NAME`."""
    return path.stem in STANDALONE or path.stem.startswith(("soak-", "boot-cache-"))


@pytest.mark.parametrize("path", [p for p in RECORDED if not standalone(p)], ids=lambda p: p.stem)
def test_recorded_results_are_what_the_harness_computes(path: Path):
    doc = json.loads(path.read_text())
    for suite, runs in doc["runs"].items():
        for raw in runs:
            assert per_run_figures(suite, raw) == raw["figures"], (suite, raw["figures"])
    assert results.metrics(doc["runs"]) == doc["metrics"]
    assert results.true_pooled(doc["runs"]) == doc["true_pooled"]
    theirs = doc.get("upstream_runs")
    if theirs is not None:
        for suite, runs in theirs.items():
            for raw in runs:
                assert per_run_figures(suite, raw) == raw["figures"], (suite, raw["figures"])
        assert results.metrics(theirs) == doc["upstream_metrics"]
    table = markdown(doc)
    if theirs is None:
        # figures recorded on another day (older documents' "upstream") are never shown
        assert "| # | what | min | median | max | n | target | met |" in table
        assert "No upstream comparison was made in this run" in table
    else:
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
if os.environ.get("FAKE_DRIVER_HANG"):
    os.remove(os.environ["NTNG_BENCH_RESULT"])
    time.sleep(600)
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


def test_a_hung_run_is_killed_and_said_to_have_hung(bench: Context, monkeypatch):
    monkeypatch.setattr(runner, "RUN_TIMEOUT_S", 0.5)
    monkeypatch.setenv("FAKE_DRIVER_HANG", "1")
    with pytest.raises(RunFailed, match=r"minimal-1: the driver killed after 0.5 s without exit"):
        run_once(bench, MINIMAL, "minimal-1")
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
    flags = ("--runs", "--quick", "--driver", "--upstream", "--only", "--name", "--note")
    for flag in (*flags, "--keep-tmp"):
        assert flag in r.stdout, flag
    r = subprocess.run(
        [sys.executable, str(BENCHES / "run.py"), "--only", "nonesuch"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert r.returncode == 2 and "unknown suite(s): nonesuch" in r.stderr, r.stderr
    r = subprocess.run(
        [sys.executable, str(BENCHES / "run.py"), "--upstream", "/nonexistent/driver"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert r.returncode == 2, r.stderr
    assert "--upstream: `/nonexistent/driver` is not an executable" in r.stderr, r.stderr


# -- upstream's driver in the same run ---------------------------------------------------------

FAKE_UPSTREAM = """#!{python}
# A fake upstream driver: upstream's command line (the test script first, then -o, --vlans,
# --vm-start-scripts / --container-start-scripts), upstream's start-script contract (one
# string through `sh -c`), its `connecting took` line for VMs only; writes the result of the
# minimal suite, or the container suite's for a container.
import json, os, subprocess, sys, time

args = sys.argv[1:]
script = args[0]
assert script.endswith(".py") and args[1] == "-o", args
vlans = args[args.index("--vlans") + 1 :]
vlans = vlans[: next((i for i, a in enumerate(vlans) if a.startswith("--")), len(vlans))]
with open(os.environ["FAKE_ARGS"], "w") as f:
    json.dump(args, f)
env = dict(os.environ, PATH="{fakebin}:" + os.environ["PATH"], TMPDIR=os.getcwd(), USE_TMPDIR="1")
t_script = time.time()
if "--vm-start-scripts" in args:
    for s in args[args.index("--vm-start-scripts") + 1 :]:
        subprocess.run(s + " -qmp unix:x,server=on,wait=off", shell=True, env=env, check=True)
    print("machine: (connecting took 0.50 seconds)", file=sys.stderr)
    now = time.time()
    result = dict(t_script=t_script, t_started=now, t_first=now + 0.5, vm_hwm_kib=50000, t_end=now)
else:
    s = args[args.index("--container-start-scripts") + 1]
    out = subprocess.run([s], env={{"RUN_NSPAWN_ROOT_DIR": "x", "RUN_NSPAWN_SHARED_DIR": "y"}},
                         capture_output=True, text=True, check=True).stdout
    assert "Welcome to NixOS" in out, out
    result = dict(first_command_s=0.5, multi_user_s=0.6, true_s=[0.004, 0.005], mb_stdout_s=[0.01],
                  vm_hwm_kib=52000)
with open(os.environ["NTNG_BENCH_RESULT"], "w") as f:
    json.dump(result, f)
"""

# The real container script of a fake guest cannot boot; this one says what upstream waits for.
FAKE_NSPAWN = """#!/bin/bash
echo "systemd-nspawn's PID is $$"
echo "[  OK  ] Reached target multi-user.target - Multi-User System."
echo "a line nobody reads"
"""


@pytest.fixture
def upstream_bench(bench: Context, tmp_path: Path, monkeypatch):
    """A runner context whose driver is the fake upstream driver above; runs without the
    private mount namespace (which needs root)."""
    fakebin = tmp_path / "fakebin"
    driver = tmp_path / "fake-upstream"
    text = FAKE_UPSTREAM.format(python=sys.executable, fakebin=shlex.quote(str(fakebin)))
    driver.write_text(text)
    driver.chmod(0o755)
    monkeypatch.setattr(runner, "UPSTREAM_PREFIX", ())
    monkeypatch.setenv("FAKE_ARGS", str(tmp_path / "args.json"))
    yield Context(Driver((str(driver),), kind="upstream"), bench.guest_dir, bench.tmp_root,
                  bench.reaper, keep_tmp=False)  # fmt: skip


def test_upstreams_command_line_is_the_baselines():
    suite = Suite("x", "minimal.py", {"node1": [1], "node2": [1]})
    wrappers = {"node1": Path("/b/run-node1-vm"), "node2": Path("/b/run-node2-vm")}
    up = command_line(Driver(("/u/nixos-test-driver",), "upstream"), suite, wrappers, Path("/o"))
    script = str(BENCHES / "scripts" / "minimal.py")
    assert up == [
        "unshare", "--mount", "--propagation", "private", "/u/nixos-test-driver", script,
        "-o", "/o", "--vlans", "1", "--vm-start-scripts", "/b/run-node1-vm", "/b/run-node2-vm",
    ]  # fmt: skip
    ours = command_line(Driver(("/d",)), suite, wrappers, Path("/o"))
    assert ours[0] == "/d" and ours[-2:] == ["--", script]
    # without VLANs upstream still gets `--vlans` (it crashes on `set(None)` without)
    ct = Suite("c", "container.py", {"box": []}, kinds={"box": "systemd-nspawn"})
    box = {"box": Path("/b/run-box-nspawn")}
    up = command_line(Driver(("/u",), "upstream"), ct, box, Path("/o"))
    assert up[-3:] == ["--vlans", "--container-start-scripts", "/b/run-box-nspawn"], up


def test_an_upstream_run_gives_its_figures_and_leaves_nothing(upstream_bench: Context):
    raw = run_once(upstream_bench, Suite("minimal", "minimal.py", {"machine": []}), "up-1")
    args = json.loads(Path(os.environ["FAKE_ARGS"]).read_text())
    assert args[0] == str(BENCHES / "scripts" / "minimal.py")
    assert args[args.index("--vm-start-scripts") + 1].endswith("/run-machine-vm")
    assert raw["connecting_s"] == {"machine": 0.5}
    assert set(raw["exec_stamps"]) == {"machine"}  # upstream's wrapper ran the start script
    assert per_run_figures("minimal", raw)["rss_minimal_mb"] == 50.0
    assert raw["leftover_processes"] == []
    assert list(upstream_bench.tmp_root.iterdir()) == []


def test_upstreams_container_wrapper_announces_multi_user(upstream_bench: Context, monkeypatch):
    """Upstream's container needs "Welcome to NixOS" after the PID line: the wrapper prints it
    at multi-user.target; upstream logs no handshake for containers, and none is required."""
    import nixos_test_ng.guest as guest

    def fake_scripts(out, nodes, **_kw):
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "run-machine-nspawn").write_text(FAKE_NSPAWN)
        (out / "run-machine-nspawn").chmod(0o755)
        return {"machine": out / "run-machine-nspawn"}

    monkeypatch.setattr(guest, "write_start_scripts", fake_scripts)
    kinds = {"machine": "systemd-nspawn"}
    raw = run_once(
        upstream_bench, Suite("container", "container.py", {"machine": []}, kinds=kinds), "ct-1"
    )
    assert raw["connecting_s"] == {}
    assert per_run_figures("container", raw)["ct_mb_stdout_s"] == 0.01


META = {
    "started": "s", "finished": "f", "duration_s": 1, "quick": True, "command": "c", "runs": 2,
    "calls": 200, "warmup": 5, "mb_iters": 5, "note": None,
}  # fmt: skip
ENV = {
    "cpu_model": "cpu", "nproc": 2, "mem_total_gib": 1, "kernel": "k", "qemu_version": [],
    "loadavg_before": None, "git_commit": "g", "git_dirty": False, "driver": "d",
    "driver_version_python": "v",
}  # fmt: skip


def _run(figures: dict[str, float], round_: int) -> dict:
    return {"round": round_, "figures": figures, "true_s": [figures["true_median_s"]]}


def test_the_report_compares_only_with_upstreams_runs_of_the_same_run():
    ours = {"commands": [_run({"true_median_s": 0.004, "mb_stdout_s": 0.5}, i) for i in (1, 2)]}
    theirs = {"commands": [_run({"true_median_s": 0.016, "mb_stdout_s": 0.5}, i) for i in (1, 2)]}
    driver_py = {"local": "src/test_driver/driver.py", "commit": "003d58163f46" + "0" * 28}
    env = {**ENV, "upstream_driver": {"command": "/u/ntd", "files": [driver_py]}}

    doc = results.document(META, env, ours, [], theirs)
    assert doc["upstream_metrics"]["true_median_s"]["median"] == 0.016
    assert doc["upstream_paired_ratios"]["true_median_s"]["median"] == 0.25
    table = markdown(doc)
    # ratio 0.25 against the target "at most 1/3 of upstream's in the same run": met;
    # 1 MB at 1.00 against "at most 0.7": not met
    assert "| 4.00 ms | 2 | 16.00 ms | 0.25 | 8.00 ms, ≤ 0.33 × upstream | yes, yes |" in table
    assert "| 0.500 s | 2 | 0.500 s | 1.00 | 0.200 s, ≤ 0.70 × upstream | **no**, **no** |" in table
    assert "`/u/ntd`" in table and "@003d58163f46" in table
    # without --upstream: ours only, and said so
    doc = results.document(META, {**env, "upstream_driver": None}, ours, [])
    table = markdown(doc)
    assert "No upstream comparison was made in this run" in table
    assert "16.00 ms" not in table and "× upstream" not in table


def test_upstream_provenance_hashes_the_files_it_lists(tmp_path: Path):
    (tmp_path / "bin").mkdir()
    launcher = tmp_path / "bin" / "nixos-test-driver"
    launcher.write_text(f"#!{sys.executable}\n")
    launcher.chmod(0o755)
    src = tmp_path / "src" / "driver.py"
    src.parent.mkdir()
    src.write_text("# upstream\n")
    listed = {"local": "src/driver.py", "path": "nixos/.../driver.py", "commit": "c" * 40}
    recorded = {**listed, "sha256": upstream.sha256(src)}
    (tmp_path / "PROVENANCE.json").write_text(
        json.dumps({"repository": "NixOS/nixpkgs", "files": [recorded]})
    )
    cmd = upstream.command(f"{launcher} --extra")
    assert cmd == (str(launcher), "--extra")
    doc = upstream.provenance(cmd)
    assert doc["repository"] == "NixOS/nixpkgs" and doc["python"].startswith("Python 3")
    assert doc["files"] == [{**recorded, "unchanged": True}]
    src.write_text("# edited\n")
    assert upstream.provenance(cmd)["files"][0]["unchanged"] is False
    (tmp_path / "PROVENANCE.json").unlink()
    doc = upstream.provenance(cmd)
    assert doc["files"] == [] and "PROVENANCE.json" in doc["note"]
    with pytest.raises(upstream.UpstreamError, match="empty command"):
        upstream.command("  ")


# -- agent vs backdoor -------------------------------------------------------------------------


def test_the_transport_suites_force_each_transport_and_are_compared_round_by_round():
    by_name = {s.name: s for s in suites(50, 2, 2)}
    assert GROUPS["transport"] == ["transport-backdoor", "transport-agent"]
    for name in (*GROUPS["transport"], *GROUPS["upstream"]):
        assert name in by_name, name
    for t in ("backdoor", "agent"):
        s = by_name[f"transport-{t}"]
        assert s.env[TRANSPORT_VAR] == t and int(s.env["NTNG_BENCH_CALLS"]) >= 200
        assert not s.upstream

    def raw(t: float, r: int) -> dict:
        return {
            "round": r, "connecting_s": {"machine": 4.0}, "start_to_first_command_s": 4.1,
            "true_s": [t] * 3, "mb_stdout_s": [t * 10], "big_stdout_s": t * 1000,
            "subshell_floor_s": t / 4, "copy_to_machine_s": [0.2], "copy_from_machine_s": [0.4],
            "vm_hwm_kib": 1000,
        }  # fmt: skip

    runs: dict = {"transport-backdoor": [], "transport-agent": []}
    for r in (1, 2):
        for name, t in (("transport-backdoor", 0.008), ("transport-agent", 0.002)):
            x = raw(t, r)
            x["figures"] = per_run_figures(name, x)
            runs[name].append(x)
    # an agent run whose backdoor run of the same round failed is not paired
    lone = raw(0.002, 3)
    lone["figures"] = per_run_figures("transport-agent", lone)
    runs["transport-agent"].append(lone)
    m = results.metrics(runs)
    assert m["bd_true_median_s"]["median"] == 0.008 and m["ag_true_median_s"]["n"] == 3
    assert m["ag_bd_true_median_s_ratio"]["values"] == [0.25, 0.25]
    assert m["ag_bd_copy_from_s_ratio"]["median"] == 1.0
    assert m["ag_subshell_floor_s"]["median"] == 0.0005 and m["bd_subshell_floor_s"]["n"] == 2
    failed = {
        "run": "transport-agent-4",
        "error": "transport-agent-4: the driver exited with 1\n"
        "!!! MachineError: machine: no agent set up\ntiming summary:\n  0.07 s  machine: true",
    }
    table = markdown(results.document(META, ENV, runs, [failed]))
    assert (
        "agent / backdoor, same round" in table
        and "| 2.00 ms | 2.00 ms | 3 | 2.50 ms | yes |" in table
    )
    assert (
        "- `transport-agent-4`: transport-agent-4: the driver exited with 1"
        " — `!!! MachineError: machine: no agent set up`" in table
    )


# -- the VMM API stand-ins ---------------------------------------------------------------------

#: The API calls of each operation: boot (Firecracker: metrics, machine config, boot source,
#: two drives, vsock, InstanceStart; Cloud Hypervisor: vm.create, vm.boot), snapshot (pause,
#: create, resume), restore (Firecracker: metrics, snapshot/load resumed; Cloud Hypervisor:
#: vm.restore, vm.resume). Each call is a connection of its own, and a launch first probes
#: the socket.
VMM_CALLS = {
    "firecracker": {"boot": 7, "snapshot": 3, "restore": 2},
    "cloud-hypervisor": {"boot": 2, "snapshot": 3, "restore": 2},
}


@pytest.mark.parametrize("name", sorted(VMM_CALLS))
def test_a_vmm_run_counts_the_api_calls_and_splits_each_operation(
    tmp_path: Path, name: str, monkeypatch
):
    import shutil
    import tempfile

    from harness import vmm
    from support.driver import driver_command
    from support.leaks import MARKER_VAR

    by_name = {s.name: s for s in suites(50, 2, 2)}
    assert GROUPS["vmm"] == ["vmm-firecracker", "vmm-cloud-hypervisor"]
    suite = by_name[f"vmm-{name}"]
    # a short directory (the sockets' paths must fit in 107 bytes); the run's processes carry
    # the test's marker, for the leak check
    monkeypatch.setenv(MARKER_VAR, str(tmp_path))
    root = Path(tempfile.mkdtemp(prefix="ntng-vb-"))
    reaper = procs.Reaper()
    try:
        ctx = Context(Driver(tuple(driver_command())), tmp_path, root, reaper, keep_tmp=False)
        raw = run_once(ctx, suite, f"{suite.name}-1")
    finally:
        reaper.reap_all()
        shutil.rmtree(root, ignore_errors=True)
    assert raw["exit_status"] == 0 and raw["leftover_processes"] == []
    assert len(raw["boots"]) == len(raw["snapshots"]) == 2
    assert len(raw["script_stamps"]) == 2  # the start script runs for a boot, not a restore
    assert len(raw["vmm_stamps"]) == 4  # a new VMM for each boot and each restore
    f = per_run_figures(suite.name, raw)
    key = vmm.VMMS[name].key
    assert {f"{key}_{row[0]}" for row in vmm.ROWS} == set(f)
    calls = VMM_CALLS[name]
    for op in ("boot", "snapshot", "restore"):
        assert f[f"{key}_{op}_calls"] == calls[op], op
    assert f[f"{key}_boot_connections"] == calls["boot"] + 1
    assert f[f"{key}_restore_connections"] == calls["restore"] + 1
    # per boot: the driver's share is the rest of `start()` after the stand-in's own parts
    per_boot = [vmm.figures(key, {**raw, "boots": [b], "snapshots": []}) for b in raw["boots"]]
    for b in per_boot:
        parts = b[f"{key}_boot_standin_up_s"] + b[f"{key}_boot_api_standin_s"]
        assert b[f"{key}_boot_driver_s"] == pytest.approx(b[f"{key}_boot_start_s"] - parts)
        assert 0 <= b[f"{key}_boot_api_runner_s"] <= b[f"{key}_boot_api_standin_s"]
    raw["figures"] = f
    table = markdown(results.document(META, ENV, {suite.name: [raw]}, []))
    assert f"| n | {vmm.VMMS[name].title} stand-in: `start()` (fake runner, no guest) |" in table
    assert "real-VMM timings were not measured here" in table


def test_the_recording_stand_in_records_each_call_before_its_answer(tmp_path: Path):
    import subprocess

    from standins.client import UnixHTTPConnection

    log = tmp_path / "api.jsonl"
    sock = tmp_path / "fc.sock"
    proc = subprocess.Popen(
        [sys.executable, str(BENCHES / "vmm_standin.py"), "firecracker", "--api-sock", str(sock)],
        env={**os.environ, "NTNG_BENCH_API_LOG": str(log), "NTNG_STANDIN_RUNNER": "fake"},
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no API socket"
            time.sleep(0.01)
        conn = UnixHTTPConnection(str(sock))
        conn.request(
            "PUT", "/machine-config", body=json.dumps({"vcpu_count": 1, "mem_size_mib": 64})
        )
        assert conn.getresponse().status == 204
        # the record is written before the answer: it is there once the answer is
        entries = [json.loads(line) for line in log.read_text().splitlines()]
        conn.close()
    finally:
        proc.kill()
        proc.wait()
    assert [e["event"] for e in entries] == ["up", "bound", "accept", "request"]
    request = entries[-1]
    assert (request["method"], request["path"], request["status"]) == (
        "PUT",
        "/machine-config",
        204,
    )
    assert request["t_request"] <= request["t_answered"]
    assert request["runner_s"] == 0.0 and request["handle_s"] > 0
