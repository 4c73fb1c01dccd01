"""The systemd guest's build: its configuration (on a fake tree, no root needed), and the real
build and its cache (root and the Debian mirror, or a cached build; skipped with the reason
otherwise)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from nixos_test_ng.guest import (
    BuildError,
    build_systemd,
    load_manifest,
    load_systemd_manifest,
    systemd_dir,
)
from nixos_test_ng.guest import systemd_guest as sg
from nixos_test_ng.guest.agent import agent_binary
from nixos_test_ng.guest.cache import hash_inputs, sha256_file
from nixos_test_ng.guest.common import data_file
from systemd_support import systemd_guest  # noqa: F401  (a fixture)


def append_to_data_file(monkeypatch: pytest.MonkeyPatch, name: str, extra: bytes) -> None:
    """The systemd guest's builder reads the data file `name` with `extra` at its end."""
    real = sg.data_file
    monkeypatch.setattr(sg, "data_file", lambda n: real(n) + (extra if n == name else b""))


# ---------------------------------------------------------------------------------------------
# the configuration, without a real tree


def test_the_agent_starts_with_the_backdoors_environment() -> None:
    files = sg.rootfs_files()
    script = files["usr/local/lib/nixos-test-ng/agent.sh"][0].decode()
    steps = [
        "export USER=root",
        "export HOME=/root",
        "export DISPLAY=:0.0",
        "source /etc/profile",
        "export PAGER=",
        "cd /tmp",
        'exec "${BASH_SOURCE[0]%/*}/nixos-test-ng-agent" "$@"',
    ]
    at = [script.index(step) for step in steps]
    assert at == sorted(at), steps
    unit = files["etc/systemd/system/nixos-test-ng-agent.service"][0].decode().splitlines()
    for line in (
        "ConditionVirtualization=!container",
        "ConditionKernelCommandLine=!ntng.agent=0",
        "Restart=on-failure",
        "ExecStart=/bin/bash /usr/local/lib/nixos-test-ng/agent.sh",
    ):
        assert line in unit, line


def test_backdoor_unit_is_nixos_backdoor_service() -> None:
    files = sg.rootfs_files()
    unit = files["etc/systemd/system/backdoor.service"][0].decode()
    for line in (
        "Requires=dev-hvc0.device dev-ttyS0.device",
        "After=dev-hvc0.device dev-ttyS0.device ntng-setup.service",
        "ConditionVirtualization=!container",
        "KillSignal=SIGHUP",
        "WantedBy=multi-user.target",
        "ExecStart=/bin/bash /usr/local/lib/nixos-test-ng/backdoor",
    ):
        assert line in unit.splitlines(), line
    # the very script of the busybox guest (NixOS's steps, in NixOS's order)
    backdoor, mode = files["usr/local/lib/nixos-test-ng/backdoor"]
    assert backdoor == data_file("backdoor.sh") and mode == 0o755
    text = backdoor.decode()
    steps = [
        "export USER=root",
        "export HOME=/root",
        "source /etc/profile",
        "cd /tmp",
        "exec </dev/hvc0 >/dev/hvc0",
        "while ! exec 2>/dev/ttyS0; do sleep 0.1; done",
        'echo "connecting to host..." >&2',
        "stty -F /dev/hvc0 raw -echo",
        'echo "Spawning backdoor root shell..."',
        'PS1="" exec bash --norc /dev/hvc0',
    ]
    positions = [text.index(step) for step in steps]
    assert positions == sorted(positions)
    journald = files["etc/systemd/journald.conf.d/nixos-test-ng.conf"][0].decode().splitlines()
    assert {"ForwardToConsole=yes", "MaxLevelConsole=info", "Storage=auto"} <= set(journald)
    for script in (
        "usr/local/lib/nixos-test-ng/setup",
        "etc/systemd/system-generators/nixos-test-ng",
    ):
        data, mode = files[script]
        assert mode == 0o755
        assert subprocess.run(["bash", "-n"], input=data).returncode == 0


def fake_debootstrap_tree(root: Path) -> Path:
    for d in ("etc/systemd/system/getty.target.wants", "var/log/journal/x", "usr/share/doc/pkg"):
        (root / d).mkdir(parents=True)
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\nnobody:*:19000::::::\n")
    (root / "etc/hostname").write_text("buildhost\n")
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "etc/resolv.conf").write_text("nameserver 10.0.0.1\n")
    (root / "etc/systemd/system/getty.target.wants/getty@tty1.service").symlink_to(
        "/lib/systemd/system/getty@.service"
    )
    (root / "usr/share/doc/pkg/copyright").write_text("x")
    (root / "var/lib/dbus").mkdir(parents=True)
    (root / "var/lib/dbus/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    return root


def test_configure_a_tree(tmp_path: Path) -> None:
    root = fake_debootstrap_tree(tmp_path / "root")
    sg.configure(root)
    for unit in sg.MASKED_UNITS:
        assert os.readlink(root / "etc/systemd/system" / unit) == "/dev/null", unit
    for gen in sg.MASKED_GENERATORS:
        assert os.readlink(root / "etc/systemd/system-generators" / gen) == "/dev/null", gen
    for getty in ("serial-getty@hvc0", "serial-getty@ttyS0", "getty@tty1", "console-getty"):
        assert f"{getty}.service" in sg.MASKED_UNITS
    assert not (root / "etc/systemd/system/getty.target.wants/getty@tty1.service").exists()
    assert os.readlink(root / "etc/systemd/network/99-default.link") == "/dev/null"
    assert os.readlink(root / "etc/systemd/system/multi-user.target.wants/ntng-setup.service") == (
        "/etc/systemd/system/ntng-setup.service"
    )
    # the backdoor and the agent are not statically wanted: the generator adds them outside
    # containers
    for unit in ("backdoor.service", "nixos-test-ng-agent.service"):
        assert not (root / "etc/systemd/system/multi-user.target.wants" / unit).exists()
    agent = root / sg.GUEST_LIB / "nixos-test-ng-agent"
    assert agent.read_bytes() == agent_binary() and agent.stat().st_mode & 0o777 == 0o755
    assert (root / sg.GUEST_LIB / "agent.sh").read_bytes() == data_file("agent.sh")
    unit = (root / "etc/systemd/system/nixos-test-ng-agent.service").read_text()
    assert f"ExecStart=/bin/bash /{sg.GUEST_LIB}/agent.sh" in unit and "Restart=on-failure" in unit
    assert (root / "etc/machine-id").read_text() == ""
    assert os.readlink(root / "var/lib/dbus/machine-id") == "/etc/machine-id"
    assert not (root / "etc/hostname").exists()
    assert (root / "etc/resolv.conf").read_text() == ""
    assert (root / "etc/hosts").read_text() == "127.0.0.1 localhost\n::1 localhost\n"
    assert (root / "etc/shadow").read_text().startswith("root::19000:")
    assert not (root / "var/log/journal").exists()
    assert list((root / "usr/share/doc").iterdir()) == []
    assert (root / "etc/tmpfiles.d/tmp.conf").read_text() == "d /tmp 1777 root root -\n"
    assert (root / "etc/modules-load.d/nixos-test-ng.conf").read_text() == "9p\n"
    assert os.readlink(root / "usr/bin/sh") == "bash"


@pytest.mark.parametrize(
    ("virtualization", "wanted"), [("container:systemd-nspawn", False), ("vm:qemu", True)]
)
def test_generator_wants_the_backdoor_outside_containers(
    tmp_path: Path, virtualization: str, wanted: bool
) -> None:
    if wanted and subprocess.run(["systemd-detect-virt", "--container", "--quiet"]).returncode == 0:
        pytest.skip("this host is a container: the generator's own check says so")
    gen = tmp_path / "gen"
    gen.write_bytes(sg.rootfs_files()["etc/systemd/system-generators/nixos-test-ng"][0])
    gen.chmod(0o755)
    out = tmp_path / "normal"
    subprocess.run(
        [str(gen), str(out), str(tmp_path / "early"), str(tmp_path / "late")],
        env={"PATH": os.environ["PATH"], "SYSTEMD_VIRTUALIZATION": virtualization},
        check=True,
    )
    for unit in ("backdoor.service", "nixos-test-ng-agent.service"):
        link = out / "multi-user.target.wants" / unit
        assert link.is_symlink() == wanted
        if wanted:
            assert os.readlink(link) == f"/etc/systemd/system/{unit}"


def test_input_hash_covers_configuration_packages_and_busybox(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    busybox: dict[str, Any] = {
        "kernel_version": "6.1.0-1-amd64",
        "inputs": {"flavour": "generic", "debs": [{"sha256": "k" * 64}]},
        "artifacts": {"initrd.img": {"sha256": "i" * 64}},
    }
    base = sg.base_inputs("http://deb.debian.org/debian")
    digest = hash_inputs(sg.inputs(base, busybox))
    assert hash_inputs(sg.inputs(base, busybox)) == digest
    other_mirror = sg.base_inputs("http://ftp.de.debian.org/debian")
    assert hash_inputs(sg.inputs(other_mirror, busybox)) != digest
    busybox["artifacts"]["initrd.img"]["sha256"] = "j" * 64
    assert hash_inputs(sg.inputs(base, busybox)) != digest
    busybox["artifacts"]["initrd.img"]["sha256"] = "i" * 64
    append_to_data_file(monkeypatch, "systemd_system.conf", b"# changed\n")
    assert hash_inputs(sg.inputs(base, busybox)) != digest
    monkeypatch.undo()
    monkeypatch.setattr(sg, "MASKED_UNITS", (*sg.MASKED_UNITS, "foo.service"))
    assert hash_inputs(sg.inputs(base, busybox)) != digest
    monkeypatch.undo()
    monkeypatch.setattr(sg, "PACKAGES", (*sg.PACKAGES, "vim"))
    assert hash_inputs(sg.inputs(sg.base_inputs(base["mirror"]), busybox)) != digest


def test_the_x11_variant_is_opt_in_and_kept_once_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = "http://deb.debian.org/debian"
    assert not set(sg.X11_PACKAGES) & set(sg.packages())  # `make demo` builds no X server
    assert set(sg.packages(x11=True)) == set(sg.PACKAGES) | set(sg.X11_PACKAGES)
    assert sg.base_inputs(mirror, x11=True) != sg.base_inputs(mirror)
    # the variant a directory holds is the one a build without `x11` keeps
    guest = tmp_path / "guest"
    assert not sg.built_with_x11(guest)
    for x11 in (True, False):
        manifest = {"format": sg.MANIFEST_FORMAT, "inputs": {"base": sg.base_inputs(mirror, x11)}}
        sd = systemd_dir(guest)
        sd.mkdir(parents=True, exist_ok=True)
        (sd / "manifest.json").write_text(json.dumps(manifest))
        assert sg.built_with_x11(guest) is x11


def test_x11_without_systemd_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from nixos_test_ng.guest.cli import main

    assert main(["build", "--x11"]) == 2
    assert "--x11 needs --systemd" in capsys.readouterr().err


def test_image_has_a_fixed_uuid_and_label(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 is not installed")
    monkeypatch.setattr(sg, "IMAGE_MIN_MB", 32)
    root = tmp_path / "tree"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text("ID=test\n")
    (root / "bin").mkdir()
    (root / "bin/sh").symlink_to("dash")
    assert sg._make_image(root, tmp_path / "a.ext4", 1700000000) == 256
    info = subprocess.run(
        ["dumpe2fs", "-h", str(tmp_path / "a.ext4")], capture_output=True, text=True
    ).stdout
    assert f"Filesystem UUID:          {sg.FS_UUID}" in info
    assert "Filesystem volume name:   nixos" in info
    listing = subprocess.run(
        ["debugfs", "-R", "ls -l /etc", str(tmp_path / "a.ext4")], capture_output=True, text=True
    ).stdout
    assert "os-release" in listing


# ---------------------------------------------------------------------------------------------
# the real build


def test_built_systemd_guest(systemd_guest: Path) -> None:  # noqa: F811
    m = load_systemd_manifest(systemd_guest)
    busybox = load_manifest(systemd_guest)
    assert m is not None and busybox is not None
    sd = systemd_dir(systemd_guest)
    for name, art in m["artifacts"].items():
        assert sha256_file(sd / name) == art["sha256"], name
    assert m["image_id"] == m["artifacts"]["rootfs.ext4"]["sha256"][:16]
    for pkg in sg.PACKAGES:
        assert pkg in m["packages"], pkg
    root = sd / "rootfs"
    for tool in ("bin/nc", "bin/ip", "bin/curl", "bin/ping", "bin/ps", "bin/less", "bin/systemctl"):
        assert os.path.lexists(root / "usr" / tool), tool  # nc: an alternatives link
    kv = m["kernel_version"]
    assert kv == busybox["kernel_version"]
    mods = root / "lib/modules" / kv
    assert (mods / "kernel/fs/ext4/ext4.ko").is_file()
    deps = (mods / "modules.dep").read_text()
    assert "kernel/fs/ext4/ext4.ko:" in deps and "kernel/fs/9p/9p.ko:" in deps
    # the VM's initramfs: the busybox guest's, then an archive with what ext4 needs
    initrd = (sd / "initrd.img").read_bytes()
    bb = (systemd_guest / "initrd.img").read_bytes()
    assert initrd.startswith(bb)
    extra = subprocess.run(
        ["cpio", "-it", "--quiet"], input=gzip.decompress(initrd[len(bb) :]), capture_output=True
    ).stdout.decode()
    assert f"lib/modules/{kv}/kernel/fs/ext4/ext4.ko" in extra.split()
    assert f"lib/modules/{kv}/modules.dep" in extra.split()
    assert sorted(m["initramfs_extra_modules"]) == sorted(
        p.removeprefix(f"lib/modules/{kv}/") for p in extra.split() if p.endswith(".ko")
    )
    # the image: a clean ext4 file system with the fixed UUID, sparse
    fsck = subprocess.run(["e2fsck", "-fn", str(sd / "rootfs.ext4")], capture_output=True)
    assert fsck.returncode == 0, fsck.stdout.decode() + fsck.stderr.decode()
    st = (sd / "rootfs.ext4").stat()
    assert st.st_size == m["image_mb"] << 20 and st.st_blocks * 512 < st.st_size


def test_second_build_is_cached(systemd_guest: Path) -> None:  # noqa: F811
    sd = systemd_dir(systemd_guest)
    before = {
        p: p.stat().st_mtime_ns for p in (sd / "rootfs.ext4", sd / "initrd.img", sd / "rootfs")
    }
    logs: list[str] = []
    result = build_systemd(systemd_guest, log=logs.append)
    assert not result.built
    assert any(line.startswith("cached: systemd guest inputs unchanged") for line in logs), logs
    assert {p: p.stat().st_mtime_ns for p in before} == before


@pytest.fixture
def guest_copy(systemd_guest: Path, tmp_path: Path) -> Path:  # noqa: F811
    """A hard-linked copy of the built guests (the builders replace files, never edit them)."""
    dest = tmp_path / "guest"
    for src, dst in ((systemd_guest, dest), (systemd_dir(systemd_guest), systemd_dir(dest))):
        subprocess.run(["cp", "-al", str(src), str(dst)], check=True, timeout=120)
        # the lock files must not be the originals (containers elsewhere hold rootfs.lock)
        for lock in (".lock", "rootfs.lock"):
            (dst / lock).unlink(missing_ok=True)
    return dest


def test_config_change_rebuilds_without_debootstrap(
    guest_copy: Path,
    systemd_guest: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    append_to_data_file(monkeypatch, "systemd_system.conf", b"# a change\n")
    logs: list[str] = []
    result = build_systemd(guest_copy, log=logs.append)
    assert result.built
    assert not any("debootstrap" in line for line in logs), logs
    conf = "rootfs/etc/systemd/system.conf.d/nixos-test-ng.conf"
    assert (systemd_dir(guest_copy) / conf).read_text().endswith("# a change\n")
    # the original build is untouched
    assert not (systemd_dir(systemd_guest) / conf).read_text().endswith("# a change\n")
    old = load_systemd_manifest(systemd_guest)
    assert old is not None and result.manifest["input_hash"] != old["input_hash"]


def test_unreachable_mirror(guest_copy: Path, tmp_path: Path) -> None:
    bad = "http://127.0.0.1:9/debian"
    # with a cached build: kept, with a warning
    logs: list[str] = []
    result = build_systemd(guest_copy, mirror=bad, log=logs.append)
    assert not result.built
    assert any("cannot reach the Debian mirror" in line for line in logs), logs
    assert any("using the cached systemd guest" in line for line in logs), logs
    # without one: a clear error, exit status 1 from the CLI
    shutil.rmtree(systemd_dir(guest_copy))
    with pytest.raises(
        BuildError, match="cannot reach the Debian mirror `http://127.0.0.1:9/debian`"
    ):
        build_systemd(guest_copy, mirror=bad, log=lambda _: None)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "nixos_test_ng.guest",
            "build",
            "--systemd",
            "--out",
            str(guest_copy),
        ],
        env={**os.environ, "NIXOS_TEST_NG_DEBIAN_MIRROR": bad},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 1
    assert "nixos-test-ng guest: error: cannot reach the Debian mirror" in r.stderr
    assert not (systemd_dir(guest_copy) / "manifest.json").exists()
