"""`generate-driver-symbols`: writes `driver-symbols` in the working directory, the
comma-joined names of the driver's script namespace (without the machines and VLANs), as
upstream's command does. nixpkgs' testing/driver.nix runs it while building a test's driver
and passes the names to pyflakes (`PYFLAKES_BUILTINS`) together with the machine names."""

from __future__ import annotations

from pathlib import Path

FILE = "driver-symbols"


def main() -> None:
    from nixos_test_ng import _native

    Path(FILE).write_text(",".join(_native.GENERAL_SYMBOLS))


if __name__ == "__main__":
    main()
