"""The exceptions a test script can see, with upstream's names and bases."""

from nixos_test_ng._native import (
    ConfigError,
    MachineError,
    QMPAPIError,
    RequestedAssertionFailed,
    SnapshotRefused,
    TestScriptError,
)


class PollingConditionError(Exception):
    """A polling condition failed while the script was running a command."""


class GlobalTimeout(Exception):
    """The driver's global timeout expired."""


class Terminated(Exception):
    """The driver received SIGTERM."""


__all__ = [
    "ConfigError",
    "GlobalTimeout",
    "MachineError",
    "PollingConditionError",
    "QMPAPIError",
    "RequestedAssertionFailed",
    "SnapshotRefused",
    "Terminated",
    "TestScriptError",
]
