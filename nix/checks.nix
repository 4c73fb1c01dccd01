# The flake's checks: the examples as NixOS tests run by nixos-test-ng, through the test module
# (any nixpkgs with runNixOSTest), through the overlay (nixpkgs' own driver.nix with
# nixos-test-driver replaced) and split into one test per pytest test.
{
  pkgs,
  package,
}:
let
  lib = pkgs.lib;

  withModule =
    test:
    pkgs.testers.runNixOSTest {
      imports = [
        ./test-module.nix
        test
      ];
      nixos-test-ng = {
        enable = true;
        inherit package;
      };
    };

  withOverlay = (pkgs.extend (import ./overlay.nix)).testers.runNixOSTest;

  # The examples' machines: nc (with -q and -N, as Debian's), ping, port 8000 open.
  node =
    { pkgs, ... }:
    {
      virtualisation.vlans = [ 1 ];
      environment.systemPackages = [ pkgs.netcat-openbsd ];
      networking.firewall.allowedTCPPorts = [ 8000 ];
    };

  vlanEcho = {
    name = "vlan-echo";
    nodes = {
      server = node;
      client = node;
    };
    testScript = builtins.readFile ../examples/vlan_echo.py;
  };

  vlanEchoPytest = vlanEcho // {
    name = "vlan-echo-pytest";
    testScript = builtins.readFile ../examples/vlan_echo_pytest.py;
  };

  systemdService = {
    name = "systemd-service";
    nodes.server = node;
    testScript = builtins.readFile ../examples/systemd_service.py;
  };

  split = import ./split.nix {
    inherit pkgs package;
    module = vlanEchoPytest;
    testNames = [
      "test_server_listens"
      "test_client_reaches_the_server"
      "test_blocking_cuts_the_client_off"
    ];
  };
in
{
  vlan-echo = withModule vlanEcho;
  vlan-echo-pytest = withModule vlanEchoPytest;
  systemd-service = withModule systemdService;
  vlan-echo-overlay = withOverlay vlanEcho;
}
// lib.mapAttrs' (n: lib.nameValuePair "vlan-echo-pytest-${n}") split
