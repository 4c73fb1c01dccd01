"""`run-<name>-firecracker` and `run-<name>-cloud-hypervisor` for the built-in guests
(guest/vmm.py): the JSON they print follows the start-script contract of docs/firecracker.md;
the systemd guest boots from a private copy of its image in the state directory."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from nixos_test_ng.guest import GuestError, systemd_dir, write_start_scripts
from nixos_test_ng.guest.systemd_guest import machine_id
from systemd_support import make_fake_systemd_guest

KEYS = {"kernel", "initrd", "cmdline", "vcpus", "memory_mib", "vlans"}


def config_of(script: Path, state: Path) -> tuple[dict, str]:
    state.mkdir(exist_ok=True)
    p = subprocess.run(
        [str(script)], cwd=state, capture_output=True, text=True, timeout=30, check=False
    )
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout), p.stderr


@pytest.fixture
def sd_guest(tmp_path: Path) -> Path:
    return make_fake_systemd_guest(tmp_path / "guest dir")


def test_busybox_firecracker_script_prints_the_contract_json(fake_guest: Path, tmp_path: Path):
    scripts = write_start_scripts(
        tmp_path / "bin",
        {"fc": [1, 2], "vm": [1]},
        fake_guest,
        kinds={"fc": "busybox-firecracker"},
    )
    assert scripts["fc"].name == "run-fc-firecracker"
    assert scripts["vm"].name == "run-vm-vm"
    config, _ = config_of(scripts["fc"], tmp_path / "state")
    assert set(config) == KEYS
    assert config["kernel"] == str(fake_guest / "vmlinux")
    assert config["initrd"] == str(fake_guest / "initrd.img")
    assert (config["vcpus"], config["memory_mib"], config["vlans"]) == (1, 256, [1, 2])
    assert config["cmdline"].split() == [
        "console=ttyS0",
        "reboot=k",
        "panic=1",
        "loglevel=4",
        "ntng.hostname=fc",
        # the VLAN NICs by MAC, as the VM script names them
        "ntng.if=eth1,52:54:00:12:01:01,192.168.1.1/24",
        "ntng.if=eth2,52:54:00:12:02:01,192.168.2.1/24",
        "ntng.hosts=192.168.1.1=fc,192.168.1.2=vm",
    ]


def test_firecracker_memory_follows_the_memory_option(fake_guest: Path, tmp_path: Path):
    scripts = write_start_scripts(
        tmp_path / "bin", {"fc": []}, fake_guest, memory=300, kinds={"fc": "busybox-firecracker"}
    )
    config, _ = config_of(scripts["fc"], tmp_path / "state")
    assert (config["memory_mib"], config["vlans"]) == (300, [])
    assert "ntng.if=" not in config["cmdline"] and "ntng.hosts=" not in config["cmdline"]


def test_a_command_line_too_long_for_firecracker_is_an_error(fake_guest: Path, tmp_path: Path):
    nodes = {f"node-with-a-long-name-{i:03}": [1] for i in range(80)}
    kinds = {"node-with-a-long-name-000": "busybox-firecracker"}
    with pytest.raises(GuestError, match="node `node-with-a-long-name-000`: the kernel command"):
        write_start_scripts(tmp_path / "bin", nodes, fake_guest, kinds=kinds)


def test_systemd_firecracker_boots_a_private_copy_of_the_image(sd_guest: Path, tmp_path: Path):
    scripts = write_start_scripts(
        tmp_path / "bin", {"sd": [1]}, sd_guest, kinds={"sd": "systemd-firecracker"}
    )
    sd = systemd_dir(sd_guest)
    state = tmp_path / "state"
    config, _ = config_of(scripts["sd"], state)
    assert set(config) == KEYS | {"root_disk"}
    assert config["initrd"] == str(sd / "initrd.img")
    assert config["memory_mib"] == 512
    assert f"systemd.machine_id={machine_id('sd')}" in config["cmdline"].split()
    # Firecracker has no virtio console, so no backdoor (its device would never come)
    assert "systemd.mask=backdoor.service" in config["cmdline"].split()
    disk = state / config["root_disk"]  # relative to the state directory
    assert disk.read_bytes() == (sd / "rootfs.ext4").read_bytes()
    # kept across runs (keep-state) ...
    disk.write_bytes(b"changed by the guest")
    config_of(scripts["sd"], state)
    assert disk.read_bytes() == b"changed by the guest"
    # ... unless it was made for another build of the image
    (state / f"{config['root_disk']}.base").write_text("another build\n")
    _, err = config_of(scripts["sd"], state)
    assert "belongs to another build of the guest" in err
    assert disk.read_bytes() == (sd / "rootfs.ext4").read_bytes()


def test_busybox_cloud_hypervisor_script_prints_the_contract_json(fake_guest: Path, tmp_path):
    scripts = write_start_scripts(
        tmp_path / "bin",
        {"ch": [1], "fc": [1]},
        fake_guest,
        kinds={"ch": "busybox-cloud-hypervisor", "fc": "busybox-firecracker"},
    )
    assert scripts["ch"].name == "run-ch-cloud-hypervisor"
    assert scripts["fc"].name == "run-fc-firecracker"
    config, _ = config_of(scripts["ch"], tmp_path / "state")
    assert set(config) == KEYS
    assert config["kernel"] == str(fake_guest / "vmlinux")
    assert (config["vcpus"], config["memory_mib"], config["vlans"]) == (1, 256, [1])
    # no reboot=k: a guest reset resets a Cloud Hypervisor VM in the same process
    assert config["cmdline"].split() == [
        "console=ttyS0",
        "panic=1",
        "loglevel=4",
        "ntng.hostname=ch",
        "ntng.if=eth1,52:54:00:12:01:01,192.168.1.1/24",
        "ntng.hosts=192.168.1.1=ch,192.168.1.2=fc",
    ]


def test_systemd_cloud_hypervisor_names_its_root_disk_on_the_command_line(
    sd_guest: Path, tmp_path: Path
):
    scripts = write_start_scripts(
        tmp_path / "bin", {"sd": []}, sd_guest, kinds={"sd": "systemd-cloud-hypervisor"}
    )
    assert scripts["sd"].name == "run-sd-cloud-hypervisor"
    state = tmp_path / "state"
    config, _ = config_of(scripts["sd"], state)
    assert set(config) == KEYS | {"root_disk"}
    assert config["memory_mib"] == 512
    words = config["cmdline"].split()
    # Cloud Hypervisor adds no root= for its first disk (Firecracker does)
    assert words[:4] == ["console=ttyS0", "panic=1", "root=/dev/vda", "rw"]
    assert "systemd.mask=backdoor.service" in words
    assert (state / config["root_disk"]).read_bytes() == (
        systemd_dir(sd_guest) / "rootfs.ext4"
    ).read_bytes()


def test_a_command_line_too_long_names_the_vmm(fake_guest: Path, tmp_path: Path):
    nodes = {f"node-with-a-long-name-{i:03}": [1] for i in range(80)}
    kinds = {"node-with-a-long-name-000": "busybox-cloud-hypervisor"}
    with pytest.raises(GuestError, match="more than Cloud Hypervisor's 2000"):
        write_start_scripts(tmp_path / "bin", nodes, fake_guest, kinds=kinds)
