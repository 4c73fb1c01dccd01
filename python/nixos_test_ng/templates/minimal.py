# One machine and a few commands. `succeed` runs a shell command in the guest and returns
# its output; the test fails when the command exits non-zero. `fail` expects the opposite.
start_all()

machine.succeed("echo hello > /tmp/greeting")
greeting = machine.succeed("cat /tmp/greeting")
assert greeting == "hello\n", f"unexpected greeting: {greeting!r}"

machine.fail("test -e /tmp/no-such-file")
# several commands in one call, each checked in turn
machine.succeed("mkdir -p /tmp/work", "test -d /tmp/work")
