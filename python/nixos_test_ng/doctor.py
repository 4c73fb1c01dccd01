"""`nixos-test-ng doctor`: one screen saying what this host can do, and why not.

Each line is `ok`, `missing` or `degraded`, with the command that fixes it. The exit status is
0 when everything the default demo (`make demo`: the built-in guests, two VMs on a VLAN)
needs is there, 1 otherwise. The commands and their packages come from the table that
`scripts/setup-system.sh` installs from (`data/host_commands.tsv`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from pathlib import Path

from nixos_test_ng import _native
from nixos_test_ng.errors import ConfigError
from nixos_test_ng.exit_status import ExitStatus

SETUP_FIX = "make setup (scripts/setup-system.sh)"
#: Below this, the guest builds and a few VM disks may not fit in the tmp dir.
MIN_FREE_BYTES = 2 * 1024**3
VHOST_VSOCK = Path("/dev/vhost-vsock")

# The commands each line checks; the `tools` line checks every other command of the table.
QEMU_COMMANDS = ("qemu-system-x86_64", "qemu-img")
VLAN_COMMANDS = ("vde_switch", "vde_plug2tap")
CONTAINER_COMMANDS = ("systemd-nspawn", "nsenter", "unshare", "ip")
OCR_COMMANDS = ("tesseract",)
NIX_COMMANDS = ("nix-build", "nix-instantiate")
VSOCK_COMMANDS = ("vhost-device-vsock",)
DEV_KVM = Path("/dev/kvm")


class Status(Enum):
    OK = "ok"
    MISSING = "missing"
    DEGRADED = "degraded"


@dataclass(frozen=True)
class Check:
    """One line of the report. `blocks_demo`: a `missing` here makes the exit status 1."""

    status: Status
    topic: str
    detail: str
    fix: str = ""
    blocks_demo: bool = False

    def render(self) -> list[str]:
        lines = [f"  {self.status.value:<9} {self.topic:<11} {self.detail}"]
        if self.fix and self.status is not Status.OK:
            lines.append(f"  {'':<9} {'':<11} fix: {self.fix}")
        return lines


@dataclass(frozen=True)
class HostCommand:
    command: str
    package: str
    demo: bool
    purpose: str


def host_commands() -> list[HostCommand]:
    """The table shared with scripts/setup-system.sh."""
    text = resources.files("nixos_test_ng").joinpath("data/host_commands.tsv").read_text()
    rows = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        command, package, needed_by, purpose = line.split("\t")
        rows.append(HostCommand(command, package, needed_by == "demo", purpose))
    return rows


Which = Callable[[str], str | None]


def _first_line(cmd: Sequence[str]) -> str:
    """The first non-empty line a `--version`-like command prints, or ''."""
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    for line in (res.stdout + res.stderr).splitlines():
        if line.strip():
            return line.strip()
    return ""


def _commands_check(
    topic: str, names: Sequence[str], table: dict[str, HostCommand], which: Which, ok_detail: str
) -> Check:
    missing = [table[n] for n in names if which(n) is None]
    blocks = any(table[n].demo for n in names)
    if not missing:
        return Check(Status.OK, topic, ok_detail, blocks_demo=blocks)
    apt = sorted({c.package for c in missing if not c.package.startswith("cargo:")})
    others = sorted({install_command(c.package) for c in missing if c.package.startswith("cargo:")})
    installs = ([f"apt-get install {' '.join(apt)}"] if apt else []) + others
    return Check(
        Status.MISSING,
        topic,
        "not found: " + ", ".join(f"{c.command} ({c.purpose})" for c in missing),
        f"{'; '.join(installs)}, or {SETUP_FIX}",
        blocks_demo=any(c.demo for c in missing),
    )


def check_qemu(table: dict[str, HostCommand], which: Which = shutil.which) -> Check:
    names = QEMU_COMMANDS
    if all(which(n) for n in names):
        system = _first_line(["qemu-system-x86_64", "--version"]).partition("version ")[2]
        img = _first_line(["qemu-img", "--version"]).partition("version ")[2]
        detail = f"qemu-system-x86_64 {system or '(version unknown)'}; qemu-img {img or '?'}"
        return Check(Status.OK, "QEMU", detail, blocks_demo=True)
    return _commands_check("QEMU", names, table, which, "")


def check_kvm(
    guest_dir: Path,
    dev_kvm: Path = DEV_KVM,
    status: Callable[[Path], dict[str, object] | None] | None = None,
) -> Check:
    """Whether VMs get KVM: the guest builder's boot probe (cached in its manifest)."""
    tcg = "VMs run under TCG (software emulation): they work, slower"
    if not dev_kvm.exists():
        return Check(
            Status.DEGRADED,
            "KVM",
            f"{dev_kvm} does not exist; {tcg}",
            "enable virtualization (or nested virtualization) and `modprobe kvm_intel` "
            "(or kvm_amd)",
        )
    if not os.access(dev_kvm, os.R_OK | os.W_OK):
        return Check(
            Status.DEGRADED,
            "KVM",
            f"{dev_kvm} is not readable and writable; {tcg}",
            f"add yourself to the group of {dev_kvm} (usually `kvm`), or run as root",
        )
    if status is None:
        from nixos_test_ng.guest.kvm import kvm_status

        def status(d: Path) -> dict[str, object] | None:
            return kvm_status(d, log=lambda _msg: None)

    result = status(guest_dir)
    if result is None:
        return Check(
            Status.DEGRADED,
            "KVM",
            f"{dev_kvm} is there; not probed yet (the probe boots the guest's kernel)",
            "nixos-test-ng guest build",
        )
    if result.get("usable"):
        return Check(Status.OK, "KVM", f"usable ({result.get('detail')})")
    return Check(
        Status.DEGRADED,
        "KVM",
        f"{dev_kvm} is there but a guest kernel does not boot on it: {result.get('detail')}; {tcg}",
        "check `dmesg` for kvm errors; on a VM host, enable nested virtualization",
    )


def install_command(package: str) -> str:
    """How the table's package is installed: `apt-get install P` or `cargo install ...`."""
    if package.startswith("cargo:"):
        crate, _, version = package.removeprefix("cargo:").partition("@")
        base, patched, _ = version.partition("+")
        if patched:
            return (
                f"scripts/setup-system.sh (builds {crate} {base} from crates.io with "
                f"scripts/patches/{crate}-{version}.patch)"
            )
        return f"cargo install --locked {crate} --version {version} --root /usr/local"
    return f"apt-get install {package}"


def check_vsock(
    table: dict[str, HostCommand], which: Which = shutil.which, device: Path = VHOST_VSOCK
) -> Check:
    """The guest agent's vsock device: vhost-user (a vhost-device-vsock daemon per VM) and/or
    the kernel's vhost-vsock; with neither, VMs use the console backdoor only."""
    found = []
    (command,) = VSOCK_COMMANDS
    tool = which(command)
    wanted = table[command].package.partition("@")[2]
    if tool:
        version = _first_line([tool, "--version"]).removeprefix(command).strip()
        if version != wanted:
            return Check(
                Status.DEGRADED,
                "vsock",
                f"{command} {version or '(version unknown)'} ({tool}), not {wanted}: without "
                "nixos-test-ng's fix the daemon can stop carrying the agent's traffic "
                "(docs/agent.md#known-limits)",
                f"{install_command(table[command].package)}, or {SETUP_FIX}",
            )
        found.append(f"vhost-user vsock through {command} {version} ({tool})")
    if device.exists() and os.access(device, os.R_OK | os.W_OK):
        found.append(f"kernel vhost-vsock through {device}")
    if found:
        return Check(Status.OK, "vsock", "; ".join(found) + ": the guest agent is used")
    return Check(
        Status.DEGRADED,
        "vsock",
        f"not found: {command} ({table[command].purpose}), and no {device}: VMs are driven "
        "through the console backdoor only (no guest agent)",
        f"{install_command(table[command].package)}, or {SETUP_FIX}; or `modprobe vhost_vsock`",
    )


def check_vlans(table: dict[str, HostCommand], which: Which = shutil.which) -> Check:
    return _commands_check("VLANs", VLAN_COMMANDS, table, which, ", ".join(VLAN_COMMANDS))


def check_containers(
    table: dict[str, HostCommand], which: Which = shutil.which, euid: int | None = None
) -> Check:
    found = _commands_check("containers", CONTAINER_COMMANDS, table, which, "")
    if found.status is not Status.OK:
        return found
    version = _first_line(["systemd-nspawn", "--version"])
    if (os.geteuid() if euid is None else euid) != 0:
        return Check(
            Status.DEGRADED,
            "containers",
            f"{version}; not root: systemd-nspawn machines need root",
            "run as root (sudo) for container machines; VMs work without",
        )
    return Check(Status.OK, "containers", f"{version}; running as root")


def check_ocr(table: dict[str, HostCommand], which: Which = shutil.which) -> Check:
    if which("tesseract") is None:
        return _commands_check("OCR", OCR_COMMANDS, table, which, "")
    version = _first_line(["tesseract", "--version"])
    return Check(Status.OK, "OCR", f"{version} (get_screen_text, wait_for_text)")


def check_guests(guest_dir: Path) -> Check:
    from nixos_test_ng.guest.cache import load_manifest
    from nixos_test_ng.guest.systemd_guest import load_systemd_manifest, systemd_dir

    busybox = load_manifest(guest_dir)
    systemd = load_systemd_manifest(guest_dir)
    if busybox is None:
        return Check(
            Status.DEGRADED,
            "guests",
            f"not built in {guest_dir} (`nixos-test-ng run` builds the busybox VM on first use)",
            "nixos-test-ng guest build --systemd",
        )
    parts = [f"busybox VM (kernel {busybox.get('kernel_version')}) in {guest_dir}"]
    if systemd is None:
        return Check(
            Status.DEGRADED,
            "guests",
            f"{parts[0]}; the systemd guest is not built (`@systemd` and `@container` machines)",
            "nixos-test-ng guest build --systemd",
        )
    parts.append(f"systemd guest in {systemd_dir(guest_dir)}")
    return Check(Status.OK, "guests", "; ".join(parts))


def _filesystem_type(path: Path) -> str:
    """The type of the file system `path` is on, from the longest matching mount point."""
    best, fstype = "", "unknown"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                fields = line.split()
                sep = fields.index("-")
                mount_point = fields[4].replace("\\040", " ")
                inside = str(path) == mount_point or str(path).startswith(
                    mount_point.rstrip("/") + "/"
                )
                if inside and len(mount_point) >= len(best):
                    best, fstype = mount_point, fields[sep + 1]
    except (OSError, ValueError, IndexError):
        pass
    return fstype


def check_tmp_dir(min_free: int = MIN_FREE_BYTES) -> Check:
    try:
        path = Path(_native.tmp_dir()).resolve()
    except ConfigError as e:
        return Check(
            Status.MISSING,
            "tmp dir",
            str(e),
            "set TMPDIR (or XDG_RUNTIME_DIR) to a writable directory",
            blocks_demo=True,
        )
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    detail = f"{path}: {free / 1024**3:.1f} GiB free, {_filesystem_type(path)}"
    if free < min_free:
        return Check(
            Status.DEGRADED,
            "tmp dir",
            f"{detail}; VM disks and snapshots need at least {min_free / 1024**3:.0f} GiB",
            "free space there, or point TMPDIR (or XDG_RUNTIME_DIR) at a larger directory",
        )
    return Check(Status.OK, "tmp dir", f"{detail} (machine state, sockets, VM disks)")


def check_nix(table: dict[str, HostCommand], which: Which = shutil.which) -> Check:
    names = NIX_COMMANDS
    if all(which(n) for n in names):
        return Check(Status.OK, "Nix", _first_line(["nix-build", "--version"]))
    found = _commands_check("Nix", names, table, which, "")
    return Check(
        Status.MISSING,
        "Nix",
        found.detail + "; only the Nix integration needs it (tests/nix, nix/)",
        found.fix,
    )


def check_tools(table: dict[str, HostCommand], which: Which = shutil.which) -> Check:
    """The commands no other line covers (guest building, shell_interact, the report test)."""
    covered = {
        *QEMU_COMMANDS,
        *VLAN_COMMANDS,
        *CONTAINER_COMMANDS,
        *OCR_COMMANDS,
        *NIX_COMMANDS,
        *VSOCK_COMMANDS,
    }
    names = [name for name in table if name not in covered]
    return _commands_check("tools", names, table, which, ", ".join(names))


def diagnose(guest_dir: Path, which: Which = shutil.which) -> list[Check]:
    table = {c.command: c for c in host_commands()}
    return [
        check_qemu(table, which),
        check_kvm(guest_dir),
        check_vsock(table, which),
        check_vlans(table, which),
        check_containers(table, which),
        check_ocr(table, which),
        check_tools(table, which),
        check_guests(guest_dir),
        check_tmp_dir(),
        check_nix(table, which),
    ]


def summary(checks: Sequence[Check]) -> tuple[int, str]:
    blocking = [c.topic for c in checks if c.status is Status.MISSING and c.blocks_demo]
    if blocking:
        return ExitStatus.FAILED, (
            f"not ready: the demo needs what is missing above ({', '.join(blocking)})"
        )
    degraded = [c.topic for c in checks if c.status is not Status.OK]
    if degraded:
        return ExitStatus.OK, (
            "ready for the demo; the lines not ok above limit only what they name "
            f"({', '.join(degraded)})"
        )
    return ExitStatus.OK, "ready: everything is here"


def main(argv: list[str]) -> int:
    from nixos_test_ng.guest.cache import default_guest_dir

    parser = argparse.ArgumentParser(
        prog="nixos-test-ng doctor",
        description="Say what this host can do (QEMU, KVM, vsock, VLANs, containers, OCR, "
        "guests, tmp dir, Nix): each line ok / missing / degraded, with the fix. Exit 0 when "
        "everything the default demo needs is there, else 1.",
    )
    parser.add_argument(
        "--guest-dir",
        type=Path,
        default=None,
        help="the guest directory to inspect (default: $NIXOS_TEST_NG_GUEST_DIR, else the cache)",
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return ExitStatus.OK if e.code == 0 else ExitStatus.USAGE
    guest_dir = (args.guest_dir or default_guest_dir()).absolute()
    checks = diagnose(guest_dir)
    print("nixos-test-ng doctor: what this host can do")
    for check in checks:
        for line in check.render():
            print(line)
    status, text = summary(checks)
    print(text)
    return status
