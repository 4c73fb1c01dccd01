"""`nixos-test-ng new`: every template writes a script whose header says how to run and check
it, `check` passes as the header says, files are never overwritten without `--force`, and
`--stubs` / `--nix` write the editor stubs and a Nix expression that parses and evaluates
(against tests/nix/standins.nix, with nix/lib.nix's view of its machines passing `check`)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from nixos_test_ng.new import STUBS_FILE, TEMPLATES

from tests.nix.conftest import ROOT, nix  # noqa: F401 - `nix` is the fixture

NAMES = list(TEMPLATES)
#: the machines each template's header must name, as `nixos-test-ng run -m` takes them
RUN_MACHINES = {
    "minimal": ["machine"],
    "network": ["server:1", "client:1"],
    "systemd": ["server@container"],
    "pytest": ["machine"],
    "graphical": ["machine"],
    "traced": ["machine"],
}


def ng_environ() -> dict[str, str]:
    """The environment for running header lines: the `nixos-test-ng` installed beside this
    interpreter first on PATH (as tests/conftest.py finds `nixos-test-driver`)."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def ng(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = [sys.executable, "-c", "from nixos_test_ng.cli import ng_main; ng_main()"]
    return subprocess.run(
        [*exe, *args], capture_output=True, text=True, timeout=60, cwd=cwd, env=ng_environ()
    )


def header_command(script: Path, command: str) -> str:
    """The header's `nixos-test-ng COMMAND ...` line of a written script, as a shell line."""
    found = re.findall(rf"^#   (nixos-test-ng {command} .*)$", script.read_text(), re.M)
    assert len(found) == 1, f"{script} has {len(found)} `nixos-test-ng {command}` lines"
    return found[0]


def run_header_line(script: Path, command: str) -> subprocess.CompletedProcess[str]:
    """Runs the header's line through a shell in the script's folder, as a user pastes it."""
    return subprocess.run(
        ["bash", "-c", header_command(script, command)],
        capture_output=True, text=True, timeout=120, cwd=script.parent, env=ng_environ(),
    )  # fmt: skip


def test_list_names_every_template_with_its_machines(tmp_path):
    r = ng("new", "--list", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (0, "")
    for name, machines in RUN_MACHINES.items():
        (line,) = [i for i, text in enumerate(r.stdout.splitlines()) if text.split()[:1] == [name]]
        assert r.stdout.splitlines()[line + 1].split() == ["machines:", *machines]
    assert set(RUN_MACHINES) == set(TEMPLATES)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", NAMES)
def test_every_template_writes_a_script_whose_header_names_it(tmp_path, name):
    r = ng("new", name, "-o", f"tests/my-{name}.py", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    script = tmp_path / "tests" / f"my-{name}.py"
    assert sorted(p.name for p in script.parent.iterdir()) == [script.name]
    text = script.read_text()
    assert text.startswith(f"# my-{name}.py: ")
    compile(text, str(script), "exec")
    run = shlex.split(header_command(script, "run"))
    machines = [arg for flag, arg in zip(run[3::2], run[4::2], strict=True) if flag == "-m"]
    assert run[:3] == ["nixos-test-ng", "run", f"my-{name}.py"] and run[3::2] == ["-m"] * len(
        machines
    )
    assert machines == RUN_MACHINES[name]
    # what the command prints says the same
    assert f"nixos-test-ng run my-{name}.py -m {' -m '.join(machines)}" in r.stdout


@pytest.mark.parametrize("name", NAMES)
def test_every_template_passes_check_as_its_header_says(tmp_path, name):
    assert ng("new", name, "-o", "t.py", cwd=tmp_path).returncode == 0
    script = tmp_path / "t.py"
    r = run_header_line(script, "check")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    # the machines matter: without them the same check fails (the pytest template names
    # its machine only as a fixture argument, which `check` does not resolve)
    bare = ng("check", "t.py", cwd=tmp_path)
    if name != "pytest":
        assert bare.returncode == 1 and "undefined name" in bare.stdout, bare


def test_refuses_to_overwrite_and_writes_nothing(tmp_path):
    (tmp_path / "net.py").write_text("mine\n")
    r = ng("new", "network", "-o", "net.py", cwd=tmp_path)
    assert r.returncode == 2
    assert "refusing to overwrite net.py" in r.stderr and "--force" in r.stderr
    assert (tmp_path / "net.py").read_text() == "mine\n"

    # one existing file among several: none of the others is written either
    (tmp_path / "net.py").unlink()
    (tmp_path / "net.nix").write_text("{ }\n")
    r = ng("new", "network", "-o", "net.py", "--stubs", "--nix", cwd=tmp_path)
    assert r.returncode == 2 and "refusing to overwrite net.nix" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.nix"]
    assert (tmp_path / "net.nix").read_text() == "{ }\n"


def test_force_overwrites(tmp_path):
    for name in ("net.py", STUBS_FILE, "net.nix"):
        (tmp_path / name).write_text("old\n")
    r = ng("new", "network", "-o", "net.py", "--stubs", "--nix", "--force", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for name in ("net.py", STUBS_FILE, "net.nix"):
        assert (tmp_path / name).read_text() != "old\n"
    assert header_command(tmp_path / "net.py", "run").startswith("nixos-test-ng run net.py")


@pytest.mark.parametrize("name", ["network", "systemd"])
def test_stubs_are_what_nixos_test_ng_stubs_writes_for_the_header_machines(tmp_path, name):
    r = ng("new", name, "-o", "sub/t.py", "--stubs", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    stubs = tmp_path / "sub" / STUBS_FILE
    # `nixos-test-ng stubs` with the header check line's machines and VLANs
    args = shlex.split(header_command(tmp_path / "sub" / "t.py", "check"))[3:]
    r = ng("stubs", *args, "-o", "expected.pyi", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert stubs.read_text() == (tmp_path / "expected.pyi").read_text()
    if name == "network":
        assert {"server: QemuMachine", "client: QemuMachine", "vlan1: VLan"} <= set(
            stubs.read_text().splitlines()
        )
    else:
        lines = stubs.read_text().splitlines()
        assert "server: NspawnMachine" in lines and "machine: NspawnMachine" in lines


def test_unknown_or_missing_template(tmp_path):
    r = ng("new", "netwrok", "-o", "t.py", cwd=tmp_path)
    assert r.returncode == 2
    assert "unknown template `netwrok`" in r.stderr
    assert all(name in r.stderr for name in NAMES)
    r = ng("new", "-o", "t.py", cwd=tmp_path)
    assert r.returncode == 2 and all(name in r.stderr for name in NAMES), r.stderr
    assert list(tmp_path.iterdir()) == []


def test_default_output_and_folders(tmp_path):
    """Without -o: TEMPLATE.py here (pytest_style.py for pytest, since a pytest.py beside
    the script would shadow the module it imports); -o FOLDER: the same name in it."""
    assert ng("new", "minimal", cwd=tmp_path).returncode == 0
    assert ng("new", "pytest", cwd=tmp_path).returncode == 0
    assert ng("new", "network", "-o", "new-dir/", cwd=tmp_path).returncode == 0
    (tmp_path / "existing").mkdir()
    assert ng("new", "traced", "-o", "existing", cwd=tmp_path).returncode == 0
    for path in ("minimal.py", "pytest_style.py", "new-dir/network.py", "existing/traced.py"):
        script = tmp_path / path
        assert header_command(script, "run").split()[2] == script.name


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("t.txt", "must end in .py"),
        ("pytest.py", "would shadow the `pytest` module"),
    ],
)
def test_bad_output_names(tmp_path, output, message):
    r = ng("new", "pytest", "-o", output, cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


# -- the Nix expression ---------------------------------------------------------------------

#: nixpkgs packages the templates' nodes use, added to the stand-ins' package set
NIX_PACKAGES = ["netcat-openbsd", "wget"]


def evaluate_nix_variant(tool, nix_file: Path) -> dict:
    """Evaluates the written expression with the stand-ins for nixpkgs and this checkout as
    `nixos-test-ng`: what runNixOSTest was given, each node's settings, and the driver
    configuration nix/lib.nix makes of them (as the test module does)."""
    extra = " ".join(f'"{p}" = standins.drv "{p}";' for p in NIX_PACKAGES)
    return tool.eval(
        f"""let
          pkgs = standins.mkPkgs "x86_64-linux" [ ] // {{ {extra} }};
          test = import {json.dumps(str(nix_file))} {{ inherit pkgs; nixos-test-ng = root; }};
          m = test.module;
          # a node's module as NixOS would see it, plus the start script its build gives
          node = build: name: f:
            let
              args = {{ inherit pkgs; inherit (pkgs) lib; config = {{ }}; }};
              c = if builtins.isFunction f then f args else f;
              drv = {{ outPath = "/x/${{name}}"; meta.mainProgram = "run-${{name}}-${{build}}"; }};
            in c // {{ system.build.${{build}} = drv; }};
          nodes = builtins.mapAttrs (node "vm") (m.nodes or {{ }});
          containers = builtins.mapAttrs (node "nspawn") (m.containers or {{ }});
          config = ntng.driverConfiguration (ntng.fromNixosTest {{
            inherit (m) name; inherit nodes containers;
            testScript = builtins.toFile "script" m.testScript;
          }});
        in {{
          standin = test._standin;
          imports = m.imports;
          enable = m.nixos-test-ng.enable;
          inherit (m) name testScript;
          enableOCR = m.enableOCR or false;
          packages = builtins.mapAttrs (n: c: map (p: p.name) (c.environment.systemPackages or [ ]))
            (nodes // containers);
          inherit config;
        }}"""
    )


def test_odd_file_names_are_quoted(nix, tmp_path):  # noqa: F811
    r = ng("new", "minimal", "-o", "my test.py", "--nix", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    script = tmp_path / "my test.py"
    assert shlex.split(header_command(script, "run"))[2] == "my test.py"
    assert run_header_line(script, "check").returncode == 0
    assert '(./. + "/my test.py")' in (tmp_path / "my test.nix").read_text()
    got = evaluate_nix_variant(nix, tmp_path / "my test.nix")
    assert (got["name"], got["testScript"]) == ("my-test", script.read_text())


@pytest.mark.parametrize("name", NAMES)
def test_nix_variant_parses_and_evaluates_with_the_same_machines(nix, tmp_path, name):  # noqa: F811
    r = ng("new", name, "-o", f"{name}-test.py", "--nix", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    script, nix_file = tmp_path / f"{name}-test.py", tmp_path / f"{name}-test.nix"
    parsed = nix.parse(nix_file)
    assert parsed.returncode == 0, str(parsed)

    got = evaluate_nix_variant(nix, nix_file)
    assert got["standin"] == "runNixOSTest"
    assert got["imports"] == [f"{ROOT}/nix/test-module.nix"]
    assert got["enable"] is True and got["name"] == f"{name}-test"
    assert got["testScript"] == script.read_text()
    assert got["enableOCR"] is (name == "graphical")
    if name in ("network", "systemd"):
        assert set(got["packages"]["server"]) == {"netcat-openbsd"}

    # the machines nix/lib.nix gives the driver are the header's
    config = got["config"]
    expected: dict[str, set[str]] = {"vms": set(), "containers": set()}
    vlans = set()
    for machine in RUN_MACHINES[name]:  # NAME[:VLAN,...][@container]
        base, _, kind = machine.partition("@")
        node, _, node_vlans = base.partition(":")
        expected["containers" if kind == "container" else "vms"].add(node)
        vlans |= {int(v) for v in node_vlans.split(",") if v}
    assert {k: set(config[k]) for k in expected} == expected
    assert config["vlans"] == sorted(vlans)
    # and the script passes `check` with that configuration, as the test module checks it
    (tmp_path / "config.json").write_text(json.dumps(config))
    r = ng("check", "--config", "config.json", script.name, cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, ""), r.stderr
