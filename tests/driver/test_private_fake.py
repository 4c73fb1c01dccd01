"""Nobody else gets in: every directory and socket the driver creates in its tmp dir is its
user's only, also when the tmp dir is a shared, world-writable `/tmp`-like directory, and a
directory another user planted under one of the driver's predictable names is refused.

The tmp dir here is a sticky 1777 directory directly in /tmp, so another user can reach it
(a test under pytest's 0700 tmp_path would pass for the wrong reason). The checks as another
user run `stat`, `ls` and a socket connect as `nobody` through `setpriv`; they need root to
switch users and are skipped otherwise (CI runs as root).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from nixos_test_ng import procs

NOBODY = 65534
IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="switching to another user needs root")


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A fresh `/tmp`-like directory: world-writable and sticky, reachable by anyone."""
    path = Path(tempfile.mkdtemp(prefix="ntng-shared-tmp-", dir="/tmp"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv],
        capture_output=True,
        text=True,
        timeout=30,
    )


def created_entries(tmp: Path) -> list[tuple[Path, os.stat_result]]:
    """Everything below `tmp` (not following symlinks), with its lstat."""
    out = []
    for root, dirs, files in os.walk(tmp):
        for name in dirs + files:
            p = Path(root) / name
            out.append((p, p.lstat()))
    return out


PAUSED_SCRIPT = """
    import os, time
    from pathlib import Path
    start_all()
    alpha.succeed("true")
    work = Path.cwd()
    (work / "ready").touch()
    deadline = time.monotonic() + 120
    while not (work / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
"""


def test_every_dir_and_socket_is_private_in_a_shared_tmp(driver_env, shared_tmp, write_script):
    vm = driver_env.fake_vm("alpha")
    script = write_script("t.py", PAUSED_SCRIPT)
    args = procs.driver_arguments({"alpha": vm.script}, vlans=[1])
    p = driver_env.start_driver([*args, "--", script], env={"XDG_RUNTIME_DIR": str(shared_tmp)})
    p.wait_for_file(driver_env.work / "ready", timeout=60)
    try:
        entries = created_entries(shared_tmp)
        names = {e.relative_to(shared_tmp).as_posix() for e, _ in entries}
        # what the run made: state dir with its sockets, shared dir, the VLAN's switch dir
        for expected in (
            "vm-state-alpha/qmp",
            "vm-state-alpha/shell",
            "shared-xchg",
            "vde1.ctl/ctl",
        ):
            assert expected in names, sorted(names)
        me = os.geteuid()
        for path, st in entries:
            rel = path.relative_to(shared_tmp)
            assert st.st_uid == me, f"{rel} belongs to uid {st.st_uid}"
            if stat.S_ISDIR(st.st_mode) and len(rel.parts) == 1:
                # the directories in the shared tmp dir: exactly 0700
                assert stat.S_IMODE(st.st_mode) == 0o700, f"{rel}: {oct(st.st_mode)}"
            elif len(rel.parts) == 1:
                pytest.fail(f"{rel} lies directly in the shared tmp dir, outside a private dir")
            # deeper entries (sockets, disks, exchange dirs) sit inside a 0700 dir
            top = shared_tmp / rel.parts[0]
            assert stat.S_IMODE(top.lstat().st_mode) == 0o700, rel
        if IS_ROOT:
            check_nobody_is_locked_out(shared_tmp)
    finally:
        (driver_env.work / "go").touch()
    r = p.wait(60)
    assert r.returncode == 0, r


def check_nobody_is_locked_out(tmp: Path) -> None:
    state = tmp / "vm-state-alpha"
    # nobody sees the directory (the shared tmp dir is listable) but not into it
    seen = as_nobody("stat", "-c", "%a %u", str(state))
    assert seen.returncode == 0 and seen.stdout.split() == ["700", str(os.geteuid())], seen
    for argv in (
        ("ls", str(state)),
        ("stat", str(state / "qmp")),
        ("ls", str(tmp / "shared-xchg")),
        ("stat", str(tmp / "vde1.ctl" / "ctl")),
        ("touch", str(tmp / "shared-xchg" / "planted")),
    ):
        r = as_nobody(*argv)
        assert r.returncode != 0 and "Permission denied" in r.stderr, (argv, r)
    for sock in (state / "qmp", state / "monitor", state / "shell", tmp / "vde1.ctl" / "ctl"):
        r = as_nobody(
            sys.executable,
            "-c",
            "import socket, sys\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    sys.exit(13)\n",
            str(sock),
        )
        assert r.returncode == 13, (sock, r)


@needs_root
@pytest.mark.parametrize(
    ("planted", "args"),
    [
        ("shared-xchg", []),
        ("vm-state-alpha", ["--keep-machine-state"]),
    ],
)
def test_a_dir_planted_by_another_user_is_refused(
    driver_env, shared_tmp, write_script, planted, args
):
    victim = shared_tmp / planted
    made = as_nobody("mkdir", "-m", "777", str(victim))
    assert made.returncode == 0, made
    vm = driver_env.fake_vm("alpha")
    script = write_script("t.py", "start_all()\nalpha.succeed('true')\n")
    r = driver_env.run_driver(
        [*procs.driver_arguments({"alpha": vm.script}), *args, "--", script],
        env={"XDG_RUNTIME_DIR": str(shared_tmp)},
    )
    assert r.returncode == 1, r
    assert f"{victim} already exists and belongs to uid {NOBODY}" in r.stderr, r.stderr
    assert stat.S_IMODE(victim.lstat().st_mode) == 0o777, "the planted dir is left as it was"
    assert list(victim.iterdir()) == [], "nothing of the run went into it"


def test_a_symlink_planted_as_the_shared_dir_is_refused(driver_env, shared_tmp, write_script):
    elsewhere = shared_tmp / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    (shared_tmp / "shared-xchg").symlink_to(elsewhere)
    vm = driver_env.fake_vm("alpha")
    script = write_script("t.py", "start_all()\n")
    r = driver_env.run_driver(
        [*procs.driver_arguments({"alpha": vm.script}), "--", script],
        env={"XDG_RUNTIME_DIR": str(shared_tmp)},
    )
    assert r.returncode == 1, r
    assert "shared-xchg already exists and is a symlink or not a directory" in r.stderr, r.stderr
    assert list(elsewhere.iterdir()) == []
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o755


def test_an_own_dir_left_loose_by_an_older_run_is_tightened(driver_env, shared_tmp, write_script):
    old = shared_tmp / "vm-state-alpha"
    old.mkdir()
    old.chmod(0o755)
    vm = driver_env.fake_vm("alpha")
    script = write_script("t.py", "start_all()\nalpha.succeed('true')\n")
    r = driver_env.run_driver(
        [*procs.driver_arguments({"alpha": vm.script}), "--keep-machine-state", "--", script],
        env={"XDG_RUNTIME_DIR": str(shared_tmp)},
    )
    assert r.returncode == 0, r
    assert stat.S_IMODE(old.lstat().st_mode) == 0o700
