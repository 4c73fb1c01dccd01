"""nix/lib.nix, evaluated by Nix (`nix-instantiate --eval --strict`) and held against the
upstream rules it follows and against what the engine and the guest builder do: pythonized
names (upstream's regex, the engine's `pythonize`), node numbers, MACs, addresses and
/etc/hosts (the guest's start scripts), the generation-C JSON and the A/B environments (the
engine's own parser), and the `-k` selections of a split (pytest itself)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from nixos_test_ng import _native
from nixos_test_ng.guest.scripts import layout


def nix_string(s: str | Path) -> str:
    return json.dumps(str(s))  # a JSON string is a Nix string when it has no `${`


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


NAMES = ["machine-a", "1node", "a.b1", "_ok", "x9", "server", "Node-01", "9", "a b", "$x"]


def test_pythonized_names_follow_upstream_and_the_engine(nix):
    names = NAMES
    got = nix.eval(f"map ntng.pythonizeName (builtins.fromJSON {nix_string(json.dumps(names))})")
    upstream = [re.sub(r"^[^A-Za-z_]|[^A-Za-z0-9_]", "_", n) for n in names]
    assert got == upstream
    assert got == [_native.pythonize_name(n) for n in names]
    assert got[:3] == ["machine_a", "_node", "a_b1"]


SCRIPTS = [
    "/nix/store/0abc-nixos-vm/bin/run-server-vm",
    "/tmp/run-a/bin/run-b-vm",
    "/bin/xrun-foo-vm",
    "run-server-vm --flag",
    "run--vm",
    "run-a-vm-vm",
    "./run-my.box-vm",
    "/bin/qemu-start",
]


def test_vm_names_from_scripts_are_the_engine_s(nix):
    """Generation A's names come from the start scripts; the library checks them with the
    rule the engine applies (upstream's regex on the whole path)."""
    got = nix.eval(f"map ntng.vmNameOfScript (builtins.fromJSON {nix_string(json.dumps(SCRIPTS))})")
    assert got == [_native.machine_name_from_script(s, "vm") for s in SCRIPTS]
    assert got[:2] == ["server", "a/bin/run-b"]


NETWORK = {
    "server": [1],
    "client": [1, 2],
    "router": [2, 3, 255],
    "a-1": [],
    "zz": [16],
}


def nodes_expr(network: dict[str, list[int]], scripts: dict[str, Path] | None = None) -> str:
    entries = []
    for name, vlans in network.items():
        script = scripts[name] if scripts else f"/s/run-{name}-vm"
        entries.append(
            f'"{name}" = {{ startScript = {nix_string(script)}; '
            f"vlans = [ {' '.join(map(str, vlans))} ]; }};"
        )
    return "{ " + " ".join(entries) + " }"


def test_numbers_macs_and_addresses_are_the_guest_scripts(nix):
    """nixpkgs' network.nix numbers nodes by sorted name; the guest builder does the same
    for its start scripts, which set the MACs and addresses the guests get."""
    nodes = nix.eval(
        f'(ntng.normalize {{ nodes = {nodes_expr(NETWORK)}; testScript = "/t.py"; }}).nodes'
    )
    for node in layout(NETWORK):
        got = nodes[node.name]
        assert got["number"] == node.number
        assert [i["vlan"] for i in got["interfaces"]] == list(node.vlans)
        assert [i["name"] for i in got["interfaces"]] == [
            f"eth{i}" for i in range(1, len(node.vlans) + 1)
        ]
        assert [i["mac"] for i in got["interfaces"]] == [node.mac(v) for v in node.vlans]
        assert [i["address"] for i in got["interfaces"]] == [node.address(v) for v in node.vlans]
    assert nodes["router"]["interfaces"][2]["mac"] == "52:54:00:12:ff:03"
    assert nodes["zz"]["interfaces"][0]["mac"] == "52:54:00:12:10:05"
    assert nodes["a-1"]["primaryAddress"] is None
    assert nix.eval('ntng.macAddress 255 254 + " " + ntng.ipAddress 7 12') == (
        "52:54:00:12:ff:fe 192.168.7.12"
    )


def test_hosts_entries_are_network_nix_s(nix):
    test = f'{{ nodes = {nodes_expr(NETWORK)}; testScript = "/t.py"; }}'
    assert nix.eval(f"ntng.hostsEntries {test}") == [
        "192.168.1.2 client",
        "192.168.2.3 router",
        "192.168.1.4 server",
        "192.168.16.5 zz",
    ]
    with_domain = f'({test} // {{ domain = "test"; }})'
    assert nix.eval(f"ntng.hostsEntries {with_domain}")[0] == "192.168.1.2 client.test client"
    assert nix.eval(f"ntng.hostsFile {test}").endswith("192.168.16.5 zz\n")
    assert nix.eval(f"ntng.machineSymbols {test}") == [
        "a_1",
        "client",
        "router",
        "server",
        "zz",
        "vlan1",
        "vlan2",
        "vlan3",
        "vlan16",
        "vlan255",
    ]


def test_generation_c_json_is_what_the_engine_reads(nix, tmp_path):
    scripts = {
        "server": executable(tmp_path / "vm-server/bin/run-server-vm"),
        "client": executable(tmp_path / "vm-client/bin/run-client-vm"),
        "c1": executable(tmp_path / "c1/bin/run-c1-nspawn"),
    }
    script = tmp_path / "test-script"
    script.write_text("start_all()\n")
    network = {"server": [1], "client": [1, 2], "c1": [2]}
    nodes = nodes_expr(network, scripts).replace('"c1" = {', '"c1" = { kind = "nspawn";')
    test = f"{{ nodes = {nodes}; testScript = {nix_string(script)}; globalTimeout = 120; }}"
    text = nix.eval(f"ntng.driverConfigurationJSON {test}")
    assert json.loads(text) == {
        "vms": {
            "client": {"name": "client", "start_script": str(scripts["client"])},
            "server": {"name": "server", "start_script": str(scripts["server"])},
        },
        "containers": {"c1": {"name": "c1", "start_script": str(scripts["c1"])}},
        "vlans": [1, 2],
        "global_timeout": 120,
        "enable_ssh_backdoor": False,
        "test_script": str(script),
    }
    config_file = tmp_path / "driver-configuration.json"
    config_file.write_text(text)
    cfg = _native.parse_args(["--config", str(config_file), "-o", str(tmp_path)], {})
    assert sorted(cfg.machines) == sorted(
        [
            ("client", str(scripts["client"]), "qemu"),
            ("server", str(scripts["server"]), "qemu"),
            ("c1", str(scripts["c1"]), "nspawn"),
        ]
    )
    assert cfg.vlans == [1, 2]
    assert cfg.global_timeout == 120
    assert cfg.test_script == str(script)
    assert cfg.warnings == []


def test_generation_a_environment_names_machines_by_their_scripts(nix, tmp_path):
    """Generation A has no names: the engine takes them from `run-<name>-vm` in store-like
    paths, with upstream's regex."""
    store = tmp_path / "nix/store/0c4mm0v8vx3h4p0sc6q5b9j1ffd2z5l7-nixos-vm"
    scripts = {n: executable(store / f"{n}/bin/run-{n}-vm") for n in ("server", "my-client")}
    script = tmp_path / "test-script"
    script.write_text("start_all()\n")
    network = {"server": [1], "my-client": [1, 3]}
    test = f"{{ nodes = {nodes_expr(network, scripts)}; testScript = {nix_string(script)}; }}"
    env = nix.eval(f"ntng.generationAEnvironment {test}")
    assert env == {
        "startScripts": f"{scripts['my-client']} {scripts['server']}",
        "vlans": "1 3",
        "testScript": str(script),
        "globalTimeout": "3600",
    }
    cfg = _native.parse_args(["-o", str(tmp_path)], env)
    assert [(m[0], m[2]) for m in cfg.machines] == [("my-client", "qemu"), ("server", "qemu")]
    assert cfg.vlans == [1, 3]
    assert cfg.global_timeout == 3600


def test_generation_b_environment_names_machines_and_containers(nix, tmp_path):
    scripts = {
        "server": executable(tmp_path / "a/bin/qemu-start"),
        "box": executable(tmp_path / "b/bin/run-box-nspawn"),
    }
    script = tmp_path / "test-script"
    script.write_text("start_all()\n")
    nodes = nodes_expr({"server": [1], "box": [1]}, scripts).replace(
        '"box" = {', '"box" = { kind = "nspawn";'
    )
    env = nix.eval(
        f"ntng.generationBEnvironment {{ nodes = {nodes}; testScript = {nix_string(script)}; }}"
    )
    assert env["vmNames"] == "server" and env["containerNames"] == "box"
    cfg = _native.parse_args(["-o", str(tmp_path)], env)
    assert sorted((m[0], m[2]) for m in cfg.machines) == [("box", "nspawn"), ("server", "qemu")]


def test_driver_args_put_pytest_args_after_the_script(nix, tmp_path):
    script = tmp_path / "test-script"
    script.write_text("def test_a():\n    pass\n")
    config_file = tmp_path / "c.json"
    config_file.write_text(json.dumps({"test_script": str(script)}))
    args = nix.eval(
        f"ntng.driverArgs {{ test = {{ nodes = {{ }}; testScript = {nix_string(script)}; "
        f'extraDriverArgs = [ "--keep-going" ]; '
        f'pytestArgs = [ "-k" "test_a and not test_ab" ]; }}; '
        f"configFile = {nix_string(config_file)}; }}"
    )
    assert args == [
        "--config",
        str(config_file),
        "--keep-going",
        "--",
        str(script),
        "-k",
        "test_a and not test_ab",
    ]
    cfg = _native.parse_args(["-o", str(tmp_path), *args], {})
    assert cfg.pytest_args == ["-k", "test_a and not test_ab"]
    assert cfg.test_script == str(script)
    assert cfg.keep_going


SPLIT_SOURCE = """\
import pytest

def test_a(): pass
def test_ab(): pass
def test_A_b(): pass
@pytest.mark.parametrize("n", [1, 2])
def test_b(n): pass
"""


def test_split_selects_exactly_each_test(nix, tmp_path):
    """pytest's `-k` matches substrings, case-insensitively; each selection the library
    makes collects exactly its own test (pytest itself decides)."""
    names = ["test_a", "test_ab", "test_A_b", "test_b"]
    selections = nix.eval(
        f"ntng.splitSelections (builtins.fromJSON {nix_string(json.dumps(names))})"
    )
    assert selections["test_a"] == ["-k", "test_a and not test_ab and not test_A_b"]
    source = tmp_path / "test_split_example.py"
    source.write_text(SPLIT_SOURCE)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    for name, args in selections.items():
        r = subprocess.run(
            [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
             "-p", "no:nixos_test_ng", str(source), *args],
            capture_output=True, text=True, cwd=tmp_path, timeout=60,
        )  # fmt: skip
        collected = sorted(line.split("::", 1)[1] for line in r.stdout.splitlines() if "::" in line)
        expected = ["test_b[1]", "test_b[2]"] if name == "test_b" else [name]
        assert collected == expected, r.stdout + r.stderr

    split = nix.eval(
        "builtins.mapAttrs (n: t: { inherit (t) name pytestArgs; }) (ntng.splitTest "
        '{ name = "net"; nodes = { }; testScript = "/t.py"; pytestArgs = [ "-x" ]; } '
        '[ "test_a" "test_b" ])'
    )
    assert split == {
        "test_a": {"name": "net-test_a", "pytestArgs": ["-x", "-k", "test_a"]},
        "test_b": {"name": "net-test_b", "pytestArgs": ["-x", "-k", "test_b"]},
    }


def test_from_a_nixos_test_configuration(nix):
    """What the test module reads from nixpkgs' evaluated nodes: `bin/<mainProgram>` of
    system.build.vm/nspawn, VLANs from virtualisation.vlans and .interfaces."""
    cfg = nix.eval(
        """ntng.driverConfiguration (ntng.fromNixosTest {
          name = "t";
          nodes.server = {
            system.build.vm = { outPath = "/nix/store/a-vm"; meta.mainProgram = "run-server-vm"; };
            virtualisation.vlans = [ 2 ];
            virtualisation.interfaces.eth5 = { vlan = 7; };
          };
          nodes.client = {
            system.build.vm = { outPath = "/nix/store/b-vm"; };
            system.name = "client";
            virtualisation.vlans = [ 2 ];
          };
          containers.box = {
            system.build.nspawn = {
              outPath = "/nix/store/c";
              meta.mainProgram = "run-box-nspawn";
            };
            virtualisation.vlans = [ ];
          };
          testScript = "/nix/store/d-test-script";
          globalTimeout = 60;
        })"""
    )
    assert cfg["vms"]["server"]["start_script"] == "/nix/store/a-vm/bin/run-server-vm"
    assert cfg["vms"]["client"]["start_script"] == "/nix/store/b-vm/bin/run-client-vm"
    assert cfg["containers"]["box"]["start_script"] == "/nix/store/c/bin/run-box-nspawn"
    assert cfg["vlans"] == [2, 7]
    assert cfg["global_timeout"] == 60


BAD = [
    ('nodes.a = { startScript = "/s"; kind = "docker"; };', "node `a`: kind `docker`"),
    ('nodes.a = { startScript = "/s"; vlans = [ 0 ]; };', "node `a`: every VLAN"),
    ('nodes.a = { startScript = "/s"; vlans = [ 1 1 ]; };', "listed twice"),
    ("nodes.a = { };", "node `a` has no `startScript`"),
    ('nodes."a-b" = { startScript = "/s"; }; nodes.a_b = { startScript = "/t"; };',
     "Python name `a_b`"),
    ('nodes = { }; globalTimeout = 0;', "`globalTimeout` must be a positive"),
]  # fmt: skip


@pytest.mark.parametrize(("fragment", "message"), BAD)
def test_bad_descriptions_are_named(nix, fragment, message):
    assert message in nix.eval_error(
        f'ntng.driverConfiguration {{ {fragment} testScript = "/t.py"; }}'
    )


def test_bad_generation_a_and_split_input_is_named(nix):
    box = 'nodes.box = { kind = "nspawn"; startScript = "/s/run-box-nspawn"; };'
    assert "generation A has no containers" in nix.eval_error(
        f'ntng.generationAEnvironment {{ {box} testScript = "/t.py"; }}'
    )
    assert "names this one `machine`" in nix.eval_error(
        'ntng.generationAEnvironment { nodes.a.startScript = "/s/start"; testScript = "/t.py"; }'
    )
    assert "listed twice" in nix.eval_error('ntng.splitSelections [ "test_a" "test_a" ]')
    assert "is a `-k` keyword" in nix.eval_error('ntng.splitSelections [ "not" ]')
    assert "cannot be selected" in nix.eval_error('ntng.splitSelections [ "test a" ]')
    assert "both a node and a container" in nix.eval_error(
        'ntng.fromNixosTest { nodes.a = { }; containers.a = { }; testScript = "/t.py"; }'
    )
