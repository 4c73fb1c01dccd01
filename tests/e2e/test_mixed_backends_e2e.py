"""One VLAN shared by all four backends: a Firecracker machine and a Cloud Hypervisor machine
(each through its API stand-in with the QEMU runner, tests/standins/README.md), a QEMU VM and a
systemd-nspawn container. The VMMs' NICs are TAPs in the run's network namespace, the
container's a TAP in its own, the VM's a `vde` netdev: all plugged into VLAN 1's switch.

Its name holds both `firecracker` and `cloud_hypervisor`, so that `pytest -k firecracker` and
`pytest -k cloud_hypervisor` each select it."""

from __future__ import annotations

import os
import textwrap

import pytest
from support.vmm_e2e import show, use_standin

pytestmark = [pytest.mark.vm, pytest.mark.one_transport]

#: Sorted names number the nodes: box 192.168.1.1, ch .2, fc .3, vm .4.
NODES = {"box": [1], "ch": [1], "fc": [1], "vm": [1]}
KINDS = {
    "box": "systemd-nspawn",
    "ch": "busybox-cloud-hypervisor",
    "fc": "busybox-firecracker",
}

MIXED = """
    start_all()
    machines = {"box": box, "ch": ch, "fc": fc, "vm": vm}
    address = {"box": "192.168.1.1", "ch": "192.168.1.2", "fc": "192.168.1.3", "vm": "192.168.1.4"}
    t.assertIsInstance(ch, CloudHypervisorMachine)
    t.assertIsInstance(fc, FirecrackerMachine)
    # every machine reaches every other, by name (/etc/hosts) and by address
    for name, m in machines.items():
        for other in machines:
            if other != name:
                m.wait_until_succeeds(f"ping -c 1 -W 2 {other}", timeout=180)
                m.succeed(f"ping -c 1 -W 5 {address[other]}")
    print("ALL-PAIRS", flush=True)

    # block() takes the Cloud Hypervisor machine's link down: cut off both ways
    ch.block()
    for name, m in machines.items():
        if name != "ch":
            m.fail(f"ping -c 1 -W 2 {address['ch']}")
            ch.fail(f"ping -c 1 -W 2 {address[name]}")
    # the others still reach each other
    fc.succeed(f"ping -c 1 -W 5 {address['vm']}")
    box.succeed(f"ping -c 1 -W 5 {address['fc']}")
    ch.unblock()
    for name, m in machines.items():
        if name != "ch":
            m.wait_until_succeeds(f"ping -c 1 -W 2 {address['ch']}", timeout=120)
            ch.succeed(f"ping -c 1 -W 5 {address[name]}")
    print("VLAN-OK", flush=True)
"""


@pytest.mark.skipif(
    os.geteuid() != 0, reason="VMM VLAN NICs are TAPs and containers need systemd-nspawn: root"
)
def test_vlan_firecracker_cloud_hypervisor_qemu_container(
    vm_env, systemd_guest, monkeypatch, leftovers
):
    use_standin(monkeypatch, "firecracker")
    use_standin(monkeypatch, "cloud-hypervisor")
    r = vm_env.run(NODES, textwrap.dedent(MIXED), kinds=KINDS, timeout=600)
    assert r.returncode == 0, show(r)
    assert "ALL-PAIRS" in r.stdout and "VLAN-OK" in r.stdout, show(r)
    for machine in ("ch: Cloud Hypervisor running", "fc: Firecracker running"):
        assert machine in r.stderr, show(r)
    assert not leftovers(vm_env.root, wait=5)
