"""`nixos-test-ng cache list|clear`: the boot cache (`--reuse-boots`). Its directory and
layout are the engine's; this only prints them."""

from __future__ import annotations

import argparse
import os
import time

from nixos_test_ng import _native
from nixos_test_ng.exit_status import ExitStatus


def _size(n: int) -> str:
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n}B"


def _when(secs: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(secs))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="nixos-test-ng cache",
        description="The boot cache of VMs (`--reuse-boots`): its directory is "
        "NIXOS_TEST_NG_BOOT_CACHE, else $XDG_CACHE_HOME/nixos-test-ng/boots.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="the entries: key, machine, size, saved, last used")
    ls.add_argument("--inputs", action="store_true", help="also what each key was made of")
    sub.add_parser("clear", help="delete every entry")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    try:
        if args.command == "clear":
            directory, n = _native.boot_cache_clear(env)
            print(f"deleted {n} boot cache entr{'y' if n == 1 else 'ies'} in {directory}")
            return ExitStatus.OK
        directory, limit, entries = _native.boot_cache_entries(env)
    except _native.ConfigError as e:  # a bad NIXOS_TEST_NG_BOOT_CACHE_SIZE
        print(f"nixos-test-ng cache: error: {e}")
        return ExitStatus.USAGE
    except OSError as e:
        print(f"nixos-test-ng cache: error: {e}")
        return ExitStatus.FAILED
    total = sum(e["size"] for e in entries)
    print(f"{directory}: {len(entries)} entries, {_size(total)} of {_size(limit)}")
    if entries:
        print(f"{'KEY':<12}  {'MACHINE':<16}  {'SIZE':>7}  {'SAVED':<19}  LAST USED")
    for e in entries:
        print(
            f"{e['key'][:12]:<12}  {e['machine']:<16}  {_size(e['size']):>7}  "
            f"{_when(e['saved']):<19}  {_when(e['last_used'])}"
        )
        if args.inputs:
            for line in e["inputs"]:
                print(f"    {line}")
    return ExitStatus.OK
