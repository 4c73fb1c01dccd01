"""The stand-ins' parts in-process: the spec tables, the schema validator, the runner seam."""

from __future__ import annotations

import importlib.util
import json

import pytest

from standins import cloud_hypervisor_spec as ch_spec
from standins import firecracker_spec as fc_spec
from standins import runner as runner_mod
from standins.cloud_hypervisor_api import CloudHypervisorApi
from standins.firecracker_api import FirecrackerApi
from standins.runner import Disk, FakeRunner, Net, RunnerSelectionError, VmSpec, Vsock
from standins.schema import (
    SchemaError,
    UnknownDefinition,
    check_definitions,
    resolve,
    validate,
)


def minimal(schema: dict, definitions: dict):
    """The smallest value `schema` accepts (required fields only)."""
    schema = resolve(schema, definitions)
    kind = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    if kind == "object":
        props = schema.get("properties", {})
        return {name: minimal(props[name], definitions) for name in schema.get("required", ())}
    if kind == "array":
        return []
    if kind in ("integer", "number"):
        return max(schema.get("minimum", 0), 0)
    if kind == "boolean":
        return False
    return "x" * schema.get("minLength", 1)


def concrete(path: str) -> str:
    return "/".join("p1" if part.startswith("{") else part for part in path.split("/"))


@pytest.mark.parametrize("table", [fc_spec, ch_spec], ids=["firecracker", "cloud_hypervisor"])
def test_standin_spec_tables_are_whole(table):
    check_definitions(table.DEFINITIONS)
    names = [op.name for op in table.OPERATIONS]
    assert len(names) == len(set(names))
    for op in table.OPERATIONS:
        if op.body is not None:
            resolve(op.body, table.DEFINITIONS)


def test_firecracker_every_operation_is_implemented_or_named_as_unsupported():
    api = FirecrackerApi(FakeRunner())
    for op in fc_spec.OPERATIONS:
        if op.implemented:
            assert hasattr(api, "op_" + op.operation_id), op.name
            continue
        body = minimal(op.body, fc_spec.DEFINITIONS) if op.body else None
        raw = json.dumps(body).encode() if body is not None else None
        answer = api.handle(op.method, concrete(op.path), raw)
        assert answer.status == 400, op.name
        assert json.loads(answer.body) == {
            "fault_message": f"not supported by the stand-in: {op.name}"
        }


def test_cloud_hypervisor_every_operation_is_implemented_or_named_as_unsupported():
    api = CloudHypervisorApi(FakeRunner())
    for op in ch_spec.OPERATIONS:
        if op.implemented:
            assert hasattr(api, "op_" + op.operation_id.replace("-", "_")), op.name
            continue
        body = minimal(op.body, ch_spec.DEFINITIONS) if op.body else None
        raw = json.dumps(body).encode() if body is not None else None
        answer = api.handle(op.method, op.path, raw)
        assert answer.status == ch_spec.unsupported_status(op), op.name
        assert answer.status in op.responses or answer.status == 500, op.name
        assert json.loads(answer.body) == [
            "Error from API",
            f"not supported by the stand-in: {op.name}",
        ]


DEFS = {
    "Inner": {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}},
    "Free": {"type": "object", "additionalProperties": True},
}


@pytest.mark.parametrize(
    ("value", "schema", "message"),
    [
        (True, {"type": "integer"}, "invalid type: boolean `true`, expected an integer"),
        (1, {"type": "boolean"}, "invalid type: integer `1`, expected a boolean"),
        (1.5, {"type": "integer"}, "invalid type: floating point `1.5`, expected an integer"),
        (None, {"type": "string"}, "invalid type: null, expected a string"),
        ({}, {"type": "array"}, "invalid type: map, expected a sequence"),
        (
            256,
            {"type": "integer", "format": "uint8"},
            "invalid value: integer `256`, expected at most 255",
        ),
        (
            -1,
            {"type": "integer", "format": "uint32"},
            "invalid value: integer `-1`, expected at least 0",
        ),
        ("c", {"type": "string", "enum": ["a"]}, "unknown variant `c`, expected `a`"),
        ({"x": 1}, {"type": "object"}, "unknown field `x`, there are no fields"),
        (
            {"in": [{"n": 1}, {}]},
            {"type": "object", "properties": {"in": {"type": "array", "items": {"$ref": "Inner"}}}},
            "missing field `n` (at `in[1]`)",
        ),
    ],
)
def test_standin_schema_refusals(value, schema, message):
    with pytest.raises(SchemaError) as caught:
        validate(value, schema, DEFS)
    assert str(caught.value) == message


def test_standin_schema_acceptances_and_bad_refs():
    validate({"anything": [1, {"x": None}]}, {"$ref": "Free"}, DEFS)
    validate(2.5, {"type": "number"}, DEFS)
    validate({"n": 3}, {"$ref": "Inner"}, DEFS)
    with pytest.raises(UnknownDefinition):
        validate({}, {"$ref": "Nope"}, DEFS)
    with pytest.raises(UnknownDefinition):
        check_definitions({"A": {"type": "array", "items": {"$ref": "B"}}})


def test_standin_vmspec_round_trips_through_json():
    spec = VmSpec(
        kernel="/k",
        initrd=None,
        cmdline="c",
        vcpus=2,
        mem_mib=64,
        disks=[Disk("r", "/d", False, True)],
        nets=[Net("n", "tap0", None)],
        vsock=Vsock(3, "/v"),
        console=("file", "/log"),
    )
    assert VmSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


def test_standin_runner_selection(monkeypatch):
    assert isinstance(runner_mod.create_runner("firecracker", env={}), FakeRunner)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name.endswith(".qemu_runner") else real_find_spec(name, *a),
    )
    with pytest.raises(RunnerSelectionError, match="the QEMU runner is not there"):
        runner_mod.create_runner("firecracker", env={"NTNG_STANDIN_RUNNER": "qemu"})
    with pytest.raises(RunnerSelectionError, match="expected call=value"):
        FakeRunner.from_env({"NTNG_FAKE_RUNNER_FAIL": "boot"})
    with pytest.raises(RunnerSelectionError, match="NTNG_FAKE_RUNNER_EXIT_ON"):
        FakeRunner.from_env({"NTNG_FAKE_RUNNER_EXIT_ON": "boot=zero"})


def test_standin_fake_runner_fails_and_exits_as_told(tmp_path):
    fake = FakeRunner.from_env(
        {
            "NTNG_FAKE_RUNNER_DIR": str(tmp_path),
            "NTNG_FAKE_RUNNER_FAIL": "pause=frozen",
            "NTNG_FAKE_RUNNER_EXIT_ON": "reboot=7",
        }
    )
    with pytest.raises(runner_mod.RunnerError, match="frozen"):
        fake.pause()
    assert fake.exited() is None
    fake.reboot()
    assert fake.exited() == 7
    lines = (tmp_path / "calls.jsonl").read_text().splitlines()
    assert [json.loads(line)["call"] for line in lines] == ["pause", "reboot"]


def test_cloud_hypervisor_a_vm_it_shut_down_does_not_end_the_stand_in(tmp_path):
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"x")
    fake = FakeRunner(record_dir=str(tmp_path))
    api = CloudHypervisorApi(fake)
    create = json.dumps({"payload": {"kernel": str(kernel)}}).encode()
    assert api.handle("PUT", "/api/v1/vm.create", create).status == 204
    assert api.handle("PUT", "/api/v1/vm.boot", None).status == 204
    assert api.exit_status() is None
    assert api.handle("PUT", "/api/v1/vm.shutdown", None).status == 204
    (tmp_path / "exit").write_text("0")  # the runner now reports the killed VM as ended
    assert fake.exited() == 0
    assert api.exit_status() is None
    assert api.handle("PUT", "/api/v1/vm.boot", None).status == 204
    assert fake.exited() is None and api.exit_status() is None
    api.stop()
    assert [c["call"] for c in fake.calls] == ["boot", "shutdown", "boot", "shutdown"]
