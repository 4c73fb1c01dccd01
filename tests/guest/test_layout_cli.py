"""Node numbering, validation and the `nixos-test-ng guest` command line (no VM, no apt)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from nixos_test_ng.guest import (
    GuestError,
    LayoutError,
    layout,
    parse_node_spec,
    write_start_scripts,
)
from nixos_test_ng.guest.cli import main


def test_nodes_are_numbered_by_sorted_name() -> None:
    nodes = layout({"server": [1], "client": [1, 2], "router": []})
    assert [(n.name, n.number, n.vlans) for n in nodes] == [
        ("client", 1, (1, 2)),
        ("router", 2, ()),
        ("server", 3, (1,)),
    ]
    assert nodes[0].mac(2) == "52:54:00:12:02:01"
    assert nodes[2].address(1) == "192.168.1.3"


def test_mac_uses_two_hex_digits() -> None:
    nodes = layout({f"n{i:03d}": [255] for i in range(254)})
    assert nodes[-1].mac(255) == "52:54:00:12:ff:fe"


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [("a", ("a", [1])), ("a:", ("a", [])), ("a:3", ("a", [3])), ("web-1:2,1", ("web-1", [2, 1]))],
)
def test_parse_node_spec(spec: str, parsed: tuple[str, list[int]]) -> None:
    assert parse_node_spec(spec) == parsed


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ({}, "no nodes"),
        ({"bad name": [1]}, "invalid node name"),
        ({"-a": [1]}, "invalid node name"),
        ({"a.b": [1]}, "invalid node name"),
        ({"a" * 64: [1]}, "invalid node name"),
        ({"a": [0]}, "outside 1..255"),
        ({"a": [256]}, "outside 1..255"),
        ({"a": [1, 1]}, "twice"),
        ({f"n{i}": [1] for i in range(255)}, "at most 254"),
    ],
)
def test_invalid_layouts(nodes: dict[str, list[int]], message: str) -> None:
    with pytest.raises(LayoutError, match=message):
        layout(nodes)


def test_254_nodes_and_vlan_255_are_fine() -> None:
    assert len(layout({f"n{i}": [255] for i in range(254)})) == 254


def test_write_start_scripts_validates_memory(tmp_path: Path, fake_guest: Path) -> None:
    with pytest.raises(LayoutError, match="memory"):
        write_start_scripts(tmp_path, {"a": [1]}, fake_guest, memory=0)


def test_cli_scripts(tmp_path: Path, fake_guest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    rc = main(
        ["scripts", "-o", str(out), "--guest-dir", str(fake_guest), "--memory", "300", "b:1,2", "a"]
    )
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["run-a-vm", "run-b-vm"]
    assert capsys.readouterr().out.split() == [str(out / "run-a-vm"), str(out / "run-b-vm")]
    assert "-m 300" in (out / "run-a-vm").read_text()


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        (["bad/name"], "invalid node name"),
        (["a:0"], "outside 1..255"),
        (["a:256"], "outside 1..255"),
        (["a:x"], "not a number"),
        (["a", "a:2"], "given twice"),
        ([f"n{i}" for i in range(255)], "at most 254"),
    ],
)
def test_cli_bad_nodes_exit_2(
    tmp_path: Path,
    fake_guest: Path,
    capsys: pytest.CaptureFixture[str],
    nodes: list[str],
    message: str,
) -> None:
    rc = main(["scripts", "-o", str(tmp_path / "o"), "--guest-dir", str(fake_guest), *nodes])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("nixos-test-ng guest: error: ") and message in err
    assert not (tmp_path / "o").exists()


def test_cli_without_a_built_guest_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["scripts", "-o", str(tmp_path / "o"), "--guest-dir", str(tmp_path / "nothing"), "a"])
    assert rc == 1
    assert "no guest built" in capsys.readouterr().err


def test_cli_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["scripts", "a"]) == 2  # -o is required
    assert main(["frobnicate"]) == 2
    assert "nixos-test-ng guest" in capsys.readouterr().err


def test_cli_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "usage: nixos-test-ng guest" in capsys.readouterr().out


def test_python_dash_m_entry_point(tmp_path: Path, fake_guest: Path) -> None:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "nixos_test_ng.guest",
            "scripts",
            "-o",
            str(tmp_path / "o"),
            "--guest-dir",
            str(fake_guest),
            "x",
        ],
        capture_output=True,
        text=True,
        env=os.environ,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "o" / "run-x-vm").exists()


def test_missing_artifact_is_a_clear_error(tmp_path: Path, fake_guest: Path) -> None:
    (fake_guest / "initrd.img").unlink()
    with pytest.raises(GuestError, match="initrd.img` is missing"):
        write_start_scripts(tmp_path / "o", {"a": [1]}, fake_guest)
