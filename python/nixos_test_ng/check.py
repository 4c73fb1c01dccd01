"""Checks of a test script before any machine boots (`nixos-test-ng check`, and the driver's
pre-boot name check): undefined names, with the script's namespace counting as builtins as
in upstream's pyflakes step; attributes a machine does not have (with a suggestion); and
calls of machine methods with arguments they do not take or literals of the wrong type.
Problems are reported as `file:line:col: message`."""

from __future__ import annotations

import ast
import difflib
import inspect
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Problem",
    "check_source",
    "has_member",
    "machine_name_from_script",
    "members",
    "namespace_names",
]


@dataclass(frozen=True, order=True)
class Problem:
    line: int
    col: int
    message: str

    def render(self, filename: str) -> str:
        return f"{filename}:{self.line}:{self.col}: {self.message}"


def machine_name_from_script(path: str, kind: str = "vm") -> str:
    """The name the driver gives the machine of a start script (the engine's own rule)."""
    from nixos_test_ng import _native

    return _native.machine_name_from_script(path, kind)


def namespace_names(machines: Iterable[str], vlans: Iterable[int]) -> set[str]:
    """Every global a script sees: upstream's symbols, the machines (pythonized; `machine`
    when there is one), `vlan<N>`."""
    from nixos_test_ng import _native

    names = list(machines)
    out = set(_native.GENERAL_SYMBOLS) | {_native.pythonize_name(n) for n in names}
    if len(names) == 1:
        out.add("machine")
    out |= {f"vlan{v}" for v in vlans}
    return out


def _undefined_names(tree: ast.Module, source: str, filename: str, known: set[str]):
    from pyflakes import checker, messages

    wanted = (messages.UndefinedName, messages.UndefinedLocal, messages.UndefinedExport)
    w = checker.Checker(tree, filename=filename, builtins=known)
    for m in sorted(w.messages, key=lambda m: (m.lineno, m.col)):
        if isinstance(m, wanted):
            yield Problem(m.lineno, m.col + 1, m.message % m.message_args)


def _stub_annotations() -> dict[str, dict[str, str]]:
    """Parameter annotations of the native Machine's methods, from the shipped stub."""
    from nixos_test_ng import _native

    stub = Path(_native.__file__).with_name("_native.pyi")
    if not stub.exists():
        return {}
    out: dict[str, dict[str, str]] = {}
    for node in ast.parse(stub.read_text()).body:
        if isinstance(node, ast.ClassDef) and node.name == "Machine":
            for fn in node.body:
                if isinstance(fn, ast.FunctionDef):
                    args = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
                    out[fn.name] = {
                        a.arg: ast.unparse(a.annotation) for a in args if a.annotation is not None
                    }
    return out


_LITERAL_TYPES = {int: "int", float: "float", str: "str", bool: "bool", bytes: "bytes"}


def _accepts(annotation: str, value: object) -> bool:
    """Whether a literal fits a simple annotation; anything not understood is accepted."""
    words = set(re.findall(r"[A-Za-z_]+", annotation))
    if not words <= {"int", "float", "str", "bool", "bytes", "None", "Timeout", "timedelta"}:
        return True
    if "Timeout" in words:
        words |= {"float", "timedelta", "None"}
    if "float" in words:
        words.add("int")
    if value is None:
        return "None" in words
    name = _LITERAL_TYPES.get(type(value))
    if name == "bool":
        return "bool" in words or "int" in words
    return name is None or name in words


def members(cls: type) -> set[str]:
    """What a script can use on an instance of `cls`: its attributes, and the instance
    attributes its classes declare (`callbacks: list[...]`), which the driver sets."""
    declared = {n for k in cls.__mro__ for n in getattr(k, "__annotations__", {})}
    return set(dir(cls)) | declared


def has_member(cls: type, attr: str) -> bool:
    return attr in members(cls)


def _machine_calls(tree: ast.Module, machines: dict[str, type]):
    """Attribute and call problems on names that are machines (and never rebound)."""
    rebound = {
        n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
    }
    annotations = _stub_annotations()
    calls = {
        id(n.func): n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
    }
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)):
            continue
        name = node.value.id
        cls = machines.get(name)
        if cls is None or name in rebound:
            continue
        attr = node.attr
        if not has_member(cls, attr):
            public = [a for a in members(cls) if not a.startswith("_")]
            close = difflib.get_close_matches(attr, public, n=1)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            yield Problem(
                node.lineno,
                node.col_offset + 1,
                f"`{name}` ({cls.__name__}) has no attribute `{attr}`{hint}",
            )
            continue
        call = calls.get(id(node))
        if call is None:
            continue
        try:
            sig = inspect.signature(getattr(cls, attr))
        except (AttributeError, TypeError, ValueError):  # declared only, or no signature
            continue
        params = [p for p in sig.parameters.values() if p.name not in ("self", "$self")]
        sig = sig.replace(parameters=params)
        if any(isinstance(a, ast.Starred) for a in call.args) or any(
            k.arg is None for k in call.keywords
        ):
            continue
        try:
            bound = sig.bind(*call.args, **{k.arg: k.value for k in call.keywords if k.arg})
        except TypeError as e:
            yield Problem(call.lineno, call.col_offset + 1, f"`{name}.{attr}()`: {e}")
            continue
        types = annotations.get(attr, {})
        for param, value in bound.arguments.items():
            values = value if isinstance(value, tuple) else (value,)
            for v in values:
                if isinstance(v, ast.Constant) and param in types:
                    if not _accepts(types[param], v.value):
                        yield Problem(
                            v.lineno,
                            v.col_offset + 1,
                            f"`{name}.{attr}()`: argument `{param}` expects {types[param]},"
                            f" got {type(v.value).__name__} {v.value!r}",
                        )


def check_source(
    source: str,
    filename: str,
    machines: dict[str, str],
    vlans: Iterable[int] = (),
    names_only: bool = False,
) -> list[Problem]:
    """The problems of a script whose machines are `machines` (name -> a kind's word: "vm",
    "nspawn", "firecracker", "cloud-hypervisor")."""
    from nixos_test_ng import _native
    from nixos_test_ng.machine import CLASSES

    try:
        tree = ast.parse(source, filename=filename)
    except SyntaxError as e:
        return [Problem(e.lineno or 1, e.offset or 1, f"syntax error: {e.msg}")]
    known = namespace_names(machines, vlans)
    problems = list(_undefined_names(tree, source, filename, known))
    if not names_only:
        classes = {
            _native.pythonize_name(n): CLASSES[_native.machine_kind(k).name]
            for n, k in machines.items()
        }
        if len(classes) == 1:
            classes["machine"] = next(iter(classes.values()))
        problems += _machine_calls(tree, classes)
    return sorted(set(problems))
