"""The shared-library closure (elf.py) on synthetic ELF files in a fake package tree (no VM, no
apt). The real netcat closure is checked in test_build.py and in a boot in test_boot.py."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from nixos_test_ng.guest.elf import ElfError, dynamic_info, library_closure, resolve_in_tree

BASE = 0x400000


def dyn_elf(needed: tuple[str, ...] = (), soname: str | None = None, interp: str | None = None):
    """A minimal ELF64 LE x86_64 shared object: PT_LOAD (the whole file at BASE), PT_INTERP
    when given, PT_DYNAMIC with DT_NEEDED, DT_SONAME and DT_STRTAB (by address, as in real
    files). No section headers: the loader reads none either."""
    strtab = b"\0"
    index = {}
    for s in [*needed, *([soname] if soname else [])]:
        index[s] = len(strtab)
        strtab += s.encode() + b"\0"
    phnum = 3 if interp else 2
    off = 64 + phnum * 56
    interp_bytes = interp.encode() + b"\0" if interp else b""
    interp_off = off
    off += len(interp_bytes)
    str_off = off
    off += len(strtab)
    off += -off % 8
    dyn = b"".join(struct.pack("<qQ", 1, index[n]) for n in needed)
    if soname:
        dyn += struct.pack("<qQ", 14, index[soname])
    dyn += struct.pack("<qQ", 5, BASE + str_off) + struct.pack("<qQ", 0, 0)
    total = off + len(dyn)
    phdrs = struct.pack("<IIQQQQQQ", 1, 5, 0, BASE, BASE, total, total, 0x1000)
    phdrs += struct.pack("<IIQQQQQQ", 2, 6, off, BASE + off, BASE + off, len(dyn), len(dyn), 8)
    if interp:
        phdrs += struct.pack(
            "<IIQQQQQQ", 3, 4, interp_off, 0, 0, len(interp_bytes), len(interp_bytes), 1
        )
    header = b"\x7fELF\x02\x01\x01" + bytes(9)
    header += struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, 64, 0, 0, 64, 56, phnum, 64, 0, 0)
    data = header + phdrs + interp_bytes + strtab
    data += bytes(-len(data) % 8)
    return data + dyn


def put(root: Path, rel: str, data: bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def link(root: Path, rel: str, target: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


LOADER = "/lib64/ld-linux-x86-64.so.2"


def debian_like_tree(root: Path) -> Path:
    """libc6's layout (loader symlinked from /lib64 by an absolute link), libbsd0's and libmd0's
    (versioned files under /usr/lib/x86_64-linux-gnu behind relative soname links)."""
    put(root, "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", dyn_elf(soname="ld-linux-x86-64.so.2"))
    link(root, "lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    put(
        root,
        "lib/x86_64-linux-gnu/libc.so.6",
        dyn_elf(("ld-linux-x86-64.so.2",), "libc.so.6", LOADER),
    )
    put(root, "lib/x86_64-linux-gnu/libunused.so.1", dyn_elf((), "libunused.so.1"))
    put(root, "usr/lib/x86_64-linux-gnu/libmd.so.0.0.5", dyn_elf(("libc.so.6",), "libmd.so.0"))
    link(root, "usr/lib/x86_64-linux-gnu/libmd.so.0", "libmd.so.0.0.5")
    put(
        root,
        "usr/lib/x86_64-linux-gnu/libbsd.so.0.11.7",
        dyn_elf(("libmd.so.0", "libc.so.6"), "libbsd.so.0"),
    )
    link(root, "usr/lib/x86_64-linux-gnu/libbsd.so.0", "libbsd.so.0.11.7")
    return put(root, "bin/nc.openbsd", dyn_elf(("libbsd.so.0", "libc.so.6"), None, LOADER))


def test_dynamic_info_reads_interp_needed_and_soname() -> None:
    info = dynamic_info(dyn_elf(("libbsd.so.0", "libc.so.6"), "libx.so.1", LOADER))
    assert info.interpreter == LOADER
    assert info.needed == ("libbsd.so.0", "libc.so.6")
    assert info.soname == "libx.so.1"
    assert dynamic_info(dyn_elf()).needed == ()
    with pytest.raises(ElfError, match="not an ELF64"):
        dynamic_info(b"#!/bin/sh\n" + bytes(64))
    other_machine = bytearray(dyn_elf())
    other_machine[0x12] = 183  # aarch64
    with pytest.raises(ElfError, match="not an x86_64"):
        dynamic_info(bytes(other_machine))


def test_closure_follows_needed_and_links_inside_the_tree(tmp_path: Path) -> None:
    nc = debian_like_tree(tmp_path)
    closure = library_closure(tmp_path, nc)
    libdir, usrlib = tmp_path / "lib/x86_64-linux-gnu", tmp_path / "usr/lib/x86_64-linux-gnu"
    assert closure.interpreter == (LOADER, libdir / "ld-linux-x86-64.so.2")
    assert closure.libraries == {
        "ld-linux-x86-64.so.2": libdir / "ld-linux-x86-64.so.2",
        "libbsd.so.0": usrlib / "libbsd.so.0.11.7",
        "libc.so.6": libdir / "libc.so.6",
        "libmd.so.0": usrlib / "libmd.so.0.0.5",
    }  # libunused.so.1 is left out


def test_closure_search_order_and_missing_library(tmp_path: Path) -> None:
    nc = debian_like_tree(tmp_path)
    # /lib/x86_64-linux-gnu comes before /usr/lib/x86_64-linux-gnu, as for the loader
    put(tmp_path, "lib/x86_64-linux-gnu/libmd.so.0", dyn_elf((), "libmd.so.0"))
    assert library_closure(tmp_path, nc).libraries["libmd.so.0"] == (
        tmp_path / "lib/x86_64-linux-gnu/libmd.so.0"
    )
    put(tmp_path, "usr/lib/x86_64-linux-gnu/libbsd.so.0.11.7", dyn_elf(("libnew.so.3",)))
    with pytest.raises(ElfError, match=r"libbsd.so.0 needs libnew.so.3, which is in none of"):
        library_closure(tmp_path, nc)


def test_closure_errors_for_static_programs_and_missing_loaders(tmp_path: Path) -> None:
    static = put(tmp_path, "bin/static", dyn_elf())
    with pytest.raises(ElfError, match="no PT_INTERP"):
        library_closure(tmp_path, static)
    prog = put(tmp_path, "bin/prog", dyn_elf(("libc.so.6",), None, LOADER))
    with pytest.raises(ElfError, match="its loader /lib64/ld-linux-x86-64.so.2 is not in"):
        library_closure(tmp_path, prog)


def test_resolve_in_tree_stays_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    put(root, "lib/real", b"x")
    link(root, "lib64/abs", "/lib/real")
    link(root, "lib64/up", "../../../../lib/real")  # `..` stops at the tree's root
    link(root, "lib64/loop", "loop")
    assert resolve_in_tree(root, "/lib64/abs") == root / "lib/real"
    assert resolve_in_tree(root, "lib64/up") == root / "lib/real"
    assert resolve_in_tree(root, "lib64/loop") is None
    assert resolve_in_tree(root, "lib64/missing") is None
