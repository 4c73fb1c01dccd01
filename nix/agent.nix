# A NixOS module for a test node: runs nixos-test-ng's guest agent (`nixos-test-ng-agent`, on
# vsock port 7001) as a systemd service, with the environment of NixOS's backdoor.service
# (USER=root, HOME=/root, DISPLAY=:0.0, /etc/profile sourced, PAGER empty, cwd /tmp), restarted
# when it exits; and gives the VM the agent's vsock device when nixos-test-ng's driver asks for
# one.
#
# The driver looks for the variable names NIXOS_TEST_NG_VHOST_USER_VSOCK and
# NIXOS_TEST_NG_VSOCK_CID in the VM's start script: the QEMU options below put them there.
# When it finds them it starts what the device needs (a vhost-device-vsock daemon, or nothing
# with the host's /dev/vhost-vsock) and sets one of them; unset, the options expand to nothing
# and the VM has no device (the driver then uses the backdoor). For vhost-user, QEMU needs the
# guest's memory shared with the daemon: a memfd backend of `virtualisation.memorySize`.
#
#   nodes.machine = {
#     imports = [ "${nixos-test-ng}/nix/agent.nix" ];
#     nixos-test-ng.agent.package = pkgs.nixos-test-ng-agent;  # a static build of crates/agent
#   };
#
# A VM with a vhost-user vsock device cannot be snapshotted (QEMU cannot save the device): the
# driver refuses `snapshot()` on it and says to run with NIXOS_TEST_NG_TRANSPORT=backdoor.
{
  config,
  lib,
  pkgs,
  options,
  ...
}:
let
  cfg = config.nixos-test-ng.agent;
  memory = toString config.virtualisation.memorySize;
in
{
  options.nixos-test-ng.agent = {
    enable = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = "Whether to run nixos-test-ng's guest agent (vsock port 7001) in this node.";
    };
    package = lib.mkOption (
      {
        type = lib.types.package;
        description = "The package whose bin/nixos-test-ng-agent is the guest agent.";
      }
      // lib.optionalAttrs (pkgs ? nixos-test-ng-agent) { default = pkgs.nixos-test-ng-agent; }
    );
  };

  config = lib.mkIf cfg.enable (
    {
      boot.kernelModules = [
        "vsock"
        "vmw_vsock_virtio_transport"
      ];
      systemd.services.nixos-test-ng-agent = {
        description = "nixos-test-ng guest agent on vsock";
        wantedBy = [ "multi-user.target" ];
        unitConfig.ConditionKernelCommandLine = "!ntng.agent=0";
        serviceConfig = {
          Restart = "always";
          RestartSec = "500ms";
          # commands it started keep running when it restarts
          KillMode = "process";
        };
        script = ''
          export USER=root
          export HOME=/root
          export DISPLAY=:0.0
          if [[ -e /etc/profile ]]; then
            source /etc/profile
          fi
          export PAGER=
          cd /tmp
          exec ${cfg.package}/bin/nixos-test-ng-agent
        '';
      };
    }
    // lib.optionalAttrs (options ? virtualisation.qemu) {
      # Unquoted `${VAR:+words}` in the start script's QEMU command line: nothing when unset,
      # else the words, split as separate arguments.
      virtualisation.qemu.options = [
        "\${NIXOS_TEST_NG_VHOST_USER_VSOCK:+-object memory-backend-memfd,id=ntng-mem,size=${memory}M,share=on -machine memory-backend=ntng-mem -chardev socket,id=ntng-vsock,path=$NIXOS_TEST_NG_VHOST_USER_VSOCK -device vhost-user-vsock-pci,chardev=ntng-vsock}"
        "\${NIXOS_TEST_NG_VSOCK_CID:+-device vhost-vsock-pci,guest-cid=$NIXOS_TEST_NG_VSOCK_CID}"
      ];
    }
  );
}
