"""The guest agent binary that both built-in guests carry (`nixos-test-ng-agent`, static).

It comes from `$NIXOS_TEST_NG_AGENT_BIN` (a path) when set, else from the native module, which
embeds the agent built with it (`_native.agent_binary()`); its sha256 is one of the guests'
build inputs, so a new agent rebuilds them.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

from .common import BuildError

__all__ = ["AGENT_BIN_ENV", "AGENT_FILE", "agent_binary", "agent_sha256"]

#: The agent's file name in a guest, beside agent.sh (which starts it).
AGENT_FILE = "nixos-test-ng-agent"
#: A path to the agent binary to put into the guests instead of the native module's.
AGENT_BIN_ENV = "NIXOS_TEST_NG_AGENT_BIN"


@functools.cache
def _from(path: str | None) -> bytes:
    if path:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise BuildError(f"{AGENT_BIN_ENV}={path}: cannot read the agent binary: {e}") from e
    else:
        try:
            from nixos_test_ng import _native

            data = bytes(_native.agent_binary())
        except (ImportError, AttributeError) as e:
            raise BuildError(
                f"the guest agent is not available ({e}): install nixos-test-ng with its native "
                f"module, or set {AGENT_BIN_ENV} to a static nixos-test-ng-agent binary"
            ) from e
    if data[:4] != b"\x7fELF":
        raise BuildError(f"the guest agent ({path or 'native module'}) is not an ELF binary")
    return data


def agent_binary() -> bytes:
    """The agent binary's bytes."""
    return _from(os.environ.get(AGENT_BIN_ENV) or None)


def agent_sha256() -> str:
    """The sha256 of `agent_binary()`."""
    return hashlib.sha256(agent_binary()).hexdigest()
