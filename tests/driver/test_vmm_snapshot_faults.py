"""A VMM that dies in the middle of `snapshot()` (killed inside the snapshot call, before it
answered or wrote anything), for Firecracker and Cloud Hypervisor against their API stand-ins
with the fake runner and a fake guest: the snapshot fails naming the machine and the VMM's
exit, nothing of it is kept for a later `restore`, and the driver ends cleanly."""

from __future__ import annotations

import pytest
from support import vmm
from support.vmm import calls, run

CASES = [
    pytest.param(vmm.FIRECRACKER, "fc", "Firecracker", id="firecracker"),
    pytest.param(vmm.CLOUD_HYPERVISOR, "vm", "Cloud Hypervisor", id="cloud_hypervisor"),
]


@pytest.mark.parametrize(("which", "name", "label"), CASES)
def test_a_vmm_dying_mid_snapshot_fails_it_naming_the_machine_and_keeps_nothing(
    driver_env, run_driver, which, name, label
):
    fake, env = vmm.standin_env(driver_env, which)
    env = {**env, "NTNG_FAKE_RUNNER_DIE_ON": "snapshot=137"}
    script = vmm.start_script(driver_env, which, name)
    with vmm.vsock_guest(driver_env, name):
        r = run(
            driver_env,
            run_driver,
            env,
            script,
            f"""
            from nixos_test_ng import MachineError
            {name}.start()
            {name}.succeed("true")
            try:
                {name}.snapshot("ready")
            except MachineError as e:
                print("ERROR:", e)
            else:
                raise SystemExit("the snapshot did not fail")
            try:
                {name}.restore("ready")
            except MachineError as e:
                print("NO-SNAPSHOT:", e)
            else:
                raise SystemExit("restored a snapshot whose VMM died while taking it")
            """,
        )
    assert r.returncode == 0, r
    assert f"ERROR: {name}: {label} API call " in r.stdout, r
    assert f"({label} exited: exit status: 137)" in r.stdout, r
    assert f'NO-SNAPSHOT: {name}: no snapshot named "ready"' in r.stdout, r
    assert [c["call"] for c in calls(fake)] == ["boot", "pause", "snapshot"], calls(fake)
