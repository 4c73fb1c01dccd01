# A systemd service unit on a container: written at run time, started, then checked with
# wait_for_unit and wait_for_open_port. The unit goes to /run/systemd/system (runtime units,
# writable on any systemd machine, NixOS included) and names its programs by absolute path.
import shlex

server.start()
server.wait_for_unit("multi-user.target")

with subtest("install and start a service unit"):
    activate = server.succeed("command -v systemd-socket-activate").strip()
    unit = (
        "[Unit]\n"
        "Description=Says hello to whoever connects to TCP port 8080\n"
        "[Service]\n"
        f"ExecStart={activate} --listen=8080 --accept --inetd"
        " /bin/sh -c 'echo hello from greeter'\n"
    )
    server.succeed(
        f"printf %s {shlex.quote(unit)} > /run/systemd/system/greeter.service",
        "systemctl daemon-reload",
        "systemctl start greeter.service",
    )

with subtest("the service runs and answers"):
    server.wait_for_unit("greeter.service")
    server.wait_for_open_port(8080)
    t.assertEqual(server.succeed("nc -N localhost 8080 </dev/null"), "hello from greeter\n")

with subtest("stopping the service closes the port"):
    server.systemctl("stop greeter.service")
    server.wait_for_closed_port(8080)
    server.require_unit_state("greeter.service", "inactive")
