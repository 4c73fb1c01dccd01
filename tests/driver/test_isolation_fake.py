"""pytest-style isolation on a VM that cannot be snapshotted (the fake QEMU refuses `savevm` as
QEMU does): isolated tests get their machine restarted on a fresh state directory, the others
run as if nothing happened, and the log and JUnit say which isolation and why."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

REFUSAL = (
    "Migration is disabled when VirtFS export path '/nix/store' is mounted in the guest"
    " using mount_tag 'nix-store'"
)

SCRIPT = """
import pytest

def test_writes(alpha):
    alpha.succeed('echo dirty > "$FAKE_QEMU_DISK/state"')

@pytest.mark.isolated
def test_isolated(alpha):
    alpha.{check}('test -e "$FAKE_QEMU_DISK/state"')
    alpha.succeed('echo again > "$FAKE_QEMU_DISK/state"')

def test_not_isolated(alpha):
    alpha.succeed('test -e "$FAKE_QEMU_DISK/state"')  # the session machine, as left
"""


def isolation_properties(junit) -> dict[str, str]:
    root = ET.parse(junit).getroot()
    return {
        case.get("name"): prop.get("value")
        for case in root.iter("testcase")
        for prop in case.iter("property")
        if prop.get("name") == "isolation"
    }


def run(driver_env, fake_vm, run_driver, write_script, script, *extra, **knobs):
    out = ["-o", driver_env.out, "--junit-xml", "junit.xml"]
    # -s: pytest captures nothing, the log is on stderr
    vms, args = driver_env.script_args(script, extra=[*out, *extra], after=["-s"], **knobs)
    return vms["alpha"], run_driver(args, timeout=120)


def test_isolation_falls_back_to_a_clean_restart(driver_env, fake_vm, run_driver, write_script):
    script = SCRIPT.format(check="fail")
    vm, r = run(driver_env, fake_vm, run_driver, write_script, script, savevm_error=REFUSAL)
    assert r.returncode == 0, r
    assert "3 passed" in r.stdout, r
    reason = f"QEMU refused: {REFUSAL}"
    # one line, when the machine is first ready, with the reason and the fix
    lines = [line for line in r.stderr.splitlines() if "isolation by restart" in line]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"alpha: isolation by restart (snapshot impossible: {reason});")
    assert "virtualisation.useNixStoreImage = true;" in lines[0]
    assert "restarting with a fresh state directory" in r.stderr
    assert isolation_properties(driver_env.out / "junit.xml") == {
        "test_writes": "session machines",
        "test_isolated": f"isolated: alpha restarted (snapshot impossible: {reason})",
        "test_not_isolated": "session machines",
    }
    assert vm.start_count == 2
    assert vm.monitor_commands().count("savevm ntng-ready") == 1


def test_keep_machine_state_keeps_the_disk_across_the_restart(
    driver_env, fake_vm, run_driver, write_script
):
    script = SCRIPT.format(check="succeed")
    vm, r = run(
        driver_env, fake_vm, run_driver, write_script, script, "--keep-machine-state",
        savevm_error="no block device can store vmstate for snapshot",  # QEMU 7.2's words
    )  # fmt: skip
    assert r.returncode == 0, r
    assert "3 passed" in r.stdout, r
    props = isolation_properties(driver_env.out / "junit.xml")
    assert props["test_isolated"] == (
        "isolated: alpha restarted (snapshot impossible: QEMU refused: no block device can"
        " store vmstate for snapshot, state directory kept: --keep-machine-state)"
    )
    assert "needs a writable qcow2 disk" in r.stderr
    assert vm.start_count == 2


@pytest.mark.parametrize("marked", [False, True], ids=["no-isolated-test", "isolated-test"])
def test_the_ready_snapshot_is_only_taken_for_isolation(
    driver_env, fake_vm, run_driver, write_script, marked
):
    script = "import pytest\n\n" + ("@pytest.mark.isolated\n" if marked else "")
    script += "def test_a(alpha):\n    alpha.succeed('true')\n"
    vm, r = run(driver_env, fake_vm, run_driver, write_script, script, savevm_error=REFUSAL)
    assert r.returncode == 0, r
    assert vm.monitor_commands().count("savevm ntng-ready") == (1 if marked else 0)
    # the only test booted the machine fresh: nothing to restart
    assert vm.start_count == 1
    note = "isolated: alpha fresh" if marked else "session machines"
    assert isolation_properties(driver_env.out / "junit.xml") == {"test_a": note}


def test_containers_keep_their_isolation_by_restore(
    driver_env, run_driver, write_script, fake_container
):
    """A container's snapshot is its state right after boot; restoring it restarts it."""
    box = fake_container("box")
    script = "import pytest\n\n"
    script += "def test_a(box):\n    box.succeed('true')\n\n"
    script += "@pytest.mark.isolated\ndef test_b(box):\n    box.succeed('true')\n"
    test = write_script("t.py", script)
    args = ["--container-start-scripts", box, "-o", driver_env.out, "--junit-xml", "junit.xml"]
    r = run_driver([*args, "--", test, "-s"], timeout=120)
    assert r.returncode == 0, r
    assert "isolation by restart" not in r.stderr
    assert r.stderr.count("box: restoring snapshot ntng-ready") == 1
    assert isolation_properties(driver_env.out / "junit.xml") == {
        "test_a": "session machines",
        "test_b": "isolated: box restored",
    }
