"""What the VMM end-to-end tests share (tests/e2e/test_*cloud_hypervisor*, the mixed-backend
VLAN): the API stand-ins booting real guests under QEMU (`NTNG_STANDIN_RUNNER=qemu`,
tests/standins/README.md), `nixos-test-ng run` in a test's directory, and a start script
printing a built-in guest's configuration with some keys changed."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

from support.leaks import MARKER_VAR

STANDINS = Path(__file__).resolve().parents[1] / "standins"
#: Each VMM: the variable naming its binary, and its stand-in.
VMM_BINARIES = {
    "firecracker": "NIXOS_TEST_NG_FIRECRACKER",
    "cloud-hypervisor": "NIXOS_TEST_NG_CLOUD_HYPERVISOR",
}


def use_standin(monkeypatch, vmm: str) -> str:
    """Points the VMM's variable at its stand-in, unless it already names a binary (a real VMM
    on a KVM host), and has the stand-in boot guests under QEMU; the transport is the driver's
    choice (the agent, the only one these VMMs have). Returns the binary."""
    var = VMM_BINARIES[vmm]
    binary = os.environ.get(var) or str(STANDINS / vmm)
    monkeypatch.setenv(var, binary)
    monkeypatch.setenv("NTNG_STANDIN_RUNNER", "qemu")
    monkeypatch.delenv("NIXOS_TEST_NG_TRANSPORT", raising=False)
    return binary


def run_ng(tmp_path: Path, script: str, *args: str, timeout: float = 600):
    """`nixos-test-ng run SCRIPT ARGS` in tmp_path, the leak check's marker set."""
    test = tmp_path / "test.py"
    test.write_text(textwrap.dedent(script))
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path))
    env[MARKER_VAR] = str(tmp_path)
    return subprocess.run(
        ["nixos-test-ng", "run", str(test), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=timeout,
    )


def show(r) -> str:
    return f"rc={r.returncode}\n--- stdout\n{r.stdout[-4000:]}\n--- stderr\n{r.stderr[-8000:]}"


def changed_script(vm_env, guest_dir: Path, name: str, kind: str, **overrides) -> str:
    """`scripts/run-<name>-<vmm>` printing the built-in guest's configuration for a machine of
    `kind` with `overrides` (for `vm_env.run(..., keep_scripts=True)` or `--start-scripts`)."""
    from nixos_test_ng.guest import write_start_scripts

    written = write_start_scripts(vm_env.root / "gen", {name: []}, guest_dir, kinds={name: kind})
    out = subprocess.run(
        [str(written[name])], capture_output=True, text=True, check=True, cwd=vm_env.root
    ).stdout
    config = {**json.loads(out), **overrides}
    script = vm_env.root / "scripts" / written[name].name
    script.parent.mkdir(exist_ok=True)
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{json.dumps(config)}\nEOF\n")
    script.chmod(0o755)
    return str(script)
