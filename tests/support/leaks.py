"""No process a test starts may outlive it. A test's processes are those whose command line
names its tmp dir or whose environment carries `NTNG_TEST_TMP=<its tmp dir>` (every process
started through `DriverEnv` inherits it: the driver, QEMU or the fake, vde_switch, the guest's
shell and its commands)."""

from __future__ import annotations

from pathlib import Path

from nixos_test_ng import procs

MARKER_VAR = "NTNG_TEST_TMP"

#: How long a test's processes get to end by themselves after it, before they count as leaked.
GRACE_S = 3.0


def marker(tmp: Path) -> procs.Marker:
    """The processes of the test whose tmp dir is `tmp`."""
    names = tuple(dict.fromkeys((str(tmp), str(tmp.resolve()))))
    return procs.Marker(needles=names, env=tuple(f"{MARKER_VAR}={n}" for n in names))


def wait_until_gone(tmp: Path, timeout: float = GRACE_S) -> dict[int, str]:
    """Waits up to `timeout` s for every process of the test to end; returns the survivors.
    The processes end by themselves; `timeout` only bounds how long the check waits."""
    return procs.survivors(marker(tmp), timeout)


def kill_leftovers(tmp: Path, grace: float = GRACE_S) -> dict[int, str]:
    """Waits up to `grace` s, then kills what is left of the test (and its descendants);
    returns what it killed."""
    return procs.end_run(marker(tmp), grace)
