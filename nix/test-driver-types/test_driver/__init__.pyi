# Typing stand-ins for the module names of nixpkgs' test driver (`test_driver`), over
# nixos-test-ng's classes: nixpkgs' driver.nix type-checks a test script with mypy after its
# test-script-prepend.py, which imports these names. Installed by nix/package.nix.
