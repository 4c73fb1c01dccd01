# pytest style: every test_* function is a pytest test and every machine a fixture (by its
# name), so tests get pytest's parametrize, fixtures, plain `assert` with rewritten messages
# and markers. Machines boot once for the whole file; a test marked
# `@pytest.mark.isolated` starts from the snapshot taken when its machines were first ready.
import pytest

# Module level runs once, before the tests, with the usual namespace (start_all, ...).
start_all()


@pytest.fixture(scope="module")
def workdir(machine):
    """A fixture of your own, built on the machine's."""
    machine.succeed("mkdir -p /tmp/work")
    return "/tmp/work"


@pytest.mark.parametrize(("command", "expected"), [("echo hello", "hello"), ("uname -s", "Linux")])
def test_commands(machine, command, expected):
    assert machine.succeed(command).strip() == expected


def test_leaves_a_file_behind(machine, workdir):
    machine.succeed(f"touch {workdir}/left-behind")
    machine.succeed(f"test -e {workdir}/left-behind")


@pytest.mark.isolated
def test_starts_from_a_clean_machine(machine):
    # restored to the ready snapshot: what earlier tests changed is gone
    machine.fail("test -e /tmp/work/left-behind")
