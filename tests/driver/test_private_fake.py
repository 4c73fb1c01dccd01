"""Nobody else gets in: every directory and socket the driver creates in its tmp dir is its
user's only, also when the tmp dir is a shared, world-writable `/tmp`-like directory, and a
directory another user planted under one of the driver's predictable names is refused.

The tmp dir here is a sticky 1777 directory directly in /tmp, so another user can reach it
(a test under pytest's 0700 tmp_path would pass for the wrong reason). The checks as another
user run `stat`, `ls` and a socket connect as `nobody` through `setpriv`; they need root to
switch users and are skipped otherwise (CI runs as root).
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from nixos_test_ng import procs
from support.private import (
    IS_ROOT,
    NOBODY,
    as_nobody,
    assert_private_tree,
    check_nobody_is_locked_out,
    shared_tmp_dir,
)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    with shared_tmp_dir() as path:
        yield path


needs_root = pytest.mark.skipif(not IS_ROOT, reason="switching to another user needs root")


SOCKETS = ["vm-state-alpha/qmp", "vm-state-alpha/monitor", "vm-state-alpha/shell", "vde1.ctl/ctl"]

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
        # the state dir with its sockets, the shared dir, the VLAN's switch dir
        assert_private_tree(
            shared_tmp,
            ["vm-state-alpha/qmp", "vm-state-alpha/shell", "shared-xchg", "vde1.ctl/ctl"],
        )
        if IS_ROOT:
            check_nobody_is_locked_out(
                shared_tmp,
                ["vm-state-alpha", "shared-xchg", "vde1.ctl"],
                SOCKETS,
            )
    finally:
        (driver_env.work / "go").touch()
    r = p.wait(60)
    assert r.returncode == 0, r


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
