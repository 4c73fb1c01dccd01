"""The soak harness (benches/soak.py) without a VM: its leak accounting finds a leaked process,
fd, temporary entry and mount (and tells the driver's kept directories and the rest of the
host apart), its percentiles and targets, its command line's errors, and whole stages run
through a fake `nixos-test-ng` that leaks or does not. No figure is checked against a time."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from nixos_test_ng import procs

BENCHES = Path(__file__).resolve().parent.parent / "benches"
sys.path.insert(0, str(BENCHES))

from harness import leaks, soak  # noqa: E402
from harness.soak_report import evaluate, markdown, percentiles  # noqa: E402


def scope_of(root: Path) -> leaks.Scope:
    for d in ("tmp", "xdg"):
        (root / d).mkdir(parents=True, exist_ok=True)
    mountinfo = root / "mountinfo"
    if not mountinfo.exists():
        mountinfo.write_text("22 1 0:21 / /proc rw - proc proc rw\n")
    return leaks.Scope(
        root=root,
        env_marker=f"{soak.MARKER_VAR}={root}",
        temp_dirs=(root / "tmp", root / "xdg"),
        host_tmp=root / "host-tmp",
        mountinfo=mountinfo,
    )


def fake_qemu(where: Path) -> Path:
    """A `sleep` that runs under a watched name (its comm is the link's name)."""
    where.mkdir(parents=True, exist_ok=True)
    link = where / "qemu-system-fake"
    link.symlink_to(shutil.which("sleep"))
    return link


def test_a_leaked_process_is_ours_by_its_path_or_its_marker(tmp_path: Path):
    scope = scope_of(tmp_path / "root")
    before = leaks.account(scope)
    by_path = subprocess.Popen([fake_qemu(tmp_path / "root" / "bin"), "1000"])
    elsewhere = fake_qemu(tmp_path / "elsewhere")
    env = {**os.environ, soak.MARKER_VAR: str(scope.root)}
    by_marker = subprocess.Popen([elsewhere, "1001"], env=env)
    not_ours = subprocess.Popen([elsewhere, "1002"])
    try:
        assert procs.wait_until(lambda: len(leaks.account(scope).processes) == 2, 10)
        after = leaks.account(scope)
        found = leaks.compare(before, after)
        assert sorted(int(p.split(":")[0]) for p in found.processes) == sorted(
            [by_path.pid, by_marker.pid]
        )
        # the third has the name but is not ours: counted for the host only
        assert found.host_processes >= 3
        assert not_ours.pid not in after.processes
        assert leaks.watched_name(not_ours.pid) == "qemu-system-fak"  # comm: 15 characters
    finally:
        for p in (by_path, by_marker, not_ours):
            p.kill()
            p.wait()
    assert leaks.compare(before, leaks.account(scope)).processes == []


def test_a_leaked_fd_temp_entry_and_mount_are_found(tmp_path: Path):
    scope = scope_of(tmp_path)
    (tmp_path / "xdg" / "vm-state-machine").mkdir()
    (tmp_path / "xdg" / "vm-state-machine" / "qmp").write_text("")
    (tmp_path / "host-tmp").mkdir()
    before = leaks.account(scope)
    assert before.temp_entries == ()  # the kept directory is not a leak by itself
    f = open(tmp_path / "held", "w")  # noqa: SIM115 - held open across the second account
    try:
        (tmp_path / "tmp" / "nixos-test-ng-abc").mkdir()
        (tmp_path / "xdg" / "vm-state-machine" / "golden-1").mkdir()
        (tmp_path / "xdg" / "vm-state-other").mkdir()  # a new kept one: by design
        (tmp_path / "xdg" / "vm-state-other" / "disk").write_text("x")
        (tmp_path / "host-tmp" / "vm-state-someone").mkdir()
        with open(scope.mountinfo, "a") as m:
            m.write(f"40 22 0:50 / {tmp_path}/xdg/vm-state-machine/root rw - tmpfs tmpfs rw\n")
            m.write("41 22 0:51 / /mnt/someone rw - tmpfs tmpfs rw\n")
        found = leaks.compare(before, leaks.account(scope))
    finally:
        f.close()
    assert found.fds == 1
    assert found.temp_entries == [str(tmp_path / "tmp" / "nixos-test-ng-abc")]
    assert found.kept_growth == [str(tmp_path / "xdg" / "vm-state-machine" / "golden-1")]
    assert found.kept_bytes_growth == 1
    assert found.host_tmp_entries == [str(tmp_path / "host-tmp" / "vm-state-someone")]
    assert len(found.mounts) == 1 and str(tmp_path) in found.mounts[0]
    assert found.host_mounts == 2


def test_percentiles():
    p = percentiles([float(x) for x in range(100, 0, -1)])
    assert p == {
        "n": 100,
        "p50": 50.5,
        "p90": pytest.approx(90.1),
        "p99": pytest.approx(99.01),
        "max": 100.0,
    }
    assert percentiles([]) is None
    assert percentiles([3.0]) == {"n": 1, "p50": 3.0, "p90": 3.0, "p99": 3.0, "max": 3.0}


def clean_leaks() -> dict:
    return leaks.Leaks().as_dict()


def stage(**over) -> dict:
    s = {"params": {"vms": 8}, "runs": 10, "failed": [], "leaks": clean_leaks()}
    s.update(over)
    return s


def unmet(stages: dict) -> list[tuple[str, str]]:
    return [(c.stage, c.what) for c in evaluate(stages) if not c.met]


def test_targets():
    lat = {"n": 100, "p50": 0.010, "p90": 0.012, "p99": 0.020, "max": 0.05}
    good = {
        "runs": stage(),
        "commands": stage(runs=1, rss_growth_mb=4.9, driver_fds_growth=0, latency_s=lat),
        "start": stage(runs=1, boot_s={f"node{i}": 20.0 for i in range(1, 9)}),
    }
    assert unmet(good) == []
    assert len(evaluate(good)) == 3 * 5 + 3 + 1

    bad_leaks = {**clean_leaks(), "fds": 1, "temp_entries": ["/x"], "mounts": ["m"]}
    assert unmet({"runs": stage(leaks=bad_leaks, killed_after_runs=["1: qemu"])}) == [
        ("runs", "leaked processes"),
        ("runs", "leaked fds (the harness's)"),
        ("runs", "leaked temp entries"),
        ("runs", "leaked mounts"),
    ]
    grown = {**clean_leaks(), "kept_growth": ["/xdg/vm-state-machine/golden-2"]}
    assert unmet({"runs": stage(leaks=grown)}) == [("runs", "leaked temp entries")]
    assert unmet({"runs": stage(failed=[{"run": "run 3", "error": "exit 1"}])}) == [
        ("runs", "runs passed")
    ]
    slow = {**lat, "p99": 0.0201}
    grew = stage(runs=1, rss_growth_mb=5.0, driver_fds_growth=1, latency_s=slow)
    three = [
        ("commands", "driver RSS growth"),
        ("commands", "driver's open fds growth"),
        ("commands", "command p99 / median"),
    ]
    assert unmet({"commands": grew}) == three
    # a run without figures meets none
    assert unmet({"commands": stage(runs=1)}) == three
    seven = {f"node{i}": 20.0 for i in range(1, 8)}
    assert unmet({"start": stage(runs=1, boot_s=seven)}) == [
        ("start", "VMs booted within the default timeout")
    ]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--runs", "0"], "argument --runs: must be at least 1, not 0"),
        (["--commands", "many"], "argument --commands: not a whole number: 'many'"),
        (["--vms", "-2"], "argument --vms: must be at least 1, not -2"),
        (["--only", "runs,boots"], "--only: unknown stage(s) boots"),
        (["--only", ","], "--only: unknown stage(s) (none given)"),
        (["--kind", "firecracker"], "argument --kind: invalid choice: 'firecracker'"),
        (["--name", "../x"], "--name: not a file stem: '../x'"),
    ],
)
def test_argument_errors(argv: list[str], message: str, capsys):
    with pytest.raises(SystemExit) as e:
        soak.parse(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_arguments():
    o = soak.parse([])
    assert (o.runs, o.commands, o.vms, o.stages, o.name) == (1000, 10000, 8, soak.STAGES, "latest")
    q = soak.parse(["--quick", "--vms", "4", "--only", "start,runs"])
    assert (q.runs, q.commands, q.vms, q.stages, q.name) == (20, 500, 4, ("runs", "start"), "quick")


FAKE_DRIVER = """#!{python}
# A fake `nixos-test-ng run SCRIPT -m NAME... [--reuse-boots] -- -o OUT`: writes the result
# the soak script would, keeps a state dir as the driver does, and with $FAKE_LEAK leaves a
# temp dir and a process that left its session (it carries the soak's marker).
import json, os, subprocess, sys, tempfile
from pathlib import Path

args = sys.argv[1:]
assert args[0] == "run" and "--" in args, args
script = os.path.basename(args[1])
machines = [args[i + 1] for i, a in enumerate(args) if a == "-m"]
env = os.environ
if script == "soak_small.py":
    r = {{"latencies_s": [0.5] + [0.002] * (int(env["NTNG_SOAK_CALLS"]) - 1), "vm_rss_kib": 30000,
         "vm_hwm_kib": 31000, "driver_fds": 10}}
elif script == "soak_commands.py":
    n = int(env["NTNG_SOAK_COMMANDS"])
    samples = [{{"commands": i, "vm_rss_kib": 30000 + i, "driver_fds": 10}}
               for i in range(0, n + 1, int(env["NTNG_SOAK_SAMPLE_EVERY"]))]
    r = {{"latencies_s": [0.002] * n, "samples": samples, "vm_hwm_kib": 31000}}
else:
    r = {{"start_all_s": 0.1, "boot_s": {{m: 1.0 for m in machines}}, "errors": {{}},
         "vm_hwm_kib": 31000}}
for m in machines:
    state = Path(env["XDG_RUNTIME_DIR"]) / f"vm-state-{{m.split('@')[0]}}"
    state.mkdir(exist_ok=True)
    (state / "qmp").write_text("")
if env.get("FAKE_LEAK"):
    tempfile.mkdtemp(prefix="leak-")
    subprocess.Popen([{qemu!r}, "1000"], start_new_session=True)
with open(env["NTNG_SOAK_RESULT"], "w") as f:
    json.dump(r, f)
"""


@pytest.fixture
def fake_soak(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(soak, "GRACE_S", 0.2)
    driver = tmp_path / "nixos-test-ng"
    qemu = fake_qemu(tmp_path / "bin")
    driver.write_text(FAKE_DRIVER.format(python=sys.executable, qemu=str(qemu)))
    driver.chmod(0o755)
    root = tmp_path / "root"
    root.mkdir()
    reaper = procs.Reaper()
    yield soak.Soak(str(driver), root, reaper)
    reaper.reap_all()


def test_stages_through_a_fake_driver_that_leaks_nothing(fake_soak: soak.Soak, tmp_path: Path):
    o = soak.parse(["--runs", "3", "--commands", "30", "--vms", "2"])
    stages = {name: soak.run_stage(fake_soak, name, o) for name in o.stages}
    assert unmet(stages) == []
    runs = stages["runs"]
    # the first run (boot, cache save) is shown apart; first commands and later ones apart
    assert runs["first_command_s"]["n"] == 2 and runs["latency_s"]["n"] == 3 * 4
    assert runs["latency_s"]["p50"] == 0.002 and runs["first_command_s"]["max"] == 0.5
    assert runs["after"]["kept_entries"] == 1 and runs["leaks"]["kept_growth"] == []
    assert stages["commands"]["rss_growth_mb"] == 0.03
    assert [x["commands"] for x in stages["commands"]["samples"]] == [0, 3, 6, 9, 12, 15, 18,
                                                                       21, 24, 27, 30]  # fmt: skip
    assert stages["start"]["boot_s"] == {"node1": 1.0, "node2": 1.0}
    doc = {
        "meta": {
            "name": "t",
            "quick": False,
            "started": "now",
            "duration_s": 1.0,
            "command": "benches/soak.py",
            "note": None,
        },  # fmt: skip
        "environment": {
            "git_dirty": False,
            "git_commit": "abc",
            "cpu_model": "cpu",
            "nproc": 2,
            "loadavg_before": [1.0, 1.0, 1.0],
            "loadavg_after": [1.0, 1.0, 1.0],
        },  # fmt: skip
        "stages": stages,
        "checks": [c.__dict__ for c in evaluate(stages)],
    }
    md = soak.write(doc, "t", tmp_path / "results")
    assert "Every target met." in md and "clean tree" in md
    assert (tmp_path / "results" / "soak-t.json").exists()
    assert "| commands | driver RSS growth | 0.03 MB | < 5 MB | yes |" in md
    assert "Each VM: node1 1.0 s, node2 1.0 s" in md


def test_a_leaking_driver_fails_the_targets_and_says_what(
    fake_soak: soak.Soak, tmp_path: Path, monkeypatch
):
    monkeypatch.setenv("FAKE_LEAK", "1")
    o = soak.parse(["--runs", "2", "--only", "runs"])
    s = soak.run_stage(fake_soak, "runs", o)
    # the process that left its session was found by its marker and killed after each run
    assert len(s["killed_after_runs"]) == 2
    assert all("qemu-system-fake 1000" in k for k in s["killed_after_runs"])
    assert [os.path.basename(e) for e in s["leaks"]["temp_entries"]] != []
    assert all(os.path.basename(e).startswith("leak-") for e in s["leaks"]["temp_entries"])
    assert len(s["leaks"]["temp_entries"]) == 2
    assert unmet({"runs": s}) == [("runs", "leaked processes"), ("runs", "leaked temp entries")]
    md = markdown(
        {
            "meta": {
                "name": "t",
                "quick": True,
                "started": "now",
                "duration_s": 1.0,
                "command": "benches/soak.py",
                "note": None,
            },  # fmt: skip
            "environment": {
                "git_dirty": True,
                "git_commit": "abc",
                "cpu_model": "cpu",
                "nproc": 2,
                "loadavg_before": [1.0, 1.0, 1.0],
            },  # fmt: skip
            "stages": {"runs": s},
            "checks": [c.__dict__ for c in evaluate({"runs": s})],
        }
    )
    assert "Targets not met: 2." in md and "uncommitted changes" in md
    assert "| runs | leaked processes | 2 | 0 | **no** |" in md
    assert "qemu-system-fake 1000" in md


def test_main_exits_1_naming_each_unmet_target(tmp_path: Path, monkeypatch, capsys):
    import nixos_test_ng.guest

    qemu = fake_qemu(tmp_path / "bin")
    driver = tmp_path / "nixos-test-ng"
    driver.write_text(FAKE_DRIVER.format(python=sys.executable, qemu=str(qemu)))
    driver.chmod(0o755)
    monkeypatch.setattr(nixos_test_ng.guest, "ensure_built", lambda: tmp_path / "guest")
    monkeypatch.setattr(soak, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(soak, "GRACE_S", 0.2)
    # the reaper's signal handlers and exit hook are not for pytest's own process
    monkeypatch.setattr(procs.Reaper, "guard", lambda self: self)
    monkeypatch.setenv("FAKE_LEAK", "1")
    argv = ["--driver", str(driver), "--only", "runs", "--runs", "1", "--name", "t"]
    assert soak.main(argv) == 1
    err = capsys.readouterr().err
    assert "soak: target not met: runs: leaked processes: 1 (bound 0)" in err
    assert "soak: target not met: runs: leaked temp entries: 1 (bound 0)" in err
    assert "Targets not met: 2." in (tmp_path / "results" / "soak-t.md").read_text()

    monkeypatch.delenv("FAKE_LEAK")
    assert soak.main([*argv, "--name", "u"]) == 0
    assert "Every target met." in (tmp_path / "results" / "soak-u.md").read_text()


def test_main_refuses_a_driver_that_is_not_there(tmp_path: Path, capsys):
    assert soak.main(["--driver", str(tmp_path / "nothing"), "--quick"]) == 2
    assert f"soak: driver `{tmp_path / 'nothing'}` not found" in capsys.readouterr().err
