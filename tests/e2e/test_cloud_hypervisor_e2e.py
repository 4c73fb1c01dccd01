"""Cloud Hypervisor machines end to end on the built-in guests, through the Cloud Hypervisor API
stand-in (`tests/standins/cloud-hypervisor`) with its QEMU runner: the driver's Cloud Hypervisor
backend speaks Cloud Hypervisor's REST API to the stand-in, which checks each request against
the official spec and boots the guest under QEMU TCG, hybrid vsock emulated over user-mode
networking (the guest's agent listens on TCP with `ntng.agent=tcp`; tests/standins/README.md).

Against a real Cloud Hypervisor on a KVM host: point NIXOS_TEST_NG_CLOUD_HYPERVISOR at the real
binary (the `cloud_hypervisor` fixture keeps a value that is already set) and the same tests
run.

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

CH = {"ch": "busybox-cloud-hypervisor"}


@pytest.fixture(autouse=True)
def cloud_hypervisor(monkeypatch) -> str:
    """The stand-in (unless NIXOS_TEST_NG_CLOUD_HYPERVISOR names a real Cloud Hypervisor)
    booting guests under QEMU."""
    return use_standin(monkeypatch, "cloud-hypervisor")


SHELL_FILES_REBOOT = """
    from nixos_test_ng import MachineError, Unsupported

    t.assertIsInstance(ch, CloudHypervisorMachine)
    ch.start()
    # the shell: statuses, check flags, output, timeouts
    t.assertEqual(ch.succeed("echo hello; echo to-stderr >&2"), "hello\\n")
    t.assertEqual(ch.execute("echo out; exit 3"), (3, "out\\n"))
    t.assertEqual(ch.execute("echo out; exit 4", check_output=False), (-2, ""))  # upstream's
    t.assertEqual(ch.execute("echo out; exit 4", check_return=False), (-1, "out\\n"))
    t.assertEqual(ch.fail("echo no; false"), "no\\n")
    t.assertEqual(ch.succeed("hostname"), "ch\\n")
    try:
        ch.succeed("exit 5")
    except Exception as e:
        print("FAILED:", e, flush=True)
    try:
        ch.succeed("sleep 60", timeout=2)
    except Exception as e:
        print("TIMEOUT:", type(e).__name__, e, flush=True)
    t.assertEqual(ch.succeed("echo after-timeout"), "after-timeout\\n")
    ch.wait_until_succeeds("test -e /proc/uptime", timeout=30)

    # files, both ways
    src = os.path.join(os.environ["XDG_RUNTIME_DIR"], "from-host.txt")
    with open(src, "w") as f:
        f.write("host data\\n")
    ch.copy_from_host(src, "/tmp/in/from-host.txt")
    t.assertEqual(ch.succeed("cat /tmp/in/from-host.txt"), "host data\\n")
    ch.succeed("mkdir -p /tmp/dir/sub && echo guest data >/tmp/dir/sub/g.txt")
    ch.copy_from_machine("/tmp/dir", "copied")

    # the serial console is the machine's console
    ch.wait_for_console_text("guest agent")

    # what this backend has not: the named error
    for call in (
        lambda: ch.screenshot("shot"),
        lambda: ch.get_screen_text(),
        lambda: ch.send_monitor_command("info status"),
        lambda: ch.forward_port(8080, 80),
        lambda: ch.send_console("x"),
    ):
        try:
            call()
        except Unsupported as e:
            print("UNSUPPORTED:", e, flush=True)
        else:
            raise SystemExit("an unsupported call did not raise Unsupported")

    # reboot: vm.reboot resets the guest in the same Cloud Hypervisor process
    first = ch.pid
    ch.succeed("touch /run/before-reboot")
    ch.reboot()
    t.assertEqual(ch.pid, first)
    t.assertEqual(ch.execute("test -e /run/before-reboot")[0], 1)
    t.assertEqual(ch.succeed("echo rebooted"), "rebooted\\n")
    print("ALL-DONE", flush=True)
"""


def test_cloud_hypervisor_shell_files_console_unsupported_and_reboot(
    tmp_path, guest_dir, leftovers
):
    """One boot of `nixos-test-ng run -m ch@cloud-hypervisor` (and the reboot's second)."""
    (tmp_path / "out").mkdir()
    r = run_ng(tmp_path, SHELL_FILES_REBOOT, "-m", "ch@cloud-hypervisor", "--", "-o", "out")
    assert r.returncode == 0, show(r)
    assert "ALL-DONE" in r.stdout, show(r)
    log = r.stderr
    assert "ch: Cloud Hypervisor running (pid " in log, show(r)
    assert "ch: connected to the guest agent" in log, show(r)
    # the serial console in the log, and a command's stderr as the console shows it
    assert "ch # init: started the guest agent" in log, show(r)
    assert "ch # to-stderr" in log, show(r)
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
        assert line.startswith(f"ch: {op}: not supported by the Cloud Hypervisor backend ("), line
    # copied from the machine into the output directory
    copied = tmp_path / "out" / "copied" / "dir" / "sub" / "g.txt"
    assert copied.read_text() == "guest data\n", show(r)
    # reboot in place: one launch, the guest booted twice on its console
    assert log.count("ch: Cloud Hypervisor running (pid ") == 1, show(r)
    assert log.count("ch # init: started the guest agent") == 2, show(r)
    assert not leftovers(tmp_path)


SNAPSHOT_TESTS = """
    import pytest

    def test_snapshot_and_restore(ch):
        ch.succeed("echo one >/run/state")
        ch.snapshot("mine")
        ch.succeed("echo two >/run/state")
        ch.restore("mine")
        assert ch.succeed("cat /run/state") == "one\\n"
        # the agent's connection is new after the restore, and works
        assert ch.execute("echo after-restore; exit 7") == (7, "after-restore\\n")

    @pytest.mark.isolated
    def test_isolated(ch):
        # back to the machine as it was when first ready: the other test's file is gone
        assert ch.execute("test -e /run/state")[0] == 1
        ch.succeed("echo mine >/run/state")
"""


def test_cloud_hypervisor_snapshot_restore_and_pytest_isolation(vm_env, leftovers):
    r = vm_env.run(
        {"ch": []},
        textwrap.dedent(SNAPSHOT_TESTS),
        "--junit-xml",
        "junit.xml",
        kinds=CH,
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
    assert isolation["test_isolated"] == "isolated: ch restored", isolation
    # both restores were vm.restore of a snapshot directory (the report's operations)
    report = (vm_env.out / "report.html").read_text()
    assert "restoring snapshot mine" in report
    assert "restoring snapshot ntng-ready" in report
    state = vm_env.root / "xdg"
    assert list(state.rglob("snapshot-mine/state.json")), "no snapshot directory was written"
    assert not leftovers(vm_env.root)


SYSTEMD_API = """
    sd.wait_for_unit("multi-user.target")
    t.assertEqual(sd.succeed("systemctl is-system-running --wait").strip(), "running")
    # the root disk is the guest's image, the first disk, named by root= on the command line
    t.assertEqual(sd.succeed("findmnt -no SOURCE /").strip(), "/dev/vda")
    t.assertEqual(sd.succeed("hostname").strip(), "sd")
    sd.systemctl("start systemd-hostnamed")
    sd.wait_for_unit("systemd-hostnamed")
    t.assertEqual(sd.get_unit_info("systemd-hostnamed")["ActiveState"], "active")
    sd.succeed("systemd-run --unit=ntng-web -- nc -lk -p 8080")  # -k: the probe connects
    sd.wait_for_open_port(8080)
    sd.systemctl("stop ntng-web")
    sd.wait_for_closed_port(8080)
    # no backdoor (the driver gives Cloud Hypervisor no virtio console): masked
    t.assertEqual(sd.get_unit_info("backdoor.service")["LoadState"], "masked")
    print("SYSTEMD-OK", flush=True)
"""


def test_cloud_hypervisor_systemd_guest_on_its_root_disk(vm_env, systemd_guest, leftovers):
    r = vm_env.run(
        {"sd": []},
        textwrap.dedent(SYSTEMD_API),
        kinds={"sd": "systemd-cloud-hypervisor"},
        timeout=300,
    )
    assert r.returncode == 0, show(r)
    assert "SYSTEMD-OK" in r.stdout, show(r)
    assert not leftovers(vm_env.root)


START_FAILS = """
    from nixos_test_ng import MachineError
    try:
        ch.start()
    except MachineError as e:
        print("START-FAILED:", e, flush=True)
    else:
        raise SystemExit("the start did not fail")
"""


def test_cloud_hypervisor_missing_binary_names_it_and_the_variable(vm_env, monkeypatch, leftovers):
    """A configuration error (exit status USAGE), before any process is started."""
    missing = str(vm_env.root / "no" / "cloud-hypervisor")
    monkeypatch.setenv("NIXOS_TEST_NG_CLOUD_HYPERVISOR", missing)
    r = vm_env.run({"ch": []}, "ch.start()\n", kinds=CH)
    assert r.returncode == ExitStatus.USAGE, show(r)
    assert (
        f'!!! NIXOS_TEST_NG_CLOUD_HYPERVISOR="{missing}" is not an executable file: point it at '
        "the cloud-hypervisor binary, or unset it to use `cloud-hypervisor` from PATH"
    ) in r.stderr, show(r)
    assert "Cloud Hypervisor running" not in r.stderr, show(r)
    assert not leftovers(vm_env.root)


def test_cloud_hypervisor_api_error_is_shown_naming_the_machine(vm_env, guest_dir, leftovers):
    """A kernel file that is no kernel: vm.boot answers Cloud Hypervisor's error (the
    stand-in's QEMU cannot load it), which the start's MachineError shows."""
    bogus = vm_env.root / "not-a-kernel"
    bogus.write_bytes(b"\0" * 4096)
    script = changed_script(vm_env, guest_dir, "ch", CH["ch"], kernel=str(bogus))
    r = vm_env.run({}, textwrap.dedent(START_FAILS), "--start-scripts", script, keep_scripts=True)
    assert r.returncode == 0, show(r)
    line = re.search(r"START-FAILED: (.*)", r.stdout)
    assert line, show(r)
    assert line.group(1).startswith(
        "ch: Cloud Hypervisor API call PUT /api/v1/vm.boot failed: "
        "Error from API: The VM could not boot: "
    ), show(r)
    assert "(HTTP 500)" in line.group(1), line.group(1)
    assert not leftovers(vm_env.root)


KILLED_MID_COMMAND = """
    import signal, threading
    from nixos_test_ng import MachineError
    ch.succeed("true")  # booted
    vmm = ch.pid
    # the VMM dies while the command runs (the kill comes while `sleep 300` is in flight)
    threading.Timer(1.0, os.kill, (vmm, signal.SIGKILL)).start()
    try:
        ch.succeed("sleep 300")
    except MachineError as e:
        print("DIED:", e, flush=True)
    else:
        raise SystemExit("the command outlived its VMM")
    # and the next command fails the same way, it does not hang
    try:
        ch.succeed("true")
    except MachineError as e:
        print("STILL-DEAD:", e, flush=True)
"""


def test_cloud_hypervisor_killed_mid_command_is_a_machine_error(vm_env, leftovers):
    r = vm_env.run({"ch": []}, textwrap.dedent(KILLED_MID_COMMAND), kinds=CH)
    assert r.returncode == 0, show(r)
    for what in ("DIED", "STILL-DEAD"):
        line = re.search(rf"{what}: (.*)", r.stdout)
        assert line and line.group(1).startswith("ch: "), show(r)
    assert not leftovers(vm_env.root)


SIGKILL_DRIVER = """
    ch.start()
    ch.succeed("true")
    print("NETNS", os.readlink(f"/proc/{ch.pid}/ns/net"), flush=True)
    import time
    time.sleep(600)
"""


def test_sigkill_of_the_driver_leaves_no_cloud_hypervisor_qemu_tap_or_namespace(vm_env, leftovers):
    vlans = [1] if os.geteuid() == 0 else []  # a TAP and a namespace need root
    p = vm_env.spawn({"ch": vlans}, textwrap.dedent(SIGKILL_DRIVER), kinds=CH)
    wait_for_line(p, "NETNS", timeout=300)
    running = "\n".join(procs.marked(marker(vm_env.root)).values())
    assert "qemu-system-x86_64" in running, running
    assert "standins/cloud-hypervisor" in running, running
    if vlans:
        assert "vde_plug2tap" in running and "sleep infinity" in running, running
    os.kill(p.pid, signal.SIGKILL)  # the driver only, not its process group
    p.wait(10)
    assert not leftovers(vm_env.root, wait=20)
