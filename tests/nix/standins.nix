# Stand-ins for the parts of nixpkgs that flake.nix and nix/{package,overlay,test-module,
# split,checks}.nix use, for evaluating them where nixpkgs is not available. Each stand-in
# records what it was called with; the real functions are not imitated beyond that (the
# shell quoting helpers excepted, which follow nixpkgs' lib/strings.nix).
let
  inherit (builtins)
    concatStringsSep
    functionArgs
    intersectAttrs
    isFunction
    listToAttrs
    map
    mapAttrs
    replaceStrings
    ;

  escapeShellArg = s: "'${replaceStrings [ "'" ] [ "'\\''" ] (toString s)}'";

  lib = {
    genAttrs =
      names: f:
      listToAttrs (
        map (n: {
          name = n;
          value = f n;
        }) names
      );
    nameValuePair = name: value: { inherit name value; };
    mapAttrs' = f: set: listToAttrs (map (n: f n set.${n}) (builtins.attrNames set));
    optional = c: x: if c then [ x ] else [ ];
    optionalAttrs = c: set: if c then set else { };
    optionals = c: xs: if c then xs else [ ];
    optionalString = c: s: if c then s else "";
    concatMap = f: l: builtins.concatLists (map f l);
    makeBinPath = ps: concatStringsSep ":" (map (p: "${p}/bin") ps);
    inherit escapeShellArg;
    escapeShellArgs = l: concatStringsSep " " (map escapeShellArg l);
    importTOML = f: builtins.fromTOML (builtins.readFile f);
    fileset = {
      unions = files: files;
      toSource = args: {
        _standin = "fileset.toSource";
        inherit (args) root;
        files = map toString args.fileset;
        outPath = "/nix/store/00000000000000000000000000000000-source";
      };
    };
    mkDefault = content: {
      _type = "override";
      priority = 1000;
      inherit content;
    };
    mkForce = content: {
      _type = "override";
      priority = 50;
      inherit content;
    };
    mkIf = condition: content: {
      _type = "if";
      inherit condition content;
    };
    mkOption = args: args // { _type = "option"; };
    mkEnableOption = name: {
      _type = "option";
      default = false;
      description = "Whether to enable ${name}.";
    };
    literalExpression = text: {
      _type = "literalExpression";
      inherit text;
    };
    types = {
      package = "package";
      str = "str";
      bool = "bool";
      listOf = t: "listOf ${t}";
    };
    licenses.mit = "mit";
    platforms.linux = [ "x86_64-linux" ];
  };

  drv = name: {
    inherit name;
    type = "derivation";
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
  };

  # callPackage as nixpkgs': the function's arguments from the scope, then `args`, with
  # `.override` re-calling it.
  callPackageWith =
    scope: fn: args:
    let
      f = if isFunction fn then fn else import fn;
      call = a: f (intersectAttrs (functionArgs f) scope // a) // { override = b: call (a // b); };
    in
    call args;

  # A package set with overlays, as nixpkgs' fixpoint.
  mkPkgs =
    system: overlays:
    let
      base = final: {
        inherit lib;
        stdenv.hostPlatform.system = system;
        callPackage = callPackageWith final;
        extend = overlay: mkPkgs system (overlays ++ [ overlay ]);
        python3Packages = {
          callPackage = callPackageWith (final // final.python3Packages);
          buildPythonApplication = attrs: attrs // { _standin = "buildPythonApplication"; };
          python = drv "python3" // {
            sitePackages = "lib/python3.13/site-packages";
            pkgs = final.python3Packages;
          };
          pyflakes = drv "pyflakes";
          pytest = drv "pytest";
          ptpython = drv "ptpython";
          numpy = drv "numpy";
        };
        python3 = drv "python3" // {
          withPackages = f: drv "python3-with-packages" // { packages = f final.python3Packages; };
        };
        rustPlatform = {
          importCargoLock = args: { _standin = "importCargoLock"; } // args;
          cargoSetupHook = drv "cargo-setup-hook";
          maturinBuildHook = drv "maturin-build-hook";
        };
        tesseract = drv "tesseract" // {
          override = args: drv "tesseract-${concatStringsSep "-" args.enableLanguages}";
        };
        testers.runNixOSTest = module: {
          _standin = "runNixOSTest";
          inherit module;
        };
        mkShell = args: args // { _standin = "mkShell"; };
        writeText = name: text: drv name // { inherit text; };
        runCommand =
          name: env: script:
          drv name // { inherit env script; };
        makeWrapper = drv "make-wrapper";
      }
      // mapAttrs (n: _: drv n) {
        cargo = 1;
        rustc = 1;
        clippy = 1;
        rustfmt = 1;
        maturin = 1;
        ruff = 1;
        coreutils = 1;
        qemu = 1;
        qemu_test = 1;
        socat = 1;
        firecracker = 1;
        cloud-hypervisor = 1;
        systemd = 1;
        util-linux = 1;
        vde2 = 1;
      };
      fix = f: let x = f x; in x;
    in
    fix (final: builtins.foldl' (acc: o: acc // o final acc) (base final) overlays);
in
{
  inherit lib mkPkgs drv;
  nixpkgs = {
    inherit lib;
    legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] (system: mkPkgs system [ ]);
  };
}
