from nixos_test_ng.debug import Debug, DebugNop

DebugAbstract = Debug | DebugNop
