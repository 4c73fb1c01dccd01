"""nix/agent.nix, the NixOS module that runs the guest agent and gives the VM its vsock device,
evaluated as a function of stand-in `config`, `options` and `pkgs` (no nixpkgs here). Its QEMU
options are then expanded by bash as qemu-vm.nix's start script expands them (unquoted, on the
QEMU command line): nothing without the driver's variable, the device's arguments with it."""

from __future__ import annotations

import subprocess

AGENT = "/nix/store/00000000000000000000000000000000-nixos-test-ng-agent"


def evaluate(nix, *, vm: bool = True, enable: str = "true", pkgs: str = "{ }"):
    options = "{ virtualisation.qemu = { }; }" if vm else "{ boot.isContainer = { }; }"
    return nix.eval(
        f"""let
          m = import (root + "/nix/agent.nix") {{
            inherit (standins) lib;
            options = {options};
            pkgs = {pkgs};
            config.nixos-test-ng.agent = {{ enable = {enable}; package = "{AGENT}"; }};
            config.virtualisation.memorySize = 384;
          }};
        in m"""
    )


def expand(words: list[str], env: dict[str, str]) -> list[str]:
    """The arguments bash makes of `words` on a command line, as in the start script."""
    script = "printf '%s\\n' " + " ".join(words)
    res = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, check=True
    )
    return [line for line in res.stdout.splitlines() if line]


def test_the_agent_runs_as_a_service_with_the_backdoors_environment(nix):
    got = evaluate(nix)
    assert got["config"]["_type"] == "if" and got["config"]["condition"] is True
    service = got["config"]["content"]["systemd"]["services"]["nixos-test-ng-agent"]
    assert service["wantedBy"] == ["multi-user.target"]
    assert service["serviceConfig"]["Restart"] == "always"
    assert service["unitConfig"]["ConditionKernelCommandLine"] == "!ntng.agent=0"
    script = service["script"]
    for line in (
        "export USER=root",
        "export HOME=/root",
        "export DISPLAY=:0.0",
        "source /etc/profile",
        "export PAGER=",
        "cd /tmp",
        f"exec {AGENT}/bin/nixos-test-ng-agent",
    ):
        assert line in script, line
    assert got["config"]["content"]["boot"]["kernelModules"] == [
        "vsock",
        "vmw_vsock_virtio_transport",
    ]


def test_the_options(nix):
    got = evaluate(nix)
    assert got["options"]["nixos-test-ng"]["agent"]["enable"]["default"] is True
    assert "default" not in got["options"]["nixos-test-ng"]["agent"]["package"]
    with_pkg = evaluate(nix, pkgs='{ nixos-test-ng-agent = "agent-from-pkgs"; }')
    assert with_pkg["options"]["nixos-test-ng"]["agent"]["package"]["default"] == (
        "agent-from-pkgs"
    )
    assert evaluate(nix, enable="false")["config"]["condition"] is False


def test_the_vsock_device_only_when_the_driver_asks(nix):
    words = evaluate(nix)["config"]["content"]["virtualisation"]["qemu"]["options"]
    # the start script names the variables: the driver's announcement
    assert any("NIXOS_TEST_NG_VHOST_USER_VSOCK" in w for w in words)
    assert any("NIXOS_TEST_NG_VSOCK_CID" in w for w in words)
    base = {"PATH": "/usr/bin:/bin"}
    assert expand(words, base) == []
    sock = "/tmp/nixos-test-ng-x/vm-state-machine/vhost-user-vsock.sock"
    assert expand(words, {**base, "NIXOS_TEST_NG_VHOST_USER_VSOCK": sock}) == [
        "-object",
        "memory-backend-memfd,id=ntng-mem,size=384M,share=on",
        "-machine",
        "memory-backend=ntng-mem",
        "-chardev",
        f"socket,id=ntng-vsock,path={sock}",
        "-device",
        "vhost-user-vsock-pci,chardev=ntng-vsock",
    ]
    assert expand(words, {**base, "NIXOS_TEST_NG_VSOCK_CID": "7"}) == [
        "-device",
        "vhost-vsock-pci,guest-cid=7",
    ]


def test_a_container_gets_the_service_and_no_qemu_options(nix):
    content = evaluate(nix, vm=False)["config"]["content"]
    assert "nixos-test-ng-agent" in content["systemd"]["services"]
    assert "virtualisation" not in content
