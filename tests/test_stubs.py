"""The shipped stubs (`_native.pyi`) agree with the native module: every member on both
sides, and the same parameters (names, order, kinds, which have defaults). Defaults
themselves may differ: where the runtime takes `None` for "the documented default", the
stub shows that default."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
from nixos_test_ng import _native

STUB = Path(_native.__file__).with_name("_native.pyi")
if not STUB.exists():  # an editable checkout
    STUB = Path(__file__).resolve().parents[1] / "python/nixos_test_ng/_native.pyi"


def stub_tree() -> ast.Module:
    return ast.parse(STUB.read_text())


def stub_classes() -> dict[str, ast.ClassDef]:
    return {n.name: n for n in stub_tree().body if isinstance(n, ast.ClassDef)}


def stub_functions() -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in stub_tree().body if isinstance(n, ast.FunctionDef)}


def stub_constants() -> dict[str, str]:
    """Module-level `NAME: type` declarations, with their types."""
    return {
        n.target.id: ast.unparse(n.annotation)
        for n in stub_tree().body
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
    }


def members(node: ast.ClassDef) -> dict[str, ast.FunctionDef | None]:
    out: dict[str, ast.FunctionDef | None] = {}
    for item in node.body:
        if isinstance(item, ast.FunctionDef):
            out[item.name] = item
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            out[item.target.id] = None
    return out


def runtime_members(cls: type) -> set[str]:
    base = set(dir(Exception)) if issubclass(cls, BaseException) else set(dir(object))
    return {n for n in vars(cls) if not (n.startswith("__") and n.endswith("__"))} - (
        base - set(vars(cls))
    )


def normalized(params: list[tuple[str, str, bool]]) -> list[tuple[str, str, bool]]:
    """Callers cannot name *args and **kwargs: only their presence counts."""
    return [("*", k, d) if k in ("var", "varkw") else (n, k, d) for n, k, d in params]


def stub_params(fn: ast.FunctionDef) -> list[tuple[str, str, bool]]:
    a = fn.args
    out = []
    positional = a.posonlyargs + a.args
    defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    for arg, default in zip(positional, defaults, strict=True):
        out.append((arg.arg, "positional", default is not None))
    if a.vararg:
        out.append((a.vararg.arg, "var", False))
    for arg, default in zip(a.kwonlyargs, a.kw_defaults, strict=True):
        out.append((arg.arg, "keyword", default is not None))
    if a.kwarg:
        out.append((a.kwarg.arg, "varkw", False))
    return normalized([p for p in out if p[0] not in ("self", "cls")])


def runtime_params(obj: object) -> list[tuple[str, str, bool]] | None:
    try:
        sig = inspect.signature(obj)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    kinds = {
        inspect.Parameter.POSITIONAL_ONLY: "positional",
        inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional",
        inspect.Parameter.VAR_POSITIONAL: "var",
        inspect.Parameter.KEYWORD_ONLY: "keyword",
        inspect.Parameter.VAR_KEYWORD: "varkw",
    }
    return normalized(
        [
            (p.name, kinds[p.kind], p.default is not inspect.Parameter.empty)
            for p in sig.parameters.values()
            if p.name not in ("self", "cls", "$self")
        ]
    )


def test_every_native_class_and_function_is_in_the_stub():
    public = {n for n in dir(_native) if not n.startswith("_")}
    declared = set(stub_classes()) | set(stub_functions()) | set(stub_constants())
    assert public - declared == set(), "missing from the stub"
    assert {n for n in declared if not n.startswith("_")} - public == set(), "not in the module"


@pytest.mark.parametrize("name", sorted(stub_constants()))
def test_constants_have_their_declared_types(name):
    value = getattr(_native, name)
    declared = stub_constants()[name]
    if declared == "tuple[str, ...]":
        assert isinstance(value, tuple) and all(isinstance(v, str) for v in value)
    else:
        assert type(value).__name__ == declared


@pytest.mark.parametrize("name", sorted(stub_classes()))
def test_class_members_agree(name):
    cls = getattr(_native, name)
    declared = members(stub_classes()[name])
    actual = runtime_members(cls)
    assert sorted(actual - set(declared)) == [], f"{name}: at runtime, not in the stub"
    assert sorted(set(declared) - actual - set(dir(cls))) == [], f"{name}: in the stub only"


@pytest.mark.parametrize("name", sorted(stub_classes()))
def test_method_signatures_agree(name):
    cls = getattr(_native, name)
    wrong = []
    for member, node in members(stub_classes()[name]).items():
        if node is None or member == "__init__":
            continue
        actual = runtime_params(getattr(cls, member, None))
        is_property = any(
            isinstance(d, ast.Name) and d.id == "property" for d in node.decorator_list
        )
        if actual is None or is_property:
            continue
        if actual != stub_params(node):
            wrong.append(f"{member}: stub {stub_params(node)} != runtime {actual}")
    assert wrong == []


@pytest.mark.parametrize("name", sorted(stub_functions()))
def test_function_signatures_agree(name):
    actual = runtime_params(getattr(_native, name))
    if actual is not None:
        assert stub_params(stub_functions()[name]) == actual


def test_generated_declarations_match_the_namespace():
    """`nixos-test-ng stubs` declares every global with the real parameters."""
    from nixos_test_ng.check_cli import render_stubs
    from nixos_test_ng.driver import GENERAL_SYMBOLS, Driver
    from nixos_test_ng.retry import retry

    text = render_stubs({"server": "vm", "box": "nspawn"}, [1])
    tree = ast.parse(text)
    declared = {
        n.name if isinstance(n, ast.FunctionDef) else n.target.id: n
        for n in tree.body
        if isinstance(n, ast.FunctionDef)
        or (isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name))
    }
    classes = {
        "Machine",
        "BaseMachine",
        "QemuMachine",
        "NspawnMachine",
        "FirecrackerMachine",
        "CloudHypervisorMachine",
        "os",
    }
    assert set(GENERAL_SYMBOLS) - classes - set(declared) == set()
    assert {"server", "box", "vlan1"} <= set(declared)
    assert "server: QemuMachine" in text and "box: NspawnMachine" in text
    for name, node in declared.items():
        if not isinstance(node, ast.FunctionDef):
            continue
        real = retry if name == "retry" else getattr(Driver, name)
        want = [p for p in inspect.signature(real).parameters if p != "self"]
        assert [a[0] for a in stub_params(node)] == want, name


def test_a_firecracker_machine_gets_its_class_in_the_stubs():
    from nixos_test_ng.check_cli import render_stubs

    text = render_stubs({"fc": "firecracker"}, [])
    assert "\nfc: FirecrackerMachine\n" in text
    assert "\nmachine: FirecrackerMachine\n" in text


def test_a_cloud_hypervisor_machine_gets_its_class_in_the_stubs():
    from nixos_test_ng.check_cli import render_stubs

    text = render_stubs({"ch": "cloud-hypervisor"}, [])
    assert "\nch: CloudHypervisorMachine\n" in text
    assert "\nmachine: CloudHypervisorMachine\n" in text
