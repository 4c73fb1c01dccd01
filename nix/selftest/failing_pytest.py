# One passing and one failing test: split, the one fails its build and the other builds.


def test_passes(machine):
    machine.succeed("true")


def test_fails(machine):
    machine.succeed("test -e /this-file-does-not-exist")
