from nixos_test_ng.machine import BaseMachine as BaseMachine
from nixos_test_ng.machine import Machine as Machine
from nixos_test_ng.machine import NspawnMachine as NspawnMachine
from nixos_test_ng.machine import QemuMachine as QemuMachine
