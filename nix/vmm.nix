# A NixOS module for a test node that runs on Firecracker or Cloud Hypervisor instead of QEMU:
#
#   nodes.micro = {
#     imports = [ "${nixos-test-ng}/nix/vmm.nix" ];
#     nixos-test-ng.backend = "firecracker";              # or "cloud-hypervisor"
#     nixos-test-ng.agent.package = pkgs.nixos-test-ng-agent;
#   };
#
# It runs the guest agent (nix/agent.nix; these VMMs have no console backdoor, the agent over
# vsock is the shell) and derives what the VMM boots, as `nixos-test-ng.vmm`: the kernel
# (uncompressed, `vmlinux` of the kernel's `dev` output: Firecracker boots no bzImage), the
# initrd, a raw ext4 root image holding the system's closure (nixpkgs' make-disk-image.nix,
# labelled `nixos` as qemu-vm.nix's root file system is), the kernel command line, vCPUs and
# memory (`virtualisation.cores`, `virtualisation.memorySize`). Each can be set instead.
# The test module (nix/test-module.nix, through lib.nix's fromNixosTest) then writes the node
# into the driver's `--config` file as a `vms` entry with `backend` and this configuration
# inline, so no start script is built for it.
#
# Not evaluated against nixpkgs on the project's own machines (see README.md, section Nix):
# tests/nix evaluates it with stand-ins for nixpkgs' pieces.
{
  config,
  lib,
  pkgs,
  options,
  modulesPath ? null,
  ...
}:
let
  cfg = config.nixos-test-ng;
  onVmm = cfg.backend != "qemu";
  # `/nix/store` comes from the root image, not from the host over 9p (no 9p here).
  rootImage = import "${modulesPath}/../lib/make-disk-image.nix" {
    inherit lib config pkgs;
    format = "raw";
    partitionTableType = "none";
    label = "nixos";
    diskSize = "auto";
    additionalSpace = "512M";
    copyChannel = false;
  };
in
{
  imports = [ ./agent.nix ];

  options.nixos-test-ng = {
    backend = lib.mkOption {
      type = lib.types.enum [
        "qemu"
        "firecracker"
        "cloud-hypervisor"
      ];
      default = "qemu";
      description = "The VMM that runs this node in a nixos-test-ng test.";
    };
    vmm = {
      kernel = lib.mkOption {
        type = lib.types.str;
        default = "${config.boot.kernelPackages.kernel.dev}/vmlinux";
        defaultText = lib.literalExpression ''"''${config.boot.kernelPackages.kernel.dev}/vmlinux"'';
        description = "The guest's uncompressed kernel (an ELF vmlinux).";
      };
      initrd = lib.mkOption {
        type = lib.types.nullOr lib.types.str;
        default = "${config.system.build.initialRamdisk}/${config.system.boot.loader.initrdFile}";
        defaultText = lib.literalExpression "the system's initrd";
        description = "The guest's initrd (null: none).";
      };
      rootDisk = lib.mkOption {
        type = lib.types.nullOr lib.types.str;
        default = "${rootImage}/nixos.img";
        defaultText = lib.literalExpression "a raw ext4 image of the system's closure (make-disk-image.nix)";
        description = "The guest's root disk, its /dev/vda (null: none).";
      };
      rootReadOnly = lib.mkOption {
        type = lib.types.bool;
        default = false;
        description = ''
          Attach the root disk read-only. The default image is in the Nix store, which the VMM
          cannot write: a writable root needs a copy (set `rootDisk` to one), or this.
        '';
      };
      disks = lib.mkOption {
        type = lib.types.listOf lib.types.attrs;
        default = [ ];
        example = [
          {
            path = "/var/lib/data.img";
            readOnly = true;
          }
        ];
        description = "Further disks, in order: `{ path; readOnly ? false; }`.";
      };
      cmdline = lib.mkOption {
        type = lib.types.str;
        default = lib.concatStringsSep " " (
          [
            "console=ttyS0"
            "reboot=k"
            "panic=1"
            "root=/dev/vda"
            "init=${config.system.build.toplevel}/init"
          ]
          ++ config.boot.kernelParams
        );
        defaultText = lib.literalExpression "console=ttyS0 reboot=k panic=1 root=/dev/vda init=<toplevel>/init <boot.kernelParams>";
        description = "The kernel's command line (Firecracker needs `reboot=k` for a reboot to end it).";
      };
      vcpus = lib.mkOption {
        type = lib.types.int;
        default = config.virtualisation.cores or 1;
        description = "Virtual CPUs.";
      };
      memoryMib = lib.mkOption {
        type = lib.types.int;
        default = config.virtualisation.memorySize or 512;
        description = "Memory in MiB.";
      };
    };
  };

  config = lib.mkIf onVmm (
    {
      nixos-test-ng.agent.enable = true;
      # The VMMs' devices are virtio over MMIO (Firecracker) or PCI (Cloud Hypervisor).
      boot.initrd.availableKernelModules = [
        "virtio_mmio"
        "virtio_pci"
        "virtio_blk"
        "virtio_net"
        "ext4"
      ];
    }
    // lib.optionalAttrs (options ? virtualisation.qemu) {
      # qemu-vm.nix (every test node has it) mounts the host's store over 9p with a writable
      # overlay: neither exists here, the store is on the root image.
      virtualisation.mountHostNixStore = false;
      virtualisation.writableStore = false;
    }
  );
}
