# nixos-test-ng's Nix library: pure functions, no nixpkgs. They turn a test description into
# what `nixos-test-driver` consumes, the way nixpkgs' nixos/lib/testing/{driver,network,
# driver-configuration}.nix do.
#
#   let ntng = import ./nix/lib.nix; in ntng.driverConfigurationJSON test
#
# A test description:
#
#   {
#     name = "vlan-echo";                      # optional, default "test"
#     nodes.server = {
#       kind = "qemu";                         # "nspawn", "firecracker", "cloud-hypervisor";
#                                              # default "qemu"
#       startScript = "/nix/store/...-vm/bin/run-server-vm";
#       vlans = [ 1 ];                         # default [ 1 ], as virtualisation.vlans
#     };
#     nodes.micro = {                          # a Firecracker / Cloud Hypervisor machine:
#       kind = "firecracker";                  # its `startScript` (run-micro-firecracker),
#       vmm = {                                # or its configuration inline, as here
#         kernel = "/nix/store/...-linux-dev/vmlinux";   # uncompressed (Firecracker)
#         initrd = null;                       # optional
#         rootDisk = "/nix/store/...-root/root.img";     # optional, the guest's /dev/vda
#         rootReadOnly = false;                # optional
#         disks = [ { path = "/data.img"; readOnly = true; } ];  # optional
#         cmdline = "console=ttyS0 reboot=k panic=1 root=/dev/vda";
#         vcpus = 1;                           # optional
#         memoryMib = 512;                     # optional
#       };
#     };
#     testScript = ./test.py;                  # the script file (a path or a string)
#     globalTimeout = 3600;                    # seconds; default 3600, as driver.nix
#     extraDriverArgs = [ ];                   # flags before the script
#     pytestArgs = [ ];                        # arguments after the script (pytest-style)
#     enableSshBackdoor = false;
#     domain = null;                           # /etc/hosts names `<node>.<domain>` too
#   }
let
  inherit (builtins)
    all
    any
    attrNames
    attrValues
    concatMap
    concatStringsSep
    elem
    elemAt
    filter
    foldl'
    genList
    head
    isAttrs
    isBool
    isInt
    isList
    isPath
    isString
    length
    listToAttrs
    mapAttrs
    match
    replaceStrings
    sort
    stringLength
    substring
    throw
    toJSON
    ;

  fail = msg: throw "nixos-test-ng: ${msg}";

  # -- helpers that nixpkgs' lib would provide ------------------------------------------------

  chars = s: genList (i: substring i 1 s) (stringLength s);
  unique = foldl' (acc: x: if elem x acc then acc else acc ++ [ x ]) [ ];
  mod = a: b: a - (a / b) * b;
  hexDigit = n: substring n 1 "0123456789abcdef";
  toHex2 = n: hexDigit (n / 16) + hexDigit (mod n 16);
  imap1 = f: list: genList (i: f (i + 1) (elemAt list i)) (length list);
  hasInfix =
    needle: hay:
    let
      n = stringLength needle;
    in
    n <= stringLength hay
    && any (i: substring i n hay == needle) (genList (i: i) (stringLength hay - n + 1));
  upper = chars "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
  lower = chars "abcdefghijklmnopqrstuvwxyz";
  toLower = replaceStrings upper lower;
  duplicates = list: unique (filter (x: length (filter (y: y == x) list) > 1) list);

  # A path, a string or a derivation as the string the driver gets. A path literal is copied
  # into the store (as nixpkgs does with a script given as a path).
  pathString =
    what: x:
    if isPath x then
      "${x}"
    else if isString x then
      x
    else if isAttrs x && x ? outPath then
      "${x}"
    else
      fail "${what} must be a path or a string";

  # -- names and addresses -------------------------------------------------------------------

  # Upstream's pythonize_name: `re.sub(r"^[^A-Za-z_]|[^A-Za-z0-9_]", "_", name)`.
  pythonizeName =
    name:
    concatStringsSep "" (
      imap1 (
        i: c:
        if match (if i == 1 then "[A-Za-z_]" else "[A-Za-z0-9_]") c != null then c else "_"
      ) (chars name)
    );

  # Node numbers as nixpkgs' network.nix: the 1-based index among the sorted attribute names
  # of every node (VMs and containers share the numbering).
  nodeNumbers =
    nodes:
    listToAttrs (
      imap1 (i: name: {
        inherit name;
        value = i;
      }) (attrNames nodes)
    );

  # `-device virtio-net-pci,...,mac=` of qemu-common.nix: 52:54:00:12:<vlan>:<node>.
  macAddress =
    vlan: number:
    if vlan < 0 || vlan > 255 || number < 0 || number > 255 then
      fail "a MAC address needs a VLAN and a node number within 0..255 (got ${toString vlan}, ${toString number})"
    else
      "52:54:00:12:${toHex2 vlan}:${toHex2 number}";

  ipAddress = vlan: number: "192.168.${toString vlan}.${toString number}";

  # -- the test description, checked and completed --------------------------------------------

  kinds = [
    "qemu"
    "nspawn"
  ]
  ++ vmmKinds;

  # The kinds of machine a VMM runs, configured by a start script or inline (`vmm`); in the
  # generation-C configuration they are `vms` entries with a `backend`.
  vmmKinds = [
    "firecracker"
    "cloud-hypervisor"
  ];

  # A node's `vmm`, checked, as the `--config` entry's keys (the start-script JSON's,
  # crates/engine/src/vmm/spec.rs); the engine checks the files when it reads them.
  vmmKeys = [
    "kernel"
    "initrd"
    "rootDisk"
    "rootReadOnly"
    "disks"
    "cmdline"
    "vcpus"
    "memoryMib"
  ];
  checkVmm =
    name: vmm:
    let
      what = "node `${name}`: `vmm";
      unknown = filter (k: !elem k vmmKeys) (attrNames vmm);
      optionalPath = key: if (vmm.${key} or null) == null then null else pathString "${what}.${key}`" vmm.${key};
      count =
        key: default:
        let
          v = vmm.${key} or default;
        in
        if isInt v && v >= 1 then v else fail "${what}.${key}` must be a positive integer";
      disk =
        i: d:
        if !isAttrs d || !(d ? path) then
          fail "${what}.disks` item ${toString i} must be { path; readOnly ? false; }"
        else
          {
            path = pathString "${what}.disks` item ${toString i}" d.path;
            read_only = d.readOnly or false;
          };
    in
    if !isAttrs vmm then
      fail "${what}` must be an attribute set"
    else if unknown != [ ] then
      fail "${what}.${head unknown}` is not one of ${concatStringsSep ", " vmmKeys}"
    else if !(vmm ? kernel) then
      fail "${what}.kernel` is missing (the guest's kernel; Firecracker needs an uncompressed vmlinux)"
    else if !isString (vmm.cmdline or null) then
      fail "${what}.cmdline` must be a string (the kernel's command line)"
    else if !isBool (vmm.rootReadOnly or false) then
      fail "${what}.rootReadOnly` must be true or false"
    else if !isList (vmm.disks or [ ]) then
      fail "${what}.disks` must be a list"
    else
      {
        kernel = pathString "${what}.kernel`" vmm.kernel;
        initrd = optionalPath "initrd";
        root_disk = optionalPath "rootDisk";
        root_read_only = vmm.rootReadOnly or false;
        disks = imap1 disk (vmm.disks or [ ]);
        inherit (vmm) cmdline;
        vcpus = count "vcpus" 1;
        memory_mib = count "memoryMib" 512;
      };

  checkVlans =
    name: vlans:
    if !isList vlans then
      fail "node `${name}`: `vlans` must be a list of integers"
    else if !all (v: isInt v && v >= 1 && v <= 255) vlans then
      fail "node `${name}`: every VLAN must be an integer within 1..255 (got ${toJSON vlans})"
    else if length (unique vlans) != length vlans then
      fail "node `${name}`: a VLAN is listed twice in ${toJSON vlans}"
    else
      vlans;

  normalizeNode =
    numbers: name: node:
    let
      kind = node.kind or "qemu";
      vlans = checkVlans name (node.vlans or [ 1 ]);
      number = numbers.${name};
      interfaces = imap1 (i: vlan: {
        name = "eth${toString i}";
        inherit vlan;
        mac = macAddress vlan number;
        address = ipAddress vlan number;
        prefixLength = 24;
      }) vlans;
    in
    if name == "" then
      fail "a node has an empty name"
    else if !isAttrs node then
      fail "node `${name}` must be an attribute set"
    else if !elem kind kinds then
      fail "node `${name}`: kind `${toString kind}` is not one of ${concatStringsSep ", " kinds}"
    else if node ? vmm && !elem kind vmmKinds then
      fail "node `${name}`: only a ${concatStringsSep " or " vmmKinds} node has `vmm`; a ${kind} node needs `startScript`"
    else if node ? vmm && node ? startScript then
      fail "node `${name}` has both `startScript` and `vmm`: give one"
    else if !(node ? startScript) && !(node ? vmm) then
      fail "node `${name}` has no `startScript`${
        if elem kind vmmKinds then " (or `vmm`, its configuration inline)" else ""
      }"
    else
      {
        inherit
          name
          kind
          vlans
          number
          interfaces
          ;
        startScript =
          if node ? vmm then null else pathString "node `${name}`: `startScript`" node.startScript;
        vmm = if node ? vmm then checkVmm name node.vmm else null;
        pythonName = pythonizeName name;
        primaryAddress = if vlans == [ ] then null else ipAddress (head vlans) number;
      };

  # The description with defaults filled in, checked; nodes gain `number`, `pythonName`,
  # `interfaces` ([{ name, vlan, mac, address, prefixLength }]) and `primaryAddress`.
  normalize =
    test:
    let
      nodes0 = test.nodes or (fail "the test has no `nodes`");
      numbers = nodeNumbers nodes0;
      nodes = mapAttrs (normalizeNode numbers) nodes0;
      pyNames = map (n: n.pythonName) (attrValues nodes);
      clashes = duplicates pyNames;
      timeout = test.globalTimeout or 3600;
      pytestArgs = test.pytestArgs or [ ];
      extraDriverArgs = test.extraDriverArgs or [ ];
    in
    if !isAttrs nodes0 then
      fail "`nodes` must be an attribute set of nodes"
    else if length (attrNames nodes0) > 254 then
      fail "${toString (length (attrNames nodes0))} nodes; at most 254 fit in a 192.168.<vlan>.0/24 network"
    else if clashes != [ ] then
      fail "several nodes have the Python name `${head clashes}`; rename one of them"
    else if !(test ? testScript) then
      fail "the test has no `testScript`"
    else if !isInt timeout || timeout <= 0 then
      fail "`globalTimeout` must be a positive integer of seconds"
    else if !isList extraDriverArgs || !all isString extraDriverArgs then
      fail "`extraDriverArgs` must be a list of strings"
    else if !isList pytestArgs || !all isString pytestArgs then
      fail "`pytestArgs` must be a list of strings"
    else if !isBool (test.enableSshBackdoor or false) then
      fail "`enableSshBackdoor` must be true or false"
    else
      {
        name = test.name or "test";
        inherit nodes extraDriverArgs pytestArgs;
        testScript = pathString "`testScript`" test.testScript;
        globalTimeout = timeout;
        enableSshBackdoor = test.enableSshBackdoor or false;
        domain = test.domain or null;
      };

  nodesOfKind = kind: t: filter (n: n.kind == kind) (map (name: t.nodes.${name}) (attrNames t.nodes));

  # Generations A and B have no VMM machines (their flags name QEMU VMs and containers).
  noVmmNodes =
    generation: t:
    let
      vmm = filter (n: elem n.kind vmmKinds) (attrValues t.nodes);
    in
    if vmm != [ ] then
      fail "node `${(head vmm).name}`: generation ${generation} has no ${(head vmm).kind} machines; use generation C (`--config`)"
    else
      t;

  # Every VLAN of every node, once, sorted.
  vlansOf = t: sort (a: b: a < b) (unique (concatMap (n: n.vlans) (attrValues t.nodes)));

  # -- what the driver consumes ---------------------------------------------------------------

  # Generation C's DriverConfiguration (driver-configuration.nix), for `--config FILE`.
  driverConfiguration =
    test:
    let
      t = normalize test;
      section =
        kinds:
        listToAttrs (
          map (n: {
            inherit (n) name;
            value = {
              inherit (n) name;
            }
            // (if n.vmm == null then { start_script = n.startScript; } else n.vmm // { inherit (n) vlans; })
            // (if elem n.kind vmmKinds then { backend = n.kind; } else { });
          }) (concatMap (kind: nodesOfKind kind t) kinds)
        );
    in
    {
      vms = section ([ "qemu" ] ++ vmmKinds);
      containers = section [ "nspawn" ];
      vlans = vlansOf t;
      global_timeout = t.globalTimeout;
      enable_ssh_backdoor = t.enableSshBackdoor;
      test_script = t.testScript;
    };

  driverConfigurationJSON = test: toJSON (driverConfiguration test);

  # Generation A's wrapper (`wrapProgram --set`): VM names come from `run-<name>-vm`.
  generationAEnvironment =
    test:
    let
      t = noVmmNodes "A" (normalize test);
      vms = nodesOfKind "qemu" t;
      wrong = filter (n: vmNameOfScript n.startScript != n.name) vms;
    in
    if nodesOfKind "nspawn" t != [ ] then
      fail "generation A has no containers; use generation B or C"
    else if wrong != [ ] then
      fail "node `${(head wrong).name}`: generation A names a VM after its start script (`run-<name>-vm`), which names this one `${vmNameOfScript (head wrong).startScript}` (`${(head wrong).startScript}`)"
    else
      {
        startScripts = concatStringsSep " " (map (n: n.startScript) vms);
      }
      // sharedEnvironment t;

  # Generation B's environment defaults: names are given, containers are separate.
  generationBEnvironment =
    test:
    let
      t = noVmmNodes "B" (normalize test);
      vms = nodesOfKind "qemu" t;
      containers = nodesOfKind "nspawn" t;
      words = what: nodes: concatStringsSep " " (map what nodes);
    in
    {
      vmStartScripts = words (n: n.startScript) vms;
      vmNames = words (n: n.name) vms;
      containerStartScripts = words (n: n.startScript) containers;
      containerNames = words (n: n.name) containers;
    }
    // sharedEnvironment t;

  # What generations A and B share, of a normalized test.
  sharedEnvironment = t: {
    vlans = concatStringsSep " " (map toString (vlansOf t));
    testScript = t.testScript;
    globalTimeout = toString t.globalTimeout;
  };

  # The name the driver gives a VM from its start script, as upstream (and the engine):
  # `re.search("run-(.+)-vm$", script)`, so the leftmost `run-` counts; "machine" otherwise
  # (and for a script of several lines, which no start script is).
  vmNameOfScript =
    script:
    let
      multiLine = length (builtins.split "\n" script) > 1;
      before = head (builtins.split "run-" script);
      rest = substring (stringLength before + 4) (stringLength script) script;
      n = stringLength rest;
    in
    if before == script || n < 4 || substring (n - 3) 3 rest != "-vm" || match ".*\n.*" script != null then
      "machine"
    else
      substring 0 (n - 3) rest;

  # The driver's arguments after `-o DIR`: `--config FILE` for generation C (FILE holds
  # driverConfigurationJSON), the extra flags, then the script and pytest's arguments when
  # there are any (a script given on the command line wins over the configuration's).
  driverArgs =
    {
      test,
      generation ? "C",
      configFile ? null,
    }:
    let
      t = normalize test;
      config =
        if generation != "C" then
          [ ]
        else if configFile == null then
          fail "generation C needs the `configFile` holding driverConfigurationJSON"
        else
          [
            "--config"
            (pathString "`configFile`" configFile)
          ];
    in
    if !elem generation [ "A" "B" "C" ] then
      fail "generation `${toString generation}` is not one of A, B, C"
    else
      config
      ++ t.extraDriverArgs
      ++ (
        if t.pytestArgs == [ ] then
          [ ]
        else
          [
            "--"
            t.testScript
          ]
          ++ t.pytestArgs
      );

  # /etc/hosts as network.nix writes it: every node's first address,
  # `<ip> [<host>.<domain>] <host>`, in node order.
  hostsEntries =
    test:
    let
      t = normalize test;
      entry =
        n:
        "${n.primaryAddress} ${
          if t.domain == null then "" else "${n.name}.${t.domain} "
        }${n.name}";
    in
    map entry (filter (n: n.primaryAddress != null) (map (name: t.nodes.${name}) (attrNames t.nodes)));

  hostsFile = test: concatStringsSep "" (map (l: l + "\n") (hostsEntries test));

  # The names a script sees for the machines (driver.nix's PYFLAKES_BUILTINS part): each
  # pythonized node name, `machine` when there is exactly one node, and `vlan<N>`.
  machineSymbols =
    test:
    let
      t = normalize test;
      names = map (n: n.pythonName) (attrValues t.nodes);
    in
    unique (
      names
      ++ (if length names == 1 then [ "machine" ] else [ ])
      ++ map (v: "vlan${toString v}") (vlansOf t)
    );

  # -- from a NixOS test's evaluated configuration ------------------------------------------

  # A test description from what nixpkgs' test framework holds (`config.nodes`,
  # `config.containers`: NixOS configurations), as driver-configuration.nix reads them:
  # the start script is `bin/<mainProgram>` of `system.build.vm` (`system.build.nspawn`),
  # and a node's VLANs are `virtualisation.vlans` plus those of `virtualisation.interfaces`.
  # A node with `nixos-test-ng.backend = "firecracker"` (or "cloud-hypervisor", nix/vmm.nix)
  # is that VMM's machine, configured inline from its `nixos-test-ng.vmm`.
  fromNixosTest =
    {
      name ? "test",
      nodes,
      containers ? { },
      testScript,
      globalTimeout ? 3600,
      extraDriverArgs ? [ ],
      pytestArgs ? [ ],
      enableSshBackdoor ? false,
    }:
    let
      vlansOfNode =
        n:
        unique (
          (n.virtualisation.vlans or [ ])
          ++ map (i: i.vlan) (
            filter (i: (i.vlan or null) != null) (attrValues (n.virtualisation.interfaces or { }))
          )
        );
      # `build` is the attribute of system.build and the script's suffix: "vm" or "nspawn".
      describe =
        kind: build: nodeName: n:
        let
          drv = n.system.build.${build};
        in
        {
          inherit kind;
          startScript = "${drv}/bin/${drv.meta.mainProgram or "run-${n.system.name or nodeName}-${build}"}";
          vlans = vlansOfNode n;
        };
      # A node choosing a VMM (nix/vmm.nix: `nixos-test-ng.backend`) is described by its
      # `nixos-test-ng.vmm`, the kernel, initrd and root image that module derives.
      describeNode =
        nodeName: n:
        let
          backend = n.nixos-test-ng.backend or "qemu";
        in
        if backend == "qemu" then
          describe "qemu" "vm" nodeName n
        else
          {
            kind = backend;
            vmm = n.nixos-test-ng.vmm;
            vlans = vlansOfNode n;
          };
      clash = filter (n: nodes ? ${n}) (attrNames containers);
    in
    if clash != [ ] then
      fail "`${head clash}` is both a node and a container"
    else
      {
        inherit
          name
          testScript
          globalTimeout
          extraDriverArgs
          pytestArgs
          enableSshBackdoor
          ;
        nodes = mapAttrs describeNode nodes // mapAttrs (describe "nspawn" "nspawn") containers;
      };

  # -- splitting a pytest-style test ----------------------------------------------------------

  # pytest's `-k` matches substrings, case-insensitively: select `name` and not the other
  # names that contain it, so each name selects exactly its own test(s).
  selectExpression =
    names: name:
    let
      others = filter (o: o != name && hasInfix (toLower name) (toLower o)) names;
    in
    concatStringsSep " and not " ([ name ] ++ others);

  checkTestNames =
    names:
    let
      bad = filter (n: !isString n || match "[A-Za-z_][][A-Za-z0-9_.:+/-]*" n == null) names;
      keyword = filter (n: elem n [ "and" "or" "not" ]) names;
    in
    if !isList names || names == [ ] then
      fail "`testNames` must be a non-empty list of test names"
    else if bad != [ ] then
      fail "test name `${toString (head bad)}` cannot be selected with `-k` (letters, digits, `_`, `.`, `:`, `+`, `/`, `-`, `[`, `]`)"
    else if keyword != [ ] then
      fail "test name `${head keyword}` is a `-k` keyword"
    else if duplicates names != [ ] then
      fail "test name `${head (duplicates names)}` is listed twice"
    else
      names;

  # `{ <testName> = [ "-k" <expression> ]; }`: pytest's arguments selecting each test.
  splitSelections =
    testNames:
    let
      names = checkTestNames testNames;
    in
    listToAttrs (
      map (n: {
        name = n;
        value = [
          "-k"
          (selectExpression names n)
        ];
      }) names
    );

  # One test per selected test name, for one derivation each (Hydra and remote builders
  # spread them; each boots its own machines): `{ <testName> = test with `-k` added; }`.
  splitTest =
    test: testNames:
    let
      t = normalize test;
    in
    mapAttrs (n: selection: test // {
      name = "${t.name}-${n}";
      pytestArgs = t.pytestArgs ++ selection;
    }) (splitSelections testNames);
in
{
  inherit
    pythonizeName
    vmNameOfScript
    nodeNumbers
    macAddress
    ipAddress
    normalize
    driverConfiguration
    driverConfigurationJSON
    generationAEnvironment
    generationBEnvironment
    driverArgs
    hostsEntries
    hostsFile
    machineSymbols
    selectExpression
    splitSelections
    splitTest
    fromNixosTest
    ;
  vlans = test: vlansOf (normalize test);
}
