# Stand-in for nixpkgs' nixos/lib/make-disk-image.nix (nix/vmm.nix's root image): records
# how it was called; its output is a fixed store path.
args: {
  _standin = "make-disk-image";
  inherit (args)
    format
    partitionTableType
    label
    diskSize
    copyChannel
    ;
  system = args.config.system.build.toplevel;
  outPath = "/nix/store/00000000000000000000000000000000-nixos-disk-image";
}
