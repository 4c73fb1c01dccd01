# Two machines on VLAN 1: a server answering on TCP port 8000 and a client reaching it
# by name. Run it with:  nixos-test-ng run examples/vlan_echo.py -m server:1 -m client:1
start_all()

with subtest("the server listens on port 8000"):
    server.succeed(
        "(while true; do echo hello-from-server | nc -l -p 8000 -q 1; done) >/dev/null 2>&1 &"
    )
    server.wait_for_open_port(8000)

with subtest("the client reaches the server over the VLAN"):
    client.wait_until_succeeds("ping -c 1 -W 1 server", timeout=30)
    reply = client.wait_until_succeeds(
        "nc -w 5 server 8000 </dev/null | grep hello-from-server", timeout=30
    )
    t.assertIn("hello-from-server", reply)

with subtest("blocking the client's VLAN link cuts it off"):
    client.block()
    client.fail("ping -c 1 -W 1 server")
    client.unblock()
    client.wait_until_succeeds("ping -c 1 -W 1 server", timeout=30)
