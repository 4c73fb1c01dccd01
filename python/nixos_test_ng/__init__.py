"""nixos-test-ng: a NixOS integration-test driver with a Rust engine.

`nixos-test-driver` runs existing nixpkgs test scripts unchanged; this package is also the
library behind it (machine classes, the script namespace, the exceptions).
"""

from nixos_test_ng.errors import (
    ConfigError,
    MachineError,
    NetworkConditionError,
    PollingConditionError,
    QMPAPIError,
    RequestedAssertionFailed,
    SnapshotRefused,
    TestScriptError,
    Unsupported,
)
from nixos_test_ng.machine import (
    BaseMachine,
    CloudHypervisorMachine,
    FirecrackerMachine,
    Machine,
    NspawnMachine,
    QemuMachine,
)

__all__ = [
    "BaseMachine",
    "CloudHypervisorMachine",
    "ConfigError",
    "FirecrackerMachine",
    "Machine",
    "MachineError",
    "NetworkConditionError",
    "NspawnMachine",
    "PollingConditionError",
    "QMPAPIError",
    "QemuMachine",
    "RequestedAssertionFailed",
    "SnapshotRefused",
    "TestScriptError",
    "Unsupported",
]
