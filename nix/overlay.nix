# The overlay: `nixos-test-ng`, and nixpkgs' `nixos-test-driver` replaced by it, so that
# `pkgs.testers.runNixOSTest` (and every NixOS test of that package set) runs with
# nixos-test-ng. nixpkgs' testing/driver.nix takes the driver from
# `hostPkgs.nixos-test-driver` (option `pythonTestDriverPackage`) and calls `.override` on it
# with enableOCR, extraPythonPackages, qemu_pkg and enableNspawn, which package.nix accepts.
# Older nixpkgs, whose driver.nix calls `../test-driver` directly, need nix/test-module.nix.
final: prev: {
  nixos-test-ng = final.python3Packages.callPackage ./package.nix { };
  nixos-test-driver = final.nixos-test-ng;
}
