"""nix/snapshots.nix, the NixOS module that makes a test VM snapshottable, evaluated as a
function of stand-in `config` and `options` (no nixpkgs here): the store becomes a disk image,
attached read-only through QEMU's `-set` on the drive id qemu-vm.nix gives it. That `-set` on
such a drive makes QEMU's `savevm` possible is checked on a real VM by
tests/e2e/test_isolation.py (the store-image case)."""

from __future__ import annotations

import json

import pytest

ROOT_DRIVE = '{ name = "root"; file = "$NIX_DISK_IMAGE"; }'
STORE_DRIVE = '{ name = "nix-store"; file = "$TMPDIR/store.img"; }'
EMPTY_DRIVE = '{ name = null; file = "empty0.qcow2"; }'


def evaluate(nix, drives: list[str], *, vm: bool = True, boot_loader: bool = False):
    options = "{ virtualisation.useNixStoreImage = { }; }" if vm else "{ boot.isContainer = { }; }"
    return nix.eval(
        f"""let
          m = import (root + "/nix/snapshots.nix") {{
            inherit (standins) lib;
            options = {options};
            config.virtualisation = {{
              useBootLoader = {json.dumps(boot_loader)};
              qemu.drives = [ {" ".join(drives)} ];
            }};
          }};
        in m"""
    )


def test_the_store_becomes_a_read_only_image(nix):
    got = evaluate(nix, [ROOT_DRIVE, STORE_DRIVE, EMPTY_DRIVE])
    # a default: a test that sets the option itself wins
    assert got["virtualisation"]["useNixStoreImage"] == {
        "_type": "override",
        "priority": 1000,
        "content": True,
    }
    assert got["virtualisation"]["qemu"]["options"] == ["-set drive.drive2.readonly=on"]


@pytest.mark.parametrize(
    ("drives", "options"),
    [
        ([STORE_DRIVE], ["-set drive.drive1.readonly=on"]),  # virtualisation.diskImage = null
        ([ROOT_DRIVE, EMPTY_DRIVE], []),  # the test turned useNixStoreImage off: no store drive
    ],
    ids=["no-root-disk", "no-store-image"],
)
def test_the_drive_id_is_the_store_drives_place(nix, drives, options):
    assert evaluate(nix, drives)["virtualisation"]["qemu"]["options"] == options


def test_a_vm_with_a_boot_loader_keeps_its_store_on_its_disk(nix):
    got = evaluate(nix, [ROOT_DRIVE], boot_loader=True)
    assert got["virtualisation"]["useNixStoreImage"]["content"] is False


def test_a_container_is_left_alone(nix):
    assert evaluate(nix, [], vm=False) == {}
