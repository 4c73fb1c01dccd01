"""The guest package's modules use each other only through public names: what one module needs
from another is public there (no `from .builder import _run`, no `cache._sha256(...)`)."""

from __future__ import annotations

import ast
from pathlib import Path

import nixos_test_ng.guest

PACKAGE = "nixos_test_ng.guest"
GUEST_DIR = Path(nixos_test_ng.guest.__file__).parent


def _guest_module(node: ast.ImportFrom) -> str | None:
    """The guest module an import names (`from .x import`, `from nixos_test_ng.guest.x import`),
    or "" for the package itself; None for anything else."""
    if node.level == 1:
        return node.module or ""
    if node.level == 0 and node.module and node.module.startswith(PACKAGE):
        return node.module[len(PACKAGE) :].lstrip(".")
    return None


def private_uses(source: str) -> list[str]:
    """Each `_`-prefixed name that `source` takes from another guest module, as `module._name`."""
    tree = ast.parse(source)
    found: list[str] = []
    modules: dict[str, str] = {}  # local name -> guest module, for `from . import cache`
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (module := _guest_module(node)) is not None:
            for alias in node.names:
                if alias.name.startswith("_"):
                    found.append(f"{module or PACKAGE}.{alias.name}")
                elif not module:
                    modules[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(f"{PACKAGE}.") and alias.asname:
                    modules[alias.asname] = alias.name[len(PACKAGE) + 1 :]
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and node.attr.startswith("_")
        ):
            found.append(f"{modules[node.value.id]}.{node.attr}")
    return found


def test_the_check_finds_private_imports_and_attributes() -> None:
    source = (
        "from .cache import sha256_file, _lock\n"
        "from nixos_test_ng.guest.apt import _show\n"
        "from . import cpio\n"
        "import nixos_test_ng.guest.kvm as kvm\n"
        "cpio._pad4(3)\n"
        "kvm._qemu_version()\n"
        "cpio.write_newc([], 0)\n"
        "from os import _exit\n"
        "self._private()\n"
    )
    assert private_uses(source) == ["cache._lock", "apt._show", "cpio._pad4", "kvm._qemu_version"]


def test_no_guest_module_uses_another_ones_private_names() -> None:
    modules = sorted(GUEST_DIR.glob("*.py"))
    assert {"cache.py", "busybox_guest.py", "systemd_guest.py"} <= {p.name for p in modules}
    offences = {
        p.name: uses for p in modules if (uses := private_uses(p.read_text(encoding="utf-8")))
    }
    assert offences == {}
