"""The exceptions a test script can see, with upstream's names and bases."""

from nixos_test_ng._native import (
    ConfigError,
    GlobalTimeout,
    MachineError,
    NetworkConditionError,
    QMPAPIError,
    RequestedAssertionFailed,
    SnapshotRefused,
    Terminated,
    TestScriptError,
    Unsupported,
)


class PollingConditionError(Exception):
    """A polling condition failed while the script was running a command."""


__all__ = [
    "ConfigError",
    "GlobalTimeout",
    "MachineError",
    "NetworkConditionError",
    "PollingConditionError",
    "QMPAPIError",
    "RequestedAssertionFailed",
    "SnapshotRefused",
    "Terminated",
    "TestScriptError",
    "Unsupported",
]
