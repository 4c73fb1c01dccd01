# Fails on purpose: a failing test script must fail the Nix build.
machine.start()
with subtest("a check that fails on purpose"):
    machine.succeed("test -e /this-file-does-not-exist")
