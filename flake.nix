{
  description = "nixos-test-ng: a NixOS integration-test driver with a Rust engine, a drop-in replacement for nixpkgs' nixos-test-driver";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      packageFor = pkgs: self.packages.${pkgs.stdenv.hostPlatform.system}.default;
    in
    {
      # `nixpkgs.overlays = [ nixos-test-ng.overlays.default ];`: runNixOSTest uses nixos-test-ng.
      overlays.default = import ./nix/overlay.nix;

      packages = forAllSystems (pkgs: rec {
        nixos-test-ng = pkgs.python3Packages.callPackage ./nix/package.nix { };
        default = nixos-test-ng;
      });

      # `imports = [ nixos-test-ng.nixosTestModules.default ]; nixos-test-ng.enable = true;`
      # in one test.
      nixosTestModules.default = ./nix/test-module.nix;

      # nix/lib.nix (pure), plus:
      #   runTest pkgs module            runNixOSTest with nixos-test-ng as the driver
      #   split pkgs module testNames    one such test per pytest test (`-k`)
      lib = import ./nix/lib.nix // {
        runTest =
          pkgs: module:
          pkgs.testers.runNixOSTest {
            imports = [
              ./nix/test-module.nix
              module
            ];
            nixos-test-ng = {
              enable = true;
              package = lib.mkDefault (packageFor pkgs);
            };
          };
        split =
          pkgs: module: testNames:
          import ./nix/split.nix {
            inherit pkgs module testNames;
            package = packageFor pkgs;
          };
      };

      checks = forAllSystems (
        pkgs:
        import ./nix/checks.nix {
          inherit pkgs;
          package = packageFor pkgs;
        }
      );

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [
            cargo
            rustc
            clippy
            rustfmt
            maturin
            ruff
            (python3.withPackages (ps: [
              ps.pytest
              ps.pyflakes
              ps.ptpython
              ps.mypy
            ]))
            qemu
            vde2
            socat
            tesseract
          ];
        };
      });
    };
}
