"""scripts/setup-system.sh against stand-in `dpkg-query`, `apt-cache` and `apt-get`: the setup
installs in one transaction that never removes a package, keeps one QEMU version when the
machine ships a newer qemu-utils than its sources offer, and verifies every command after.

The stand-ins keep a package state in a JSON file; installing a package puts stand-ins of its
commands (from the shared table) on PATH, so the script's own verification sees the result.
Commands from crates.io (`cargo:CRATE@VERSION` in the table) come from a stand-in `cargo`, whose
stand-in programs print `COMMAND VERSION` for `--version`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SETUP = REPO / "scripts" / "setup-system.sh"
TABLE = REPO / "python" / "nixos_test_ng" / "data" / "host_commands.tsv"

OLD_QEMU = "1:7.2+dfsg-7+deb12u18"
NEW_QEMU = "1:10.0.2+ds-2+deb13u1~bpo12+1"

# What the script itself runs besides the stand-ins.
TOOLS = (
    "bash",
    "sed",
    "grep",
    "dirname",
    "id",
    "cat",
    "env",
    "head",
    "mktemp",
    "mkdir",
    "cp",
    "rm",
)
# ... and for a patched crate (`CRATE@V+ntng.N`): git (git apply)
PATCH_TOOLS = ("git",)

FAKE_CARGO = textwrap.dedent(
    """\
    #!{python}
    # Stand-in for cargo; calls logged beside the apt state.
    # - `install --locked --force CRATE --version V --root R`: puts a program printing
    #   `CRATE V` into the fake bin directory;
    # - `fetch` in a package that depends on `CRATE = "=V"`: unpacks into $CARGO_HOME's
    #   registry a stand-in source of CRATE made of what the patch of CRATE-V+... expects to
    #   find (its hunks' old side);
    # - `install --locked --force --path DIR --root R`: the program, at DIR's version.
    import glob, json, os, re, sys
    state_file = os.environ["FAKE_APT_STATE"]
    state = json.load(open(state_file))
    args = sys.argv[1:]
    with open(state_file + ".calls", "a") as log:
        log.write(json.dumps(["cargo"] + args) + "\\n")
    if state.get("fail_cargo"):
        print("error: failed to compile", file=sys.stderr)
        sys.exit(101)

    def dependency():
        text = open("Cargo.toml").read()
        return re.search(r'\\[dependencies\\]\\n(\\S+) = "=([^"]+)"', text).groups()

    def put(crate, version):
        path = os.path.join(state["bin"], crate)
        with open(path, "w") as f:
            f.write(f"#!/bin/sh\\necho '{{crate}} {{version}}'\\n")
        os.chmod(path, 0o755)

    if args[0] == "fetch":
        crate, version = dependency()
        (patch,) = glob.glob(os.path.join(state["patches"], f"{{crate}}-{{version}}+*.patch"))
        source = os.path.join(
            os.environ["CARGO_HOME"], "registry", "src", "index-x", f"{{crate}}-{{version}}"
        )
        old, name = {{}}, None
        for line in open(patch).read().splitlines():
            if line.startswith("--- a/"):
                name = line[len("--- a/"):]
                old[name] = []
            elif name and line[:1] in (" ", "-") and not line.startswith("---"):
                old[name].append(line[1:])
        for name, lines in old.items():
            path = os.path.join(source, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write("\\n".join(lines) + "\\n")
    elif "--path" in args:
        text = open(os.path.join(args[args.index("--path") + 1], "Cargo.toml")).read()
        crate = re.search(r'name = "([^"]+)"', text).group(1)
        put(crate, re.search(r'version = "([^"]+)"', text).group(1))
    else:
        crate = [a for a in args[1:] if not a.startswith("-")][0]
        put(crate, args[args.index("--version") + 1])
    """
)

FAKE_APT = textwrap.dedent(
    """\
    #!{python}
    # Stand-in for dpkg-query, apt-cache and apt-get (by argv[0]); state in $FAKE_APT_STATE.
    import json, os, sys
    state_file = os.environ["FAKE_APT_STATE"]
    state = json.load(open(state_file))
    tool = os.path.basename(sys.argv[0])
    args = sys.argv[1:]
    with open(state_file + ".calls", "a") as log:
        log.write(json.dumps([tool] + args) + "\\n")

    def save():
        json.dump(state, open(state_file, "w"))

    def install(pkg, version):
        if pkg.startswith("cargo:"):
            print(f"E: Unable to locate package {{pkg}}", file=sys.stderr)
            sys.exit(100)
        state["installed"][pkg] = version
        for command in state["commands"].get(pkg, []):
            path = os.path.join(state["bin"], command)
            with open(path, "w") as f:
                f.write("#!/bin/sh\\nexit 0\\n")
            os.chmod(path, 0o755)

    if tool == "dpkg-query":
        version = state["installed"].get(args[-1])
        if version is None:
            sys.exit(1)
        print(f"install ok installed {{version}}", end="")
    elif tool == "apt-cache":
        print(f"{{args[-1]}}:\\n  Installed: (none)\\n  Candidate: {{state['candidate']}}")
    elif tool == "apt-get":
        if "update" in args:
            sys.exit(0)
        wanted = [a for a in args[args.index("install") + 1:] if not a.startswith("-")]
        pins = dict(w.split("=", 1) for w in wanted if "=" in w)
        names = [w.split("=", 1)[0] for w in wanted]
        if state.get("fail_install"):
            print("E: Unable to fetch some archives", file=sys.stderr)
            sys.exit(100)
        utils = pins.get("qemu-utils", state["installed"].get("qemu-utils"))
        if "qemu-system-x86" in names and utils not in (None, state["candidate"]):
            # qemu-utils Breaks an older qemu-system-common: apt would remove qemu-utils
            if "--no-remove" in args:
                print("E: Packages need to be removed but remove is disabled.", file=sys.stderr)
                sys.exit(100)
            state["installed"].pop("qemu-utils")
            os.unlink(os.path.join(state["bin"], "qemu-img"))
        if "qemu-utils" in pins and "--allow-downgrades" not in args:
            print("E: Packages were downgraded and -y was used without --allow-downgrades.",
                  file=sys.stderr)
            sys.exit(100)
        for name in names:
            install(name, pins.get(name, state["candidate"]))
        save()
    """
)


def _crate_version(package: str) -> str:
    """`cargo:CRATE@VERSION` -> VERSION."""
    return package.rpartition("@")[2]


def _table() -> dict[str, list[str]]:
    commands: dict[str, list[str]] = {}
    for line in TABLE.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        command, package = line.split("\t")[:2]
        commands.setdefault(package, []).append(command)
    return commands


class FakeHost:
    """A PATH with only the script's tools, the apt stand-ins and the installed commands."""

    def __init__(self, root: Path, installed: dict[str, str]) -> None:
        self.bin = root / "bin"
        self.tools = root / "tools"
        self.bin.mkdir()
        self.tools.mkdir()
        for tool in TOOLS + PATCH_TOOLS:
            found = shutil.which(tool)
            assert found, tool
            (self.tools / tool).symlink_to(found)
        fake = root / "fake-apt"
        fake.write_text(FAKE_APT.format(python=sys.executable))
        fake.chmod(0o755)
        for tool in ("dpkg-query", "apt-cache", "apt-get"):
            (self.tools / tool).symlink_to(fake)
        cargo = root / "fake-cargo"
        cargo.write_text(FAKE_CARGO.format(python=sys.executable))
        cargo.chmod(0o755)
        (self.tools / "cargo").symlink_to(cargo)
        self.state_file = root / "state.json"
        self.state = {
            "installed": {},
            "candidate": OLD_QEMU,
            "commands": _table(),
            "bin": str(self.bin),
            "patches": str(REPO / "scripts" / "patches"),
        }
        self._save()
        for pkg, version in installed.items():
            self.install(pkg, version)

    def _save(self) -> None:
        self.state_file.write_text(json.dumps(self.state))

    def install(self, pkg: str, version: str) -> None:
        """Installs an apt package, or puts a crates.io program at the table's version."""
        for command in self.state["commands"][pkg]:
            path = self.bin / command
            if pkg.startswith("cargo:"):
                path.write_text(f"#!/bin/sh\necho '{command} {_crate_version(pkg)}'\n")
            else:
                path.write_text("#!/bin/sh\nexit 0\n")
            path.chmod(0o755)
        if not pkg.startswith("cargo:"):
            self.state["installed"][pkg] = version
        self._save()

    def set(self, key: str, value: object) -> None:
        self.state[key] = value
        self._save()

    def run(self, *args: str, script: Path = SETUP) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": f"{self.bin}:{self.tools}",
            "FAKE_APT_STATE": str(self.state_file),
            "HOME": os.environ.get("HOME", "/root"),
            "CARGO_HOME": str(self.state_file.parent / "cargo-home"),
        }
        return subprocess.run(
            ["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=60
        )

    def installed(self) -> dict[str, str]:
        return json.loads(self.state_file.read_text())["installed"]

    def calls(self) -> list[list[str]]:
        path = Path(f"{self.state_file}.calls")
        return [json.loads(line) for line in path.read_text().splitlines()]


pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the script asks for sudo unless root")


def test_newer_qemu_utils_is_pinned_to_qemu_system_version_in_one_transaction(tmp_path):
    host = FakeHost(tmp_path, {"qemu-utils": NEW_QEMU})
    res = host.run()
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"all {sum(map(len, _table().values()))} commands present" in res.stdout
    assert host.installed()["qemu-utils"] == OLD_QEMU
    assert host.installed()["qemu-system-x86"] == OLD_QEMU
    installs = [c for c in host.calls() if c[0] == "apt-get" and "install" in c]
    assert len(installs) == 1, installs
    assert "--no-remove" in installs[0]
    assert f"qemu-utils={OLD_QEMU}" in installs[0]
    assert "does not match qemu-system-x86" in res.stdout


def test_everything_present_verifies_without_apt(tmp_path):
    table = _table()
    host = FakeHost(tmp_path, {pkg: OLD_QEMU for pkg in table})
    res = host.run()
    assert res.returncode == 0, res.stdout + res.stderr
    assert "all system packages present" in res.stdout
    assert not [c for c in host.calls() if c[0] == "apt-get"]


def test_check_names_each_missing_command_and_its_package(tmp_path):
    table = _table()
    host = FakeHost(tmp_path, {pkg: OLD_QEMU for pkg in table})
    (host.bin / "qemu-img").unlink()
    (host.bin / "tesseract").unlink()
    res = host.run("--check")
    assert res.returncode == 1
    assert "qemu-img (package qemu-utils)" in res.stderr
    assert "tesseract (package tesseract-ocr)" in res.stderr
    assert "socat" not in res.stderr


def test_installed_package_without_its_command_fails_the_setup(tmp_path):
    table = _table()
    host = FakeHost(tmp_path, {pkg: OLD_QEMU for pkg in table})
    (host.bin / "vde_switch").unlink()
    res = host.run()
    assert res.returncode == 1
    assert "vde_switch (package vde2)" in res.stderr


def test_apt_failure_is_shown_and_fails(tmp_path):
    host = FakeHost(tmp_path, {})
    host.set("fail_install", True)
    res = host.run()
    assert res.returncode == 1
    assert "E: Unable to fetch some archives" in res.stderr
    assert "apt-get install failed" in res.stderr
    assert "qemu-system-x86_64 (package qemu-system-x86)" in res.stderr


CRATE = next(p for p in _table() if p.startswith("cargo:vhost-device-vsock@"))
VERSION = _crate_version(CRATE)  # 0.3.0+ntng.N: crates.io's 0.3.0 with our patch


def test_the_table_names_vhost_device_vsock_from_crates_io_with_our_patch():
    assert _table()[CRATE] == ["vhost-device-vsock"]
    assert VERSION.startswith("0.3.0+ntng."), VERSION
    assert (REPO / "scripts" / "patches" / f"vhost-device-vsock-{VERSION}.patch").is_file()


def test_a_missing_patched_crate_is_built_from_its_source_with_the_patch(tmp_path):
    table = _table()
    host = FakeHost(tmp_path, {pkg: OLD_QEMU for pkg in table if pkg != CRATE})
    res = host.run()
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"installing vhost-device-vsock {VERSION} with cargo" in res.stdout
    cargo = [c[:2] for c in host.calls() if c[0] == "cargo"]
    assert cargo == [["cargo", "fetch"], ["cargo", "install"]]
    install = [c for c in host.calls() if c[0] == "cargo"][-1]
    assert install[install.index("--root") + 1] == "/usr/local"
    assert "--locked" in install and "--path" in install
    assert not [c for c in host.calls() if c[0] == "apt-get"]
    # the program it built says the patched version (git apply changed Cargo.toml)
    out = subprocess.run([host.bin / "vhost-device-vsock", "--version"], capture_output=True)
    assert out.stdout.decode().strip() == f"vhost-device-vsock {VERSION}"


def test_a_plain_crate_version_is_cargo_installed_from_crates_io(tmp_path):
    table = _table()
    host = FakeHost(tmp_path, {pkg: OLD_QEMU for pkg in table if pkg != CRATE})
    tsv = tmp_path / "host_commands.tsv"
    tsv.write_text(TABLE.read_text().replace(CRATE, "cargo:vhost-device-vsock@0.3.0"))
    script = tmp_path / "scripts" / "setup-system.sh"
    script.parent.mkdir()
    shutil.copy(SETUP, script)
    data = tmp_path / "python" / "nixos_test_ng" / "data"
    data.mkdir(parents=True)
    shutil.copy(tsv, data / "host_commands.tsv")
    res = host.run(script=script)
    assert res.returncode == 0, res.stdout + res.stderr
    cargo = [c for c in host.calls() if c[0] == "cargo"]
    assert cargo == [
        [
            "cargo",
            "install",
            "--locked",
            "--force",
            "vhost-device-vsock",
            "--version",
            "0.3.0",
            "--root",
            "/usr/local",
        ]
    ]


def test_another_version_is_replaced_and_the_right_one_kept(tmp_path):
    table = _table()
    host = FakeHost(tmp_path, {pkg: OLD_QEMU for pkg in table})
    res = host.run()
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"vhost-device-vsock {VERSION} present" in res.stdout
    assert not [c for c in host.calls() if c[0] == "cargo"]
    # a stock build (no fix) is replaced like any other version
    (host.bin / "vhost-device-vsock").write_text("#!/bin/sh\necho 'vhost-device-vsock 0.3.0'\n")
    res = host.run()
    assert res.returncode == 0, res.stdout + res.stderr
    assert "(found: vhost-device-vsock 0.3.0)" in res.stdout
    assert [c[1] for c in host.calls() if c[0] == "cargo"][-1] == "install"


def test_a_failed_cargo_install_fails_the_setup_naming_the_crate(tmp_path):
    table = _table()
    host = FakeHost(tmp_path, {pkg: OLD_QEMU for pkg in table if pkg != CRATE})
    host.set("fail_cargo", True)
    res = host.run()
    assert res.returncode == 1
    assert f"cargo install vhost-device-vsock {VERSION} failed" in res.stderr
    assert f"vhost-device-vsock (package {CRATE})" in res.stderr
