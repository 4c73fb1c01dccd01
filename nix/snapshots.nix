# A NixOS module that makes a test VM snapshottable; nix/test-module.nix adds it to every node
# with `nixos-test-ng.snapshots = true`.
#
# QEMU cannot save a VM while a 9p share is in use ("Migration is disabled when VirtFS export
# path '/nix/store' is mounted in the guest using mount_tag 'nix-store'"), and a NixOS VM keeps
# the host's Nix store (tag `nix-store`, at /nix/.ro-store) as the lower layer of /nix/store
# for as long as it runs. So the store becomes a disk image (`virtualisation.useNixStoreImage`;
# `mountHostNixStore` follows, its default being `!useNixStoreImage && !useBootLoader`),
# attached read-only: QEMU also refuses a VM with a writable disk that is not qcow2 ("Device
# 'drive2' is writable but does not support snapshots"), and the store image is raw. A VM with
# a boot loader already has its store on its disk; a container has no qemu-vm.nix options and
# is left alone.
{
  config,
  lib,
  options,
  ...
}:
let
  drives = config.virtualisation.qemu.drives;
  # QEMU's id of a drive is `drive<i>`, its 1-based place in the list (qemu-vm.nix).
  storeIndex = builtins.foldl' (
    found: i:
    if found == null && (builtins.elemAt drives i).name or null == "nix-store" then i + 1 else found
  ) null (builtins.genList (i: i) (builtins.length drives));
in
lib.optionalAttrs (options ? virtualisation.useNixStoreImage) {
  virtualisation.useNixStoreImage = lib.mkDefault (!config.virtualisation.useBootLoader);
  # `-set` changes a drive defined before it on QEMU's command line: qemu-vm.nix's start
  # script puts the drives before these options.
  virtualisation.qemu.options = lib.optional (
    storeIndex != null
  ) "-set drive.drive${toString storeIndex}.readonly=on";
}
