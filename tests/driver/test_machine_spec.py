"""One machine-spec syntax for `nixos-test-ng run -m`, `check`/`stubs --machines` and
`guest scripts` (`nixos_test_ng.machine_spec`): every spelling any of them took before works
in all three, and each command applies only its own defaults."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from nixos_test_ng import check_cli, machine_spec, new, run
from nixos_test_ng.guest import cli as guest_cli
from nixos_test_ng.machine_spec import MachineSpec, MachineSpecError

C = "systemd-nspawn"

#: Spellings each command took before the parsers became one, with what they mean.
SPELLINGS = [
    # run -m
    ("machine", MachineSpec("machine")),
    ("server:1", MachineSpec("server", (1,))),
    ("server:1@container", MachineSpec("server", (1,), C)),
    ("server@container", MachineSpec("server", None, C)),
    ("a:1,2@systemd", MachineSpec("a", (1, 2), "systemd-vm")),
    ("a@vm", MachineSpec("a", None, "busybox")),
    ("a@nspawn", MachineSpec("a", None, C)),
    ("a@busybox", MachineSpec("a", None, "busybox")),
    # guest scripts
    ("a:", MachineSpec("a", ())),
    ("web-1:2,1", MachineSpec("web-1", (2, 1))),
    ("a@systemd-vm", MachineSpec("a", None, "systemd-vm")),
    ("c:@systemd-nspawn", MachineSpec("c", (), C)),
    # check --machines
    ("client:nspawn", MachineSpec("client", None, C)),
    ("client:vm", MachineSpec("client", None, "busybox")),
    # Firecracker machines
    ("fc:1@firecracker", MachineSpec("fc", (1,), "busybox-firecracker")),
    ("fc@firecracker-systemd", MachineSpec("fc", None, "systemd-firecracker")),
    ("fc:firecracker", MachineSpec("fc", None, "busybox-firecracker")),
    # Cloud Hypervisor machines
    ("ch:1,2@cloud-hypervisor", MachineSpec("ch", (1, 2), "busybox-cloud-hypervisor")),
    ("ch@cloud-hypervisor-systemd", MachineSpec("ch", None, "systemd-cloud-hypervisor")),
    ("ch@systemd-cloud-hypervisor", MachineSpec("ch", None, "systemd-cloud-hypervisor")),
    ("ch:cloud-hypervisor", MachineSpec("ch", None, "busybox-cloud-hypervisor")),
]


@pytest.mark.parametrize(("text", "spec"), SPELLINGS)
def test_every_spelling_parses(text, spec):
    assert machine_spec.parse(text) == spec


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a:x", "VLAN `x` is not a number"),
        ("a:1,x@vm", "VLAN `x` is not a number"),
        (
            "a@vmm",
            "unknown kind `vmm` (expected one of vm, systemd, container, nspawn, firecracker",
        ),
        ("a:0", "VLAN `0` is outside 1..255"),
        ("a:256", "VLAN `256` is outside 1..255"),
        (":1", "machine `:1` has no name"),
        ("@vm", "has no name"),
    ],
)
def test_bad_specs_are_named(text, message):
    with pytest.raises(MachineSpecError, match="^machine `") as e:
        machine_spec.parse(text)
    assert message in str(e.value)


def _run(text: str) -> tuple[str, tuple[int, ...], str]:
    name, vlans, kind = run.parse_machine(text)
    return name, tuple(vlans), kind


def _check(text: str) -> tuple[dict[str, str], list[int]]:
    args = argparse.Namespace(
        machines=[text], vlans=[], vm_start_scripts=[], container_start_scripts=[], config=None
    )
    return check_cli._machines(args)


def _guest(text: str, monkeypatch, tmp_path: Path) -> tuple[tuple[int, ...], str]:
    """What `guest scripts SPEC` hands the start-script writer."""
    got = {}

    def write(out_dir, nodes, guest_dir, memory, kinds):
        got.update(nodes=nodes, kinds=kinds)
        return {}

    monkeypatch.setattr(guest_cli, "write_start_scripts", write)
    assert guest_cli.main(["scripts", "-o", str(tmp_path), text]) == 0
    ((name, vlans),) = got["nodes"].items()
    return tuple(vlans), got["kinds"][name]


@pytest.mark.parametrize(("text", "spec"), SPELLINGS)
def test_run_check_and_guest_scripts_read_a_spec_alike(text, spec, monkeypatch, tmp_path):
    kind = spec.kind or "busybox"
    # run: no VLAN unless named
    assert _run(text) == (spec.name, spec.vlans or (), kind)
    # check: a VM, a container or a VMM's machine; the spec's VLANs are the script's too
    machines, vlans = _check(text)
    word = (
        "nspawn"
        if kind == C
        else "firecracker"
        if "firecracker" in kind
        else "cloud-hypervisor"
        if "cloud-hypervisor" in kind
        else "vm"
    )
    assert machines == {spec.name: word}
    assert vlans == list(spec.vlans or ())
    # guest scripts: VLAN 1 unless named (NixOS's default)
    assert _guest(text, monkeypatch, tmp_path) == (
        (1,) if spec.vlans is None else spec.vlans,
        kind,
    )


def test_guest_scripts_kind_flag_takes_the_same_kinds(monkeypatch, tmp_path):
    got = {}
    monkeypatch.setattr(guest_cli, "write_start_scripts", lambda *a: got.update(kinds=a[4]) or {})
    assert guest_cli.main(["scripts", "-o", str(tmp_path), "--kind", "container", "a", "b@vm"]) == 0
    assert got["kinds"] == {"a": C, "b": "busybox"}


@pytest.mark.parametrize("template", sorted(new.TEMPLATES))
def test_new_writes_specs_the_parser_reads_back(template):
    """`nixos-test-ng new` writes `run -m` and `check --machines` lines: they mean its machines."""
    for m in new.TEMPLATES[template].machines:
        run_spec = machine_spec.parse(m.run_spec)
        check_spec = machine_spec.parse(m.check_spec)
        assert (run_spec.name, run_spec.vlans or (), run_spec.is_container) == (
            m.name,
            m.vlans,
            m.container,
        )
        assert (check_spec.name, check_spec.is_container) == (m.name, m.container)


def test_the_guest_package_takes_its_kinds_from_the_spec_module():
    from nixos_test_ng import guest

    assert guest.KINDS == machine_spec.KINDS
    assert set(machine_spec.KIND_ALIASES.values()) == set(machine_spec.KINDS)
