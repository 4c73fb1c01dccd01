"""Interactive mode (`--interactive`): a Python REPL with the test's namespace."""

from __future__ import annotations

import code
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nixos_test_ng.driver import Driver


def interact(driver: Driver) -> None:
    """Open ptpython when installed, the standard REPL otherwise. No global timeout runs."""
    symbols = driver.test_symbols()
    try:
        from ptpython.repl import embed  # type: ignore[import-not-found]
    except ImportError:
        code.interact(
            banner="nixos-test-ng interactive mode: try start_all(), test_script()",
            local=symbols,
            exitmsg="",
        )
        return
    embed(symbols, {}, history_filename=".nixos-test-history")
