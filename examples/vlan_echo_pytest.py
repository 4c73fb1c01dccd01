# The checks of vlan_echo.py, pytest-style: machines are fixtures, plain `assert`s get pytest's
# rewritten messages, and arguments after the script go to pytest (`-k`, `-x`, `--lf`, ...).
# Run it with:  nixos-test-ng run examples/vlan_echo_pytest.py -m server:1 -m client:1
import pytest

# Module level: runs once, before the tests, with the legacy namespace available.
start_all()


@pytest.fixture(scope="module")
def listening(server):
    server.succeed(
        "(while true; do echo hello-from-server | nc -l -p 8000 -q 1; done) >/dev/null 2>&1 &"
    )
    server.wait_for_open_port(8000)
    return server


def test_server_listens(listening):
    listening.succeed("nc -z localhost 8000")


@pytest.mark.parametrize("attempt", [1, 2])
def test_client_reaches_the_server(client, listening, attempt):
    client.wait_until_succeeds("ping -c 1 -W 1 server", timeout=30)
    reply = client.wait_until_succeeds(
        "nc -w 5 server 8000 </dev/null | grep hello-from-server", timeout=30
    )
    assert "hello-from-server" in reply


def test_blocking_cuts_the_client_off(client, listening):
    client.block()
    try:
        client.fail("ping -c 1 -W 1 server")
    finally:
        client.unblock()
    client.wait_until_succeeds("ping -c 1 -W 1 server", timeout=30)
