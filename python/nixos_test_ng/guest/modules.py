"""Kernel modules: find the files for a list of module names and their dependencies, and
install them into a guest's tree.

Dependencies come from each module's own `.modinfo` ELF section (`depends=` and `softdep=`),
so no `depmod` run over the whole kernel tree is needed; `depmod` runs on the subset installed.
"""

from __future__ import annotations

import lzma
import re
import shutil
import struct
import subprocess
from pathlib import Path

from .common import BuildError, run, write_file

__all__ = [
    "ModuleError",
    "install_modules",
    "module_name",
    "modinfo",
    "read_module",
    "resolve_modules",
]

_SUFFIXES = (".ko", ".ko.xz", ".ko.zst")
#: The index files depmod keeps from the kernel package (the rest it writes itself).
_KEPT_INDEXES = ("modules.order", "modules.builtin", "modules.builtin.modinfo")


class ModuleError(Exception):
    """A kernel module could not be found or read."""


def module_name(path: Path) -> str:
    """`.../virtio-rng.ko.xz` -> `virtio_rng` (the kernel normalises `-` to `_`)."""
    name = path.name
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("-", "_")


def read_module(path: Path) -> bytes:
    """The uncompressed ELF bytes of a module file (`.ko`, `.ko.xz` or `.ko.zst`)."""
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if path.name.endswith(".ko.zst"):
        return subprocess.run(["zstd", "-dcq", str(path)], check=True, capture_output=True).stdout
    return path.read_bytes()


def modinfo(elf: bytes) -> dict[str, list[str]]:
    """The `key=value` strings of an ELF64 little-endian module's `.modinfo` section."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ModuleError("not an ELF64 little-endian file")
    shoff = struct.unpack_from("<Q", elf, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, off, size = struct.unpack_from(
            "<IIQQQQ", elf, shoff + i * shentsize
        )
        return name, off, size

    _, str_off, str_size = section(shstrndx)
    names = elf[str_off : str_off + str_size]
    info: dict[str, list[str]] = {}
    for i in range(shnum):
        name_off, off, size = section(i)
        name = names[name_off : names.index(b"\0", name_off)]
        if name != b".modinfo":
            continue
        for item in elf[off : off + size].split(b"\0"):
            key, sep, value = item.decode(errors="replace").partition("=")
            if sep:
                info.setdefault(key, []).append(value)
    return info


def _dependencies(info: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """(hard, soft) dependency names of a module."""
    hard = [d for v in info.get("depends", []) for d in v.split(",") if d]
    # "pre: a b post: c": both kinds are wanted in the initramfs, if they exist
    soft = [w for v in info.get("softdep", []) for w in v.split() if not w.endswith(":")]
    return [d.replace("-", "_") for d in hard], [d.replace("-", "_") for d in soft]


def resolve_modules(modules_dir: Path, wanted: list[str]) -> dict[str, Path]:
    """Map each wanted module and every module it depends on to its file under `modules_dir`
    (`/lib/modules/<version>`). Modules built into the kernel are skipped; a wanted module that
    is neither a file nor built in raises `ModuleError`. Soft dependencies are optional."""
    builtin: set[str] = set()
    builtin_list = modules_dir / "modules.builtin"
    if builtin_list.exists():
        builtin = {module_name(Path(line)) for line in builtin_list.read_text().split()}
    files: dict[str, Path] = {}
    for path in sorted((modules_dir / "kernel").rglob("*.ko*")):
        if path.name.endswith(_SUFFIXES):
            files.setdefault(module_name(path), path)

    chosen: dict[str, Path] = {}
    todo = [(m.replace("-", "_"), True) for m in wanted]
    while todo:
        name, required = todo.pop()
        if name in chosen or name in builtin:
            continue
        path = files.get(name)
        if path is None:
            if required:
                raise ModuleError(f"kernel module `{name}` is neither a module file nor built in")
            continue
        chosen[name] = path
        hard, soft = _dependencies(modinfo(read_module(path)))
        todo += [(d, True) for d in hard] + [(d, False) for d in soft]
    return chosen


def install_modules(
    modules_dir: Path, wanted: list[str], root: Path, version: str
) -> dict[str, str]:
    """Install the `wanted` modules and their dependencies from `modules_dir` (an unpacked
    kernel package's `/lib/modules/<version>`) into `root/lib/modules/<version>`, replacing what
    is there: uncompressed (`.ko`), with the package's modules.order and modules.builtin files,
    then run `depmod` on `root`. Returns each module's path relative to that directory, by
    name. Raises `ModuleError` for a wanted module that does not exist, `BuildError` when
    depmod fails."""
    chosen = resolve_modules(modules_dir, wanted)
    dest = root / "lib/modules" / version
    if dest.exists():
        shutil.rmtree(dest)
    installed: dict[str, str] = {}
    for name, path in sorted(chosen.items()):
        rel = re.sub(r"\.ko\.(xz|zst)$", ".ko", path.relative_to(modules_dir).as_posix())
        write_file(dest / rel, read_module(path), 0o644)
        installed[name] = rel
    for index in _KEPT_INDEXES:
        if (modules_dir / index).exists():
            shutil.copyfile(modules_dir / index, dest / index)
    res = run(["depmod", "-b", str(root), version])
    if res.returncode != 0:
        raise BuildError(f"`depmod` failed: {res.stderr.strip()}")
    return installed
