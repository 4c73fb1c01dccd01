"""The start-script contract (upstream-driver.md section 2), checked against a fake QEMU."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
from nixos_test_ng.guest import write_start_scripts

Reaper = Any  # conftest.Reaper

# a, b, c sorted: c is node 3 although it is given first
LAYOUT = {"c": [2], "a": [1, 2], "b": [1]}


def run(
    script: Path, args: list[str], env: dict[str, str], out: Path, reaper: Reaper
) -> dict[str, Any]:
    proc = reaper.spawn([str(script), *args], env={**os.environ, **env}, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    call = json.loads(out.read_text())
    call["script_pid"] = proc.pid
    return call


def qemu_args(call: dict[str, Any]) -> list[str]:
    return call["argv"][1:]


def option_values(args: list[str], option: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == option]


def vde_env(tmp_path: Path) -> dict[str, str]:
    return {
        "QEMU_VDE_SOCKET_1": str(tmp_path / "vde1.ctl"),
        "QEMU_VDE_SOCKET_2": str(tmp_path / "vde2.ctl"),
    }


@pytest.fixture
def scripts(tmp_path: Path, fake_guest: Path) -> dict[str, Path]:
    return write_start_scripts(tmp_path / "bin", LAYOUT, fake_guest)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    d = tmp_path / "vm-state-a"
    d.mkdir()
    return d


def driver_env(state: Path, shared: Path) -> dict[str, str]:
    return {"TMPDIR": str(state), "SHARED_DIR": str(shared), "USE_TMPDIR": "1"}


def test_writes_one_executable_bash_script_per_node(
    scripts: dict[str, Path], tmp_path: Path
) -> None:
    assert sorted(scripts) == ["a", "b", "c"]
    for name, path in scripts.items():
        assert path == tmp_path / "bin" / f"run-{name}-vm"
        assert os.access(path, os.X_OK)
        text = path.read_text()
        assert text.startswith("#!/usr/bin/env bash\n")
        last = text.rstrip().splitlines()[-1]
        assert last.strip() == '"$@"'
        assert re.search(r"^exec qemu-system-x86_64 ", text, re.M)
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0


def test_driver_arguments_pass_through_unchanged_and_last(
    scripts: dict[str, Path],
    state: Path,
    tmp_path: Path,
    fake_qemu: Path,
    reaper: Reaper,
    upstream_driver_args: Any,
) -> None:
    extra = ["-device", "foo,bar=a b,baz='q'", "$NOT_EXPANDED", "*"]
    args = upstream_driver_args(state) + extra
    call = run(
        scripts["a"],
        args,
        {**driver_env(state, tmp_path / "shared"), **vde_env(tmp_path)},
        fake_qemu,
        reaper,
    )
    assert qemu_args(call)[-len(args) :] == args


def test_exec_replaces_the_script(
    scripts: dict[str, Path], tmp_path: Path, fake_qemu: Path, reaper: Reaper
) -> None:
    call = run(scripts["b"], [], vde_env(tmp_path), fake_qemu, reaper)
    assert call["pid"] == call["script_pid"]


def test_qemu_opts_are_word_split_before_the_driver_arguments(
    scripts: dict[str, Path],
    state: Path,
    tmp_path: Path,
    fake_qemu: Path,
    reaper: Reaper,
    upstream_driver_args: Any,
) -> None:
    env = {**driver_env(state, tmp_path), **vde_env(tmp_path), "QEMU_OPTS": "-snapshot  -smp 2"}
    args = upstream_driver_args(state)
    got = qemu_args(run(scripts["a"], args, env, fake_qemu, reaper))
    assert got[-len(args) - 3 :] == ["-snapshot", "-smp", "2", *args]


def test_tmpdir_xchg_and_shared_dir(
    scripts: dict[str, Path], state: Path, tmp_path: Path, fake_qemu: Path, reaper: Reaper
) -> None:
    shared = tmp_path / "shared-xchg"
    call = run(
        scripts["a"], [], {**driver_env(state, shared), **vde_env(tmp_path)}, fake_qemu, reaper
    )
    assert (state / "xchg").is_dir()
    assert call["cwd"] == str(state)
    virtfs = option_values(qemu_args(call), "-virtfs")
    assert virtfs == [
        f"local,path={state}/xchg,security_model=none,mount_tag=xchg",
        f"local,path={shared},security_model=none,mount_tag=shared",
    ]


def test_shared_dir_defaults_to_xchg(
    scripts: dict[str, Path], state: Path, tmp_path: Path, fake_qemu: Path, reaper: Reaper
) -> None:
    env = {"TMPDIR": str(state), "USE_TMPDIR": "1", **vde_env(tmp_path)}
    virtfs = option_values(qemu_args(run(scripts["a"], [], env, fake_qemu, reaper)), "-virtfs")
    assert virtfs[1] == f"local,path={state}/xchg,security_model=none,mount_tag=shared"


def test_without_use_tmpdir_a_fresh_nix_vm_dir_is_made(
    scripts: dict[str, Path], tmp_path: Path, fake_qemu: Path, reaper: Reaper
) -> None:
    base = tmp_path / "base"
    base.mkdir()
    call = run(scripts["b"], [], {"TMPDIR": str(base), **vde_env(tmp_path)}, fake_qemu, reaper)
    cwd = Path(call["cwd"])
    assert cwd.parent == base and re.fullmatch(r"nix-vm\.[A-Za-z0-9]{10}", cwd.name)
    assert (cwd / "xchg").is_dir()


def test_vlan_nics_macs_and_numbering_by_sorted_name(
    scripts: dict[str, Path], tmp_path: Path, fake_qemu: Path, reaper: Reaper
) -> None:
    env = vde_env(tmp_path)
    expected = {
        # a is node 1, on VLANs 1 and 2 (eth1, eth2)
        "a": [
            ("-device", "virtio-net-pci,netdev=vlan1,mac=52:54:00:12:01:01"),
            ("-netdev", f"vde,id=vlan1,sock={tmp_path}/vde1.ctl"),
            ("-device", "virtio-net-pci,netdev=vlan2,mac=52:54:00:12:02:01"),
            ("-netdev", f"vde,id=vlan2,sock={tmp_path}/vde2.ctl"),
        ],
        # b is node 2, on VLAN 1
        "b": [
            ("-device", "virtio-net-pci,netdev=vlan1,mac=52:54:00:12:01:02"),
            ("-netdev", f"vde,id=vlan1,sock={tmp_path}/vde1.ctl"),
        ],
        # c is node 3, on VLAN 2 only: its first VLAN NIC is still vlan1/eth1
        "c": [
            ("-device", "virtio-net-pci,netdev=vlan1,mac=52:54:00:12:02:03"),
            ("-netdev", f"vde,id=vlan1,sock={tmp_path}/vde2.ctl"),
        ],
    }
    for name, want in expected.items():
        args = qemu_args(run(scripts[name], [], env, fake_qemu, reaper))
        pairs = [
            (a, args[i + 1]) for i, a in enumerate(args[:-1]) if a in ("-device", "-netdev", "-net")
        ]
        # eth0 first: the user-mode NIC, then the VLAN NICs in order
        assert pairs[0] == ("-net", "nic,netdev=user.0,model=virtio")
        assert pairs[1] == ("-netdev", "user,id=user.0")
        assert pairs[2:] == want, name
        # no explicit ids on NICs: QEMU must name the first VLAN NIC virtio-net-pci.1
        assert not any(v.startswith("virtio-net-pci") and ",id=" in v for _, v in pairs)


def test_kernel_command_line(
    scripts: dict[str, Path], tmp_path: Path, fake_qemu: Path, reaper: Reaper
) -> None:
    env = {**vde_env(tmp_path), "QEMU_KERNEL_PARAMS": "foo=1 bar"}
    (append,) = option_values(qemu_args(run(scripts["a"], [], env, fake_qemu, reaper)), "-append")
    words = append.split()
    assert "console=ttyS0" in words and "panic=1" in words
    assert "ntng.hostname=a" in words
    assert "ntng.if=eth1,52:54:00:12:01:01,192.168.1.1/24" in words
    assert "ntng.if=eth2,52:54:00:12:02:01,192.168.2.1/24" in words
    # every node's first address
    assert "ntng.hosts=192.168.1.1=a,192.168.1.2=b,192.168.2.3=c" in words
    assert words[-2:] == ["foo=1", "bar"]


def test_machine_options(
    scripts: dict[str, Path], fake_guest: Path, tmp_path: Path, fake_qemu: Path, reaper: Reaper
) -> None:
    args = qemu_args(run(scripts["b"], [], vde_env(tmp_path), fake_qemu, reaper))
    assert option_values(args, "-accel") == ["tcg"]
    assert option_values(args, "-m") == ["256"]
    assert option_values(args, "-vga") == ["std"]
    assert option_values(args, "-name") == ["b"]
    # the guest dir has spaces and a comma: the paths arrive intact
    assert option_values(args, "-kernel") == [str(fake_guest / "vmlinux")]
    assert option_values(args, "-initrd") == [str(fake_guest / "initrd.img")]
    # the driver adds these itself
    for own in ("-serial", "-monitor", "-qmp", "-chardev", "-no-reboot", "-nographic"):
        assert own not in args
    assert "virtio-rng-pci" not in args and "-cpu" not in args


def test_accel_follows_the_kvm_probe_and_the_override(
    tmp_path: Path, fake_qemu: Path, reaper: Reaper, fake_guest_factory: Any
) -> None:
    kvm_guest = fake_guest_factory(tmp_path / "kvm-guest", kvm=True)
    (script,) = write_start_scripts(tmp_path / "kvm", {"m": []}, kvm_guest).values()
    args = qemu_args(run(script, [], {}, fake_qemu, reaper))
    assert option_values(args, "-accel") == ["kvm"] and option_values(args, "-cpu") == ["max"]
    args = qemu_args(run(script, [], {"NIXOS_TEST_NG_ACCEL": "tcg"}, fake_qemu, reaper))
    assert option_values(args, "-accel") == ["tcg"] and "-cpu" not in args


def test_qemu_net_opts_and_memory(
    fake_guest: Path, tmp_path: Path, fake_qemu: Path, reaper: Reaper
) -> None:
    (script,) = write_start_scripts(tmp_path / "bin", {"m": []}, fake_guest, memory=512).values()
    for opts in ("hostfwd=tcp::2222-:22", ",hostfwd=tcp::2222-:22"):
        args = qemu_args(run(script, [], {"QEMU_NET_OPTS": opts}, fake_qemu, reaper))
        assert "user,id=user.0,hostfwd=tcp::2222-:22" in args
        assert option_values(args, "-m") == ["512"]


def test_commas_in_paths_are_escaped_for_qemu(
    scripts: dict[str, Path], tmp_path: Path, fake_qemu: Path, reaper: Reaper
) -> None:
    state = tmp_path / "state,1"
    state.mkdir()
    env = {
        "TMPDIR": str(state),
        "USE_TMPDIR": "1",
        **vde_env(tmp_path),
        "QEMU_VDE_SOCKET_1": "/x,y/vde1.ctl",
    }
    args = qemu_args(run(scripts["b"], [], env, fake_qemu, reaper))
    assert f"local,path={tmp_path}/state,,1/xchg,security_model=none,mount_tag=xchg" in args
    assert "vde,id=vlan1,sock=/x,,y/vde1.ctl" in args


def test_missing_vde_socket_is_a_clear_error(
    scripts: dict[str, Path], tmp_path: Path, fake_qemu: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QEMU_VDE_SOCKET_")}
    res = subprocess.run([str(scripts["b"])], env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 1
    assert "QEMU_VDE_SOCKET_1 is not set" in res.stderr
    assert not fake_qemu.exists()


def test_kernel_override_variable(
    scripts: dict[str, Path], tmp_path: Path, fake_qemu: Path, reaper: Reaper
) -> None:
    args = qemu_args(
        run(
            scripts["a"],
            [],
            {**vde_env(tmp_path), "NIXPKGS_QEMU_KERNEL_a": "/k"},
            fake_qemu,
            reaper,
        )
    )
    assert option_values(args, "-kernel") == ["/k"]


def test_long_host_lists_move_to_fw_cfg(
    fake_guest: Path, tmp_path: Path, fake_qemu: Path, reaper: Reaper
) -> None:
    nodes = {f"node-{i:03d}": [1] for i in range(254)}
    scripts = write_start_scripts(tmp_path / "bin", nodes, fake_guest)
    args = qemu_args(run(scripts["node-253"], [], vde_env(tmp_path), fake_qemu, reaper))
    (append,) = option_values(args, "-append")
    assert len(append) < 1024 and "ntng.hosts=fw_cfg" in append.split()
    assert "ntng.if=eth1,52:54:00:12:01:fe,192.168.1.254/24" in append.split()
    (fw_cfg,) = option_values(args, "-fw_cfg")
    name, _, string = fw_cfg.partition(",string=")
    assert name == "name=opt/nixos-test-ng/hosts"
    entries = string.split(" ")
    assert (
        len(entries) == 254
        and entries[0] == "192.168.1.1=node-000"
        and entries[-1] == "192.168.1.254=node-253"
    )


def test_scripts_are_valid_shell_words(scripts: dict[str, Path]) -> None:
    # the exec line parses as shell words (no stray quotes), as bash -n also checks
    text = scripts["a"].read_text()
    exec_line = text[text.index("exec qemu-system-x86_64") :].replace("\\\n", " ")
    assert shlex.split(exec_line)[0] == "exec"


def test_the_vsock_device_only_when_the_driver_sets_its_variable(
    scripts: dict[str, Path], state: Path, tmp_path: Path, fake_qemu: Path, reaper: Reaper
) -> None:
    # the variables' names in the text are the driver's cue that the script takes the device
    text = scripts["a"].read_text()
    assert "NIXOS_TEST_NG_VHOST_USER_VSOCK" in text and "NIXOS_TEST_NG_VSOCK_CID" in text
    env = {**driver_env(state, tmp_path / "shared"), **vde_env(tmp_path)}
    plain = qemu_args(run(scripts["a"], [], env, fake_qemu, reaper))
    assert not [a for a in plain if "vhost" in a or "ntng-mem" in a or "ntng-vsock" in a], plain
    sock = tmp_path / "with,comma" / "vhost-user-vsock.sock"
    args = qemu_args(
        run(
            scripts["a"],
            ["-serial", "stdio"],
            {**env, "NIXOS_TEST_NG_VHOST_USER_VSOCK": str(sock)},
            fake_qemu,
            reaper,
        )
    )
    # -m 256 (the busybox default): the shared memory backend has the same size
    assert option_values(args, "-m") == ["256"]
    assert option_values(args, "-object") == ["memory-backend-memfd,id=ntng-mem,size=256M,share=on"]
    assert option_values(args, "-machine") == ["memory-backend=ntng-mem"]
    assert f"socket,id=ntng-vsock,path={str(sock).replace(',', ',,')}" in option_values(
        args, "-chardev"
    )
    assert "vhost-user-vsock-pci,chardev=ntng-vsock" in option_values(args, "-device")
    assert args[-2:] == ["-serial", "stdio"]  # the driver's arguments stay last
    cid = qemu_args(
        run(scripts["a"], [], {**env, "NIXOS_TEST_NG_VSOCK_CID": "42"}, fake_qemu, reaper)
    )
    assert "vhost-vsock-pci,guest-cid=42" in option_values(cid, "-device")
    assert not option_values(cid, "-object")
