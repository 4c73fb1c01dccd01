"""The nixpkgs-facing Nix files (flake.nix, nix/package.nix, overlay.nix, test-module.nix,
split.nix, checks.nix), evaluated with the stand-ins of tests/nix/standins.nix in place of
nixpkgs: their structure and wiring, not nixpkgs itself (nothing here builds them). The test
module's driver build script is run for real, with the real `nixos-test-ng check` and a
recording `wrapProgram`, and the wrapper's arguments are parsed by the real engine."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from nixos_test_ng import _native

FLAKE = """
  let
    flake = import (root + "/flake.nix");
    self = flake.outputs { inherit self; inherit (standins) nixpkgs; };
  in
"""


def test_flake_outputs(nix):
    got = nix.eval(
        FLAKE
        + """{
          outputs = builtins.attrNames self;
          systems = builtins.attrNames self.packages;
          packages = builtins.attrNames self.packages.x86_64-linux;
          checks = builtins.attrNames self.checks.x86_64-linux;
          shell = map (p: p.name) self.devShells.x86_64-linux.default.packages;
          lib = builtins.attrNames self.lib;
          module = self.nixosTestModules.default == (root + "/nix/test-module.nix");
          pure = self.lib.pythonizeName "a-b";
        }"""
    )
    assert got["outputs"] == [
        "checks",
        "devShells",
        "lib",
        "nixosTestModules",
        "overlays",
        "packages",
    ]
    assert got["systems"] == ["aarch64-linux", "x86_64-linux"]
    assert got["packages"] == ["default", "nixos-test-ng"]
    assert got["checks"] == [
        "systemd-service",
        "vlan-echo",
        "vlan-echo-overlay",
        "vlan-echo-pytest",
        "vlan-echo-pytest-test_blocking_cuts_the_client_off",
        "vlan-echo-pytest-test_client_reaches_the_server",
        "vlan-echo-pytest-test_server_listens",
    ]
    for tool in ("cargo", "rustc", "maturin", "qemu", "vde2", "socat", "tesseract"):
        assert tool in got["shell"]
    assert {"runTest", "split", "driverConfigurationJSON", "splitSelections"} <= set(got["lib"])
    assert got["module"] is True
    assert got["pure"] == "a_b"


def test_package_takes_what_driver_nix_overrides_and_wraps_the_tools(nix):
    """nixpkgs' driver.nix calls `pythonTestDriverPackage.override { enableOCR;
    extraPythonPackages; qemu_pkg; enableNspawn; }`."""
    got = nix.eval(
        FLAKE
        + """let
          pkg = self.packages.x86_64-linux.default;
          lean = pkg.override {
            enableOCR = false;
            enableNspawn = true;
            qemu_pkg = standins.drv "qemu-full";
            extraPythonPackages = ps: [ ps.numpy ];
          };
        in {
          args = builtins.functionArgs (import (root + "/nix/package.nix"));
          inherit (pkg) pname version pyproject makeWrapperArgs;
          mainProgram = pkg.meta.mainProgram;
          cargoLock = toString pkg.cargoDeps.lockFile;
          src = pkg.src.files;
          deps = map (p: p.name) pkg.dependencies;
          build = map (p: p.name) (pkg.build-system ++ pkg.nativeBuildInputs);
          postInstall = pkg.postInstall;
          lean = lean.makeWrapperArgs;
          leanDeps = map (p: p.name) lean.dependencies;
        }"""
    )
    for arg in ("enableOCR", "extraPythonPackages", "qemu_pkg", "enableNspawn"):
        assert got["args"][arg] is True  # has a default
    assert (got["pname"], got["version"], got["pyproject"]) == ("nixos-test-ng", "0.1.0", True)
    assert got["mainProgram"] == "nixos-test-driver"
    assert got["cargoLock"].endswith("/Cargo.lock")
    assert sorted(Path(f).name for f in got["src"]) == sorted(
        ["Cargo.toml", "Cargo.lock", "crates", "python", "pyproject.toml", "README.md"]
    )
    assert got["deps"] == ["pyflakes", "pytest", "ptpython"]
    assert {"maturin-build-hook", "cargo-setup-hook", "cargo", "rustc"} == set(got["build"])
    assert "test_driver" in got["postInstall"]

    def path_of(wrap_args: list[str]) -> list[str]:
        assert wrap_args[:3] == ["--prefix", "PATH", ":"]
        return [p.split("-", 1)[1].removesuffix("/bin") for p in wrap_args[3].split(":")]

    assert path_of(got["makeWrapperArgs"]) == [
        "coreutils",
        "qemu_test",
        "socat",
        "vde2",
        "util-linux",
        "tesseract-eng",
    ]
    assert path_of(got["lean"]) == [
        "coreutils",
        "qemu-full",
        "socat",
        "vde2",
        "util-linux",
        "systemd",
    ]
    assert got["leanDeps"] == ["pyflakes", "pytest", "ptpython", "numpy"]


def test_overlay_replaces_nixos_test_driver(nix):
    got = nix.eval(
        """let
          pkgs = standins.mkPkgs "x86_64-linux" [ (import (root + "/nix/overlay.nix")) ];
        in {
          driver = pkgs.nixos-test-driver.pname;
          same = pkgs.nixos-test-driver.src == pkgs.nixos-test-ng.src;
          overridable = (pkgs.nixos-test-driver.override { enableOCR = false; }).pname;
        }"""
    )
    assert got == {"driver": "nixos-test-ng", "same": True, "overridable": "nixos-test-ng"}


def fake_package(tmp: Path) -> Path:
    """A package directory whose bin/ holds the real nixos-test-ng and nixos-test-driver."""
    bindir = Path(sys.executable).parent
    pkg = tmp / "pkg"
    (pkg / "bin").mkdir(parents=True)
    for tool in ("nixos-test-ng", "nixos-test-driver"):
        found = bindir / tool if (bindir / tool).exists() else Path(shutil.which(tool) or tool)
        (pkg / "bin" / tool).symlink_to(found)
    return pkg


def module_driver(
    nix, tmp: Path, script: str, *, skip_lint: bool, pytest_args: list[str], snapshots=False
):
    """Evaluates nix/test-module.nix with stand-ins for a one-node test whose VM is a real
    executable `run-server-vm`; returns the driver's build script and the module's view
    (`snapshots`: the value of `nixos-test-ng.snapshots`)."""
    vm = tmp / "vm"
    (vm / "bin").mkdir(parents=True)
    (vm / "bin" / "run-server-vm").write_text("#!/bin/sh\n")
    (vm / "bin" / "run-server-vm").chmod(0o755)
    pkg = fake_package(tmp)
    return nix.eval(
        f"""let
          inherit (standins) lib;
          pkgs = (standins.mkPkgs "x86_64-linux" [ ]) // {{
            # real files, so that the build script can be run
            writeText = name: text: builtins.toFile name text;
          }};
          package = standins.drv "nixos-test-ng" // {{
            override = args: {{ outPath = {json.dumps(str(pkg))}; overriddenWith = args; }};
          }};
          config = {{
            name = "demo";
            globalTimeout = 120;
            extraDriverArgs = [ "--keep-going" ];
            enableOCR = false;
            extraPythonPackages = ps: [ ];
            qemu.package = standins.drv "qemu";
            skipLint = {"true" if skip_lint else "false"};
            passthru = {{ }};
            meta = {{ }};
            logLevel = "info";
            testScriptString = {json.dumps(script)};
            nodes.server = {{
              system.build.vm = {{
                outPath = {json.dumps(str(vm))};
                meta.mainProgram = "run-server-vm";
              }};
              virtualisation.vlans = [ 1 ];
            }};
            nixos-test-ng = {{
              enable = true;
              inherit package;
              pytestArgs = builtins.fromJSON {json.dumps(json.dumps(pytest_args))};
              snapshots = {json.dumps(snapshots)};  # the module system would give the default
            }};
          }};
          m = import (root + "/nix/test-module.nix") {{ inherit config lib; hostPkgs = pkgs; }};
          driver = m.config.content.driver;
        in {{
          enabled = m.config.condition;
          priority = driver.priority;
          inherit (driver.content) name script;
          options = builtins.attrNames m.options.nixos-test-ng;
          snapshotsDefault = m.options.nixos-test-ng.snapshots.default;
          defaults = {{
            inherit (m.config.content.defaults) condition;
            content = toString m.config.content.defaults.content;
          }};
        }}"""
    )


def run_build_script(tmp: Path, script: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Runs a runCommand script with `$out` in tmp and a `wrapProgram` that records its
    arguments; returns the run and those arguments."""
    out = tmp / "out"
    record = tmp / "wrap-args"
    prelude = f'wrapProgram() {{ printf "%s\\0" "$@" > {shlex.quote(str(record))}; }}\n'
    r = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", prelude + script],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "out": str(out)},
    )  # fmt: skip
    args = record.read_text().split("\0")[:-1] if record.exists() else []
    return r, args


def wrapper_argv(wrap_args: list[str], caller: list[str]) -> list[str]:
    """The arguments the wrapper gives nixos-test-driver, as makeWrapper writes it:
    `exec PROG <add-flags...> "$@" <append-flags...>`, each flag text inserted as it is."""
    before, after = [], []
    it = iter(wrap_args[1:])
    for opt in it:
        value = next(it)
        (before if opt == "--add-flags" else after).append(value)
    text = " ".join(before) + ' "$@" ' + " ".join(after)
    r = subprocess.run(
        ["bash", "-c", f'set -- {text}; printf "%s\\0" "$@"', "wrapper", *caller],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return r.stdout.split("\0")[:-1]


def test_test_module_builds_a_driver_the_engine_accepts(nix, tmp_path):
    pytest_args = ["-k", "test_a and not test_ab"]
    got = module_driver(
        nix, tmp_path, "def test_a(server):\n    server.succeed('true')\n",
        skip_lint=False, pytest_args=pytest_args,
    )  # fmt: skip
    assert got["enabled"] is True and got["priority"] == 50  # lib.mkForce
    assert got["name"] == "nixos-test-driver-demo"
    assert got["options"] == ["enable", "package", "pytestArgs", "snapshots"]
    # snapshottable VMs only when asked (nix/snapshots.nix, evaluated in test_snapshots_nix.py)
    assert got["snapshotsDefault"] is False
    assert got["defaults"]["content"].endswith("/nix/snapshots.nix")
    r, wrap_args = run_build_script(tmp_path, got["script"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Checking the test script" in r.stdout
    out = tmp_path / "out"
    assert (out / "test-script").read_text().startswith("def test_a")
    assert wrap_args[0] == f"{out}/bin/nixos-test-driver"
    assert Path(wrap_args[0]).resolve().name == "nixos-test-driver"

    # run.nix calls `nixos-test-driver -o $out`
    argv = wrapper_argv(wrap_args, ["-o", str(tmp_path)])
    config_file = argv[argv.index("--config") + 1]
    config = json.loads(Path(config_file).read_text())
    assert config["vms"] == {
        "server": {"name": "server", "start_script": f"{tmp_path}/vm/bin/run-server-vm"}
    }
    assert config["vlans"] == [1] and config["global_timeout"] == 120
    assert argv[argv.index("--config") + 2 :] == [
        "--log-level",
        "info",
        "--keep-going",
        "-o",
        str(tmp_path),
        "--",
        config["test_script"],
        *pytest_args,
    ]
    cfg = _native.parse_args(argv, {})
    assert cfg.pytest_args == pytest_args
    assert cfg.test_script == config["test_script"]
    assert [m[0] for m in cfg.machines] == ["server"]
    assert cfg.keep_going and cfg.log_level == "info"


def test_test_module_snapshots_option_adds_the_snapshot_module_to_every_node(nix, tmp_path):
    # what `defaults` (every node and container) gets, by `nixos-test-ng.snapshots`
    got = module_driver(nix, tmp_path, "start_all()\n", skip_lint=True, pytest_args=[])
    assert got["defaults"]["condition"] is False
    (tmp_path / "on").mkdir()
    got = module_driver(
        nix, tmp_path / "on", "start_all()\n", skip_lint=True, pytest_args=[], snapshots=True
    )
    assert got["defaults"]["condition"] is True


def test_test_module_lint_fails_the_driver_build_on_an_unknown_name(nix, tmp_path):
    script = "start_all()\nserver.succeed('true')\nclinet.succeed('true')\n"
    got = module_driver(nix, tmp_path, script, skip_lint=False, pytest_args=[])
    r, _ = run_build_script(tmp_path, got["script"])
    assert r.returncode != 0
    assert "undefined name 'clinet'" in r.stdout + r.stderr
    # skipLint: no check, and no pytest arguments appended
    (tmp_path / "skip").mkdir()
    got = module_driver(nix, tmp_path / "skip", script, skip_lint=True, pytest_args=[])
    r, wrap_args = run_build_script(tmp_path / "skip", got["script"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "--append-flags" not in wrap_args


def test_split_and_checks_give_one_test_per_selection(nix):
    got = nix.eval(
        """let
          pkgs = standins.mkPkgs "x86_64-linux" [ ];
          split = import (root + "/nix/split.nix") {
            inherit pkgs;
            module = { name = "t"; };
            testNames = [ "test_a" "test_ab" ];
          };
          checks = import (root + "/nix/checks.nix") { inherit pkgs; package = standins.drv "p"; };
        in {
          split = builtins.mapAttrs (n: t: t.module.nixos-test-ng) split;
          imports = toString (builtins.head split.test_a.module.imports);
          splitCheck = checks.vlan-echo-pytest-test_server_listens.module.nixos-test-ng.pytestArgs;
          # the overlay route: nixpkgs' own driver.nix, no test module
          overlayCheck = {
            inherit (checks.vlan-echo-overlay.module) testScript;
            module = checks.vlan-echo-overlay.module ? imports;
          };
          scripts = {
            vlan-echo = (builtins.elemAt checks.vlan-echo.module.imports 1).testScript;
            systemd = (builtins.elemAt checks.systemd-service.module.imports 1).testScript;
          };
        }"""
    )
    assert got["split"] == {
        "test_a": {"enable": True, "pytestArgs": ["-k", "test_a and not test_ab"]},
        "test_ab": {"enable": True, "pytestArgs": ["-k", "test_ab"]},
    }
    assert got["imports"].endswith("/nix/test-module.nix")
    assert got["splitCheck"] == ["-k", "test_server_listens"]
    examples = Path(__file__).resolve().parents[2] / "examples"
    assert got["overlayCheck"] == {
        "testScript": (examples / "vlan_echo.py").read_text(),
        "module": False,
    }
    assert got["scripts"]["vlan-echo"] == (examples / "vlan_echo.py").read_text()
    assert got["scripts"]["systemd"] == (examples / "systemd_service.py").read_text()
