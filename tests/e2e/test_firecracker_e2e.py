"""Firecracker machines end to end on the built-in guests, through the Firecracker API stand-in
(`tests/standins/firecracker`) with its QEMU runner: the driver's Firecracker backend speaks
Firecracker's API to the stand-in, which checks each request against the official spec and
boots the guest under QEMU TCG, hybrid vsock emulated over user-mode networking (the guest's
agent listens on TCP with `ntng.agent=tcp`; tests/standins/README.md).

Against a real Firecracker on a KVM host: point NIXOS_TEST_NG_FIRECRACKER at the real binary
(the `firecracker` fixture keeps a value that is already set) and the same tests run.

Each TCG boot costs seconds: the checks are grouped per boot."""

from __future__ import annotations

import os
import re
import signal
import textwrap
import xml.etree.ElementTree as ET

import pytest
from nixos_test_ng import procs
from nixos_test_ng.exit_status import ExitStatus
from support.driver import wait_for_line
from support.leaks import marker
from support.vmm_e2e import changed_script, run_ng, show, use_standin

pytestmark = [pytest.mark.vm, pytest.mark.one_transport]

FC = {"fc": "busybox-firecracker"}


@pytest.fixture(autouse=True)
def firecracker(monkeypatch) -> str:
    """The stand-in (unless NIXOS_TEST_NG_FIRECRACKER names a real Firecracker) booting guests
    under QEMU."""
    return use_standin(monkeypatch, "firecracker")


SHELL_FILES_REBOOT = """
    from nixos_test_ng import MachineError, Unsupported

    t.assertIsInstance(fc, FirecrackerMachine)
    fc.start()
    # the shell: statuses, check flags, output, timeouts
    t.assertEqual(fc.succeed("echo hello; echo to-stderr >&2"), "hello\\n")
    t.assertEqual(fc.execute("echo out; exit 3"), (3, "out\\n"))
    t.assertEqual(fc.execute("echo out; exit 4", check_output=False), (-2, ""))  # upstream's
    t.assertEqual(fc.execute("echo out; exit 4", check_return=False), (-1, "out\\n"))
    t.assertEqual(fc.fail("echo no; false"), "no\\n")
    t.assertEqual(fc.succeed("hostname"), "fc\\n")
    try:
        fc.succeed("exit 5")
    except Exception as e:
        print("FAILED:", e, flush=True)
    try:
        fc.succeed("sleep 60", timeout=2)
    except Exception as e:
        print("TIMEOUT:", type(e).__name__, e, flush=True)
    t.assertEqual(fc.succeed("echo after-timeout"), "after-timeout\\n")
    fc.wait_until_succeeds("test -e /proc/uptime", timeout=30)

    # files, both ways
    src = os.path.join(os.environ["XDG_RUNTIME_DIR"], "from-host.txt")
    with open(src, "w") as f:
        f.write("host data\\n")
    fc.copy_from_host(src, "/tmp/in/from-host.txt")
    t.assertEqual(fc.succeed("cat /tmp/in/from-host.txt"), "host data\\n")
    fc.succeed("mkdir -p /tmp/dir/sub && echo guest data >/tmp/dir/sub/g.txt")
    fc.copy_from_machine("/tmp/dir", "copied")

    # the serial console is the machine's console
    fc.wait_for_console_text("guest agent")

    # what Firecracker has not: the named error
    for call in (
        lambda: fc.screenshot("shot"),
        lambda: fc.get_screen_text(),
        lambda: fc.send_monitor_command("info status"),
        lambda: fc.forward_port(8080, 80),
        lambda: fc.send_console("x"),
    ):
        try:
            call()
        except Unsupported as e:
            print("UNSUPPORTED:", e, flush=True)
        else:
            raise SystemExit("an unsupported call did not raise Unsupported")

    # reboot: Ctrl-Alt-Del ends this Firecracker, a new one boots the guest again
    first = fc.pid
    fc.succeed("touch /run/before-reboot")
    fc.reboot()
    t.assertNotEqual(fc.pid, first)
    t.assertEqual(fc.execute("test -e /run/before-reboot")[0], 1)
    t.assertEqual(fc.succeed("echo rebooted"), "rebooted\\n")
    print("ALL-DONE", flush=True)
"""


def test_firecracker_shell_files_console_unsupported_and_reboot(tmp_path, guest_dir, leftovers):
    """One boot of `nixos-test-ng run -m fc@firecracker` (and the reboot's second)."""
    (tmp_path / "out").mkdir()
    r = run_ng(tmp_path, SHELL_FILES_REBOOT, "-m", "fc@firecracker", "--", "-o", "out")
    assert r.returncode == 0, show(r)
    assert "ALL-DONE" in r.stdout, show(r)
    log = r.stderr
    assert "fc: Firecracker running (pid " in log, show(r)
    assert "fc: connected to the guest agent" in log, show(r)
    # the serial console in the log, and a command's stderr as the console shows it
    assert "fc # init: started the guest agent" in log, show(r)
    assert "fc # to-stderr" in log, show(r)
    assert "FAILED: command `exit 5` failed (exit code 5)" in r.stdout, show(r)
    # upstream's timeout: `timeout N` around the command in the guest, whose status is 124
    assert "TIMEOUT: RequestedAssertionFailed command `sleep 60` failed (exit code 124)" in (
        r.stdout
    ), show(r)
    unsupported = re.findall(r"UNSUPPORTED: (.*)", r.stdout)
    assert len(unsupported) == 5, show(r)
    for line, op in zip(
        unsupported,
        ("screenshot", "get_screen_text", "send_monitor_command", "forward_port", "send_console"),
        strict=True,
    ):
        assert line.startswith(f"fc: {op}: not supported by the Firecracker backend ("), line
    # copied from the machine into the output directory
    copied = tmp_path / "out" / "copied" / "dir" / "sub" / "g.txt"
    assert copied.read_text() == "guest data\n", show(r)
    # reboot: a second launch, and the first Firecracker was ended
    assert log.count("fc: Firecracker running (pid ") == 2, show(r)
    assert not leftovers(tmp_path)


SNAPSHOT_TESTS = """
    import pytest

    def test_snapshot_and_restore(fc):
        fc.succeed("echo one >/run/state")
        fc.snapshot("mine")
        fc.succeed("echo two >/run/state")
        fc.restore("mine")
        assert fc.succeed("cat /run/state") == "one\\n"
        # a command that outlives no restore: the agent's connection is new
        assert fc.execute("echo after-restore; exit 7") == (7, "after-restore\\n")

    @pytest.mark.isolated
    def test_isolated(fc):
        # back to the machine as it was when first ready: the other test's file is gone
        assert fc.execute("test -e /run/state")[0] == 1
        fc.succeed("echo mine >/run/state")
"""


def test_firecracker_snapshot_restore_and_pytest_isolation(vm_env, leftovers):
    r = vm_env.run(
        {"fc": []},
        textwrap.dedent(SNAPSHOT_TESTS),
        "--junit-xml",
        "junit.xml",
        kinds=FC,
        after=("-p", "no:cacheprovider"),
    )
    assert r.returncode == 0, show(r)
    assert "2 passed" in r.stdout, show(r)
    isolation = {
        case.get("name"): prop.get("value")
        for case in ET.parse(vm_env.out / "junit.xml").getroot().iter("testcase")
        for prop in case.iter("property")
        if prop.get("name") == "isolation"
    }
    assert isolation["test_isolated"] == "isolated: fc restored", isolation
    # both restores were snapshot loads (the report's operations), not new boots
    report = (vm_env.out / "report.html").read_text()
    assert "restoring snapshot mine" in report
    assert "restoring snapshot ntng-ready" in report
    assert not leftovers(vm_env.root)


START_FAILS = """
    from nixos_test_ng import MachineError
    try:
        fc.start()
    except MachineError as e:
        print("START-FAILED:", e, flush=True)
    else:
        raise SystemExit("the start did not fail")
"""


def test_firecracker_missing_binary_names_it_and_the_variable(vm_env, monkeypatch, leftovers):
    """A configuration error (exit status USAGE), before any process is started."""
    missing = str(vm_env.root / "no" / "firecracker")
    monkeypatch.setenv("NIXOS_TEST_NG_FIRECRACKER", missing)
    r = vm_env.run({"fc": []}, "fc.start()\n", kinds=FC)
    assert r.returncode == ExitStatus.USAGE, show(r)
    assert (
        f'!!! NIXOS_TEST_NG_FIRECRACKER="{missing}" is not an executable file: point it at the '
        "firecracker binary, or unset it to use `firecracker` from PATH"
    ) in r.stderr, show(r)
    assert "Firecracker running" not in r.stderr, show(r)
    assert not leftovers(vm_env.root)


def test_firecracker_api_error_is_shown_naming_the_machine(vm_env, guest_dir, leftovers):
    """A kernel file that is no kernel: Firecracker's InstanceStart answers an error (the
    stand-in's QEMU cannot load it), which the start's MachineError shows."""
    bogus = vm_env.root / "not-a-kernel"
    bogus.write_bytes(b"\0" * 4096)
    script = changed_script(vm_env, guest_dir, "fc", FC["fc"], kernel=str(bogus))
    r = vm_env.run({}, textwrap.dedent(START_FAILS), "--start-scripts", script, keep_scripts=True)
    assert r.returncode == 0, show(r)
    line = re.search(r"START-FAILED: (.*)", r.stdout)
    assert line, show(r)
    assert line.group(1).startswith("fc: Firecracker API call PUT /actions failed: "), show(r)
    assert "(HTTP 400)" in line.group(1), line.group(1)
    assert not leftovers(vm_env.root)


KILLED_MID_COMMAND = """
    import signal, threading
    from nixos_test_ng import MachineError
    fc.succeed("true")  # booted
    vmm = fc.pid
    # the VMM dies while the command runs (the kill comes while `sleep 300` is in flight)
    threading.Timer(1.0, os.kill, (vmm, signal.SIGKILL)).start()
    try:
        fc.succeed("sleep 300")
    except MachineError as e:
        print("DIED:", e, flush=True)
    else:
        raise SystemExit("the command outlived its VMM")
    # and the next command fails the same way, it does not hang
    try:
        fc.succeed("true")
    except MachineError as e:
        print("STILL-DEAD:", e, flush=True)
"""


def test_firecracker_killed_mid_command_is_a_machine_error(vm_env, leftovers):
    r = vm_env.run({"fc": []}, textwrap.dedent(KILLED_MID_COMMAND), kinds=FC)
    assert r.returncode == 0, show(r)
    for what in ("DIED", "STILL-DEAD"):
        line = re.search(rf"{what}: (.*)", r.stdout)
        assert line and line.group(1).startswith("fc: "), show(r)
    assert not leftovers(vm_env.root)


SIGKILL_DRIVER = """
    fc.start()
    fc.succeed("true")
    print("NETNS", os.readlink(f"/proc/{fc.pid}/ns/net"), flush=True)
    import time
    time.sleep(600)
"""


def test_sigkill_of_the_driver_leaves_no_firecracker_qemu_tap_or_namespace(vm_env, leftovers):
    vlans = [1] if os.geteuid() == 0 else []  # a TAP and a namespace need root
    p = vm_env.spawn({"fc": vlans}, textwrap.dedent(SIGKILL_DRIVER), kinds=FC)
    wait_for_line(p, "NETNS", timeout=300)
    running = "\n".join(procs.marked(marker(vm_env.root)).values())
    assert "qemu-system-x86_64" in running, running
    assert "standins/firecracker" in running, running
    if vlans:
        assert "vde_plug2tap" in running and "sleep infinity" in running, running
    os.kill(p.pid, signal.SIGKILL)  # the driver only, not its process group
    p.wait(10)
    assert not leftovers(vm_env.root, wait=20)


SYSTEMD_API = """
    sd.wait_for_unit("multi-user.target")
    t.assertEqual(sd.succeed("systemctl is-system-running --wait").strip(), "running")
    # the root disk is the guest's image, as Firecracker attaches it
    t.assertEqual(sd.succeed("findmnt -no SOURCE /").strip(), "/dev/vda")
    t.assertEqual(sd.succeed("hostname").strip(), "sd")
    sd.systemctl("start systemd-hostnamed")
    sd.wait_for_unit("systemd-hostnamed")
    t.assertEqual(sd.get_unit_info("systemd-hostnamed")["ActiveState"], "active")
    sd.succeed("systemd-run --unit=ntng-web -- nc -lk -p 8080")  # -k: the probe connects
    sd.wait_for_open_port(8080)
    sd.systemctl("stop ntng-web")
    sd.wait_for_closed_port(8080)
    # no backdoor on Firecracker (no virtio console): masked, not waited for
    t.assertEqual(sd.get_unit_info("backdoor.service")["LoadState"], "masked")
    print("SYSTEMD-OK", flush=True)
"""


def test_firecracker_systemd_guest_on_its_root_disk(vm_env, systemd_guest, leftovers):
    r = vm_env.run(
        {"sd": []}, textwrap.dedent(SYSTEMD_API), kinds={"sd": "systemd-firecracker"}, timeout=240
    )
    assert r.returncode == 0, show(r)
    assert "SYSTEMD-OK" in r.stdout, show(r)
    assert not leftovers(vm_env.root)


VLAN = """
    start_all()
    # fc is node 1 and vm node 2 (sorted names): 192.168.1.1 and 192.168.1.2
    fc.wait_until_succeeds("ping -c 1 -W 2 192.168.1.2", timeout=120)
    vm.wait_until_succeeds("ping -c 1 -W 2 fc", timeout=120)
    fc.block()
    vm.fail("ping -c 1 -W 2 192.168.1.1")
    fc.fail("ping -c 1 -W 2 192.168.1.2")
    fc.unblock()
    vm.wait_until_succeeds("ping -c 1 -W 2 192.168.1.1", timeout=120)
    fc.succeed("ping -c 1 -W 5 192.168.1.2")
    print("VLAN-OK", flush=True)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="a Firecracker VLAN NIC is a TAP: needs root")
def test_firecracker_and_a_qemu_vm_share_a_vlan_and_block_cuts_it(vm_env, leftovers):
    r = vm_env.run({"fc": [1], "vm": [1]}, textwrap.dedent(VLAN), kinds=FC, timeout=400)
    assert r.returncode == 0, show(r)
    assert "VLAN-OK" in r.stdout, show(r)
    assert not leftovers(vm_env.root)
