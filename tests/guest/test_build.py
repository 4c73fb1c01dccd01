"""The guest build and its cache. Needs apt's package lists and the Debian mirror (or a cached
build); the first test builds the guest in the default guest directory if needed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from nixos_test_ng.guest import BuildError, build, elf, load_manifest
from nixos_test_ng.guest import busybox_guest as bb
from nixos_test_ng.guest.agent import agent_sha256
from nixos_test_ng.guest.apt import Package
from nixos_test_ng.guest.cache import hash_inputs


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def guest_copy(built_guest: Path, tmp_path: Path) -> Path:
    """A copy of the built guest, hard-linked where the file system allows (the builder
    replaces files, never edits them)."""

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    dest = tmp_path / "guest"
    ignore = shutil.ignore_patterns(".lock", ".work-*", ".download-*")
    shutil.copytree(built_guest, dest, copy_function=link_or_copy, ignore=ignore)
    return dest


def run_cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nixos_test_ng.guest", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def test_built_guest_artifacts(built_guest: Path) -> None:
    m = load_manifest(built_guest)
    assert m is not None
    # the generic kernel, decompressed for PVH boot (see kernel.py)
    assert m["inputs"]["flavour"] == "generic"
    assert m["kernel_file"] == "vmlinux" and m["kernel_boot"] == "pvh"
    for name, art in m["artifacts"].items():
        assert sha256(built_guest / name) == art["sha256"]
    for deb in m["inputs"]["debs"]:
        assert sha256(built_guest / "debs" / deb["file"]) == deb["sha256"]
    # the guest agent is an input: a new agent rebuilds the guest
    assert m["inputs"]["agent_sha256"] == agent_sha256()
    assert [d["package"] for d in m["inputs"]["debs"]][1:] == [
        "busybox-static",
        "bash-static",
        "netcat-openbsd",
        "libbsd0",
        "libmd0",
        "libc6",
        "iproute2",
        "libbpf1",
        "libelf1",
        "libmnl0",
        "libxtables12",
        "libcap2",
        "zlib1g",
    ]
    assert isinstance(m["kvm"]["usable"], bool) and m["kvm"]["detail"]
    listing = subprocess.run(
        f"zcat {built_guest / 'initrd.img'} | cpio -it --quiet",
        shell=True,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    kv = m["kernel_version"]
    for path in (
        "init",
        "bin/bash",
        "bin/busybox",
        "sbin/modprobe",
        "dev/console",
        "etc/passwd",
        "etc/profile",
        "lib/nixos-test-ng/backdoor",
        "lib/nixos-test-ng/agent.sh",
        "lib/nixos-test-ng/nixos-test-ng-agent",
        f"lib/modules/{kv}/modules.dep",
        f"lib/modules/{kv}/modules.alias",
        f"lib/modules/{kv}/kernel/fs/9p/9p.ko",
        f"lib/modules/{kv}/kernel/net/9p/9pnet_virtio.ko",
        f"lib/modules/{kv}/kernel/drivers/char/virtio_console.ko",
        f"lib/modules/{kv}/kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko",
        f"lib/modules/{kv}/kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko",
        f"lib/modules/{kv}/kernel/net/vmw_vsock/vsock.ko",
        "bin/nc",
        "sbin/tc",
        "lib64/ld-linux-x86-64.so.2",
        "etc/nsswitch.conf",
    ):
        assert path in listing, path
    assert listing == sorted(listing)
    assert len([p for p in listing if p.endswith(".ko")]) == len(m["modules_included"])
    # network conditions and partitions: tc's qdiscs, classifier and action
    for mod in ("sch_netem", "sch_ingress", "cls_flower", "act_gact"):
        assert mod in m["modules_included"], mod
    # the loader and library closure of OpenBSD netcat and iproute2's tc, and nothing else
    assert m["libraries_included"] == [
        "ld-linux-x86-64.so.2",
        "libbpf.so.1",
        "libbsd.so.0",
        "libc.so.6",
        "libcap.so.2",
        "libelf.so.1",
        "libm.so.6",
        "libmd.so.0",
        "libmnl.so.0",
        "libresolv.so.2",
        "libxtables.so.12",
        "libz.so.1",
    ]
    assert [p for p in listing if p.startswith(("lib/x86_64-linux-gnu/", "lib64/"))] == [
        *(f"lib/x86_64-linux-gnu/{lib}" for lib in m["libraries_included"]),
        "lib64/ld-linux-x86-64.so.2",
    ]
    assert "usr/bin/nc" not in listing  # busybox's nc applet is not linked (`busybox nc` is)


def test_initramfs_netcat_and_tc_run_with_only_their_own_libraries(
    built_guest: Path, tmp_path: Path
) -> None:
    """The loader of the unpacked initramfs, run on the host with the initramfs as its root (a
    chroot, so root only), resolves every library of /bin/nc and /sbin/tc inside it; and the
    closure read by elf.py matches `objdump -p` where binutils is installed."""
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(
        f"zcat {built_guest / 'initrd.img'} | cpio -id --quiet --no-absolute-filenames",
        shell=True,
        cwd=root,
        check=True,
    )
    link = root / "lib64/ld-linux-x86-64.so.2"
    assert os.readlink(link) == "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    libdir = root / "lib/x86_64-linux-gnu"
    if shutil.which("objdump"):
        for f in [root / "bin/nc", root / "sbin/tc", *sorted(libdir.iterdir())]:
            dump = subprocess.run(
                ["objdump", "-p", str(f)], capture_output=True, text=True, check=True
            ).stdout
            want = [line.split()[1] for line in dump.splitlines() if "NEEDED" in line]
            assert list(elf.dynamic_info(f.read_bytes()).needed) == want, f.name
    closure = elf.library_closure(root, root / "bin/nc")
    tc = elf.library_closure(root, root / "sbin/tc")
    assert closure.interpreter == ("/lib64/ld-linux-x86-64.so.2", libdir / "ld-linux-x86-64.so.2")
    assert tc.interpreter == closure.interpreter
    assert sorted({*closure.libraries, *tc.libraries, "ld-linux-x86-64.so.2"}) == sorted(
        p.name for p in libdir.iterdir()
    )
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    res = subprocess.run(
        ["chroot", str(root), "/lib64/ld-linux-x86-64.so.2", "--list", "/bin/nc"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "not found" not in res.stdout
    for lib in ("libbsd.so.0", "libmd.so.0", "libc.so.6", "libresolv.so.2"):
        assert f"{lib} => /lib/x86_64-linux-gnu/{lib}" in res.stdout
    res = subprocess.run(["chroot", str(root), "/bin/nc", "-h"], capture_output=True, text=True)
    assert "OpenBSD netcat" in res.stderr
    res = subprocess.run(
        ["chroot", str(root), "/lib64/ld-linux-x86-64.so.2", "--list", "/sbin/tc"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "not found" not in res.stdout, res.stdout
    res = subprocess.run(["chroot", str(root), "/sbin/tc", "-V"], capture_output=True, text=True)
    assert res.returncode == 0 and "iproute2" in res.stdout, res


def test_second_build_is_cached(guest_copy: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in guest_copy.iterdir() if p.is_file()}
    res = run_cli(["build", "--out", str(guest_copy)])
    assert res.returncode == 0, res.stderr
    assert "cached: inputs unchanged" in res.stderr
    assert "downloading" not in res.stderr and "probing KVM" not in res.stderr
    assert res.stdout.strip() == str(guest_copy)
    after = {
        p.name: p.stat().st_mtime_ns
        for p in guest_copy.iterdir()
        if p.is_file() and p.name != ".lock"
    }
    assert after == {k: v for k, v in before.items() if k != ".lock"}


def test_changed_input_rebuilds_from_cached_debs_reproducibly(guest_copy: Path) -> None:
    original = load_manifest(guest_copy)
    assert original is not None
    epoch = str(original["inputs"]["source_date_epoch"])

    res = run_cli(["build", "--out", str(guest_copy)], {"SOURCE_DATE_EPOCH": str(int(epoch) + 1)})
    assert res.returncode == 0, res.stderr
    assert "built in" in res.stderr
    # the .debs and the KVM probe result are reused
    assert "downloading" not in res.stderr and "probing KVM" not in res.stderr
    changed = load_manifest(guest_copy)
    assert changed is not None and changed["input_hash"] != original["input_hash"]
    assert (
        changed["artifacts"]["initrd.img"]["sha256"]
        != original["artifacts"]["initrd.img"]["sha256"]
    )
    assert changed["artifacts"]["vmlinux"]["sha256"] == original["artifacts"]["vmlinux"]["sha256"]

    # back to the original inputs: a bit-identical initramfs
    res = run_cli(["build", "--out", str(guest_copy)], {"SOURCE_DATE_EPOCH": epoch})
    assert res.returncode == 0, res.stderr
    assert "built in" in res.stderr
    restored = load_manifest(guest_copy)
    assert restored is not None and restored["input_hash"] == original["input_hash"]
    assert sha256(guest_copy / "initrd.img") == original["artifacts"]["initrd.img"]["sha256"]


def test_corrupted_artifact_rebuilds(guest_copy: Path) -> None:
    initrd = guest_copy / "initrd.img"
    data = initrd.read_bytes()
    initrd.unlink()  # break the hard link before writing
    initrd.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    result = build(guest_copy, log=lambda _msg: None)
    assert result.built
    assert sha256(initrd) == hashlib.sha256(data).hexdigest()


def fake_failing_apt(tmp_path: Path) -> dict[str, str]:
    bindir = tmp_path / "noapt"
    bindir.mkdir()
    for tool in ("apt-cache", "apt-get"):
        (bindir / tool).write_text("#!/bin/sh\necho 'E: mirror unreachable (fake)' >&2\nexit 100\n")
        (bindir / tool).chmod(0o755)
    return {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}


def test_unusable_apt_falls_back_to_the_cached_build(guest_copy: Path, tmp_path: Path) -> None:
    res = run_cli(["build", "--out", str(guest_copy)], fake_failing_apt(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "warning: apt is unusable; using the cached guest" in res.stderr


def test_unusable_apt_without_a_cache_fails_clearly(tmp_path: Path) -> None:
    res = run_cli(["build", "--out", str(tmp_path / "empty")], fake_failing_apt(tmp_path))
    assert res.returncode == 1
    assert res.stderr.startswith("nixos-test-ng guest: error: apt-cache knows no candidate")


def test_input_hash_covers_scripts_modules_programs_and_debs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pkgs = [
        Package("linux-image-x", "1", "amd64", "00", 1),
        Package("busybox-static", "1:2", "amd64", "11", 1),
    ]
    base = hash_inputs(bb.inputs(pkgs, "generic"))
    assert pkgs[1].file == "busybox-static_1%3a2_amd64.deb"
    other_deb = [pkgs[0], Package("busybox-static", "1:2", "amd64", "12", 1)]
    assert hash_inputs(bb.inputs(other_deb, "generic")) != base
    assert hash_inputs(bb.inputs(pkgs, "cloud")) != base
    monkeypatch.setattr(bb, "MODULES", (*bb.MODULES, "extra"))
    assert hash_inputs(bb.inputs(pkgs, "generic")) != base
    monkeypatch.undo()
    monkeypatch.setattr(bb, "DYNAMIC_PROGRAMS", {"bin/nc": "bin/nc.traditional"})
    assert hash_inputs(bb.inputs(pkgs, "generic")) != base
    monkeypatch.undo()
    real = bb.data_file
    monkeypatch.setattr(bb, "data_file", lambda n: real(n) + (b"#" if n == "init.sh" else b""))
    assert hash_inputs(bb.inputs(pkgs, "generic")) != base
    monkeypatch.undo()
    monkeypatch.setattr(bb, "data_file", lambda n: real(n) + (b"#" if n == "agent.sh" else b""))
    assert hash_inputs(bb.inputs(pkgs, "generic")) != base
    monkeypatch.undo()
    monkeypatch.setattr(bb, "agent_sha256", lambda: "0" * 64)
    assert hash_inputs(bb.inputs(pkgs, "generic")) != base


def test_unknown_flavour_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="unknown kernel flavour"):
        build(tmp_path, flavour="rt")


def test_manifest_is_json_with_the_input_hash(built_guest: Path) -> None:
    m = json.loads((built_guest / "manifest.json").read_text())
    assert m["input_hash"] == hash_inputs(m["inputs"])
