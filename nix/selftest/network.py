# Legacy-style self-test script: every machine has the interfaces, addresses and /etc/hosts
# that nix/lib.nix computed (NETWORK, prepended by nix/selftest.nix), and the client reaches
# the server by name over VLAN 1.
start_all()

for m in machines:
    node = NETWORK["nodes"][m.name]
    with subtest(f"{m.name}: the interfaces nix/lib.nix computed"):
        for iface in node["interfaces"]:
            mac = m.succeed(f"cat /sys/class/net/{iface['name']}/address").strip()
            t.assertEqual(mac, iface["mac"])
            m.succeed(f"ip -4 addr show {iface['name']} | grep -F 'inet {iface['address']}/24'")
    with subtest(f"{m.name}: the /etc/hosts entries nix/lib.nix computed"):
        for line in NETWORK["hosts"]:
            m.succeed(f"grep -qxF '{line}' /etc/hosts")

with subtest("the client reaches the server by name"):
    client.wait_until_succeeds("ping -c 1 -W 1 server", timeout=60)
