# Pytest-style self-test script: the checks of network.py as tests, which nix/selftest.nix
# also splits into one derivation per test (`split.<test>`).
import pytest

start_all()


@pytest.mark.parametrize("name", sorted(NETWORK["nodes"]))
def test_network_config(name):
    """The interfaces, addresses and /etc/hosts entries nix/lib.nix computed."""
    m = next(m for m in machines if m.name == name)
    for iface in NETWORK["nodes"][name]["interfaces"]:
        assert m.succeed(f"cat /sys/class/net/{iface['name']}/address").strip() == iface["mac"]
        m.succeed(f"ip -4 addr show {iface['name']} | grep -F 'inet {iface['address']}/24'")
    for line in NETWORK["hosts"]:
        m.succeed(f"grep -qxF '{line}' /etc/hosts")


def test_ping_by_name(client):
    client.wait_until_succeeds("ping -c 1 -W 1 server", timeout=60)
