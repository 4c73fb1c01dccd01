"""Shared-library closure of a dynamically linked program, resolved in an unpacked package tree.

What the dynamic loader would do at run time, done at build time without running anything: read
the program's interpreter (`PT_INTERP`) and `DT_NEEDED` entries from its program headers, find
each needed library by file name in the loader's default directories (no `/etc/ld.so.cache`, no
`/etc/ld.so.conf`, no `RPATH`/`RUNPATH`: Debian's packages use none), and repeat for every library
found. Symbolic links in the tree are followed inside it (an absolute target is taken relative to
the tree's root), as they would be inside the guest.
"""

from __future__ import annotations

import posixpath
import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ElfError", "LibraryClosure", "SYSTEM_DIRS", "dynamic_info", "library_closure"]

#: The default search path of Debian's x86_64 glibc loader (`ld.so --help`), in its order.
SYSTEM_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib", "usr/lib")

_PT_LOAD, _PT_DYNAMIC, _PT_INTERP = 1, 2, 3
_DT_NULL, _DT_NEEDED, _DT_STRTAB, _DT_SONAME = 0, 1, 5, 14
_EM_X86_64 = 62


class ElfError(Exception):
    """A file is not a usable x86_64 ELF object, or a needed library cannot be found."""


@dataclass(frozen=True)
class DynamicInfo:
    interpreter: str | None
    needed: tuple[str, ...]
    soname: str | None


def dynamic_info(elf: bytes) -> DynamicInfo:
    """The interpreter, `DT_NEEDED` entries (in order) and `DT_SONAME` of an ELF64 little-endian
    x86_64 file, read from its program headers (as the loader reads them)."""
    if len(elf) < 64 or elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ElfError("not an ELF64 little-endian file")
    if struct.unpack_from("<H", elf, 0x12)[0] != _EM_X86_64:
        raise ElfError("not an x86_64 ELF file")
    phoff = struct.unpack_from("<Q", elf, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
    interp = None
    dynamic = None
    try:
        for i in range(phnum):
            p_type, _flags, off, vaddr, _paddr, filesz = struct.unpack_from(
                "<IIQQQQ", elf, phoff + i * phentsize
            )
            if p_type == _PT_LOAD:
                loads.append((vaddr, off, filesz))
            elif p_type == _PT_INTERP:
                interp = elf[off : off + filesz].split(b"\0")[0].decode()
            elif p_type == _PT_DYNAMIC:
                dynamic = (off, filesz)
        if dynamic is None:
            return DynamicInfo(interp, (), None)

        def file_offset(vaddr: int) -> int:
            for start, off, size in loads:
                if start <= vaddr < start + size:
                    return off + vaddr - start
            raise ElfError(f"address {vaddr:#x} is in no PT_LOAD segment")

        entries: list[tuple[int, int]] = []
        off, size = dynamic
        for pos in range(off, off + size - 15, 16):
            tag, val = struct.unpack_from("<qQ", elf, pos)
            if tag == _DT_NULL:
                break
            entries.append((tag, val))
        strtab = next((v for t, v in entries if t == _DT_STRTAB), None)
        if strtab is None:
            raise ElfError("PT_DYNAMIC has no DT_STRTAB")
        base = file_offset(strtab)

        def string(index: int) -> str:
            start = base + index
            return elf[start : elf.index(b"\0", start)].decode()

        needed = tuple(string(v) for t, v in entries if t == _DT_NEEDED)
        soname = next((string(v) for t, v in entries if t == _DT_SONAME), None)
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise ElfError(f"malformed ELF file: {e}") from e
    return DynamicInfo(interp, needed, soname)


def resolve_in_tree(root: Path, path: str) -> Path | None:
    """`path` (absolute or relative to `root`) with every symbolic link followed inside `root`,
    or None when it does not exist there (or the links loop)."""
    parts = [p for p in path.split("/") if p]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                return None
            target = str(candidate.readlink())
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        if not candidate.exists() and not candidate.is_symlink():
            return None
        resolved.append(part)
    return root.joinpath(*resolved)


@dataclass(frozen=True)
class LibraryClosure:
    """`interpreter`: the loader's path as the program names it (absolute) and its file in the
    tree; `libraries`: every needed library by file name (its `DT_NEEDED` name) -> its file in
    the tree, the loader included when a library names it (glibc's libc.so.6 does)."""

    interpreter: tuple[str, Path]
    libraries: dict[str, Path]


def library_closure(
    root: Path, program: Path, search_dirs: tuple[str, ...] = SYSTEM_DIRS
) -> LibraryClosure:
    """The loader and the `DT_NEEDED` closure of `program`, all found in the unpacked tree `root`
    the way the loader would find them in a guest whose root is `root`. Raises `ElfError` naming
    what is missing."""
    info = dynamic_info(program.read_bytes())
    if info.interpreter is None:
        raise ElfError(f"{program.name} has no PT_INTERP (statically linked?)")
    interp_file = resolve_in_tree(root, info.interpreter)
    if interp_file is None or not interp_file.is_file():
        raise ElfError(f"{program.name}: its loader {info.interpreter} is not in the packages")
    libraries: dict[str, Path] = {}
    todo = [(name, program.name) for name in info.needed]
    while todo:
        name, wanted_by = todo.pop(0)
        if name in libraries:
            continue
        if "/" in name:
            raise ElfError(f"{wanted_by} needs `{name}` by path; only file names are supported")
        found = None
        for d in search_dirs:
            found = resolve_in_tree(root, posixpath.join(d, name))
            if found is not None and found.is_file():
                break
            found = None
        if found is None:
            raise ElfError(
                f"{wanted_by} needs {name}, which is in none of /{', /'.join(search_dirs)} "
                "of the unpacked packages"
            )
        libraries[name] = found
        todo += [(n, name) for n in dynamic_info(found.read_bytes()).needed]
    return LibraryClosure((info.interpreter, interp_file), dict(sorted(libraries.items())))
