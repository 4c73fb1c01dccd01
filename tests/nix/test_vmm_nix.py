"""Firecracker and Cloud Hypervisor machines declared in Nix: lib.nix's `firecracker` /
`cloud-hypervisor` nodes (a start script, or the VMM configuration inline as `vmm`) written
into the generation-C `--config` file the engine reads; nix/vmm.nix, the NixOS module that
chooses a node's backend and derives its kernel, initrd and root image (evaluated with
stand-ins for nixpkgs' pieces); and the test module, which names the VMM binaries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nixos_test_ng import _native

from .test_flake import fake_package, run_build_script
from .test_lib import executable, nix_string


def files(tmp: Path) -> dict[str, Path]:
    got = {}
    for name in ("vmlinux", "initrd", "root.img", "data.img"):
        got[name] = tmp / name
        got[name].write_text("x")
    return got


def test_vmm_nodes_become_vms_entries_with_a_backend_the_engine_reads(nix, tmp_path):
    f = files(tmp_path)
    scripts = {
        "server": executable(tmp_path / "vm/bin/run-server-vm"),
        "hyper": executable(tmp_path / "ch/bin/run-hyper-cloud-hypervisor"),
    }
    script = tmp_path / "test-script"
    script.write_text("start_all()\n")
    test = f"""{{
      nodes.server = {{ startScript = {nix_string(scripts["server"])}; }};
      nodes.micro = {{
        kind = "firecracker";
        vlans = [ 1 2 ];
        vmm = {{
          kernel = {nix_string(f["vmlinux"])};
          initrd = {nix_string(f["initrd"])};
          rootDisk = {nix_string(f["root.img"])};
          rootReadOnly = true;
          disks = [ {{ path = {nix_string(f["data.img"])}; readOnly = true; }} ];
          cmdline = "console=ttyS0 reboot=k";
          vcpus = 2;
          memoryMib = 256;
        }};
      }};
      nodes.hyper = {{
        kind = "cloud-hypervisor";
        startScript = {nix_string(scripts["hyper"])};
        vlans = [ ];
      }};
      testScript = {nix_string(script)};
    }}"""
    text = nix.eval(f"ntng.driverConfigurationJSON {test}")
    config = json.loads(text)
    assert config["vms"] == {
        "server": {"name": "server", "start_script": str(scripts["server"])},
        "micro": {
            "name": "micro",
            "backend": "firecracker",
            "kernel": str(f["vmlinux"]),
            "initrd": str(f["initrd"]),
            "root_disk": str(f["root.img"]),
            "root_read_only": True,
            "disks": [{"path": str(f["data.img"]), "read_only": True}],
            "cmdline": "console=ttyS0 reboot=k",
            "vcpus": 2,
            "memory_mib": 256,
            "vlans": [1, 2],
        },
        "hyper": {
            "name": "hyper",
            "backend": "cloud-hypervisor",
            "start_script": str(scripts["hyper"]),
        },
    }
    assert config["containers"] == {}
    assert config["vlans"] == [1, 2]
    config_file = tmp_path / "driver-configuration.json"
    config_file.write_text(text)
    cfg = _native.parse_args(["--config", str(config_file), "-o", str(tmp_path)], {})
    assert sorted(cfg.machines) == [
        ("hyper", str(scripts["hyper"]), "cloud-hypervisor"),
        ("micro", "", "firecracker"),  # no start script: configured inline
        ("server", str(scripts["server"]), "qemu"),
    ]
    assert cfg.warnings == []


def test_the_vmm_defaults(nix, tmp_path):
    f = files(tmp_path)
    got = nix.eval(
        f"""(ntng.driverConfiguration {{
          nodes.m = {{ kind = "cloud-hypervisor"; vmm = {{
            kernel = {nix_string(f["vmlinux"])}; cmdline = ""; }}; }};
          testScript = "/t.py";
        }}).vms.m"""
    )
    assert got == {
        "name": "m",
        "backend": "cloud-hypervisor",
        "kernel": str(f["vmlinux"]),
        "initrd": None,
        "root_disk": None,
        "root_read_only": False,
        "disks": [],
        "cmdline": "",
        "vcpus": 1,
        "memory_mib": 512,
        "vlans": [1],
    }


KERNEL = 'kernel = "/k"; cmdline = "";'
BAD = [
    (f'nodes.a = {{ vmm = {{ {KERNEL} }}; }};',
     "node `a`: only a firecracker or cloud-hypervisor node has `vmm`; "
     "a qemu node needs `startScript`"),
    (f'nodes.a = {{ kind = "firecracker"; startScript = "/s"; vmm = {{ {KERNEL} }}; }};',
     "node `a` has both `startScript` and `vmm`"),
    ('nodes.a = { kind = "firecracker"; };',
     "node `a` has no `startScript` (or `vmm`, its configuration inline)"),
    ('nodes.a = { kind = "firecracker"; vmm = { cmdline = ""; }; };',
     "node `a`: `vmm.kernel` is missing"),
    ('nodes.a = { kind = "firecracker"; vmm = { kernel = "/k"; }; };',
     "node `a`: `vmm.cmdline` must be a string"),
    (f'nodes.a = {{ kind = "firecracker"; vmm = {{ {KERNEL} memory = 3; }}; }};',
     "node `a`: `vmm.memory` is not one of kernel, initrd"),
    (f'nodes.a = {{ kind = "firecracker"; vmm = {{ {KERNEL} vcpus = 0; }}; }};',
     "node `a`: `vmm.vcpus` must be a positive integer"),
    (f'nodes.a = {{ kind = "firecracker"; vmm = {{ {KERNEL} disks = [ {{ }} ]; }}; }};',
     "node `a`: `vmm.disks` item 1 must be { path; readOnly ? false; }"),
    ('nodes.a = { kind = "xen"; startScript = "/s"; };',
     "kind `xen` is not one of qemu, nspawn, firecracker, cloud-hypervisor"),
]  # fmt: skip


@pytest.mark.parametrize(("fragment", "message"), BAD)
def test_bad_vmm_nodes_are_named(nix, fragment, message):
    assert message in nix.eval_error(
        f'ntng.driverConfiguration {{ {fragment} testScript = "/t.py"; }}'
    )


def test_generations_a_and_b_have_no_vmm_machines(nix):
    node = 'nodes.a = { kind = "firecracker"; startScript = "/s/run-a-firecracker"; };'
    for gen in ("A", "B"):
        assert (
            f"node `a`: generation {gen} has no firecracker machines; use generation C"
            in nix.eval_error(f'ntng.generation{gen}Environment {{ {node} testScript = "/t.py"; }}')
        )


def test_a_nixos_node_choosing_a_vmm_is_configured_inline(nix):
    """fromNixosTest reads a node's `nixos-test-ng.backend` and `nixos-test-ng.vmm` (what
    nix/vmm.nix sets) instead of its system.build.vm."""
    cfg = nix.eval(
        """ntng.driverConfiguration (ntng.fromNixosTest {
          nodes.micro = {
            nixos-test-ng.backend = "firecracker";
            nixos-test-ng.vmm = {
              kernel = "/nix/store/k-linux-dev/vmlinux";
              initrd = "/nix/store/i-initrd/initrd";
              rootDisk = "/nix/store/r-nixos-disk-image/nixos.img";
              rootReadOnly = true;
              disks = [ ];
              cmdline = "console=ttyS0 init=/x/init";
              vcpus = 2;
              memoryMib = 1024;
            };
            virtualisation.vlans = [ 3 ];
          };
          nodes.server = {
            nixos-test-ng.backend = "qemu";
            system.build.vm = { outPath = "/nix/store/a-vm"; meta.mainProgram = "run-server-vm"; };
            virtualisation.vlans = [ 3 ];
          };
          testScript = "/nix/store/d-test-script";
        })"""
    )
    assert cfg["vms"]["server"] == {
        "name": "server",
        "start_script": "/nix/store/a-vm/bin/run-server-vm",
    }
    assert cfg["vms"]["micro"] == {
        "name": "micro",
        "backend": "firecracker",
        "kernel": "/nix/store/k-linux-dev/vmlinux",
        "initrd": "/nix/store/i-initrd/initrd",
        "root_disk": "/nix/store/r-nixos-disk-image/nixos.img",
        "root_read_only": True,
        "disks": [],
        "cmdline": "console=ttyS0 init=/x/init",
        "vcpus": 2,
        "memory_mib": 1024,
        "vlans": [3],
    }


def evaluate_vmm_module(nix, *, backend: str, vm: bool = True):
    """nix/vmm.nix as a function of stand-in `config`, `options`, `pkgs` and `modulesPath`
    (make-disk-image.nix: tests/nix/nixos-standin); the options' defaults and the config."""
    options = "{ virtualisation.qemu = { }; }" if vm else "{ }"
    return nix.eval(
        f"""let
          m = import (root + "/nix/vmm.nix") {{
            lib = standins.lib // {{
              types = standins.lib.types // {{
                enum = vs: "enum";
                int = "int";
                attrs = "attrs";
                nullOr = t: "nullOr ${{t}}";
              }};
              concatStringsSep = builtins.concatStringsSep;
            }};
            options = {options};
            pkgs = {{ }};
            modulesPath = toString root + "/tests/nix/nixos-standin/modules";
            config = {{
              nixos-test-ng.backend = "{backend}";
              boot.kernelPackages.kernel.dev = "/nix/store/k-linux-dev";
              boot.kernelParams = [ "loglevel=4" ];
              system.build.initialRamdisk = "/nix/store/i-initrd";
              system.boot.loader.initrdFile = "initrd";
              system.build.toplevel = "/nix/store/t-nixos-system";
              virtualisation.cores = 2;
              virtualisation.memorySize = 1024;
            }};
          }};
          o = m.options.nixos-test-ng;
        in {{
          imports = map toString m.imports;
          backendDefault = o.backend.default;
          vmm = builtins.mapAttrs (n: v: v.default) o.vmm;
          inherit (m.config) condition content;
        }}"""
    )


def test_the_vmm_module_derives_the_kernel_initrd_and_root_image(nix):
    got = evaluate_vmm_module(nix, backend="firecracker")
    assert [Path(p).name for p in got["imports"]] == ["agent.nix"]
    assert got["backendDefault"] == "qemu"
    assert got["vmm"] == {
        "kernel": "/nix/store/k-linux-dev/vmlinux",
        "initrd": "/nix/store/i-initrd/initrd",
        "rootDisk": "/nix/store/00000000000000000000000000000000-nixos-disk-image/nixos.img",
        "rootReadOnly": False,
        "disks": [],
        "cmdline": "console=ttyS0 reboot=k panic=1 root=/dev/vda "
        "init=/nix/store/t-nixos-system/init loglevel=4",
        "vcpus": 2,
        "memoryMib": 1024,
    }
    assert got["condition"] is True
    content = got["content"]
    assert content["nixos-test-ng"]["agent"]["enable"] is True
    assert "virtio_mmio" in content["boot"]["initrd"]["availableKernelModules"]
    # no 9p store from the host: the store is on the root image
    assert content["virtualisation"] == {"mountHostNixStore": False, "writableStore": False}


def test_the_vmm_module_leaves_a_qemu_node_alone(nix):
    assert evaluate_vmm_module(nix, backend="qemu")["condition"] is False
    content = evaluate_vmm_module(nix, backend="cloud-hypervisor", vm=False)["content"]
    assert "virtualisation" not in content


def test_the_test_module_names_the_vmm_binaries(nix, tmp_path):
    """A test with a Firecracker node: its inline entry in the configuration file, and the
    wrapper setting the driver's variable to hostPkgs.firecracker's binary."""
    f = files(tmp_path)
    pkg = fake_package(tmp_path)
    got = nix.eval(
        f"""let
          inherit (standins) lib;
          pkgs = (standins.mkPkgs "x86_64-linux" [ ]) // {{
            writeText = name: text: builtins.toFile name text;
          }};
          config = {{
            name = "micro";
            globalTimeout = 120;
            extraDriverArgs = [ ];
            enableOCR = false;
            extraPythonPackages = ps: [ ];
            qemu.package = standins.drv "qemu";
            skipLint = false;
            passthru = {{ }};
            meta = {{ }};
            testScriptString = "start_all()\\nmicro.succeed('true')\\n";
            nodes.micro = {{
              nixos-test-ng.backend = "firecracker";
              nixos-test-ng.vmm = {{
                kernel = {nix_string(f["vmlinux"])};
                initrd = null;
                rootDisk = {nix_string(f["root.img"])};
                rootReadOnly = true;
                disks = [ ];
                cmdline = "console=ttyS0";
                vcpus = 1;
                memoryMib = 256;
              }};
              virtualisation.vlans = [ 1 ];
            }};
            nixos-test-ng = {{
              enable = true;
              package = standins.drv "nixos-test-ng" // {{
                override = args: {{ outPath = {json.dumps(str(pkg))}; }};
              }};
              pytestArgs = [ ];
              snapshots = false;
            }};
          }};
          m = import (root + "/nix/test-module.nix") {{ inherit config lib; hostPkgs = pkgs; }};
        in m.config.content.driver.content.script"""
    )
    r, wrap_args = run_build_script(tmp_path, got)
    assert r.returncode == 0, r.stdout + r.stderr
    # `nixos-test-ng check --config` read the inline machine: `micro` is a known name
    assert "Checking the test script" in r.stdout
    i = wrap_args.index("--set")
    assert wrap_args[i : i + 3] == [
        "--set",
        "NIXOS_TEST_NG_FIRECRACKER",
        "/nix/store/00000000000000000000000000000000-firecracker/bin/firecracker",
    ]
    assert "NIXOS_TEST_NG_CLOUD_HYPERVISOR" not in wrap_args
    config_file = wrap_args[wrap_args.index("--add-flags") + 1].removeprefix("--config ")
    config = json.loads(Path(config_file).read_text())
    assert config["vms"]["micro"]["backend"] == "firecracker"
    assert config["vms"]["micro"]["kernel"] == str(f["vmlinux"])
    assert config["vms"]["micro"]["vlans"] == [1]
