"""The backend seam as Python sees it: the machine kinds come from the engine's one table,
and an operation a backend lacks raises `Unsupported` (a `MachineError`) naming it."""

from __future__ import annotations

import textwrap

import pytest
from nixos_test_ng import MachineError, Unsupported, _native
from nixos_test_ng.machine import (
    CLASSES,
    BaseMachine,
    CloudHypervisorMachine,
    FirecrackerMachine,
    NspawnMachine,
    QemuMachine,
)


def test_every_kind_has_its_python_class_and_its_words() -> None:
    kinds = {k.name: k for k in _native.machine_kinds()}
    assert sorted(kinds) == ["cloud-hypervisor", "firecracker", "nspawn", "qemu"]
    assert CLASSES == {
        "qemu": QemuMachine,
        "nspawn": NspawnMachine,
        "firecracker": FirecrackerMachine,
        "cloud-hypervisor": CloudHypervisorMachine,
    }
    for name, kind in kinds.items():
        assert CLASSES[name].__name__ == kind.python_class
        assert issubclass(CLASSES[name], BaseMachine)
        for word in (kind.name, kind.spec_word, kind.backend):
            assert _native.machine_kind(word).name == name
    assert (kinds["qemu"].spec_word, kinds["qemu"].script_suffix) == ("vm", "-vm")
    assert (kinds["nspawn"].noun, kinds["nspawn"].needs_root) == ("container", True)
    assert _native.machine_kind("container").name == "nspawn"
    assert _native.machine_name_from_script("/x/run-c1-nspawn", "container") == "c1"
    assert (kinds["firecracker"].script_suffix, kinds["firecracker"].noun) == ("-firecracker", "VM")
    assert _native.machine_name_from_script("/x/run-fc1-firecracker", "firecracker") == "fc1"
    ch = kinds["cloud-hypervisor"]
    assert (ch.spec_word, ch.script_suffix, ch.noun, ch.backend) == (
        "cloud-hypervisor",
        "-cloud-hypervisor",
        "VM",
        "Cloud Hypervisor",
    )
    assert _native.machine_name_from_script("/x/run-ch1-cloud-hypervisor", "cloud-hypervisor") == (
        "ch1"
    )
    with pytest.raises(
        ValueError,
        match='kind must be "vm" or "nspawn" or "firecracker" or "cloud-hypervisor", not "docker"',
    ):
        _native.machine_kind("docker")


def test_an_operation_the_backend_lacks_is_unsupported(driver_env, run_driver, fake_container):
    script = fake_container()
    body = textwrap.dedent(
        """
        from nixos_test_ng import MachineError, Unsupported
        box.start()
        for call, op, reason in [
            (lambda: box.screenshot("x"), "screenshot", "no display"),
            (lambda: box.send_key("a"), "send_key", "no keyboard"),
            (lambda: box.qmp("query-status"), "qmp", "no QEMU monitor or QMP"),
            (box.block, "block", "no NIC links to cut"),
            (box.crash, "crash", "no power control beyond asking the guest"),
            (lambda: box.send_console("x"), "send_console", "no serial console input"),
        ]:
            try:
                call()
            except Unsupported as e:
                assert isinstance(e, MachineError)
                assert (e.operation, e.backend) == (op, "systemd-nspawn"), e
                want = f"box: {op}: not supported by the systemd-nspawn backend ({reason})"
                assert str(e) == want, str(e)
            else:
                raise SystemExit(f"{op} did not raise")
        assert box.succeed("echo fine") == "fine\\n"
        print("UNSUPPORTED-OK")
        """
    )
    test = driver_env.write_script("t.py", body)
    r = run_driver(["--container-start-scripts", script, "--", test])
    assert r.returncode == 0, r
    assert "UNSUPPORTED-OK" in r.stdout, r


def test_unsupported_is_a_machine_error() -> None:
    assert issubclass(Unsupported, MachineError)
    assert (Unsupported.operation, Unsupported.backend) == ("", "")
