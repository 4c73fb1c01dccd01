"""Build the default test guest (a Debian kernel and a busybox initramfs) from Debian packages.

The packages are downloaded with `apt-get download` and unpacked with `dpkg-deb -x`; nothing is
installed on the host. Artifacts land in one directory with a manifest that records a hash of
every input, so an unchanged second build does no work.

Guest directory layout (see docs/guests.md):

    vmlinux          the kernel: the uncompressed ELF, booted through PVH (see kernel.py);
                     `vmlinuz` (the bzImage) instead when the payload cannot be PVH-booted
    initrd.img       gzip-compressed newc initramfs (busybox, bash, OpenBSD netcat and its shared
                     libraries, modules, /init, backdoor)
    manifest.json    inputs, their hash, artifact hashes, kernel version, KVM probe result
    debs/            the downloaded .deb files (the download cache)
    .lock            serialises concurrent builds
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import posixpath
import re
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from . import cpio
from .elf import ElfError, library_closure
from .kernel import kernel_for_qemu
from .modules import ModuleError, read_module, resolve_modules

__all__ = [
    "BuildError",
    "BuildResult",
    "GuestError",
    "build",
    "default_guest_dir",
    "ensure_built",
    "kvm_status",
    "load_manifest",
    "probe_kvm",
]

#: Bumped whenever the builder's output changes for the same inputs.
BUILDER_VERSION = 3
MANIFEST_FORMAT = 1

INITRD_FILE = "initrd.img"
MANIFEST_FILE = "manifest.json"
DEBS_DIR = "debs"

#: Debian meta-package whose dependency is the kernel image, per kernel flavour.
KERNEL_META = {"generic": "linux-image-amd64", "cloud": "linux-image-cloud-amd64"}
DEFAULT_FLAVOUR = "generic"
#: Debian's OpenBSD netcat (the driver's wait_for_open_port and wait_for_open_unix_socket run
#: `nc -z`, `nc -z -U`, which busybox's nc lacks) and the packages of its shared libraries; which
#: files of theirs go into the initramfs is read from the binary (see elf.py).
NETCAT_PACKAGES = ("netcat-openbsd", "libbsd0", "libmd0", "libc6")
USERLAND_PACKAGES = ("busybox-static", "bash-static", *NETCAT_PACKAGES)
#: Dynamically linked programs: guest path -> path in the unpacked packages. Their loader and
#: library closure are copied in too.
DYNAMIC_PROGRAMS = {"bin/nc": "bin/nc.openbsd"}
#: busybox applets not linked because a real program replaces them (`busybox nc` still works).
REPLACED_APPLETS = frozenset({"nc"})
#: Where the libraries go: the first directory of the loader's default search path.
LIBRARY_DIR = "lib/x86_64-linux-gnu"
ARCH = "amd64"

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
    "vmw_vsock_virtio_transport",
    "qemu_fw_cfg",  # the host list, when it is too long for the kernel command line
    "bochs",  # -vga std's DRM driver: the console on the screen (screenshots, OCR)
)
#: Modules a flavour's kernel does not have (Debian's cloud kernel has no 9p).
MISSING_MODULES: dict[str, tuple[str, ...]] = {
    "generic": (),
    "cloud": ("9pnet_virtio", "9p", "bochs"),
}

NSSWITCH_CONF = b"passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n"

DEFAULT_SOURCE_DATE_EPOCH = 1700000000
KVM_PROBE_SECONDS = 8.0

Log = Callable[[str], None]


class GuestError(Exception):
    """Base class of every error raised by `nixos_test_ng.guest`."""


class BuildError(GuestError):
    """The guest could not be built (a missing host tool, apt, a package, a module)."""


class _AptError(BuildError):
    """apt could not resolve or download a package."""


def _stderr_log(msg: str) -> None:
    print(f"guest: {msg}", file=sys.stderr, flush=True)


def default_guest_dir() -> Path:
    """`$NIXOS_TEST_NG_GUEST_DIR`, else `$XDG_CACHE_HOME/nixos-test-ng/guest`, else
    `~/.cache/nixos-test-ng/guest`."""
    explicit = os.environ.get("NIXOS_TEST_NG_GUEST_DIR")
    if explicit:
        return Path(explicit).absolute()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache).absolute() / "nixos-test-ng" / "guest"


# ---------------------------------------------------------------------------------------------
# apt


@dataclass(frozen=True)
class Package:
    """One .deb as the archive offers it."""

    name: str
    version: str
    arch: str
    sha256: str
    size: int

    @property
    def file(self) -> str:
        """The file name `apt-get download` gives the package."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"


def _run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, **kw)
    except FileNotFoundError as e:
        raise BuildError(
            f"`{cmd[0]}` not found\n(run scripts/setup-system.sh or install it)"
        ) from e


def _stanzas(text: str) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            out.append(fields)
    return out


def _apt_show(names: list[str]) -> dict[str, dict[str, str]]:
    cmd = ["apt-cache", "show", "--no-all-versions", *(f"{n}:{ARCH}" for n in names)]
    res = _run(cmd)
    stanzas = {s.get("Package", ""): s for s in _stanzas(res.stdout)}
    missing = [n for n in names if n not in stanzas]
    if res.returncode != 0 or missing:
        detail = res.stderr.strip().splitlines()[-1:] or ["no output"]
        raise _AptError(
            f"apt-cache knows no candidate for `{'`, `'.join(missing or names)}`: {detail[0]}\n"
            "(run `apt-get update` first, or check /etc/apt/sources.list)"
        )
    return stanzas


def _kernel_dependency(meta: str, depends: str) -> tuple[str, str]:
    """(name, version) of the kernel image a meta-package's `Depends` field names."""
    for dep in depends.split(","):
        m = re.match(r"\s*(linux-image-\S+)\s*(?:\(\s*=\s*([^)\s]+)\s*\))?", dep.split("|")[0])
        if m and m.group(1) != meta:
            return m.group(1), m.group(2) or ""
    raise _AptError(f"cannot find the kernel image in `{meta}`'s Depends: `{depends}`")


def _package(stanza: dict[str, str]) -> Package:
    return Package(
        stanza["Package"],
        stanza["Version"],
        stanza.get("Architecture", ARCH),
        stanza["SHA256"],
        int(stanza.get("Size", "0")),
    )


def resolve_packages(flavour: str, known: Sequence[Package] = ()) -> list[Package]:
    """The kernel image behind the flavour's meta-package, plus the userland packages
    (`USERLAND_PACKAGES`), in the versions apt would download now (kernel first).

    apt-cache is slow here (about 0.4 s a call, no binary cache), so when the meta-package pins
    the same kernel name and version as one in `known`, that one is reused (a Debian package
    version's content never changes) and only one apt-cache call is made."""
    meta = KERNEL_META[flavour]
    shown = _apt_show([meta, *USERLAND_PACKAGES])
    name, version = _kernel_dependency(meta, shown[meta].get("Depends", ""))
    kernel = next((p for p in known if p.name == name and version and p.version == version), None)
    if kernel is None:
        kernel = _package(_apt_show([name])[name])
    return [kernel, *(_package(shown[n]) for n in USERLAND_PACKAGES)]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch(pkgs: list[Package], debs: Path, log: Log) -> dict[str, Path]:
    """Make sure each package's .deb is in `debs` (downloading only what is missing)."""
    debs.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for p in pkgs:
        dest = debs / p.file
        if dest.exists() and _sha256(dest) == p.sha256:
            out[p.name] = dest
            continue
        size = f"{p.size / 1e6:.1f} MB" if p.size >= 100_000 else f"{p.size / 1e3:.0f} kB"
        log(f"downloading {p.name} {p.version} ({size})")
        with tempfile.TemporaryDirectory(dir=debs, prefix=".download-") as tmp:
            cmd = ["apt-get", "download", "-q"]
            if os.geteuid() == 0:  # the cache dir is not readable by apt's sandbox user
                cmd += ["-o", "APT::Sandbox::User=root"]
            res = _run([*cmd, f"{p.name}:{p.arch}={p.version}"], cwd=tmp)
            got = sorted(Path(tmp).glob("*.deb"))
            if res.returncode != 0 or len(got) != 1:
                detail = (res.stderr.strip().splitlines() or ["no .deb downloaded"])[-1]
                raise _AptError(f"`apt-get download {p.name}={p.version}` failed: {detail}")
            digest = _sha256(got[0])
            if digest != p.sha256:
                raise _AptError(
                    f"{got[0].name}: sha256 {digest} does not match the archive's {p.sha256}"
                )
            os.replace(got[0], dest)
        out[p.name] = dest
    return out


# ---------------------------------------------------------------------------------------------
# inputs and manifest


def _data_file(name: str) -> bytes:
    return resources.files(__package__).joinpath(name).read_bytes()


def _source_date_epoch() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if not value:
        return DEFAULT_SOURCE_DATE_EPOCH
    try:
        return int(value)
    except ValueError as e:
        raise BuildError(f"SOURCE_DATE_EPOCH is not an integer: `{value}`") from e


def _inputs(pkgs: list[Package], flavour: str) -> dict[str, Any]:
    return {
        "builder_version": BUILDER_VERSION,
        "flavour": flavour,
        "debs": [
            {"package": p.name, "version": p.version, "file": p.file, "sha256": p.sha256}
            for p in pkgs
        ],
        "init_sha256": hashlib.sha256(_data_file("init.sh")).hexdigest(),
        "backdoor_sha256": hashlib.sha256(_data_file("backdoor.sh")).hexdigest(),
        "profile_sha256": hashlib.sha256(_data_file("profile.sh")).hexdigest(),
        "modules": _modules(flavour),
        "programs": dict(DYNAMIC_PROGRAMS),
        "source_date_epoch": _source_date_epoch(),
    }


def _modules(flavour: str) -> list[str]:
    return [m for m in MODULES if m not in MISSING_MODULES[flavour]]


def _hash_inputs(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(
        json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def load_manifest(guest_dir: Path) -> dict[str, Any] | None:
    """The guest directory's manifest, or None if there is none (or it is unreadable)."""
    try:
        data = json.loads((Path(guest_dir) / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT else None


def _artifacts_intact(guest_dir: Path, manifest: dict[str, Any]) -> bool:
    arts = manifest.get("artifacts", {})
    if (
        not isinstance(arts, dict)
        or manifest.get("kernel_file") not in arts
        or INITRD_FILE not in arts
    ):
        return False
    for name, want in arts.items():
        try:
            st = (guest_dir / name).stat()
        except OSError:
            return False
        if st.st_size != want.get("size"):
            return False
        # like make: an untouched file (same size and mtime) is trusted without re-hashing
        if st.st_mtime_ns != want.get("mtime_ns") and _sha256(guest_dir / name) != want.get(
            "sha256"
        ):
            return False
    return True


@contextmanager
def _locked(guest_dir: Path) -> Iterator[None]:
    guest_dir.mkdir(parents=True, exist_ok=True)
    with open(guest_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------
# the initramfs


def _busybox_applets(busybox: Path) -> list[str]:
    res = _run([str(busybox), "--list-full"])
    if res.returncode != 0:
        raise BuildError(f"`{busybox} --list-full` failed: {res.stderr.strip()}")
    return [a for a in res.stdout.split() if re.fullmatch(r"(usr/)?s?bin/[\w.\[-]+", a)]


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def _install_dynamic(unpacked: Path, root: Path) -> list[str]:
    """Copy each of `DYNAMIC_PROGRAMS` from the unpacked packages into the initramfs tree, with
    its loader and the `DT_NEEDED` closure of its libraries (only those files), into
    `LIBRARY_DIR` under their `DT_NEEDED` names. Returns the library file names."""
    libraries: dict[str, Path] = {}
    loaders: dict[str, str] = {}
    for dest, src in DYNAMIC_PROGRAMS.items():
        program = unpacked / src
        if not program.is_file():
            names = ", ".join(NETCAT_PACKAGES)
            raise BuildError(f"{src} is not in the unpacked packages ({names})")
        try:
            closure = library_closure(unpacked, program)
        except ElfError as e:
            raise BuildError(f"{src}: {e}") from e
        _write(root / dest, program.read_bytes(), 0o755)
        libraries.update(closure.libraries)
        interp_path, interp_file = closure.interpreter
        libraries.setdefault(posixpath.basename(interp_path), interp_file)
        loaders[interp_path.lstrip("/")] = posixpath.basename(interp_path)
    for name, path in sorted(libraries.items()):
        _write(root / LIBRARY_DIR / name, path.read_bytes(), path.stat().st_mode & 0o755)
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
        res = _run(["dpkg-deb", "-x", str(deb), str(kx if name == kernel_pkg else ux)])
        if res.returncode != 0:
            raise BuildError(f"`dpkg-deb -x {deb.name}` failed: {res.stderr.strip()}")
    versions = sorted(p.name for p in (kx / "lib/modules").iterdir())
    if len(versions) != 1:
        raise BuildError(f"expected one kernel version in {kernel_pkg}, found {versions}")
    kv = versions[0]
    vmlinuz = kx / "boot" / f"vmlinuz-{kv}"
    kmods = kx / "lib/modules" / kv

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
    _write(root / "bin/busybox", busybox.read_bytes(), 0o755)
    for applet in _busybox_applets(busybox):
        link = root / applet
        if posixpath.basename(applet) in REPLACED_APPLETS:
            continue
        if not link.exists() and not link.is_symlink() and applet != "bin/bash":
            link.symlink_to(os.path.relpath(root / "bin/busybox", link.parent))
    _write(root / "bin/bash", (ux / "bin/bash-static").read_bytes(), 0o755)
    (root / "var/run").symlink_to("../run")

    _write(root / "init", _data_file("init.sh"), 0o755)
    _write(root / "lib/nixos-test-ng/backdoor", _data_file("backdoor.sh"), 0o755)
    _write(root / "etc/profile", _data_file("profile.sh"), 0o644)
    _write(root / "etc/passwd", b"root:x:0:0:root:/root:/bin/bash\n", 0o644)
    _write(root / "etc/shadow", b"root::1::::::\n", 0o600)  # empty root password, as in NixOS tests
    _write(root / "etc/group", b"root:x:0:\ntty:x:5:\n", 0o644)
    # glibc (netcat's) asks DNS before /etc/hosts when this file is missing
    _write(root / "etc/nsswitch.conf", NSSWITCH_CONF, 0o644)

    try:
        chosen = resolve_modules(kmods, modules)
    except ModuleError as e:
        raise BuildError(f"{kernel_pkg}: {e}") from e
    dest_mods = root / "lib/modules" / kv
    for path in chosen.values():
        rel = path.relative_to(kmods).as_posix()
        rel = re.sub(r"\.ko\.(xz|zst)$", ".ko", rel)
        _write(dest_mods / rel, read_module(path), 0o644)
    for meta in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        if (kmods / meta).exists():
            shutil.copyfile(kmods / meta, dest_mods / meta)
    res = _run(["depmod", "-b", str(root), kv])
    if res.returncode != 0:
        raise BuildError(f"`depmod` failed: {res.stderr.strip()}")
    log(f"initramfs tree: kernel {kv}, {len(chosen)} modules, {len(libraries)} shared libraries")
    return kv, vmlinuz, sorted(chosen), libraries


def _initramfs(root: Path, mtime: int) -> bytes:
    entries = cpio.entries_from_tree(root)
    entries.append(cpio.Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    return gzip.compress(cpio.write_newc(entries, mtime), compresslevel=6, mtime=0)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# KVM probe


def _qemu_version() -> str:
    try:
        res = subprocess.run(
            ["qemu-system-x86_64", "--version"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return res.stdout.splitlines()[0] if res.stdout else "unknown"


def probe_kvm(kernel: Path, timeout: float = KVM_PROBE_SECONDS) -> dict[str, Any]:
    """Boot `kernel` (no initrd) under `-accel kvm` for at most `timeout` seconds and report
    whether it reached the serial port (`Linux version` printed). Returns
    `{"usable": bool, "detail": str}`."""
    if not os.path.exists("/dev/kvm"):
        return {"usable": False, "detail": "/dev/kvm does not exist"}
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return {"usable": False, "detail": "/dev/kvm is not readable and writable"}
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        return {"usable": False, "detail": "qemu-system-x86_64 not found"}
    cmd = [qemu, "-accel", "kvm", "-cpu", "max", "-m", "128", "-nodefaults", "-display", "none"]
    cmd += [
        "-no-reboot",
        "-serial",
        "stdio",
        "-kernel",
        str(kernel),
        "-append",
        "console=ttyS0 panic=-1",
    ]
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    seen = b""
    try:
        while (left := start + timeout - time.monotonic()) > 0:
            ready, _, _ = select.select([proc.stdout], [], [], left)
            if not ready:
                break
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
            if b"Linux version" in seen:
                return {
                    "usable": True,
                    "detail": f"kernel printed to ttyS0 after {time.monotonic() - start:.1f}s",
                }
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _, err = proc.communicate()
    if proc.returncode not in (None, -signal.SIGKILL) and err.strip():
        return {
            "usable": False,
            "detail": f"qemu failed: {err.decode(errors='replace').strip().splitlines()[-1]}",
        }
    return {"usable": False, "detail": f"nothing reached the serial port within {timeout:.0f}s"}


def _kvm_result(
    kernel: Path, kernel_sha256: str, previous: dict[str, Any] | None, log: Log
) -> dict[str, Any]:
    """The probe result, reused from the previous manifest when the kernel and QEMU are the same."""
    key = {
        "kernel_sha256": kernel_sha256,
        "qemu": _qemu_version(),
        "dev_kvm": os.path.exists("/dev/kvm"),
    }
    old = (previous or {}).get("kvm")
    if isinstance(old, dict) and old.get("key") == key:
        return old
    log(f"probing KVM (at most {KVM_PROBE_SECONDS:.0f} s)")
    result = probe_kvm(kernel)
    log(f"KVM usable: {'yes' if result['usable'] else 'no'} ({result['detail']})")
    return {**result, "key": key}


def kvm_status(guest_dir: Path, log: Log = _stderr_log) -> dict[str, Any] | None:
    """The guest build's KVM probe result for the built guest in `guest_dir`, probed again only
    when the kernel, QEMU or /dev/kvm changed since the build; None when no guest is built."""
    manifest = load_manifest(guest_dir)
    if manifest is None or not _artifacts_intact(guest_dir, manifest):
        return None
    kernel_file = str(manifest["kernel_file"])
    sha256 = manifest["artifacts"][kernel_file]["sha256"]
    return _kvm_result(guest_dir / kernel_file, sha256, manifest, log)


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
    log: Log = _stderr_log,
) -> BuildResult:
    """Build the guest into `out` (default: `default_guest_dir()`), unless the manifest shows the
    same inputs were already built. Raises `BuildError`."""
    if flavour not in KERNEL_META:
        raise BuildError(
            f"unknown kernel flavour `{flavour}` (expected one of {', '.join(KERNEL_META)})"
        )
    guest_dir = Path(out).absolute() if out is not None else default_guest_dir()
    with _locked(guest_dir):
        return _build_locked(guest_dir, flavour, force, log)


def _known_packages(manifest: dict[str, Any] | None) -> list[Package]:
    try:
        debs = (manifest or {})["inputs"]["debs"]
        return [Package(d["package"], d["version"], ARCH, d["sha256"], 0) for d in debs]
    except (KeyError, TypeError):
        return []


def _build_locked(guest_dir: Path, flavour: str, force: bool, log: Log) -> BuildResult:
    start = time.monotonic()
    previous = load_manifest(guest_dir)
    usable_cache = previous is not None and _artifacts_intact(guest_dir, previous)

    def fallback(err: _AptError) -> BuildResult:
        if not usable_cache or previous is None:
            raise err
        log(f"warning: {err}")
        log(f"warning: apt is unusable; using the cached guest in {guest_dir}")
        return BuildResult(guest_dir, False, previous)

    try:
        pkgs = resolve_packages(flavour, _known_packages(previous))
    except _AptError as err:
        return fallback(err)
    inputs = _inputs(pkgs, flavour)
    digest = _hash_inputs(inputs)
    if not force and usable_cache and previous is not None and previous.get("input_hash") == digest:
        log(f"cached: inputs unchanged (hash {digest[:16]}), nothing to do in {guest_dir}")
        return BuildResult(guest_dir, False, previous)

    # leftovers of a killed build (we hold the lock, so nobody else is using them)
    for stale in [*guest_dir.glob(".work-*"), *(guest_dir / DEBS_DIR).glob(".download-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    debs_dir = guest_dir / DEBS_DIR
    try:
        debs = _fetch(pkgs, debs_dir, log)
    except _AptError as err:
        return fallback(err)

    with tempfile.TemporaryDirectory(dir=guest_dir, prefix=".work-") as tmp:
        kv, vmlinuz, included, libraries = _assemble(
            Path(tmp), debs, pkgs[0].name, inputs["modules"], log
        )
        initrd = _initramfs(Path(tmp) / "root", inputs["source_date_epoch"])
        kernel_file, kernel_bytes = kernel_for_qemu(vmlinuz.read_bytes())
    for stale in ("vmlinux", "vmlinuz"):
        if stale != kernel_file:
            (guest_dir / stale).unlink(missing_ok=True)
    _atomic_write(guest_dir / kernel_file, kernel_bytes)
    _atomic_write(guest_dir / INITRD_FILE, initrd)
    artifacts = {
        name: {
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "mtime_ns": (guest_dir / name).stat().st_mtime_ns,
        }
        for name, data in ((kernel_file, kernel_bytes), (INITRD_FILE, initrd))
    }
    kvm = _kvm_result(guest_dir / kernel_file, artifacts[kernel_file]["sha256"], previous, log)
    manifest = {
        "format": MANIFEST_FORMAT,
        "input_hash": digest,
        "inputs": inputs,
        "kernel_version": kv,
        "kernel_file": kernel_file,
        "kernel_boot": "pvh" if kernel_file == "vmlinux" else "bzimage",
        "modules_included": included,
        "libraries_included": libraries,
        "artifacts": artifacts,
        "kvm": kvm,
        "build_seconds": round(time.monotonic() - start, 2),
    }
    _atomic_write(
        guest_dir / MANIFEST_FILE, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    )
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
