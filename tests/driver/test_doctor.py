"""`nixos-test-ng doctor`: its ok, missing and degraded lines and its exit status.

The command runs for real against this host, with a PATH that lacks chosen commands or an
empty guest directory; the checks that read devices or the user id are also called directly
with those inputs, since a test cannot take /dev/kvm away or change its own uid.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from nixos_test_ng import doctor
from nixos_test_ng.doctor import Status

TABLE = {c.command: c for c in doctor.host_commands()}


def ng_command() -> list[str]:
    beside = Path(sys.executable).parent / "nixos-test-ng"
    if beside.is_file():
        return [str(beside)]
    return [sys.executable, "-c", "import sys; from nixos_test_ng.cli import ng_main; ng_main()"]


def run_doctor(tmp_path: Path, without: tuple[str, ...] = (), guest_dir: Path | None = None):
    """Runs the command with a PATH holding every host command but `without`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in TABLE:
        found = shutil.which(name)
        if found and name not in without:
            (bin_dir / name).symlink_to(found)
    env = dict(os.environ, PATH=str(bin_dir))
    if guest_dir is not None:
        env["NIXOS_TEST_NG_GUEST_DIR"] = str(guest_dir)
    res = subprocess.run(
        [*ng_command(), "doctor"], env=env, capture_output=True, text=True, timeout=120
    )
    lines = {}
    for line in res.stdout.splitlines():
        m = re.match(r"^  (ok|missing|degraded) +(\S+(?: dir)?) +(.*)$", line)
        if m:
            lines[m.group(2)] = (m.group(1), m.group(3))
    return res, lines


def test_every_line_and_exit_zero_on_this_host(tmp_path):
    res, lines = run_doctor(tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert set(lines) == {
        "QEMU",
        "KVM",
        "vsock",
        "VLANs",
        "containers",
        "OCR",
        "tools",
        "guests",
        "tmp dir",
        "Nix",
    }
    assert lines["QEMU"][0] == "ok" and "qemu-system-x86_64 " in lines["QEMU"][1]
    assert lines["tmp dir"][0] in ("ok", "degraded") and "GiB free" in lines["tmp dir"][1]
    assert res.stdout.splitlines()[-1].startswith("ready")


def test_missing_qemu_names_the_package_and_fails(tmp_path):
    res, lines = run_doctor(tmp_path, without=("qemu-system-x86_64", "qemu-img"))
    assert res.returncode == 1, res.stdout
    assert lines["QEMU"][0] == "missing"
    assert "qemu-system-x86_64" in lines["QEMU"][1] and "qemu-img" in lines["QEMU"][1]
    assert "fix: apt-get install qemu-system-x86 qemu-utils" in res.stdout
    assert "not ready: the demo needs what is missing above (QEMU)" in res.stdout


def test_missing_tesseract_is_a_missing_line_that_does_not_block_the_demo(tmp_path):
    res, lines = run_doctor(tmp_path, without=("tesseract",))
    assert res.returncode == 0, res.stdout
    assert lines["OCR"][0] == "missing"
    assert "fix: apt-get install tesseract-ocr" in res.stdout


def test_missing_build_tool_blocks_the_demo(tmp_path):
    res, lines = run_doctor(tmp_path, without=("debootstrap",))
    assert res.returncode == 1, res.stdout
    assert lines["tools"][0] == "missing" and "debootstrap" in lines["tools"][1]


def test_unbuilt_guests_are_degraded_with_the_build_command(tmp_path):
    empty = tmp_path / "guest"
    empty.mkdir()
    res, lines = run_doctor(tmp_path, guest_dir=empty)
    assert res.returncode == 0, res.stdout
    assert lines["guests"][0] == "degraded" and str(empty) in lines["guests"][1]
    assert "fix: nixos-test-ng guest build --systemd" in res.stdout
    if Path("/dev/kvm").exists():
        assert lines["KVM"] == ("degraded", lines["KVM"][1])
        assert "not probed yet" in lines["KVM"][1]


def test_containers_without_root_are_degraded():
    check = doctor.check_containers(TABLE, euid=1000)
    assert check.status is Status.DEGRADED
    assert "need root" in check.detail and check.fix


def test_vsock_lines(tmp_path):
    table = {c.command: c for c in doctor.host_commands()}
    wanted = table["vhost-device-vsock"].package.partition("@")[2]
    assert wanted.startswith("0.3.0+ntng."), wanted
    absent = tmp_path / "vhost-vsock"
    fake = tmp_path / "vhost-device-vsock"
    fake.write_text(f"#!/bin/sh\necho 'vhost-device-vsock {wanted}'\n")
    fake.chmod(0o755)
    check = doctor.check_vsock(table, which=lambda _name: None, device=absent)
    assert check.status is Status.DEGRADED and "console backdoor only" in check.detail
    assert check.detail.startswith("not found: vhost-device-vsock (the guest agent's vsock")
    assert (
        "scripts/setup-system.sh (builds vhost-device-vsock 0.3.0 from crates.io with "
        f"scripts/patches/vhost-device-vsock-{wanted}.patch)" in check.fix
    )
    assert "modprobe vhost_vsock" in check.fix
    check = doctor.check_vsock(table, which=lambda _name: str(fake), device=absent)
    assert check.status is Status.OK
    assert f"vhost-user vsock through vhost-device-vsock {wanted} ({fake})" in check.detail
    assert "kernel" not in check.detail
    absent.touch()
    check = doctor.check_vsock(table, which=lambda _name: None, device=absent)
    assert check.status is Status.OK and f"kernel vhost-vsock through {absent}" in check.detail
    check = doctor.check_vsock(table, which=lambda _name: str(fake), device=absent)
    assert "vhost-user vsock" in check.detail and "kernel vhost-vsock" in check.detail
    # a stock build, without the fix: degraded, naming both versions and the fix
    fake.write_text("#!/bin/sh\necho 'vhost-device-vsock 0.3.0'\n")
    check = doctor.check_vsock(table, which=lambda _name: str(fake), device=absent)
    assert check.status is Status.DEGRADED, check
    assert f"vhost-device-vsock 0.3.0 ({fake}), not {wanted}" in check.detail
    assert "scripts/setup-system.sh" in check.fix


def test_a_missing_crates_io_command_names_how_it_is_installed(tmp_path):
    table = {c.command: c for c in doctor.host_commands()}
    check = doctor._commands_check(
        "x", ["vhost-device-vsock", "socat"], table, lambda _name: None, ""
    )
    # vhost-device-vsock is crates.io's 0.3.0 with our patch: the setup script builds it
    assert check.fix.startswith(
        "apt-get install socat; scripts/setup-system.sh (builds vhost-device-vsock 0.3.0 "
        "from crates.io with scripts/patches/vhost-device-vsock-0.3.0+ntng."
    ), check.fix
    # a plain crates.io version is one `cargo install`
    assert (
        doctor.install_command("cargo:some-tool@1.2.3")
        == "cargo install --locked some-tool --version 1.2.3 --root /usr/local"
    )


def test_kvm_lines(tmp_path):
    dev = tmp_path / "kvm"
    check = doctor.check_kvm(tmp_path, dev_kvm=dev, status=lambda _d: None)
    assert check.status is Status.DEGRADED and "does not exist" in check.detail
    dev.touch()
    broken = {"usable": False, "detail": "qemu failed: failed to initialize kvm: Permission denied"}
    check = doctor.check_kvm(tmp_path, dev_kvm=dev, status=lambda _d: broken)
    assert check.status is Status.DEGRADED
    assert "failed to initialize kvm: Permission denied" in check.detail
    usable = {"usable": True, "detail": "kernel printed to ttyS0 after 0.2s"}
    check = doctor.check_kvm(tmp_path, dev_kvm=dev, status=lambda _d: usable)
    assert check.status is Status.OK


def test_small_tmp_dir_is_degraded():
    check = doctor.check_tmp_dir(min_free=1 << 60)
    assert check.status is Status.DEGRADED and "at least" in check.detail


@pytest.mark.parametrize("flag", ["--bogus"])
def test_bad_flag_is_a_usage_error(flag):
    res = subprocess.run([*ng_command(), "doctor", flag], capture_output=True, text=True)
    assert res.returncode == 2
    assert flag in res.stderr


def test_every_table_command_is_reported_missing_when_absent():
    checks = doctor.diagnose(Path("/nonexistent"), which=lambda _name: None)
    named = {name for check in checks for name in TABLE if f"{name} (" in check.detail}
    assert named == set(TABLE)
    assert doctor.summary(checks)[0] == 1
