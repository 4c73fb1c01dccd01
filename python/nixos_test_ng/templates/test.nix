# @NIX_FILE@: @SCRIPT_FILE@ as a NixOS test, with nixos-test-ng as its driver (nixpkgs'
# `runNixOSTest` plus nixos-test-ng's test module).
# (written by `nixos-test-ng new @TEMPLATE@ --nix`)
#
#   nix-build @NIX_FILE_SH@ -I nixos-test-ng=/path/to/nixos-test-ng   # nixpkgs from <nixpkgs>
#
# In a flake with nixos-test-ng as an input:
#   checks.x86_64-linux.@NAME@ = import @NIX_FILE_PATH@ { inherit pkgs nixos-test-ng; };
{
  pkgs ? import <nixpkgs> { },
  nixos-test-ng ? <nixos-test-ng>,
}:
pkgs.testers.runNixOSTest {
  # toString: the module from the checkout as it is (a path would copy the checkout)
  imports = [ "${toString nixos-test-ng}/nix/test-module.nix" ];
  nixos-test-ng.enable = true;

  name = "@NAME@";
@OPTIONS@@MACHINES@
  testScript = builtins.readFile @SCRIPT_PATH@;
}
