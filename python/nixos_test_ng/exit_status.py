"""The exit statuses of `nixos-test-driver` and `nixos-test-ng`'s commands, as the engine
names them (`crates/engine/src/exit_status.rs`): every command returns one of these.

A run ended by SIGTERM or the global timeout dies of SIGTERM, and Ctrl-C of SIGINT (a shell
sees 143 and 130), as upstream's driver does: `ending.py`.
"""

from __future__ import annotations

from enum import IntEnum

from nixos_test_ng import _native

__all__ = ["ExitStatus"]


class ExitStatus(IntEnum):
    #: The test passed; the command did what it was asked.
    OK = _native.EXIT_OK
    #: The test failed; `check` found problems; `doctor` found something the demo needs
    #: missing; a guest build failed.
    FAILED = _native.EXIT_FAILED
    #: A bad command line, configuration or script.
    USAGE = _native.EXIT_USAGE
