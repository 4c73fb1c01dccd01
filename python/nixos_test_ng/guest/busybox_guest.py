"""Build the default test guest (a Debian kernel and a busybox initramfs) from Debian packages.

The packages are downloaded with `apt-get download` and unpacked with `dpkg-deb -x`; nothing is
installed on the host. Artifacts land in one directory with a manifest that records a hash of
every input, so an unchanged second build does no work.

Guest directory layout (see docs/guests.md):

    vmlinux          the kernel: the uncompressed ELF, booted through PVH (see kernel.py);
                     `vmlinuz` (the bzImage) instead when the payload cannot be PVH-booted
    initrd.img       gzip-compressed newc initramfs (busybox, bash, OpenBSD netcat and its shared
                     libraries, modules, /init, backdoor, guest agent)
    manifest.json    inputs, their hash, artifact hashes, kernel version, KVM probe result
    debs/            the downloaded .deb files (the download cache)
    .lock            serialises concurrent builds
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import apt, cpio
from .agent import AGENT_FILE, agent_binary, agent_sha256
from .apt import AptError, Package
from .cache import (
    DEBS_DIR,
    INITRD_FILE,
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    atomic_write,
    default_guest_dir,
    guest_intact,
    hash_inputs,
    load_manifest,
    locked,
    record_artifacts,
    write_json,
)
from .common import BuildError, Log, data_file, run, source_date_epoch, stderr_log, write_file
from .elf import ElfError, library_closure
from .kernel import kernel_for_qemu
from .kvm import kvm_result
from .modules import ModuleError, install_modules

__all__ = [
    "DEFAULT_FLAVOUR",
    "KERNEL_META",
    "BuildResult",
    "build",
    "ensure_built",
    "flavour_modules",
    "inputs",
    "resolve_packages",
]

#: Bumped whenever the builder's output changes for the same inputs (the files below written
#: from Python constants, /etc/passwd and the like, are covered by this, not by a content hash).
BUILDER_VERSION = 4

#: Debian meta-package whose dependency is the kernel image, per kernel flavour.
KERNEL_META = {"generic": "linux-image-amd64", "cloud": "linux-image-cloud-amd64"}
DEFAULT_FLAVOUR = "generic"
#: Debian's OpenBSD netcat (the driver's wait_for_open_port and wait_for_open_unix_socket run
#: `nc -z`, `nc -z -U`, which busybox's nc lacks) and the packages of its shared libraries; which
#: files of theirs go into the initramfs is read from the binary (see elf.py).
NETCAT_PACKAGES = ("netcat-openbsd", "libbsd0", "libmd0", "libc6")
#: Debian's `tc` (network conditions and partitions: `tc qdisc netem`, `tc filter flower`) and
#: the packages of its shared libraries beyond netcat's.
TC_PACKAGES = ("iproute2", "libbpf1", "libelf1", "libmnl0", "libxtables12", "libcap2", "zlib1g")
DYNAMIC_PACKAGES = (*NETCAT_PACKAGES, *TC_PACKAGES)
USERLAND_PACKAGES = ("busybox-static", "bash-static", *DYNAMIC_PACKAGES)
#: Dynamically linked programs: guest path -> path in the unpacked packages. Their loader and
#: library closure are copied in too.
DYNAMIC_PROGRAMS = {"bin/nc": "bin/nc.openbsd", "sbin/tc": "sbin/tc"}
#: busybox applets not linked because a real program replaces them (`busybox nc` still works).
REPLACED_APPLETS = frozenset({"nc", "tc"})
#: Where the libraries go: the first directory of the loader's default search path.
LIBRARY_DIR = "lib/x86_64-linux-gnu"

#: Kernel modules shipped in the initramfs (with their dependencies). /init loads virtio_pci and
#: then the drivers of the virtio devices present; the kernel loads the rest on first use.
MODULES = (
    "virtio_pci",
    "virtio_console",
    "virtio_blk",
    "virtio_net",
    "virtio_rng",
    "9pnet_virtio",
    "9p",
    "virtiofs",
    "overlay",
    "vsock",  # the guest agent's (with the two below)
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
    "qemu_fw_cfg",  # the host list, when it is too long for the kernel command line
    "bochs",  # -vga std's DRM driver: the console on the screen (screenshots, OCR)
    # network conditions (`tc qdisc netem`) and partitions (a clsact qdisc whose ingress
    # `flower` filters drop by source MAC); the kernel loads them on first use
    "sch_netem",
    "sch_ingress",
    "cls_flower",
    "act_gact",
)
#: Modules a flavour's kernel does not have (Debian's cloud kernel has no 9p).
MISSING_MODULES: dict[str, tuple[str, ...]] = {
    "generic": (),
    "cloud": ("9pnet_virtio", "9p", "bochs"),
}

NSSWITCH_CONF = b"passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n"


def flavour_modules(flavour: str) -> list[str]:
    """`MODULES` that the kernel flavour has."""
    return [m for m in MODULES if m not in MISSING_MODULES[flavour]]


def resolve_packages(flavour: str, known: Sequence[Package] = ()) -> list[Package]:
    """The kernel image behind the flavour's meta-package, plus the userland packages
    (`USERLAND_PACKAGES`), in the versions apt would download now (kernel first); see
    `apt.resolve`."""
    return apt.resolve(KERNEL_META[flavour], USERLAND_PACKAGES, known)


def inputs(pkgs: list[Package], flavour: str) -> dict[str, Any]:
    """Everything the build's output depends on (its hash decides whether to build again)."""
    return {
        "builder_version": BUILDER_VERSION,
        "flavour": flavour,
        "debs": [
            {"package": p.name, "version": p.version, "file": p.file, "sha256": p.sha256}
            for p in pkgs
        ],
        "init_sha256": hashlib.sha256(data_file("init.sh")).hexdigest(),
        "backdoor_sha256": hashlib.sha256(data_file("backdoor.sh")).hexdigest(),
        "profile_sha256": hashlib.sha256(data_file("profile.sh")).hexdigest(),
        "agent_sha256": agent_sha256(),
        "agent_script_sha256": hashlib.sha256(data_file("agent.sh")).hexdigest(),
        "modules": flavour_modules(flavour),
        "programs": dict(DYNAMIC_PROGRAMS),
        "source_date_epoch": source_date_epoch(),
    }


# ---------------------------------------------------------------------------------------------
# the initramfs


def _busybox_applets(busybox: Path) -> list[str]:
    res = run([str(busybox), "--list-full"])
    if res.returncode != 0:
        raise BuildError(f"`{busybox} --list-full` failed: {res.stderr.strip()}")
    return [a for a in res.stdout.split() if re.fullmatch(r"(usr/)?s?bin/[\w.\[-]+", a)]


def _install_dynamic(unpacked: Path, root: Path) -> list[str]:
    """Copy each of `DYNAMIC_PROGRAMS` from the unpacked packages into the initramfs tree, with
    its loader and the `DT_NEEDED` closure of its libraries (only those files), into
    `LIBRARY_DIR` under their `DT_NEEDED` names. Returns the library file names."""
    libraries: dict[str, Path] = {}
    loaders: dict[str, str] = {}
    for dest, src in DYNAMIC_PROGRAMS.items():
        program = unpacked / src
        if not program.is_file():
            names = ", ".join(DYNAMIC_PACKAGES)
            raise BuildError(f"{src} is not in the unpacked packages ({names})")
        try:
            closure = library_closure(unpacked, program)
        except ElfError as e:
            raise BuildError(f"{src}: {e}") from e
        write_file(root / dest, program.read_bytes(), 0o755)
        libraries.update(closure.libraries)
        interp_path, interp_file = closure.interpreter
        libraries.setdefault(posixpath.basename(interp_path), interp_file)
        loaders[interp_path.lstrip("/")] = posixpath.basename(interp_path)
    for name, path in sorted(libraries.items()):
        write_file(root / LIBRARY_DIR / name, path.read_bytes(), path.stat().st_mode & 0o755)
    for link, name in sorted(loaders.items()):
        if link != f"{LIBRARY_DIR}/{name}":  # /lib64/ld-linux-x86-64.so.2, as in Debian
            target = root / link
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(os.path.relpath(root / LIBRARY_DIR / name, target.parent))
    return sorted(libraries)


def _assemble(
    work: Path, debs: dict[str, Path], kernel_pkg: str, modules: list[str], log: Log
) -> tuple[str, Path, list[str], list[str]]:
    """Unpack the packages under `work` and lay out the initramfs tree at `work/root`.

    Returns the kernel version, the vmlinuz path and the names of the modules and shared
    libraries included."""
    kx, ux, root = work / "kernel", work / "userland", work / "root"
    for d in (kx, ux, root):
        d.mkdir()
    for name, deb in debs.items():
        res = run(["dpkg-deb", "-x", str(deb), str(kx if name == kernel_pkg else ux)])
        if res.returncode != 0:
            raise BuildError(f"`dpkg-deb -x {deb.name}` failed: {res.stderr.strip()}")
    versions = sorted(p.name for p in (kx / "lib/modules").iterdir())
    if len(versions) != 1:
        raise BuildError(f"expected one kernel version in {kernel_pkg}, found {versions}")
    kv = versions[0]
    vmlinuz = kx / "boot" / f"vmlinuz-{kv}"

    for d in (
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "mnt",
        "var",
        "etc",
    ):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "root").mkdir(mode=0o700)
    (root / "tmp").chmod(0o1777)
    libraries = _install_dynamic(ux, root)
    busybox = ux / "bin/busybox"
    write_file(root / "bin/busybox", busybox.read_bytes(), 0o755)
    for applet in _busybox_applets(busybox):
        link = root / applet
        if posixpath.basename(applet) in REPLACED_APPLETS:
            continue
        if not link.exists() and not link.is_symlink() and applet != "bin/bash":
            link.symlink_to(os.path.relpath(root / "bin/busybox", link.parent))
    write_file(root / "bin/bash", (ux / "bin/bash-static").read_bytes(), 0o755)
    (root / "var/run").symlink_to("../run")

    write_file(root / "init", data_file("init.sh"), 0o755)
    write_file(root / "lib/nixos-test-ng/backdoor", data_file("backdoor.sh"), 0o755)
    write_file(root / "lib/nixos-test-ng/agent.sh", data_file("agent.sh"), 0o755)
    write_file(root / f"lib/nixos-test-ng/{AGENT_FILE}", agent_binary(), 0o755)
    write_file(root / "etc/profile", data_file("profile.sh"), 0o644)
    write_file(root / "etc/passwd", b"root:x:0:0:root:/root:/bin/bash\n", 0o644)
    # empty root password, as in NixOS tests
    write_file(root / "etc/shadow", b"root::1::::::\n", 0o600)
    write_file(root / "etc/group", b"root:x:0:\ntty:x:5:\n", 0o644)
    # glibc (netcat's) asks DNS before /etc/hosts when this file is missing
    write_file(root / "etc/nsswitch.conf", NSSWITCH_CONF, 0o644)

    try:
        installed = install_modules(kx / "lib/modules" / kv, modules, root, kv)
    except ModuleError as e:
        raise BuildError(f"{kernel_pkg}: {e}") from e
    log(f"initramfs tree: kernel {kv}, {len(installed)} modules, {len(libraries)} shared libraries")
    return kv, vmlinuz, sorted(installed), libraries


def _initramfs(root: Path, mtime: int) -> bytes:
    entries = cpio.entries_from_tree(root)
    entries.append(cpio.Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    return cpio.write_gzip_newc(entries, mtime)


# ---------------------------------------------------------------------------------------------
# build


@dataclass(frozen=True)
class BuildResult:
    """What `build()` did: `built` is False when the cached artifacts were kept."""

    guest_dir: Path
    built: bool
    manifest: dict[str, Any]

    @property
    def kernel(self) -> Path:
        return self.guest_dir / str(self.manifest["kernel_file"])

    @property
    def initrd(self) -> Path:
        return self.guest_dir / INITRD_FILE


def build(
    out: Path | str | None = None,
    *,
    flavour: str = DEFAULT_FLAVOUR,
    force: bool = False,
    log: Log = stderr_log,
) -> BuildResult:
    """Build the guest into `out` (default: `default_guest_dir()`), unless the manifest shows the
    same inputs were already built. Raises `BuildError`."""
    if flavour not in KERNEL_META:
        raise BuildError(
            f"unknown kernel flavour `{flavour}` (expected one of {', '.join(KERNEL_META)})"
        )
    guest_dir = Path(out).absolute() if out is not None else default_guest_dir()
    with locked(guest_dir):
        return _build_locked(guest_dir, flavour, force, log)


def _build_locked(guest_dir: Path, flavour: str, force: bool, log: Log) -> BuildResult:
    start = time.monotonic()
    previous = load_manifest(guest_dir)
    usable_cache = previous is not None and guest_intact(guest_dir, previous)

    def fallback(err: AptError) -> BuildResult:
        if not usable_cache or previous is None:
            raise err
        log(f"warning: {err}")
        log(f"warning: apt is unusable; using the cached guest in {guest_dir}")
        return BuildResult(guest_dir, False, previous)

    try:
        pkgs = resolve_packages(flavour, apt.known_packages(previous))
    except AptError as err:
        return fallback(err)
    build_inputs = inputs(pkgs, flavour)
    digest = hash_inputs(build_inputs)
    if not force and usable_cache and previous is not None and previous.get("input_hash") == digest:
        log(f"cached: inputs unchanged (hash {digest[:16]}), nothing to do in {guest_dir}")
        return BuildResult(guest_dir, False, previous)

    # leftovers of a killed build (we hold the lock, so nobody else is using them)
    for stale in [*guest_dir.glob(".work-*"), *(guest_dir / DEBS_DIR).glob(".download-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    debs_dir = guest_dir / DEBS_DIR
    try:
        debs = apt.fetch(pkgs, debs_dir, log)
    except AptError as err:
        return fallback(err)

    with tempfile.TemporaryDirectory(dir=guest_dir, prefix=".work-") as tmp:
        kv, vmlinuz, included, libraries = _assemble(
            Path(tmp), debs, pkgs[0].name, build_inputs["modules"], log
        )
        initrd = _initramfs(Path(tmp) / "root", build_inputs["source_date_epoch"])
        kernel_file, kernel_bytes = kernel_for_qemu(vmlinuz.read_bytes())
    for stale in ("vmlinux", "vmlinuz"):
        if stale != kernel_file:
            (guest_dir / stale).unlink(missing_ok=True)
    atomic_write(guest_dir / kernel_file, kernel_bytes)
    atomic_write(guest_dir / INITRD_FILE, initrd)
    artifacts = record_artifacts(guest_dir, (kernel_file, INITRD_FILE))
    kvm = kvm_result(guest_dir / kernel_file, artifacts[kernel_file]["sha256"], previous, log)
    manifest = {
        "format": MANIFEST_FORMAT,
        "input_hash": digest,
        "inputs": build_inputs,
        "kernel_version": kv,
        "kernel_file": kernel_file,
        "kernel_boot": "pvh" if kernel_file == "vmlinux" else "bzimage",
        "modules_included": included,
        "libraries_included": libraries,
        "artifacts": artifacts,
        "kvm": kvm,
        "build_seconds": round(time.monotonic() - start, 2),
    }
    write_json(guest_dir / MANIFEST_FILE, manifest)
    keep = {p.file for p in pkgs}
    for stale in debs_dir.glob("*.deb"):
        if stale.name not in keep:
            stale.unlink()
    log(
        f"built in {manifest['build_seconds']:.1f}s: {guest_dir} "
        f"(kernel {kv}, initrd {len(initrd) / 1e6:.1f} MB, hash {digest[:16]})"
    )
    return BuildResult(guest_dir, True, manifest)


def ensure_built(out: Path | str | None = None, systemd: bool = False) -> Path:
    """Build the guest if needed and return its directory (see `build()`); with `systemd`, the
    systemd guest too (in `<dir>-systemd`, see `systemd_guest.build_systemd()`)."""
    if systemd:
        from .systemd_guest import build_systemd

        return build_systemd(out).guest_dir
    return build(out).guest_dir
