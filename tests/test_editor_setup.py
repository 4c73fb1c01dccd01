"""The documented editor setup works: basedpyright (pyright, Pylance) reads the declarations
of `nixos-test-ng stubs` as `__builtins__.pyi` and checks a test script kept in its own file:
a correct script has no errors, and seeded mistakes are reported at their lines."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

GOOD = """\
start_all()
server.wait_for_unit("multi-user.target")
with subtest("reach the server"):
    out: str = client.succeed("curl http://server/")
    t.assertIn("x", out)
server.wait_for_open_port(80, timeout=30)
print(vlan1.nr, [m.name for m in machines])


def helper(vm: QemuMachine, box: NspawnMachine, any_: BaseMachine, old: Machine) -> str:
    # upstream's class names annotate helpers, as in nixpkgs' test scripts
    return vm.succeed("true") + box.succeed("true") + any_.name + old.name


helper(server, client, server, client)
"""

BAD = """\
start_all()
server.succed("true")
server.wait_for_open_port("80")
clinet.succeed("x")
"""


@pytest.fixture
def basedpyright():
    exe = shutil.which("basedpyright")
    if exe is None:
        pytest.skip("basedpyright is not installed (requirements-dev.txt installs it)")
    return exe


def test_pyright_checks_scripts_with_the_generated_declarations(tmp_path, basedpyright):
    r = subprocess.run(
        [
            sys.executable, "-c", "from nixos_test_ng.cli import ng_main; ng_main()",
            "stubs", "--machines", "server", "client:nspawn", "--vlans", "1",
            "-o", str(tmp_path / "__builtins__.pyi"),
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    # the README's setup: the declarations at the project root, a standard-mode config
    (tmp_path / "pyrightconfig.json").write_text(json.dumps({"typeCheckingMode": "standard"}))
    (tmp_path / "good.py").write_text(GOOD)
    (tmp_path / "bad.py").write_text(BAD)
    r = subprocess.run(
        [basedpyright, "--outputjson", "good.py", "bad.py"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    report = json.loads(r.stdout)
    found = sorted(
        (d["file"].rsplit("/", 1)[-1], d["range"]["start"]["line"] + 1, d["rule"])
        for d in report["generalDiagnostics"]
        if d["severity"] == "error"
    )
    assert found == [
        ("bad.py", 2, "reportAttributeAccessIssue"),  # server.succed
        ("bad.py", 3, "reportArgumentType"),  # a str where an int goes
        ("bad.py", 4, "reportUndefinedVariable"),  # an unknown machine
    ], found
