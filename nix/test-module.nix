# A module for one NixOS test (`pkgs.testers.runNixOSTest { imports = [ this ]; ... }`):
# with `nixos-test-ng.enable = true` the test's `driver` is nixos-test-ng, whatever nixpkgs'
# own driver.nix would build. It writes the generation-C configuration (nix/lib.nix) from the
# test's nodes and containers, checks the script's names before any build of the run
# (`nixos-test-ng check`, in place of pyflakes; `skipLint` turns it off) and wraps
# `nixos-test-driver` with `--config`, `--log-level` and `extraDriverArgs`, as driver.nix
# does. `driverInteractive` follows, since the interactive re-evaluation imports this module
# too. `nixos-test-ng.snapshots` makes the VMs snapshottable (nix/snapshots.nix on every node).
# A node importing nix/vmm.nix with `nixos-test-ng.backend = "firecracker"` (or
# "cloud-hypervisor") is written into the configuration inline, and the wrapper names the
# VMM's binary from hostPkgs.
#
# Not evaluated against nixpkgs on the project's own machines: see README.md, section Nix.
{
  config,
  lib,
  hostPkgs,
  ...
}:
let
  cfg = config.nixos-test-ng;
  ntng = import ./lib.nix;

  package = cfg.package.override {
    inherit (config) enableOCR extraPythonPackages;
    qemu_pkg = config.qemu.package;
    enableNspawn = (config.containers or { }) != { };
  };

  testScriptFile = hostPkgs.writeText "test-script" config.testScriptString;

  test = ntng.fromNixosTest {
    inherit (config) name globalTimeout extraDriverArgs;
    inherit (cfg) pytestArgs;
    inherit (config) nodes;
    containers = config.containers or { };
    testScript = testScriptFile;
    enableSshBackdoor = config.sshBackdoor.enable or false;
  };

  configFile = hostPkgs.writeText "driver-configuration.json" (ntng.driverConfigurationJSON test);

  # The binary of each VMM a node runs on (nix/vmm.nix), in the variable the driver reads
  # first (crates/engine/src/vmm/binary.rs).
  vmmBinaries = {
    firecracker = [
      "NIXOS_TEST_NG_FIRECRACKER"
      "${hostPkgs.firecracker}/bin/firecracker"
    ];
    cloud-hypervisor = [
      "NIXOS_TEST_NG_CLOUD_HYPERVISOR"
      "${hostPkgs.cloud-hypervisor}/bin/cloud-hypervisor"
    ];
  };
  nodeKinds = map (n: n.kind) (builtins.attrValues (ntng.normalize test).nodes);
  setVmmBinaries = lib.concatMap (
    kind: lib.optionals (builtins.elem kind nodeKinds) ([ "--set" ] ++ vmmBinaries.${kind})
  ) (builtins.attrNames vmmBinaries);

  # Inserted into the wrapper as they are, as driver.nix does with extraDriverArgs.
  addFlags = [
    "--config ${configFile}"
  ]
  ++ lib.optional (config ? logLevel) "--log-level ${config.logLevel}"
  ++ config.extraDriverArgs;
  # After the caller's arguments (run.nix passes `-o $out`): the script, then pytest's.
  appendFlags = lib.optionals (cfg.pytestArgs != [ ]) (
    [
      "--"
      "${testScriptFile}"
    ]
    ++ cfg.pytestArgs
  );

  driver =
    hostPkgs.runCommand "nixos-test-driver-${config.name}"
      {
        nativeBuildInputs = [ hostPkgs.makeWrapper ];
        preferLocalBuild = true;
        passthru = config.passthru;
        meta = config.meta // {
          mainProgram = "nixos-test-driver";
        };
      }
      ''
        mkdir -p $out/bin
        cp ${testScriptFile} $out/test-script
        ${lib.optionalString (!config.skipLint) ''
          echo "Checking the test script (nixos-test-ng check; disable: skipLint)"
          ${package}/bin/nixos-test-ng check --config ${configFile} $out/test-script
        ''}
        ln -s ${package}/bin/nixos-test-driver $out/bin/nixos-test-driver
        wrapProgram $out/bin/nixos-test-driver \
          ${lib.escapeShellArgs (
            lib.concatMap (flag: [
              "--add-flags"
              flag
            ]) addFlags
          )} \
          ${lib.escapeShellArgs setVmmBinaries} \
          ${lib.optionalString (appendFlags != [ ]) (
            "--append-flags " + lib.escapeShellArg (lib.escapeShellArgs appendFlags)
          )}
      '';
in
{
  options.nixos-test-ng = {
    enable = lib.mkEnableOption "nixos-test-ng as this test's driver";
    package = lib.mkOption {
      type = lib.types.package;
      default = hostPkgs.nixos-test-ng or (hostPkgs.python3Packages.callPackage ./package.nix { });
      defaultText = lib.literalExpression "pkgs.nixos-test-ng, else built from this checkout";
      description = "The nixos-test-ng package whose `nixos-test-driver` runs the test.";
    };
    snapshots = lib.mkOption {
      type = lib.types.bool;
      default = false;
      example = true;
      description = ''
        Make the VMs snapshottable, for `machine.snapshot()` and `driver.snapshot_all()` and to
        isolate pytest-style tests (`@pytest.mark.isolated`, `--isolated`) by snapshot: every
        node gets its Nix store as a read-only disk image (`virtualisation.useNixStoreImage`,
        built when the VM starts) instead of the host's store over 9p, which QEMU cannot save.
        Without it, a snapshot of a NixOS VM is refused, and isolated tests restart their
        machines instead (slower, same result). Not derived from the test script: a script
        that interpolates its nodes' configuration would make that a cycle.
      '';
    };
    pytestArgs = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      example = [
        "-k"
        "test_login"
      ];
      description = "Arguments for pytest after the script (pytest-style scripts), e.g. a `-k` selection.";
    };
  };

  config = lib.mkIf cfg.enable {
    driver = lib.mkForce driver;
    defaults = lib.mkIf cfg.snapshots ./snapshots.nix;
  };
}
