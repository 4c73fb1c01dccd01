"""The second default guest: Debian bookworm with systemd, built with debootstrap (no Nix), usable
as a VM (an ext4 image booted by the busybox guest's kernel and initramfs) and as a
systemd-nspawn container (the same tree, read-only under a tmpfs overlay).

Layout, in `<guest dir>-systemd/` beside the busybox guest's directory (see docs/guests.md; a
directory of its own, so that the busybox guest's directory stays small and copyable):

    base/            the debootstrap output (minbase + PACKAGES), kept so that a change of the
                     configuration does not download or unpack anything again
    rootfs/          the configured tree: the containers' root (`systemd-nspawn --directory`,
                     `--volatile=overlay`, never modified) and the image's source
    rootfs.ext4      ext4 image of rootfs/ (the VMs' disk, through a qcow2 overlay per machine)
    initrd.img       the busybox guest's initramfs plus a second archive with the ext4 modules
    manifest.json    inputs, their hash, artifacts, package versions, timings
    debs/            debootstrap's package cache
    debootstrap.log  the last debootstrap run's output
    rootfs.lock      held shared by every running container, exclusively while rootfs/ is
                     replaced
    .lock            serialises concurrent builds
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import cpio
from .agent import AGENT_FILE, agent_binary
from .busybox_guest import DEFAULT_FLAVOUR, build, flavour_modules
from .cache import (
    DEBS_DIR,
    INITRD_FILE,
    MANIFEST_FILE,
    artifacts_intact,
    atomic_write,
    default_guest_dir,
    hash_inputs,
    load_manifest,
    locked,
    read_manifest,
    record_artifacts,
    write_json,
)
from .common import (
    BuildError,
    GuestError,
    Log,
    data_file,
    run,
    source_date_epoch,
    stderr_log,
    write_file,
)
from .modules import ModuleError, install_modules

__all__ = [
    "SystemdBuildResult",
    "build_systemd",
    "ensure_systemd_built",
    "load_systemd_manifest",
    "systemd_dir",
]

#: Bumped whenever the configured tree or the images change for the same inputs.
SYSTEMD_BUILDER_VERSION = 1
#: Bumped whenever the debootstrap step changes for the same inputs.
BASE_VERSION = 1
MANIFEST_FORMAT = 1

#: The systemd guest's directory is the guest directory's name plus this, beside it.
SYSTEMD_SUFFIX = "-systemd"
BASE_DIR = "base"
ROOTFS_DIR = "rootfs"
IMAGE_FILE = "rootfs.ext4"
ROOTFS_LOCK = "rootfs.lock"
DEBOOTSTRAP_LOG = "debootstrap.log"

SUITE = "bookworm"
VARIANT = "minbase"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
MIRROR_ENV = "NIXOS_TEST_NG_DEBIAN_MIRROR"
#: What debootstrap adds to minbase (and what tests expect: `systemctl`, `ip`, `ping`, `nc`,
#: `curl`, `ps`, `less`, `modprobe`).
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "libpam-systemd",  # user managers (lingering users, wait_for_unit(user=...))
    "iproute2",
    "iputils-ping",
    "netcat-openbsd",
    "curl",
    "procps",
    "less",
    "kmod",
)
#: What `build --systemd --x11` adds (opt-in: an X server is large and most tests need
#: none): Xvfb for a display without a display device (Firecracker, Cloud Hypervisor: the
#: driver captures it from inside the guest, docs/firecracker.md "Screens"), xwd (x11-apps),
#: xmessage and xwininfo (x11-utils) and the core fonts they draw with.
X11_PACKAGES = ("xvfb", "x11-apps", "x11-utils", "xfonts-base")
#: Kernel modules the VM needs on top of the busybox guest's: the root file system's (ext4
#: asks the crypto API for "crc32c", which the generic kernel has as a module).
EXTRA_MODULES = ("ext4", "crc32c_generic")
#: Units that cost boot time and do nothing useful in a test machine (guest-recipe.md: about
#: 22 s -> 13 s to the handshake under TCG), plus every getty on the consoles the driver uses.
MASKED_UNITS = (
    "serial-getty@ttyS0.service",
    "serial-getty@hvc0.service",
    "getty@tty1.service",
    "console-getty.service",
    "getty-static.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "e2scrub_reap.service",
    "systemd-pstore.service",
    "systemd-random-seed.service",
    "systemd-update-utmp.service",
    "systemd-update-utmp-runlevel.service",
    "dev-hugepages.mount",
    "dev-mqueue.mount",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-fs-fuse-connections.mount",
    "sys-kernel-config.mount",
    "proc-sys-fs-binfmt_misc.automount",
    "modprobe@configfs.service",
    "modprobe@dm_mod.service",
    "modprobe@fuse.service",
    "modprobe@loop.service",
    "modprobe@drm.service",
    "modprobe@efi_pstore.service",
    "kmod-static-nodes.service",
    "systemd-firstboot.service",
    "systemd-machine-id-commit.service",
)
#: Generators that have nothing to do in a test machine (no encrypted, GPT-auto, hibernation,
#: integrity or verity volumes, no SysV scripts without a native unit, no rc.local, no system
#: updates, no `systemd.run=`, no gettys on the consoles): each costs an exec at every boot and
#: daemon-reload (about 0.5 s of a TCG boot in all). Masked by a link to /dev/null in /etc.
MASKED_GENERATORS = (
    "systemd-cryptsetup-generator",
    "systemd-getty-generator",
    "systemd-gpt-auto-generator",
    "systemd-hibernate-resume-generator",
    "systemd-integritysetup-generator",
    "systemd-rc-local-generator",
    "systemd-run-generator",
    "systemd-system-update-generator",
    "systemd-sysv-generator",
    "systemd-veritysetup-generator",
)
#: The image is sparse: this much (MiB) at least, so tests can write to the disk (as NixOS's
#: default `virtualisation.diskSize = 1024`).
IMAGE_MIN_MB = 1024
#: Fixed file-system UUID and directory hash seed (the image is still not bit-reproducible:
#: mkfs.ext4 -d copies every file's ctime and atime from the tree).
FS_UUID = "6e2e5f73-7465-4e67-8000-726f6f746673"
FS_HASH_SEED = "6e2e5f73-7465-4e67-8000-686173687365"
FS_LABEL = "nixos"
MIRROR_TIMEOUT = 15.0
ROOTFS_LOCK_TIMEOUT = 60.0

GUEST_LIB = "usr/local/lib/nixos-test-ng"

#: The tree's files from this package's data files: path in the tree -> (data file, mode).
DATA_FILES = {
    f"{GUEST_LIB}/backdoor": ("backdoor.sh", 0o755),  # the busybox guest's very script
    f"{GUEST_LIB}/agent.sh": ("agent.sh", 0o755),  # starts the guest agent beside it
    "etc/systemd/system/nixos-test-ng-agent.service": ("systemd_agent.service", 0o644),
    f"{GUEST_LIB}/setup": ("systemd_setup.sh", 0o755),
    "etc/systemd/system-generators/nixos-test-ng": ("systemd_generator.sh", 0o755),
    "etc/systemd/system/backdoor.service": ("systemd_backdoor.service", 0o644),
    "etc/systemd/system/ntng-setup.service": ("systemd_setup.service", 0o644),
    "etc/systemd/journald.conf.d/nixos-test-ng.conf": ("systemd_journald.conf", 0o644),
    "etc/systemd/system.conf.d/nixos-test-ng.conf": ("systemd_system.conf", 0o644),
    "etc/systemd/system/systemd-journal-flush.service.d/nixos-test-ng.conf": (
        "systemd_journal_flush.conf",
        0o644,
    ),
    # `d /tmp`: Debian cleans /tmp at boot (`D /tmp`); NixOS does not by default
    # (boot.tmp.cleanOnBoot), and in a container /tmp/shared is the host's shared directory
    "etc/tmpfiles.d/tmp.conf": ("systemd_tmpfiles_tmp.conf", 0o644),
    # 9p early, by systemd-modules-load.service (skipped in containers): loaded on demand by the
    # first 9p mount instead, amid udev's coldplug, ntng-setup's two mounts took 2.3 s, not 1.0 s
    "etc/modules-load.d/nixos-test-ng.conf": ("systemd_modules_load.conf", 0o644),
    # localhost only: a VM's ntng-setup writes the nodes' list, a container gets one bound
    "etc/hosts": ("systemd_hosts", 0o644),
}
#: Files the configuration leaves empty: path -> mode.
EMPTY_FILES = {
    "etc/fstab": 0o644,
    "etc/resolv.conf": 0o644,
    # systemd takes the ID from `systemd.machine_id=` (VM) or nspawn's --uuid
    "etc/machine-id": 0o444,
}
TRIMMED_DIRS = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale")


def systemd_dir(guest_dir: Path | str | None = None) -> Path:
    """`<guest dir>-systemd`, beside the guest directory (default: `default_guest_dir()`)."""
    gdir = Path(guest_dir).absolute() if guest_dir is not None else default_guest_dir()
    return gdir.with_name(gdir.name + SYSTEMD_SUFFIX)


def _mirror(mirror: str | None) -> str:
    return (mirror or os.environ.get(MIRROR_ENV) or DEFAULT_MIRROR).rstrip("/")


def rootfs_files() -> dict[str, tuple[bytes, int]]:
    """The files the configuration writes into the tree: path -> (content, mode)."""
    files = {path: (data_file(name), mode) for path, (name, mode) in DATA_FILES.items()}
    files[f"{GUEST_LIB}/{AGENT_FILE}"] = (agent_binary(), 0o755)
    files.update({path: (b"", mode) for path, mode in EMPTY_FILES.items()})
    return files


def rootfs_symlinks() -> dict[str, str]:
    """Symbolic links the configuration makes: path -> target."""
    links = {f"etc/systemd/system/{unit}": "/dev/null" for unit in MASKED_UNITS}
    links.update({f"etc/systemd/system-generators/{g}": "/dev/null" for g in MASKED_GENERATORS})
    links["etc/systemd/system/multi-user.target.wants/ntng-setup.service"] = (
        "/etc/systemd/system/ntng-setup.service"
    )
    # kernel interface names (eth0, eth1, ...) as in NixOS test VMs: no predictable names
    links["etc/systemd/network/99-default.link"] = "/dev/null"
    links["var/lib/dbus/machine-id"] = "/etc/machine-id"
    # /bin/sh is bash, as on NixOS: the upstream driver runs every container command as
    # `sh -c "set -eo pipefail; source /etc/profile; ..."`, which dash rejects
    links["usr/bin/sh"] = "bash"
    return links


def packages(x11: bool = False) -> tuple[str, ...]:
    """What debootstrap adds to minbase: PACKAGES, plus X11_PACKAGES with `x11`."""
    return PACKAGES + X11_PACKAGES if x11 else PACKAGES


def base_inputs(mirror: str, x11: bool = False) -> dict[str, Any]:
    """What the debootstrap step's output depends on (kept across configuration changes)."""
    return {
        "base_version": BASE_VERSION,
        "suite": SUITE,
        "variant": VARIANT,
        "mirror": mirror,
        "packages": sorted(packages(x11)),
    }


def inputs(base: dict[str, Any], busybox: dict[str, Any]) -> dict[str, Any]:
    """Everything the build's output depends on: the debootstrap step's inputs (`base`), the
    configuration, and the busybox guest's build (manifest `busybox`) whose kernel it boots."""
    files = {path: hashlib.sha256(data).hexdigest() for path, (data, _) in rootfs_files().items()}
    kernel_deb = busybox["inputs"]["debs"][0]
    return {
        "builder_version": SYSTEMD_BUILDER_VERSION,
        "base": base,
        "files": files,
        "modes": {path: mode for path, (_, mode) in rootfs_files().items()},
        "symlinks": rootfs_symlinks(),
        "trimmed": list(TRIMMED_DIRS),
        "kernel_version": busybox["kernel_version"],
        "kernel_deb_sha256": kernel_deb["sha256"],
        "modules": [*flavour_modules(busybox["inputs"]["flavour"]), *EXTRA_MODULES],
        "busybox_initrd_sha256": busybox["artifacts"][INITRD_FILE]["sha256"],
        "image": {"min_mb": IMAGE_MIN_MB, "uuid": FS_UUID, "label": FS_LABEL},
        "source_date_epoch": source_date_epoch(),
    }


def load_systemd_manifest(guest_dir: Path | str | None = None) -> dict[str, Any] | None:
    """The systemd guest's manifest in `<guest_dir>-systemd`, or None if there is none."""
    return read_manifest(systemd_dir(guest_dir) / MANIFEST_FILE, MANIFEST_FORMAT)


def built_with_x11(guest_dir: Path | str | None = None) -> bool:
    """True when the systemd guest built for `guest_dir` is the variant with an X server."""
    manifest = load_systemd_manifest(guest_dir) or {}
    base = (manifest.get("inputs") or {}).get("base") or {}
    return set(X11_PACKAGES) <= set(base.get("packages") or ())


def _intact(sd: Path, manifest: dict[str, Any]) -> bool:
    arts = manifest.get("artifacts")
    if not isinstance(arts, dict) or set(arts) != {IMAGE_FILE, INITRD_FILE}:
        return False
    if not (sd / ROOTFS_DIR / "usr/lib/os-release").exists():
        return False
    return artifacts_intact(sd, arts)


@dataclass(frozen=True)
class SystemdBuildResult:
    """What `build_systemd()` did: `built` is False when the cached build was kept."""

    guest_dir: Path
    built: bool
    manifest: dict[str, Any]

    @property
    def dir(self) -> Path:
        return systemd_dir(self.guest_dir)

    @property
    def rootfs(self) -> Path:
        return self.dir / ROOTFS_DIR

    @property
    def image(self) -> Path:
        return self.dir / IMAGE_FILE

    @property
    def initrd(self) -> Path:
        return self.dir / INITRD_FILE


# ---------------------------------------------------------------------------------------------
# debootstrap


def check_mirror(mirror: str, timeout: float = MIRROR_TIMEOUT) -> None:
    """Raise `BuildError` unless `<mirror>/dists/<suite>/Release` can be fetched (debootstrap
    itself would retry for minutes)."""
    # imported here: urllib.request (with ssl, http and email) costs a run that builds
    # nothing about 25 ms of its start
    import urllib.error
    import urllib.request

    url = f"{mirror}/dists/{SUITE}/Release"
    if not url.startswith(("http://", "https://")):
        return  # file:// and the like: debootstrap reports problems itself
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            resp.read(64)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise BuildError(
            f"cannot reach the Debian mirror `{mirror}` ({url}: {reason})\n"
            f"(the systemd guest is built with debootstrap from it; set {MIRROR_ENV} to another "
            "mirror, or build where it is reachable)"
        ) from e


def _debootstrap(target: Path, sd: Path, mirror: str, included: tuple[str, ...], log: Log) -> float:
    if shutil.which("debootstrap") is None:
        raise BuildError("`debootstrap` not found\n(run scripts/setup-system.sh or install it)")
    check_mirror(mirror)
    cache = sd / DEBS_DIR
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [
        "debootstrap",
        f"--variant={VARIANT}",
        f"--include={','.join(included)}",
        f"--cache-dir={cache}",
        SUITE,
        str(target),
        mirror,
    ]
    log(f"debootstrap {SUITE} ({VARIANT} + {len(included)} packages) from {mirror}")
    start = time.monotonic()
    with open(sd / DEBOOTSTRAP_LOG, "w") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        env = {**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}
        res = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if res.returncode != 0:
        lines = (sd / DEBOOTSTRAP_LOG).read_text(errors="replace").strip().splitlines()
        errors = [ln for ln in lines if ln.startswith("E:")]
        detail = (errors or lines or ["no output"])[-1]
        raise BuildError(
            f"debootstrap failed (exit status {res.returncode}): {detail}\n"
            f"(full output: {sd / DEBOOTSTRAP_LOG})"
        )
    seconds = time.monotonic() - start
    log(f"debootstrap done in {seconds:.1f}s")
    return seconds


def _package_versions(root: Path) -> dict[str, str]:
    res = run(
        [
            "dpkg-query",
            f"--admindir={root / 'var/lib/dpkg'}",
            "-W",
            "-f=${Package} ${Version}\n",
        ]
    )
    out: dict[str, str] = {}
    for line in res.stdout.splitlines():
        name, _, version = line.partition(" ")
        if name:
            out[name] = version
    return out


# ---------------------------------------------------------------------------------------------
# configuration


def _symlink(root: Path, rel: str, target: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.is_file():
        path.unlink()
    path.symlink_to(target)


def configure(root: Path) -> None:
    """Turn a debootstrapped tree into the test guest's (files, links, masks, trimming)."""
    for rel, (data, mode) in rootfs_files().items():
        write_file(root / rel, data, mode)
    for rel, target in rootfs_symlinks().items():
        _symlink(root, rel, target)
    # systemd's getty generator would start a getty on tty1 from this link; masked anyway
    (root / "etc/systemd/system/getty.target.wants/getty@tty1.service").unlink(missing_ok=True)
    # the container sets its host name (--machine), the VM's ntng-setup.service does
    (root / "etc/hostname").unlink(missing_ok=True)
    # root with an empty password, as in NixOS tests
    shadow = root / "etc/shadow"
    text = shadow.read_text()
    shadow.write_text(re.sub(r"^root:[^:]*:", "root::", text, count=1, flags=re.M))
    # no persistent journal in the tree (see systemd_journald.conf)
    shutil.rmtree(root / "var/log/journal", ignore_errors=True)
    for rel in TRIMMED_DIRS:
        d = root / rel
        if d.is_dir():
            for child in d.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    for pattern in (
        "var/cache/apt/*.bin",
        "var/cache/apt/archives/*.deb",
        "var/lib/apt/lists/*_*",
        "var/log/bootstrap.log",
    ):
        for path in root.glob(pattern):
            path.unlink()


def _kernel_modules(
    root: Path, work: Path, busybox: dict[str, Any], guest_dir: Path, log: Log
) -> list[str]:
    """Install the busybox guest's modules plus EXTRA_MODULES (from the same kernel package)
    into root/lib/modules/<version> and run depmod there. Returns the relative paths (under
    lib/modules/<version>) of the modules the busybox initramfs lacks."""
    kv = busybox["kernel_version"]
    deb = guest_dir / DEBS_DIR / busybox["inputs"]["debs"][0]["file"]
    if not deb.is_file():
        raise BuildError(f"the kernel package `{deb}` is missing (rebuild the busybox guest)")
    kx = work / "kernel"
    kx.mkdir()
    res = subprocess.run(
        f"dpkg-deb --fsys-tarfile {shlex.quote(str(deb))} | tar -x -C {shlex.quote(str(kx))} "
        f"./lib/modules/{kv}",
        shell=True,
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        raise BuildError(f"cannot unpack the modules of {deb.name}: {res.stderr.strip()}")
    names = [*flavour_modules(busybox["inputs"]["flavour"]), *EXTRA_MODULES]
    try:
        installed = install_modules(kx / "lib/modules" / kv, names, root, kv)
    except ModuleError as e:
        raise BuildError(f"{deb.name}: {e}") from e
    busybox_mods = set(busybox.get("modules_included", []))
    extra = [rel for name, rel in installed.items() if name not in busybox_mods]
    shutil.rmtree(kx)
    log(f"modules: {len(installed)} in the tree, {len(extra)} added to the initramfs")
    return extra


def _extra_initrd(root: Path, kv: str, extra: list[str], work: Path, mtime: int) -> bytes:
    """A gzip'd newc archive with the extra modules and all modules.* index files; the kernel
    unpacks it after the busybox initramfs, over the same paths."""
    tree = work / "initrd-extra"
    mods = root / "lib/modules" / kv
    wanted = [*extra, *sorted(p.name for p in mods.glob("modules.*"))]
    for rel in wanted:
        target = tree / "lib/modules" / kv / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mods / rel, target)
        target.chmod(0o644)
    for d in [tree, *(p for p in tree.rglob("*") if p.is_dir())]:
        d.chmod(0o755)
    return cpio.write_gzip_newc(cpio.entries_from_tree(tree), mtime)


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total


def _make_image(root: Path, out: Path, mtime: int) -> int:
    """mkfs.ext4 -d into a new sparse file; returns the image size in MiB. `lazy_itable_init=0`
    so that the guest kernel does not zero inode tables in the background of every boot."""
    used_mb = _tree_bytes(root) // (1 << 20)
    size_mb = max(IMAGE_MIN_MB, used_mb * 3 // 2 + 256)
    out.unlink(missing_ok=True)
    cmd = [
        "mkfs.ext4",
        "-q",
        "-F",
        "-L",
        FS_LABEL,
        "-U",
        FS_UUID,
        "-E",
        f"hash_seed={FS_HASH_SEED},root_owner=0:0,lazy_itable_init=0",
        "-d",
        str(root),
        str(out),
        f"{size_mb}M",
    ]
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": str(mtime)}
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    except FileNotFoundError as e:
        raise BuildError("`mkfs.ext4` not found\n(run scripts/setup-system.sh)") from e
    if res.returncode != 0:
        raise BuildError(f"mkfs.ext4 failed: {(res.stderr or res.stdout).strip()}")
    return size_mb


@contextmanager
def rootfs_lock(sd: Path, exclusive: bool, timeout: float) -> Iterator[None]:
    """The lock every running container holds shared (see the nspawn start scripts); the build
    takes it exclusively to replace rootfs/."""
    sd.mkdir(parents=True, exist_ok=True)
    with open(sd / ROOTFS_LOCK, "a") as f:
        op = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, op)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise BuildError(
                        f"`{sd / ROOTFS_DIR}` is in use by running containers (they hold "
                        f"{sd / ROOTFS_LOCK}); stop them and build again"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------
# build


def build_systemd(
    out: Path | str | None = None,
    *,
    force: bool = False,
    mirror: str | None = None,
    flavour: str | None = None,
    x11: bool | None = None,
    log: Log = stderr_log,
) -> SystemdBuildResult:
    """Build the systemd guest into `<out>-systemd` (default: `default_guest_dir()`), after the
    busybox guest whose kernel and initramfs its VMs boot with (built into `out` too if needed,
    with kernel `flavour`: by default the one already built there, else the default one),
    unless the manifest shows the same inputs were already built. `force` rebuilds the
    systemd guest, debootstrap included. `mirror`: the Debian mirror (default:
    $NIXOS_TEST_NG_DEBIAN_MIRROR, else deb.debian.org). `x11`: the variant with an X server
    (X11_PACKAGES; its own inputs, so build it into a guest directory of its own); by default
    the variant already built there, else the one without. Raises `BuildError` (no root, no
    debootstrap, the mirror unreachable and nothing cached, ...)."""
    guest_dir = Path(out).absolute() if out is not None else default_guest_dir()
    if flavour is None:
        flavour = str(((load_manifest(guest_dir) or {}).get("inputs") or {}).get("flavour", ""))
    busybox = build(guest_dir, flavour=flavour or DEFAULT_FLAVOUR, log=log).manifest
    if x11 is None:
        x11 = built_with_x11(guest_dir)
    sd = systemd_dir(guest_dir)
    with locked(sd):
        return _build_locked(guest_dir, sd, busybox, _mirror(mirror), force, x11, log)


def _build_locked(
    guest_dir: Path,
    sd: Path,
    busybox: dict[str, Any],
    mirror: str,
    force: bool,
    x11: bool,
    log: Log,
) -> SystemdBuildResult:
    start = time.monotonic()
    previous = load_systemd_manifest(guest_dir)
    usable_cache = previous is not None and _intact(sd, previous)
    base_in = base_inputs(mirror, x11)
    build_inputs = inputs(base_in, busybox)
    digest = hash_inputs(build_inputs)
    if not force and usable_cache and previous is not None and previous.get("input_hash") == digest:
        log(f"cached: systemd guest inputs unchanged (hash {digest[:16]}), nothing to do in {sd}")
        return SystemdBuildResult(guest_dir, False, previous)
    if os.geteuid() != 0:
        raise BuildError("building the systemd guest needs root (debootstrap, mkfs.ext4 -d)")

    for stale in sd.glob(".work-*"):
        shutil.rmtree(stale, ignore_errors=True)
    base = sd / BASE_DIR
    base_meta_path = sd / "base.json"
    try:
        base_meta = json.loads(base_meta_path.read_text())
    except (OSError, ValueError):
        base_meta = None
    base_ok = (
        isinstance(base_meta, dict)
        and base_meta.get("inputs") == base_in
        and (base / "usr/lib/os-release").exists()
    )
    if force or not base_ok:
        with tempfile.TemporaryDirectory(dir=sd, prefix=".work-") as tmp:
            target = Path(tmp) / BASE_DIR
            try:
                seconds = _debootstrap(target, sd, mirror, packages(x11), log)
            except BuildError as err:
                if usable_cache and previous is not None:
                    log(f"warning: {err}")
                    log(f"warning: cannot debootstrap; using the cached systemd guest in {sd}")
                    return SystemdBuildResult(guest_dir, False, previous)
                raise
            base_meta = {
                "inputs": base_in,
                "debootstrap_seconds": round(seconds, 1),
                "packages": _package_versions(target),
            }
            base_meta_path.unlink(missing_ok=True)
            if base.exists():
                shutil.rmtree(base)
            target.rename(base)
            write_json(base_meta_path, base_meta)
    assert isinstance(base_meta, dict)

    mtime = build_inputs["source_date_epoch"]
    kv = busybox["kernel_version"]
    with tempfile.TemporaryDirectory(dir=sd, prefix=".work-") as tmp:
        work = Path(tmp)
        root = work / ROOTFS_DIR
        t = time.monotonic()
        res = run(["cp", "-a", "--reflink=auto", str(base), str(root)])
        if res.returncode != 0:
            raise BuildError(f"cannot copy {base}: {res.stderr.strip()}")
        configure(root)
        extra = _kernel_modules(root, work, busybox, guest_dir, log)
        log(f"configured the tree in {time.monotonic() - t:.1f}s")
        t = time.monotonic()
        size_mb = _make_image(root, work / IMAGE_FILE, mtime)
        busybox_initrd = (guest_dir / INITRD_FILE).read_bytes()
        initrd = busybox_initrd + _extra_initrd(root, kv, extra, work, mtime)
        atomic_write(work / INITRD_FILE, initrd)
        log(f"images made in {time.monotonic() - t:.1f}s")
        for name in (IMAGE_FILE, INITRD_FILE):
            os.replace(work / name, sd / name)
        with rootfs_lock(sd, exclusive=True, timeout=ROOTFS_LOCK_TIMEOUT):
            old = work / "old-rootfs"
            if (sd / ROOTFS_DIR).exists():
                (sd / ROOTFS_DIR).rename(old)
            root.rename(sd / ROOTFS_DIR)
        tree_bytes = _tree_bytes(sd / ROOTFS_DIR)
    artifacts = record_artifacts(sd, (IMAGE_FILE, INITRD_FILE))
    manifest = {
        "format": MANIFEST_FORMAT,
        "input_hash": digest,
        "inputs": build_inputs,
        "kernel_version": kv,
        "kernel_file": busybox["kernel_file"],
        "initramfs_extra_modules": extra,
        "packages": base_meta.get("packages", {}),
        "debootstrap_seconds": base_meta.get("debootstrap_seconds"),
        "tree_bytes": tree_bytes,
        "image_mb": size_mb,
        "image_id": artifacts[IMAGE_FILE]["sha256"][:16],
        "artifacts": artifacts,
        "kvm": busybox.get("kvm"),
        "build_seconds": round(time.monotonic() - start, 2),
    }
    write_json(sd / MANIFEST_FILE, manifest)
    log(
        f"built the systemd guest in {manifest['build_seconds']:.1f}s: {sd} (tree "
        f"{tree_bytes / 1e6:.0f} MB, image {size_mb} MiB sparse, hash {digest[:16]})"
    )
    return SystemdBuildResult(guest_dir, True, manifest)


def ensure_systemd_built(out: Path | str | None = None) -> Path:
    """Build the busybox and systemd guests if needed; returns the guest directory (the one
    `write_start_scripts` takes)."""
    return build_systemd(out).guest_dir


def container_uuid(name: str) -> str:
    """The machine ID a node gets (nspawn --uuid, `systemd.machine_id=`): stable per name."""
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.nixos-test-ng"))


def machine_id(name: str) -> str:
    return container_uuid(name).replace("-", "")


def check_built(guest_dir: Path) -> dict[str, Any]:
    """The systemd manifest of `guest_dir`, or `GuestError` telling how to build it."""
    manifest = load_systemd_manifest(guest_dir)
    if manifest is None:
        raise GuestError(
            f"no systemd guest built in `{systemd_dir(guest_dir)}`\n"
            f"(run `nixos-test-ng guest build --systemd --out {guest_dir}` first)"
        )
    return manifest
