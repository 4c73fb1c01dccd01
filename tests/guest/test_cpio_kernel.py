"""The reproducible cpio writer and the kernel-file helpers (no VM, no apt)."""

from __future__ import annotations

import os
import stat
import struct
import subprocess
from pathlib import Path

from nixos_test_ng.guest import cpio
from nixos_test_ng.guest.kernel import extract_vmlinux, has_pvh_entry, kernel_for_qemu
from nixos_test_ng.guest.modules import modinfo, module_name


def make_tree(root: Path) -> None:
    (root / "bin").mkdir(parents=True)
    (root / "bin/tool").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "bin/tool").chmod(0o755)
    (root / "bin/alias").symlink_to("tool")
    (root / "etc").mkdir()
    (root / "etc/odd").write_bytes(b"abc")  # length not a multiple of 4


def test_newc_archive_is_reproducible_and_readable_by_cpio(tmp_path: Path) -> None:
    make_tree(tmp_path / "t1")
    entries = cpio.entries_from_tree(tmp_path / "t1")
    entries.append(cpio.Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    data = cpio.write_newc(entries, mtime=1234)
    # same bytes from a second tree made at another time, and in another entry order
    os.utime(tmp_path / "t1/etc/odd", (1, 1))
    make_tree(tmp_path / "t2")
    again = cpio.write_newc(
        list(reversed(cpio.entries_from_tree(tmp_path / "t2"))) + [entries[-1]], mtime=1234
    )
    assert again == data
    listing = subprocess.run(
        ["cpio", "-itv", "--quiet"], input=data, capture_output=True, check=True
    ).stdout.decode()
    names = [
        line.split()[-1] if "->" not in line else line.split()[-3] for line in listing.splitlines()
    ]
    assert names == ["bin", "bin/alias", "bin/tool", "dev/console", "etc", "etc/odd"]
    assert "-> tool" in listing
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(
        ["cpio", "-id", "--quiet", "--no-absolute-filenames"], input=data, cwd=out, check=True
    )
    assert (out / "etc/odd").read_bytes() == b"abc"
    assert os.readlink(out / "bin/alias") == "tool"
    assert (out / "bin/tool").stat().st_mode & 0o777 == 0o755


def _elf_with(sections: dict[bytes, bytes], notes: bytes = b"") -> bytes:
    """A minimal ELF64 LE file with the given sections and (optionally) one PT_NOTE segment."""
    names = b"\0" + b"".join(n + b"\0" for n in [*sections, b".shstrtab"])
    blobs = list(sections.values()) + [names]
    data = bytearray(64)
    offsets = []
    for blob in [notes, *blobs]:
        offsets.append(len(data))
        data += blob
    phoff = len(data)
    if notes:
        data += struct.pack("<IIQQQQQQ", 4, 4, offsets[0], 0, 0, len(notes), len(notes), 4)
    shoff = len(data)
    data += bytes(64)  # null section
    name_pos = 1
    for i, (name, blob) in enumerate(zip([*sections, b".shstrtab"], blobs, strict=True)):
        data += struct.pack("<IIQQQQIIQQ", name_pos, 1, 0, 0, offsets[i + 1], len(blob), 0, 0, 1, 0)
        name_pos += len(name) + 1
    nsec = len(blobs) + 1
    header = (
        b"\x7fELF\x02\x01\x01"
        + bytes(9)
        + struct.pack(
            "<HHIQQQIHHHHHH",
            2,
            62,
            1,
            0,
            phoff if notes else 0,
            shoff,
            0,
            64,
            56,
            1 if notes else 0,
            64,
            nsec,
            nsec - 1,
        )
    )
    data[:64] = header
    return bytes(data)


def test_modinfo_reads_depends_and_softdeps() -> None:
    elf = _elf_with(
        {
            b".text": b"\x90" * 8,
            b".modinfo": b"depends=virtio,virtio_ring\0softdep=pre: crc32c\0name=x\0",
        }
    )
    info = modinfo(elf)
    assert info["depends"] == ["virtio,virtio_ring"]
    assert info["softdep"] == ["pre: crc32c"]
    assert module_name(Path("a/b/virtio-rng.ko.xz")) == "virtio_rng"


def _note(name: bytes, ntype: int, desc: bytes) -> bytes:
    pad = lambda b: b + bytes(-len(b) % 4)  # noqa: E731
    return struct.pack("<III", len(name) + 1, len(desc), ntype) + pad(name + b"\0") + pad(desc)


def test_pvh_note_detection_and_bzimage_fallback() -> None:
    with_pvh = _elf_with(
        {b".text": b"\x90"}, _note(b"Xen", 6, b"linux\0") + _note(b"Xen", 18, b"\0\0\0\1")
    )
    without = _elf_with({b".text": b"\x90"}, _note(b"Xen", 6, b"linux\0"))
    assert has_pvh_entry(with_pvh) and not has_pvh_entry(without)
    assert extract_vmlinux(b"not a kernel") is None
    assert kernel_for_qemu(b"not a kernel") == ("vmlinuz", b"not a kernel")
