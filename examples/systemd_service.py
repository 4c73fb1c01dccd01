# A socket-activated service on the Debian systemd guest, checked with wait_for_unit and
# wait_for_open_port. Run it on a container (or a systemd VM: @systemd):
#   nixos-test-ng run examples/systemd_service.py -m server@container
server.start()
server.wait_for_unit("multi-user.target")

with subtest("install a socket-activated echo service"):
    server.succeed(
        "printf '[Socket]\\nListenStream=8080\\nAccept=yes\\n[Install]\\nWantedBy=sockets.target\\n'"
        " > /etc/systemd/system/hello.socket",
        "printf '[Service]\\nExecStart=/bin/echo hello from systemd\\nStandardInput=socket\\n'"
        " > /etc/systemd/system/hello@.service",
        "systemctl daemon-reload",
        "systemctl enable --now hello.socket",
    )

with subtest("the socket is listening and answers"):
    server.wait_for_unit("hello.socket")
    server.wait_for_open_port(8080)
    t.assertEqual(server.succeed("nc -N localhost 8080 </dev/null"), "hello from systemd\n")
