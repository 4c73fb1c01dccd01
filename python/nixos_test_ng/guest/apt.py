"""Debian packages through the host's apt: which version of a package the archive offers now
(`apt-cache show`), and its .deb in a download cache (`apt-get download`, checked against the
archive's sha256). Nothing is installed on the host."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cache import sha256_file
from .common import BuildError, Log, run

__all__ = ["ARCH", "AptError", "Package", "fetch", "known_packages", "resolve"]

ARCH = "amd64"


class AptError(BuildError):
    """apt could not resolve or download a package."""


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


#: What apt-cache's answers depend on: its package lists and its configuration.
APT_STATE = (Path("/var/lib/apt/lists"), Path("/etc/apt"))


def _apt_state(names: list[str]) -> str:
    """A digest of `names`, of the `apt-cache` program found on PATH, and of every file under
    `APT_STATE` by path, size and mtime: while it stays the same, apt-cache gives the same
    answer."""
    h = hashlib.sha256("\0".join(names).encode())
    program = shutil.which("apt-cache")
    if program is not None:
        st = os.stat(program)
        h.update(f"\n{program}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    for root in APT_STATE:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for f in sorted(filenames):
                path = os.path.join(dirpath, f)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                h.update(f"\n{path}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _answers_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "nixos-test-ng" / "apt-cache-show"


def _apt_cache_show(names: list[str]) -> tuple[int, str, str]:
    """`apt-cache show` of `names`: (status, stdout, stderr). Its answer is kept (it costs
    about 0.6 s a call here, on every run's check that the guest is up to date) and reused
    while apt's lists and configuration are unchanged."""
    kept = _answers_dir() / _apt_state(names)
    try:
        return 0, kept.read_text(), ""
    except OSError:
        pass
    cmd = ["apt-cache", "show", "--no-all-versions", *(f"{n}:{ARCH}" for n in names)]
    res = run(cmd)
    if res.returncode == 0:
        try:
            kept.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=kept.parent, delete=False) as f:
                f.write(res.stdout)
            os.replace(f.name, kept)
        except OSError:
            pass  # not kept: the next run asks apt-cache again
    return res.returncode, res.stdout, res.stderr


def _show(names: list[str]) -> dict[str, dict[str, str]]:
    returncode, stdout, stderr = _apt_cache_show(names)
    stanzas = {s.get("Package", ""): s for s in _stanzas(stdout)}
    missing = [n for n in names if n not in stanzas]
    if returncode != 0 or missing:
        detail = stderr.strip().splitlines()[-1:] or ["no output"]
        raise AptError(
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
    raise AptError(f"cannot find the kernel image in `{meta}`'s Depends: `{depends}`")


def _package(stanza: dict[str, str]) -> Package:
    return Package(
        stanza["Package"],
        stanza["Version"],
        stanza.get("Architecture", ARCH),
        stanza["SHA256"],
        int(stanza.get("Size", "0")),
    )


def resolve(kernel_meta: str, names: Sequence[str], known: Sequence[Package] = ()) -> list[Package]:
    """The kernel image behind the meta-package `kernel_meta`, plus the packages `names`, in the
    versions apt would download now (kernel first).

    apt-cache is slow here (about 0.4 s a call, no binary cache; its answers are kept, see
    `_apt_cache_show`), so when the meta-package pins
    the same kernel name and version as one in `known`, that one is reused (a Debian package
    version's content never changes) and only one apt-cache call is made."""
    shown = _show([kernel_meta, *names])
    name, version = _kernel_dependency(kernel_meta, shown[kernel_meta].get("Depends", ""))
    kernel = next((p for p in known if p.name == name and version and p.version == version), None)
    if kernel is None:
        kernel = _package(_show([name])[name])
    return [kernel, *(_package(shown[n]) for n in names)]


def known_packages(manifest: dict[str, Any] | None) -> list[Package]:
    """The packages a guest manifest's inputs list (for `resolve`'s `known`)."""
    try:
        debs = (manifest or {})["inputs"]["debs"]
        return [Package(d["package"], d["version"], ARCH, d["sha256"], 0) for d in debs]
    except (KeyError, TypeError):
        return []


def fetch(pkgs: list[Package], debs: Path, log: Log) -> dict[str, Path]:
    """Make sure each package's .deb is in `debs` (downloading only what is missing)."""
    debs.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for p in pkgs:
        dest = debs / p.file
        if dest.exists() and sha256_file(dest) == p.sha256:
            out[p.name] = dest
            continue
        size = f"{p.size / 1e6:.1f} MB" if p.size >= 100_000 else f"{p.size / 1e3:.0f} kB"
        log(f"downloading {p.name} {p.version} ({size})")
        with tempfile.TemporaryDirectory(dir=debs, prefix=".download-") as tmp:
            cmd = ["apt-get", "download", "-q"]
            if os.geteuid() == 0:  # the cache dir is not readable by apt's sandbox user
                cmd += ["-o", "APT::Sandbox::User=root"]
            res = run([*cmd, f"{p.name}:{p.arch}={p.version}"], cwd=tmp)
            got = sorted(Path(tmp).glob("*.deb"))
            if res.returncode != 0 or len(got) != 1:
                detail = (res.stderr.strip().splitlines() or ["no .deb downloaded"])[-1]
                raise AptError(f"`apt-get download {p.name}={p.version}` failed: {detail}")
            digest = sha256_file(got[0])
            if digest != p.sha256:
                raise AptError(
                    f"{got[0].name}: sha256 {digest} does not match the archive's {p.sha256}"
                )
            os.replace(got[0], dest)
        out[p.name] = dest
    return out
