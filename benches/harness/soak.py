"""The soak harness (`benches/soak.py`, `make soak`; method: docs/soak.md): many runs back to
back, many commands in one run, many VMs at once; each stage's leaks, RSS and latencies.

Every driver run is `nixos-test-ng run` on the built-in busybox guest, started in a session of
its own (`procs.Reaper`), with the soak's own TMPDIR and XDG_RUNTIME_DIR under one root
directory, and a marker in its environment that everything it starts inherits. Whatever a run
leaves behind 3 s after its driver exited is killed and counted as leaked.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nixos_test_ng import procs

from harness import REPO, RESULTS, SCRIPTS, leaks
from harness.environment import environment, resolve_driver
from harness.soak_report import evaluate, markdown, percentiles

STAGES = ("runs", "commands", "start")
KINDS = {"vm": "machine", "container": "machine@container"}
DEFAULTS = {"runs": 1000, "commands": 10000, "vms": 8}
QUICK = {"runs": 20, "commands": 500, "vms": 3}
#: the driver's processes have this long to end after it exited; then they are leaks
GRACE_S = 3.0
#: a driver run that takes longer than this is killed (and its stage fails)
RUN_TIMEOUT_S = {"runs": 600.0, "commands": 7200.0, "start": 1800.0}
MARKER_VAR = "NTNG_SOAK_ROOT"
#: where the result files go
RESULTS_DIR = RESULTS


@dataclass(frozen=True)
class Options:
    runs: int
    commands: int
    vms: int
    stages: tuple[str, ...]
    name: str
    quick: bool
    kind: str
    driver: str
    note: str | None
    keep_tmp: bool


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def parse(argv: list[str] | None) -> Options:
    """The command line; an error exits with status 2 naming what was wrong."""
    p = argparse.ArgumentParser(prog="benches/soak.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=_positive, help="stage 1: driver runs (default 1000)")
    p.add_argument("--commands", type=_positive, help="stage 2: commands (default 10000)")
    p.add_argument("--vms", type=_positive, help="stage 3: VMs started together (default 8)")
    p.add_argument("--only", help=f"comma-separated stages of {', '.join(STAGES)}")
    p.add_argument(
        "--quick",
        action="store_true",
        help="20 runs, 500 commands, 3 VMs: checks that the harness works",
    )
    p.add_argument(
        "--kind",
        choices=sorted(KINDS),
        default="vm",
        help="stage 1's machine: the busybox VM or a systemd-nspawn container",
    )
    p.add_argument(
        "--name",
        help="results: benches/results/soak-NAME.json and .md (default: latest, or quick"
        " with --quick)",
    )
    p.add_argument("--driver", default="nixos-test-ng", help="the `nixos-test-ng` command")
    p.add_argument("--note", help="a note recorded in the results")
    p.add_argument("--keep-tmp", action="store_true", help="keep the soak's root directory")
    a = p.parse_args(argv)
    stages = STAGES
    if a.only:
        stages = tuple(s.strip() for s in a.only.split(",") if s.strip())
        unknown = sorted(set(stages) - set(STAGES))
        if unknown or not stages:
            p.error(
                f"--only: unknown stage(s) {', '.join(unknown) or '(none given)'};"
                f" the stages are {', '.join(STAGES)}"
            )
        stages = tuple(s for s in STAGES if s in stages)
    if a.name is not None and (not a.name or "/" in a.name or a.name.startswith(".")):
        p.error(f"--name: not a file stem: {a.name!r}")
    sizes = QUICK if a.quick else DEFAULTS
    return Options(
        runs=a.runs or sizes["runs"],
        commands=a.commands or sizes["commands"],
        vms=a.vms or sizes["vms"],
        stages=stages,
        name=a.name or ("quick" if a.quick else "latest"),
        quick=a.quick,
        kind=a.kind,
        driver=a.driver,
        note=a.note,
        keep_tmp=a.keep_tmp,
    )


@dataclass
class Outcome:
    """One driver run: its exit status, wall time, result file, what was killed after it."""

    rc: int
    wall_s: float
    result: dict[str, Any] | None
    killed: dict[int, str]
    error: str | None = None


@dataclass
class Soak:
    """The soak's root directory, its scope for the leak accounting, the reaper."""

    driver: str
    root: Path
    reaper: procs.Reaper
    scope: leaks.Scope = field(init=False)

    def __post_init__(self) -> None:
        for d in ("tmp", "xdg", "cache", "out", "logs"):
            (self.root / d).mkdir(mode=0o700, exist_ok=True)
        self.scope = leaks.Scope(
            root=self.root,
            env_marker=f"{MARKER_VAR}={self.root}",
            temp_dirs=(self.root / "tmp", self.root / "xdg"),
        )

    def env(self, extra: dict[str, str]) -> dict[str, str]:
        # the driver's defaults (the boot timeout among them), whatever this shell has set
        dropped = ("DISPLAY", "WAYLAND_DISPLAY", "NIXOS_TEST_NG_BOOT_TIMEOUT")
        env = {k: v for k, v in os.environ.items() if k not in dropped}
        env.update(
            TMPDIR=str(self.root / "tmp"),
            XDG_RUNTIME_DIR=str(self.root / "xdg"),
            NIXOS_TEST_NG_BOOT_CACHE=str(self.root / "cache"),
            NIXOS_TEST_NG_ACCEL="tcg",
            NTNG_SOAK_RESULT=str(self.root / "result.json"),
            NO_COLOR="1",
        )
        env[MARKER_VAR] = str(self.root)
        env.update(extra)
        return env

    def run(
        self,
        stage: str,
        script: str,
        machines: list[str],
        extra_env: dict[str, str],
        reuse_boots: bool = False,
    ) -> Outcome:
        """One `nixos-test-ng run` of `script` (in benches/scripts) with `machines`."""
        result_file = self.root / "result.json"
        result_file.unlink(missing_ok=True)
        cmd = [self.driver, "run", str(SCRIPTS / script)]
        for m in machines:
            cmd += ["-m", m]
        if reuse_boots:
            cmd.append("--reuse-boots")
        cmd += ["--", "-o", str(self.root / "out")]
        stderr_path = self.root / "logs" / "stderr.log"
        with open(self.root / "logs" / "stdout.log", "wb") as so, open(stderr_path, "wb") as se:
            tic = time.monotonic()
            proc = self.reaper.spawn(
                cmd,
                needles=[str(self.root)],
                env_marker=self.scope.env_marker,
                env=self.env(extra_env),
                cwd=self.root / "out",
                stdin=subprocess.DEVNULL,
                stdout=so,
                stderr=se,
            )
            hung = threading.Event()

            def kill_hung() -> None:
                hung.set()
                self.reaper.reap(proc)

            timer = threading.Timer(RUN_TIMEOUT_S[stage], kill_hung)
            timer.daemon = True
            timer.start()
            try:
                rc = proc.wait()
            finally:
                timer.cancel()
            wall = time.monotonic() - tic
        killed = self.reaper.reap(proc, grace=GRACE_S)
        result = None
        if result_file.exists():
            try:
                result = json.loads(result_file.read_text())
            except ValueError:
                result = None
        error = None
        if rc != 0 or result is None:
            tail = "\n".join(stderr_path.read_text(errors="replace").splitlines()[-15:])
            why = f"killed after {RUN_TIMEOUT_S[stage]:g} s" if hung.is_set() else f"exit {rc}"
            error = f"{why}{'' if result else ', no result file'}\n{tail}"
        return Outcome(rc, wall, result, killed, error)


def _progress(msg: str) -> None:
    print(f"soak: {msg}", file=sys.stderr, flush=True)


def stage_runs(soak: Soak, o: Options) -> dict[str, Any]:
    calls = 5
    walls: list[float] = []
    firsts: list[float] = []
    latencies: list[float] = []
    rss: list[float] = []
    fds: list[float] = []
    baseline = None
    first_run_wall = None
    failed: list[dict[str, str]] = []
    killed: list[str] = []
    step = max(1, o.runs // 20)
    for i in range(1, o.runs + 1):
        out = soak.run(
            "runs",
            "soak_small.py",
            [KINDS[o.kind]],
            {"NTNG_SOAK_CALLS": str(calls)},
            reuse_boots=True,
        )
        if i == 1 and o.runs > 1:  # it boots and saves the boot cache: shown apart
            first_run_wall = out.wall_s
        else:
            walls.append(out.wall_s)
        killed += [f"run {i}: {pid}: {cmd[:160]}" for pid, cmd in out.killed.items()]
        if out.error:
            failed.append({"run": f"run {i}", "error": out.error})
        if i == min(2, o.runs):  # what the kept directories hold: docs/soak.md
            baseline = leaks.account(soak.scope)
        if out.result:
            first, *rest = out.result["latencies_s"]
            if not (i == 1 and o.runs > 1):
                firsts.append(first)
            latencies += rest
            rss.append(out.result["vm_rss_kib"] / 1000)
            fds.append(out.result["driver_fds"])
        if i % step == 0 or i == o.runs:
            _progress(f"runs: {i}/{o.runs} ({len(failed)} failed, {len(killed)} killed)")
    return {
        "params": {"runs": o.runs, "kind": o.kind, "calls": calls},
        "runs": o.runs,
        "failed": failed,
        "killed_after_runs": killed,
        "latency_s": percentiles(latencies),
        "first_command_s": percentiles(firsts),
        "run_wall_s": percentiles(walls),
        "first_run_wall_s": first_run_wall,
        "_baseline": baseline,
        "rss_mb": percentiles(rss),
        "driver_fds": percentiles(fds),
    }


def stage_commands(soak: Soak, o: Options) -> dict[str, Any]:
    every = max(1, o.commands // 10)
    warmup = 20
    _progress(f"commands: {o.commands} in one run")
    out = soak.run(
        "commands",
        "soak_commands.py",
        ["machine"],
        {
            "NTNG_SOAK_COMMANDS": str(o.commands),
            "NTNG_SOAK_WARMUP": str(warmup),
            "NTNG_SOAK_SAMPLE_EVERY": str(every),
        },
    )
    s: dict[str, Any] = {
        "params": {"commands": o.commands, "warmup": warmup, "sample_every": every},
        "runs": 1,
        "failed": [{"run": "commands", "error": out.error}] if out.error else [],
        "killed_after_runs": [f"{pid}: {cmd[:160]}" for pid, cmd in out.killed.items()],
        "run_wall_s": percentiles([out.wall_s]),
    }
    if out.result:
        samples = out.result["samples"]
        s["samples"] = samples
        s["latency_s"] = percentiles(out.result["latencies_s"])
        s["rss_growth_mb"] = (samples[-1]["vm_rss_kib"] - samples[0]["vm_rss_kib"]) / 1000
        s["driver_fds_growth"] = samples[-1]["driver_fds"] - samples[0]["driver_fds"]
        s["vm_hwm_kib"] = out.result["vm_hwm_kib"]
        s["rss_mb"] = percentiles([x["vm_rss_kib"] / 1000 for x in samples])
    return s


def stage_start(soak: Soak, o: Options) -> dict[str, Any]:
    _progress(f"start: {o.vms} VMs together")
    machines = [f"node{i}" for i in range(1, o.vms + 1)]
    out = soak.run("start", "soak_start.py", machines, {})
    s: dict[str, Any] = {
        "params": {"vms": o.vms},
        "runs": 1,
        "failed": [{"run": "start", "error": out.error}] if out.error else [],
        "killed_after_runs": [f"{pid}: {cmd[:160]}" for pid, cmd in out.killed.items()],
        "run_wall_s": percentiles([out.wall_s]),
        "boot_s": {},
    }
    if out.result:
        s["boot_s"] = out.result["boot_s"]
        s["boot_errors"] = out.result["errors"]
        s["start_all_s"] = out.result["start_all_s"]
        s["vm_hwm_kib"] = out.result["vm_hwm_kib"]
    return s


STAGE_FUNCS = {"runs": stage_runs, "commands": stage_commands, "start": stage_start}


def run_stage(soak: Soak, name: str, o: Options) -> dict[str, Any]:
    """A stage with its accounting before and after: what it leaked."""
    before = leaks.account(soak.scope)
    tic = time.monotonic()
    s = STAGE_FUNCS[name](soak, o)
    s["duration_s"] = time.monotonic() - tic
    after = leaks.account(soak.scope)
    s["before"], s["after"] = before.summary(), after.summary()
    found = leaks.compare(before, after)
    baseline = s.pop("_baseline", None)
    if baseline is not None:  # runs back to back: what the kept directories gained since run 2
        found.kept_growth = leaks.compare(baseline, after).kept_growth
        found.kept_bytes_growth = after.kept_bytes - baseline.kept_bytes
    s["leaks"] = found.as_dict()
    return s


def main(argv: list[str] | None = None) -> int:
    o = parse(argv)
    driver, shim = resolve_driver(o.driver)
    if not os.access(driver, os.X_OK):
        print(f"soak: driver `{o.driver}` not found", file=sys.stderr)
        return 2
    from nixos_test_ng.guest import ensure_built

    guest_dir = ensure_built()
    if o.kind == "container" and "runs" in o.stages:
        from nixos_test_ng.guest import ensure_systemd_built

        ensure_systemd_built(guest_dir)
    reaper = procs.Reaper().guard()
    started = datetime.datetime.now(datetime.UTC)
    env = environment(driver, shim, guest_dir)
    root = Path(tempfile.mkdtemp(prefix="ntng-soak-"))
    soak = Soak(driver, root, reaper)
    stages: dict[str, dict[str, Any]] = {}
    try:
        for name in o.stages:
            stages[name] = run_stage(soak, name, o)
    finally:
        for pid, cmd in reaper.reap_all().items():
            print(f"soak: killed leftover {pid}: {cmd[:160]}", file=sys.stderr)
        if o.keep_tmp:
            print(f"soak: root kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    finished = datetime.datetime.now(datetime.UTC)
    env["loadavg_after"] = os.getloadavg()
    checks = evaluate(stages)
    doc = {
        "meta": {
            "name": o.name,
            "started": started.isoformat(timespec="seconds"),
            "finished": finished.isoformat(timespec="seconds"),
            "duration_s": (finished - started).total_seconds(),
            "command": shlex.join([os.path.relpath(sys.argv[0], REPO), *(argv or sys.argv[1:])]),
            "quick": o.quick,
            "note": o.note,
        },
        "environment": env,
        "stages": stages,
        "checks": [c.__dict__ for c in checks],
    }
    md = write(doc, o.name, RESULTS_DIR)
    print(md)
    unmet = [c for c in checks if not c.met]
    for c in unmet:
        print(
            f"soak: target not met: {c.stage}: {c.what}: {c.value} (bound {c.bound})",
            file=sys.stderr,
        )
    return 1 if unmet else 0


def write(doc: dict[str, Any], name: str, into: Path) -> str:
    """Writes `soak-NAME.json` and `soak-NAME.md` into `into`; returns the markdown."""
    into.mkdir(parents=True, exist_ok=True)
    (into / f"soak-{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
    md = markdown(doc)
    (into / f"soak-{name}.md").write_text(md)
    return md
