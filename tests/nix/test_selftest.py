"""nix/selftest.nix built for real: `nix-build` runs nixos-test-driver inside the Nix build
against the busybox guest, as nixpkgs' run.nix runs a NixOS test, through generation C's
`--config`, generation A's and B's environment, a pytest-style script and its split into one
derivation per test; failing scripts fail their builds. Each session uses a new nonce, so
every build really runs."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from nixos_test_ng import procs

from .conftest import NIX_DIR, NixRun

pytestmark = pytest.mark.vm


class SelfTest:
    def __init__(self, nix, driver: str, guest_dir: Path) -> None:
        self.nix = nix
        self.args = {
            "driver": driver,
            "guestDir": str(guest_dir),
            "nonce": f"{os.getpid()}-{time.time_ns()}",
        }

    def build(self, *attrs: str) -> NixRun:
        argv = [str(NIX_DIR / "selftest.nix"), "--no-out-link"]
        for key, value in self.args.items():
            argv += ["--argstr", key, value]
        for attr in attrs:
            argv += ["-A", attr]
        r = self.nix.run("nix-build", argv, timeout=600)
        leftover = build_processes()
        assert not leftover, f"processes of the build outlived it: {leftover}"
        return r

    def outputs(self, *attrs: str) -> list[Path]:
        r = self.build(*attrs)
        assert r.returncode == 0, str(r)
        outs = [Path(line) for line in r.stdout.split()]
        assert len(outs) == len(attrs), str(r)
        return outs

    def eval(self, body: str):
        args = " ".join(f"{k} = {json.dumps(v)};" for k, v in self.args.items())
        return self.nix.eval(f"let s = import {NIX_DIR}/selftest.nix {{ {args} }}; in {body}")


def build_processes() -> list[str]:
    """Processes (QEMU, vde_switch, the driver) still running in a self-test's build dir."""
    return list(procs.marked(procs.Marker(needles=("nix-build-vm-test-run-",))).values())


@pytest.fixture(scope="session")
def selftest(nix) -> SelfTest:
    if os.geteuid() != 0:
        pytest.skip("nix-build without a Nix daemon or build users needs root")
    driver = installed_driver()
    if driver is None:
        pytest.skip("no installed nixos-test-driver with nixos-test-ng beside it")
    from nixos_test_ng.guest import ensure_built

    return SelfTest(nix, str(driver), ensure_built())


def installed_driver() -> Path | None:
    """`nixos-test-driver` beside this interpreter, else on PATH, if `nixos-test-ng` (which
    writes the start scripts) sits beside it."""
    beside = Path(sys.executable).parent / "nixos-test-driver"
    found = beside if beside.exists() else Path(shutil.which("nixos-test-driver") or "/nonexistent")
    return found if (found.parent / "nixos-test-ng").exists() else None


def junit_cases(out: Path) -> dict[str, str]:
    """name -> "passed" or "failed", from $out/junit.xml."""
    cases = {}
    for case in ET.parse(out / "junit.xml").getroot().iter("testcase"):
        failed = case.find("failure") is not None or case.find("error") is not None
        cases[case.get("name")] = "failed" if failed else "passed"
    return cases


LEGACY_CASES = {
    "client: the interfaces nix/lib.nix computed": "passed",
    "client: the /etc/hosts entries nix/lib.nix computed": "passed",
    "server: the interfaces nix/lib.nix computed": "passed",
    "server: the /etc/hosts entries nix/lib.nix computed": "passed",
    "the client reaches the server by name": "passed",
}


def check_run_output(out: Path) -> None:
    """What run.nix's `-o $out` leaves, plus nixos-test-ng's log and HTML report."""
    assert out.name.split("-", 1)[1].startswith("vm-test-run-")
    assert "test script finished" in (out / "driver.log").read_text()
    report = (out / "report.html").read_text()
    assert "<html" in report.lower()
    products = (out / "nix-support" / "hydra-build-products").read_text()
    assert products == f"report testlog {out} report.html\n"


def test_legacy_script_through_generation_c(selftest):
    """The guests have exactly the MACs, addresses and /etc/hosts lines nix/lib.nix
    computed (the script compares them), and the client reaches the server by name."""
    (out,) = selftest.outputs("legacy")
    check_run_output(out)
    assert junit_cases(out) == LEGACY_CASES


def test_legacy_script_through_generations_a_and_b(selftest):
    env_names = "{ startScripts = 1; vmStartScripts = 1; vmNames = 1; testScript = 1; vlans = 1; }"
    attrs = selftest.eval(
        "builtins.mapAttrs (n: d: { inherit (d) args; "
        f"env = builtins.intersectAttrs {env_names} d.drvAttrs; }}) "
        "{ inherit (s) legacy legacyGenerationA legacyGenerationB; }"
    )
    assert "--config" in attrs["legacy"]["args"] and attrs["legacy"]["env"] == {}
    assert "--config" not in attrs["legacyGenerationA"]["args"]
    assert set(attrs["legacyGenerationA"]["env"]) == {"startScripts", "testScript", "vlans"}
    assert attrs["legacyGenerationB"]["env"]["vmNames"] == "client server"
    for out in selftest.outputs("legacyGenerationA", "legacyGenerationB"):
        check_run_output(out)
        assert junit_cases(out) == LEGACY_CASES


PYTEST_CASES = {
    "test_network_config[client]": "passed",
    "test_network_config[server]": "passed",
    "test_ping_by_name": "passed",
}


def test_pytest_style_script(selftest):
    (out,) = selftest.outputs("pytest")
    check_run_output(out)
    assert junit_cases(out) == PYTEST_CASES


def test_split_builds_one_derivation_per_test(selftest):
    (out,) = selftest.outputs("splitAll")
    parts = {p.name: p.resolve() for p in out.iterdir()}
    assert set(parts) == {"test_network_config", "test_ping_by_name"}
    assert len(set(parts.values())) == 2
    for name, part in parts.items():
        check_run_output(part)
        assert junit_cases(part) == {k: v for k, v in PYTEST_CASES.items() if k.startswith(name)}


def test_a_failing_script_fails_the_build(selftest):
    r = selftest.build("failing.legacy")
    assert r.returncode != 0, str(r)
    assert "vm-test-run-failing.drv' failed" in r.stderr, str(r)
    assert "test -e /this-file-does-not-exist" in r.stderr, str(r)


def test_a_split_fails_only_the_failing_test(selftest):
    """Two tests without machines: the one split off passes, the other fails its build."""
    (out,) = selftest.outputs("failing.split.test_passes")
    assert junit_cases(out) == {"test_passes": "passed"}
    r = selftest.build("failing.split.test_fails")
    assert r.returncode != 0, str(r)
    assert "vm-test-run-failing-pytest-test_fails.drv' failed" in r.stderr, str(r)
