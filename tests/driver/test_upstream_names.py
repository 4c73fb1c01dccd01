"""Every public name of upstream's `Driver`, `BaseMachine`, `QemuMachine`, `NspawnMachine`
and `QemuStartCommand`, and every general symbol of its namespace, has a counterpart here:
on the real objects of a run (a fake VM and a fake container), in the shipped stubs
(`_native.pyi` and the package's classes), in what `nixos-test-ng stubs` declares, and in
what `nixos-test-ng check` knows of machines. The names are data
(`tests/data/upstream_public_names.json`, its source named inside); a name upstream adds
goes there, and this test then says where it is missing.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import nixos_test_ng
import pytest

DATA = Path(__file__).resolve().parents[1] / "data/upstream_public_names.json"
PACKAGE = Path(nixos_test_ng.__file__).parent

#: Names the reference lists on a class that upstream has on another object: its
#: extraction took `self.condition` of the `Poll` class nested in `Driver.polling_condition`.
ON_ANOTHER_OBJECT = {("Driver", "condition"): "Poll"}


def upstream() -> dict:
    return json.loads(DATA.read_text())


def names(cls: str) -> set[str]:
    entry = upstream()[cls]
    return set(entry["methods"]) | set(entry["attributes"])


def wanted(cls: str) -> set[str]:
    """The names a class must have here (a machine class also has BaseMachine's)."""
    out = names(cls)
    if cls in ("QemuMachine", "NspawnMachine"):
        out |= names("BaseMachine")
    return out - {n for (c, n) in ON_ANOTHER_OBJECT if c == cls}


# -- the real objects of a run -----------------------------------------------------------------

# Checks presence (`dir`) and that reading each name works, once the machines run (reading
# `get_systemd_process` boots the container, as upstream's first command does).
CHECK_SCRIPT = """
import json
wanted = json.loads(WANTED)
objects = {
    "Driver": driver,
    "QemuMachine": vm,
    "NspawnMachine": box,
    "QemuStartCommand": vm.start_command,
    "Poll": driver.polling_condition(lambda: True),
}
start_all()
missing = {}
for cls, names in wanted.items():
    if cls == "namespace":
        gone = [n for n in names if n not in globals()]
    else:
        obj = objects[cls]
        gone = []
        for n in names:
            if n not in dir(obj):
                gone.append(n)
                continue
            try:
                getattr(obj, n)
            except Exception as e:
                gone.append(f"{n} ({type(e).__name__}: {e})")
    if gone:
        missing[cls] = sorted(gone)
print("MISSING " + json.dumps(missing))
"""


def test_every_upstream_name_is_on_the_real_objects(
    driver_env, run_driver, fake_vm, fake_container
):
    want = {
        "namespace": sorted(upstream()["namespace"]),
        **{c: sorted(wanted(c)) for c in ("Driver", "QemuMachine", "NspawnMachine")},
        "QemuStartCommand": sorted(wanted("QemuStartCommand")),
        "Poll": sorted(n for (_, n) in ON_ANOTHER_OBJECT),
    }
    vm = fake_vm("vm")
    box = fake_container("box")
    script = driver_env.write_script("t.py", CHECK_SCRIPT.replace("WANTED", repr(json.dumps(want))))
    r = run_driver(
        ["--vm-start-scripts", vm.script, "--container-start-scripts", box, "--", script]
    )
    assert r.returncode == 0, r
    line = next(x for x in r.stdout.splitlines() if x.startswith("MISSING "))
    assert json.loads(line.removeprefix("MISSING ")) == {}, r


# -- the stubs, `nixos-test-ng stubs` and `nixos-test-ng check` --------------------------------


def declared(path: Path, cls: str) -> set[str]:
    """What class `cls` of a .py or .pyi file declares: methods, properties, annotated or
    assigned class attributes, and `self.x` assigned in its methods."""
    tree = ast.parse(path.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    out: set[str] = set()
    for item in node.body:
        if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
            out.add(item.name)
            for sub in ast.walk(item):
                targets = (
                    sub.targets
                    if isinstance(sub, ast.Assign)
                    else [sub.target]
                    if isinstance(sub, ast.AnnAssign)
                    else []
                )
                for t in targets:
                    if (
                        isinstance(t, ast.Attribute)
                        and isinstance(t.value, ast.Name)
                        and t.value.id == "self"
                    ):
                        out.add(t.attr)
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            out.add(item.target.id)
        elif isinstance(item, ast.Assign):
            out |= {t.id for t in item.targets if isinstance(t, ast.Name)}
    return out


STUB_SOURCES = {
    "BaseMachine": [("_native.pyi", "Machine"), ("machine.py", "BaseMachine")],
    "QemuMachine": [("machine.py", "QemuMachine")],
    "NspawnMachine": [("machine.py", "NspawnMachine")],
    "QemuStartCommand": [("internals.py", "QemuStartCommand")],
    "Driver": [("driver.py", "Driver")],
}


@pytest.mark.parametrize("cls", sorted(STUB_SOURCES))
def test_the_stubs_declare_every_upstream_name(cls):
    sources = list(STUB_SOURCES[cls])
    if cls in ("QemuMachine", "NspawnMachine"):
        sources += STUB_SOURCES["BaseMachine"]
    have: set[str] = set()
    for file, klass in sources:
        have |= declared(PACKAGE / file, klass)
    assert sorted(wanted(cls) - have) == [], f"{cls}: not declared in {sources}"


def test_generated_stubs_declare_upstreams_namespace():
    from nixos_test_ng.check_cli import render_stubs

    tree = ast.parse(render_stubs({"server": "vm", "box": "nspawn"}, [1]))
    have: set[str] = set()
    for n in tree.body:
        if isinstance(n, ast.FunctionDef):
            have.add(n.name)
        elif isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name):
            have.add(n.target.id)
        elif isinstance(n, ast.Import | ast.ImportFrom):
            have |= {a.asname for a in n.names if a.asname}
    assert sorted(set(upstream()["namespace"]) - have) == []


@pytest.mark.parametrize(("kind", "cls"), [("vm", "QemuMachine"), ("nspawn", "NspawnMachine")])
def test_check_knows_every_upstream_machine_name(kind, cls):
    from nixos_test_ng.check import check_source

    used = sorted(wanted(cls))
    source = "".join(f"node.{n}\n" for n in used) + "node.no_such_member\n"
    problems = check_source(source, "t.py", {"node": kind})
    messages = [p.message for p in problems]
    # the last line shows the check does look
    assert len(messages) == 1 and "no_such_member" in messages[0], messages
