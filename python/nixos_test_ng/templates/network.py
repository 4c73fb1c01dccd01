# A server and a client on VLAN 1. On a VLAN each machine has a NIC eth1 with the address
# 192.168.1.<n> (n counts the machines in sorted order: client 1, server 2), and /etc/hosts
# names every machine. A failing subtest fails the test and is named in the log.
start_all()

with subtest("each machine has its VLAN address"):
    client.succeed("ip -4 addr show eth1 | grep -q 'inet 192.168.1.1/'")
    server.succeed("ip -4 addr show eth1 | grep -q 'inet 192.168.1.2/'")

with subtest("the server answers on TCP port 8000"):
    server.succeed(
        "(while true; do echo hello-from-server | nc -l -p 8000 -q 1; done) >/dev/null 2>&1 &"
    )
    server.wait_for_open_port(8000)

with subtest("the client reaches the server by name"):
    client.wait_until_succeeds("ping -c 1 -W 1 server", timeout=30)
    # retried until the answer arrives: the server's loop listens again a moment after
    # each connection (wait_for_open_port's probe was one)
    reply = client.wait_until_succeeds(
        "nc -w 5 server 8000 </dev/null | grep hello-from-server", timeout=30
    )
    t.assertEqual(reply, "hello-from-server\n")

with subtest("blocking the client's VLAN link cuts it off"):
    client.block()
    client.fail("ping -c 1 -W 1 server")
    client.unblock()
    client.wait_until_succeeds("ping -c 1 -W 1 server", timeout=30)
