"""One driver run of a suite: ours (`nixos-test-driver`) or upstream's (`--upstream CMD`).
Every run gets its own temporary directory (XDG_RUNTIME_DIR, output directory, start
scripts) and its own session; whatever is left of it is killed after it
(`nixos_test_ng.procs.Reaper`, which also kills every run in flight when the harness exits)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nixos_test_ng import procs

from harness import SCRIPTS, vmm, watch
from harness.suites import Suite

RUN_TIMEOUT_S = 600.0
LEFTOVER_GRACE_S = 3.0

CONNECTING = re.compile(r"^(?:(\S+): )?\(connecting took ([0-9.]+) seconds\)", re.M)

WRAPPER = """#!/bin/bash
# Benchmark wrapper: record when the driver ran the start script, then exec the real one.
{announces}printf '%s\\n' "$EPOCHREALTIME" > {stamp}
exec {real} "$@"
"""

# The variables by which a start script announces that it takes the guest agent's vsock
# device (docs/agent.md): the driver reads them in the script it runs, the wrapper.
AGENT_DEVICE_VARS = ("NIXOS_TEST_NG_VHOST_USER_VSOCK", "NIXOS_TEST_NG_VSOCK_CID")

# Upstream's QemuMachine runs the start script through `/bin/sh -c` and, on cleanup,
# SIGTERMs what it spawned and joins the thread reading QEMU's stdout: should `sh` fork
# rather than exec, QEMU would outlive it and the join would hang (upstream-baseline.md,
# "things the baseline run exposed", 1). The parent-death signal ends QEMU with its parent.
UPSTREAM_VM_WRAPPER = """#!/bin/bash
# Benchmark wrapper for upstream's driver: record when it ran the start script, then exec
# the real one, which ends with its parent (upstream's `/bin/sh -c`).
printf '%s\\n' "$EPOCHREALTIME" > {stamp}
exec setpriv --pdeathsig TERM {real} "$@"
"""

# Upstream's NspawnMachine takes the container as started at a line of its stdout containing
# "Welcome to NixOS" (after "systemd-nspawn's PID is N"), stops reading stdout there, and
# runs its commands at once; the baseline's start script printed that marker after
# multi-user.target, and so does this wrapper (the Debian guest says "Welcome to Debian").
# It starts the real script with upstream's empty environment plus PATH, and ends it on
# SIGTERM (upstream's `release()` terminates what it spawned).
UPSTREAM_NSPAWN_WRAPPER = """#!/bin/bash
# Benchmark wrapper for upstream's driver: see benches/harness/runner.py.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
printf '%s\\n' "$EPOCHREALTIME" > {stamp}
# the filter is this shell's child, not the real script's: upstream takes the container's init
# to be the only child of the PID the script announces
exec {{console}}> >(
    while IFS= read -r line; do
        printf '%s\\n' "$line"
        case $line in
        *"Reached target"*"Multi-User System"*)
            echo "Welcome to NixOS (benchmark wrapper: multi-user.target reached)"
            exec cat >/dev/null ;;
        esac
    done
)
{real} "$@" >&"$console" {{console}}>&- &
real=$!
exec {{console}}>&-
trap 'kill -TERM "$real" 2>/dev/null' TERM INT
while kill -0 "$real" 2>/dev/null; do wait "$real"; done
"""

CONTAINER_KIND = procs.CONTAINER_KIND

# Upstream's driver runs in a private mount namespace: for containers on a host without the
# unified cgroup hierarchy it mounts cgroup2 over /sys/fs/cgroup (upstream-baseline.md).
UPSTREAM_PREFIX = ("unshare", "--mount", "--propagation", "private")


class RunFailed(Exception):
    """A run that did not give its figures (its exit status, its missing lines)."""


@dataclass(frozen=True)
class Driver:
    """The driver a run measures, by its command: ours (`kind="ours"`) or upstream's
    (`kind="upstream"`, run as upstream-baseline.md ran it: `command_line`, the wrappers)."""

    command: tuple[str, ...]
    kind: str = "ours"

    @property
    def upstream(self) -> bool:
        return self.kind == "upstream"


@dataclass
class Context:
    driver: str | Driver
    guest_dir: Path
    tmp_root: Path
    reaper: procs.Reaper
    keep_tmp: bool

    @property
    def the_driver(self) -> Driver:
        d = self.driver
        return d if isinstance(d, Driver) else Driver((d,))


def command_line(driver: Driver, suite: Suite, wrappers: dict[str, Path], out: Path) -> list[str]:
    """The driver's command line for a run. Ours: as Nix passes it. Upstream's: the test
    script first (its `--vm-start-scripts` takes `nargs="*"`), `--vlans` always given (it
    crashes without), in a private mount namespace (it mounts cgroup2 over /sys/fs/cgroup
    for containers on a host without the unified hierarchy): as upstream-baseline.md."""
    script = str(SCRIPTS / suite.script)
    vlans = sorted({v for vs in suite.nodes.values() for v in vs})
    if suite.vmm:  # the driver tells the VMM by the script's name (`run-<name>-<vmm>`)
        starts = [str(p) for p in wrappers.values()]
        return [*driver.command, "--start-scripts", *starts, "-o", str(out), "--", script]
    if suite.watch_saves:  # the loop edits a copy of the script (harness/watch.py)
        args = procs.driver_arguments(wrappers, suite.kinds, vlans)
        return [*watch.command(), *args, "-o", str(out), "--", str(out.parent / suite.script)]
    if not driver.upstream:
        args = procs.driver_arguments(wrappers, suite.kinds, vlans)
        return [*driver.command, *args, "-o", str(out), "--", script]
    vms = [str(p) for n, p in wrappers.items() if suite.kinds.get(n) != CONTAINER_KIND]
    containers = [str(p) for n, p in wrappers.items() if suite.kinds.get(n) == CONTAINER_KIND]
    cmd = [*UPSTREAM_PREFIX, *driver.command, script]
    cmd += ["-o", str(out), "--vlans", *map(str, vlans)]
    if vms:
        cmd += ["--vm-start-scripts", *vms]
    if containers:
        cmd += ["--container-start-scripts", *containers]
    return cmd


def _wrapper_text(
    driver: Driver, suite: Suite, name: str, stamp: str, real: str, real_text: str
) -> str:
    if not driver.upstream:
        announces = "".join(
            f"# the real script takes ${var}\n" for var in AGENT_DEVICE_VARS if var in real_text
        )
        return WRAPPER.format(stamp=stamp, real=real, announces=announces)
    if suite.kinds.get(name) == CONTAINER_KIND:
        return UPSTREAM_NSPAWN_WRAPPER.format(stamp=stamp, real=real)
    return UPSTREAM_VM_WRAPPER.format(stamp=stamp, real=real)


def run_once(ctx: Context, suite: Suite, label: str) -> dict[str, Any]:
    """One driver run of a suite; returns the raw figures of that run."""
    from nixos_test_ng.guest import write_start_scripts

    driver = ctx.the_driver
    tmp = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=ctx.tmp_root))
    xdg, out, real, bindir, stamps = (tmp / d for d in ("xdg", "out", "real", "bin", "stamps"))
    for d in (xdg, out, bindir, stamps):
        d.mkdir(mode=0o700)
    written: dict[str, Path] = {}
    wrappers: dict[str, Path] = {}
    vmm_env: dict[str, str] = {}
    if suite.vmm:
        if driver.upstream:
            raise RunFailed(f"{label}: upstream's driver has no {suite.vmm} machines")
        (node,) = suite.nodes
        wrappers[node], vmm_env = vmm.prepare(suite.vmm, node, tmp, bindir, stamps)
    else:
        written = write_start_scripts(real, suite.nodes, guest_dir=ctx.guest_dir, kinds=suite.kinds)
    for name, path in written.items():
        w = bindir / path.name
        stamp = shlex.quote(str(stamps / name))
        w.write_text(
            _wrapper_text(driver, suite, name, stamp, shlex.quote(str(path)), path.read_text())
        )
        w.chmod(0o755)
        wrappers[name] = w
    result_file = tmp / "result.json"
    cmd = command_line(driver, suite, wrappers, out)
    if suite.watch_saves:
        if driver.upstream:
            raise RunFailed(f"{label}: upstream's driver has no watch loop")
        shutil.copy(SCRIPTS / suite.script, tmp / suite.script)

    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.update(suite.env)
    env.update(vmm_env)
    env.update(
        XDG_RUNTIME_DIR=str(xdg),
        NTNG_BENCH_RESULT=str(result_file),
        NTNG_BENCH_OUT=str(out),
        NIXOS_TEST_NG_ACCEL="tcg",
        NO_COLOR="1",
    )
    if suite.watch_saves:
        env["NTNG_BENCH_WATCH_STAMPS"] = str(tmp / "watch-stamps")
    stdout_path, stderr_path = tmp / "stdout.log", tmp / "stderr.log"
    with open(stdout_path, "wb") as so, open(stderr_path, "wb") as se:
        t_launch = time.time()
        proc = ctx.reaper.spawn(
            cmd, needles=[str(tmp)], env=env, cwd=tmp, stdin=subprocess.DEVNULL, stdout=so,
            stderr=se,
        )  # fmt: skip
        # A blocking wait (Popen.wait with a timeout polls at up to 50 ms steps).
        hung = threading.Event()

        def kill_hung() -> None:
            hung.set()
            ctx.reaper.reap(proc)

        timer = threading.Timer(RUN_TIMEOUT_S, kill_hung)
        timer.daemon = True
        timer.start()
        watch_failed = None
        try:
            if suite.watch_saves:
                try:
                    raw_watch = watch.drive(
                        proc, tmp / suite.script, stderr_path, tmp / "watch-stamps",
                        suite.watch_saves,
                    )  # fmt: skip
                    result_file.write_text(json.dumps(raw_watch))
                except watch.WatchFailed as e:
                    watch_failed = str(e)
                    ctx.reaper.reap(proc)
            rc = proc.wait()
            t_exit = time.time()
        finally:
            timer.cancel()

    killed = ctx.reaper.reap(proc, grace=LEFTOVER_GRACE_S)
    leftovers = [f"{pid}: {cmd[:160]}" for pid, cmd in killed.items()]

    stderr = stderr_path.read_text(errors="replace")
    try:
        if watch_failed is not None:
            tail = "\n".join(stderr.splitlines()[-25:])
            raise RunFailed(f"{label}: {watch_failed}\n{tail}")
        if rc != 0 or not result_file.exists():
            tail = "\n".join(stderr.splitlines()[-25:])
            if hung.is_set():
                why = f"killed after {RUN_TIMEOUT_S:g} s without exiting (it hung)"
                raise RunFailed(f"{label}: the driver {why}\n{tail}\nFAILED: {why}")
            raise RunFailed(f"{label}: the driver exited with {rc}\n{tail}")
        raw: dict[str, Any] = json.loads(result_file.read_text())
        raw["t_launch"] = t_launch
        raw["wall_s"] = t_exit - t_launch
        raw["exit_status"] = rc
        raw["leftover_processes"] = leftovers
        raw["connecting_s"] = {
            (m.group(1) or "?"): float(m.group(2)) for m in CONNECTING.finditer(stderr)
        }
        raw["exec_stamps"] = {}
        for name in written:
            text = (stamps / name).read_text().strip().replace(",", ".")
            raw["exec_stamps"][name] = float(text)
        if suite.vmm:
            raw["script_stamps"] = vmm.stamps_of(stamps / "script")
            raw["vmm_stamps"] = vmm.stamps_of(stamps / "vmm")
        # upstream's driver logs no handshake for a container
        expected = {
            n for n in wrappers if not (driver.upstream and suite.kinds.get(n) == CONTAINER_KIND)
        }
        missing = expected - set(raw["connecting_s"])
        if missing:
            raise RunFailed(f"{label}: no `connecting took` line for {sorted(missing)}")
        return raw
    finally:
        if not ctx.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
