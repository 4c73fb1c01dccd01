"""Nobody else gets in, on real machines: a QEMU VM and a systemd-nspawn container on a VLAN,
and a VM's snapshot golden copy and warm standby, with the driver's tmp dir a shared, sticky
`/tmp`-like directory. While the run is paused, everything below the tmp dir is the driver's
user's and inside a 0700 directory, and `nobody` can neither list those directories nor
`stat` or connect to any socket in them (QMP, monitor, shell, the vhost-user vsock sockets of
the agent transport, the VDE control socket)."""

from __future__ import annotations

import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.private import (
    IS_ROOT,
    assert_private_tree,
    check_nobody_is_locked_out,
    created_entries,
    shared_tmp_dir,
)

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(not IS_ROOT, reason="containers and switching users need root"),
]

PAUSE = """
import time
from pathlib import Path
deadline = time.monotonic() + 240
Path("ready").touch()
while not Path("go").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
"""


@pytest.fixture
def shared_tmp(vm_env) -> Iterator[Path]:
    with shared_tmp_dir() as path:
        environ = vm_env.environ
        vm_env.environ = lambda: {**environ(), "XDG_RUNTIME_DIR": str(path)}
        yield path


def paused_run(vm_env, tmp: Path, nodes, script: str, expected: list[str], **kw) -> None:
    """Runs `script` then pauses; checks the tree below `tmp` and `nobody`'s access."""
    p = vm_env.spawn(nodes, script + PAUSE, **kw)
    ready, go = vm_env.root / "ready", vm_env.root / "go"
    deadline = time.monotonic() + 600  # the hang detector
    while not ready.exists():
        if p.poll() is not None or time.monotonic() > deadline:
            out, err = p.communicate(timeout=60) if p.poll() is not None else ("", "")
            pytest.fail(f"the run never paused (exit {p.poll()})\n{out}\n{err[-5000:]}")
        time.sleep(0.1)
    try:
        assert_private_tree(tmp, expected)
        sockets = [
            path.relative_to(tmp).as_posix()
            for path, st in created_entries(tmp)
            if stat.S_ISSOCK(st.st_mode)
        ]
        tops = sorted({Path(s).parts[0] for s in expected})
        check_nobody_is_locked_out(tmp, tops, sockets)
    finally:
        go.touch()
    try:
        out, err = p.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    assert p.returncode == 0, f"{out}\n{err[-5000:]}"


@pytest.mark.one_transport
@pytest.mark.parametrize("transport", ["backdoor", "agent"])
def test_vm_and_container_state_is_private(vm_env, shared_tmp, monkeypatch, transport):
    monkeypatch.setenv("NIXOS_TEST_NG_TRANSPORT", transport)
    script = 'start_all()\nvm.succeed("true")\nbox.succeed("true")\n'
    paused_run(
        vm_env,
        shared_tmp,
        {"vm": [1], "box": [1]},
        script,
        ["vm-state-vm/qmp", "vm-state-vm/shell", "vm-state-box", "shared-xchg", "vde1.ctl/ctl"],
        kinds={"box": "systemd-nspawn"},
    )


@pytest.mark.usefixtures("takes_snapshots")
def test_golden_copies_and_the_warm_standby_are_private(vm_env, shared_tmp, monkeypatch):
    monkeypatch.setenv("NIXOS_TEST_NG_STANDBY", "1")
    script = 'machine.start()\nmachine.succeed("true")\nmachine.snapshot("ready")\n'
    script += "t.assertTrue(machine.wait_for_standby())\n"
    paused_run(
        vm_env,
        shared_tmp,
        {"machine": []},
        script,
        ["vm-state-machine/qmp", "vm-state-machine/golden-ready", "shared-xchg"],
    )
