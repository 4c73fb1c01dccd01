"""`nixos-test-ng cache list|clear` without VMs: the directory the environment names, an
empty cache, usage errors. (Entries made by real VMs: tests/e2e/test_boot_cache.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def ng(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = [sys.executable, "-c", "from nixos_test_ng.cli import ng_main; ng_main()"]
    return subprocess.run(
        [*exe, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )


def test_an_empty_cache_in_the_directory_the_environment_names(tmp_path: Path):
    env = {"NIXOS_TEST_NG_BOOT_CACHE": str(tmp_path / "c"), "NIXOS_TEST_NG_BOOT_CACHE_SIZE": "1G"}
    r = ng("cache", "list", env=env)
    assert (r.returncode, r.stdout) == (0, f"{tmp_path / 'c'}: 0 entries, 0B of 1.0G\n")
    r = ng("cache", "clear", env=env)
    assert (r.returncode, r.stdout) == (0, f"deleted 0 boot cache entries in {tmp_path / 'c'}\n")


def test_the_default_directory(tmp_path: Path):
    env = {"NIXOS_TEST_NG_BOOT_CACHE": "", "XDG_CACHE_HOME": str(tmp_path)}
    r = ng("cache", "list", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{tmp_path}/nixos-test-ng/boots: 0 entries, 0B of 8.0G\n")


def test_usage_errors(tmp_path: Path):
    r = ng("cache", env={})
    assert r.returncode == 2 and "list" in r.stderr and "clear" in r.stderr, r.stderr
    r = ng("cache", "list", env={"NIXOS_TEST_NG_BOOT_CACHE_SIZE": "9Q"})
    assert r.returncode == 2
    assert 'NIXOS_TEST_NG_BOOT_CACHE_SIZE="9Q" is not a size' in r.stdout, r.stdout
