# nixos-test-ng as a nixpkgs package: the Rust engine and the Python package built with
# nixpkgs' Rust and maturin hooks, its commands wrapped with QEMU, vde2, socat and tesseract on
# PATH. Call it with `python3Packages.callPackage ./package.nix { }` (nix/overlay.nix does).
#
# The arguments after the first group are the ones nixpkgs' testing/driver.nix passes to
# `pythonTestDriverPackage.override` (enableOCR, extraPythonPackages, qemu_pkg, enableNspawn),
# so that this package can stand in for `nixos-test-driver`.
#
# Not built on the project's own machines (no nixpkgs there): written against nixpkgs'
# documented interfaces; see README.md, section Nix.
{
  lib,
  buildPythonApplication,
  rustPlatform,
  cargo,
  rustc,
  python,
  pyflakes,
  pytest,
  ptpython,

  coreutils,
  qemu_test,
  qemu_pkg ? qemu_test,
  socat,
  systemd,
  tesseract,
  util-linux,
  vde2,

  # nixos-test-ng's OCR runs tesseract on the host; on by default for the standalone
  # package, and what driver.nix says (`enableOCR`) for a test.
  enableOCR ? true,
  enableNspawn ? false,
  extraPythonPackages ? (_: [ ]),
}:
let
  fs = lib.fileset;
  root = ../.;
  # English only, as nixpkgs' driver.nix configures tesseract for its driver.
  tesseractEng = tesseract.override { enableLanguages = [ "eng" ]; };
  runtimePath = [
    coreutils
    qemu_pkg
    socat
    vde2
    util-linux
  ]
  ++ lib.optionals enableOCR [ tesseractEng ]
  ++ lib.optionals enableNspawn [ systemd ];
in
buildPythonApplication {
  pname = "nixos-test-ng";
  version = (lib.importTOML ../pyproject.toml).project.version;
  pyproject = true;

  src = fs.toSource {
    inherit root;
    fileset = fs.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../crates
      ../python
      ../pyproject.toml
      ../README.md
    ];
  };

  # Every dependency comes from crates.io, so Cargo.lock's checksums suffice (no hashes here).
  cargoDeps = rustPlatform.importCargoLock { lockFile = ../Cargo.lock; };

  build-system = [ rustPlatform.maturinBuildHook ];
  nativeBuildInputs = [
    rustPlatform.cargoSetupHook
    cargo
    rustc
  ];

  dependencies = [
    pyflakes
    pytest
    ptpython
  ]
  ++ extraPythonPackages python.pkgs;

  makeWrapperArgs = [
    "--prefix"
    "PATH"
    ":"
    (lib.makeBinPath runtimePath)
  ];

  # The `test_driver` module names that nixpkgs' test-script-prepend.py imports for its mypy
  # step (`from test_driver.machine import QemuMachine`, ...), as stubs over nixos-test-ng's
  # own classes.
  postInstall = ''
    cp -r ${./test-driver-types}/test_driver "$out/${python.sitePackages}/"
  '';

  pythonImportsCheck = [ "nixos_test_ng" ];

  passthru = {
    inherit enableOCR enableNspawn runtimePath;
  };

  meta = {
    description = "A NixOS integration-test driver with a Rust engine, a drop-in replacement for nixos-test-driver";
    license = lib.licenses.mit;
    mainProgram = "nixos-test-driver";
    platforms = lib.platforms.linux;
  };
}
