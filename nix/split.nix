# One NixOS test per selected pytest test: `{ <testName> = <test derivation>; }`, each built on
# its own (Hydra and remote builders spread them; each boots its own machines). `module` is
# the test as given to runNixOSTest; it must be a pytest-style script. Each test gets
# nix/test-module.nix with `pytestArgs = [ "-k" <expression> ]`, where the expression selects
# that test and not the others whose names contain its name.
#
#   checks = import ./nix/split.nix { inherit pkgs; module = ./my-test.nix;
#     testNames = [ "test_login" "test_logout" ]; };
{
  pkgs,
  module,
  testNames,
  # the nixos-test-ng package; default: the test module's (pkgs.nixos-test-ng, else built here)
  package ? null,
}:
let
  ntng = import ./lib.nix;
in
builtins.mapAttrs (
  _: selection:
  pkgs.testers.runNixOSTest {
    imports = [
      ./test-module.nix
      module
    ];
    nixos-test-ng = {
      enable = true;
      pytestArgs = selection;
    }
    // (if package == null then { } else { inherit package; });
  }
) (ntng.splitSelections testNames)
