"""Firecracker and Cloud Hypervisor machines declared in a `--config` file: a `vms` entry with
`"backend"` and the VMM configuration inline (the start-script JSON's keys), no start
script. Run against the API stand-ins (`tests/standins/`) with their fake runner, which
records what the API was asked to boot; bad entries are errors naming the machine and the key,
before anything starts."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

STANDINS = Path(__file__).resolve().parents[1] / "standins"
VARIABLE = {
    "firecracker": "NIXOS_TEST_NG_FIRECRACKER",
    "cloud-hypervisor": "NIXOS_TEST_NG_CLOUD_HYPERVISOR",
}


def vmm_env(driver_env, backend: str) -> tuple[Path, dict[str, str]]:
    fake = driver_env.tmp / "fake"
    fake.mkdir()
    return fake, {
        VARIABLE[backend]: str(STANDINS / backend),
        "NTNG_STANDIN_RUNNER": "fake",
        "NTNG_FAKE_RUNNER_DIR": str(fake),
    }


def write_config(driver_env, machines: dict, body: str) -> Path:
    test = driver_env.write_script("t.py", textwrap.dedent(body))
    config = {"vms": machines, "vlans": [], "test_script": str(test)}
    path = driver_env.work / "config.json"
    path.write_text(json.dumps(config))
    return path


def boots(fake: Path) -> list[dict]:
    path = fake / "calls.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [c for c in map(json.loads, lines) if c["call"] == "boot"]


def images(driver_env) -> None:
    for f in ("vmlinux", "initrd", "root.img", "data.img"):
        (driver_env.work / f).write_text(f)


# What each stand-in's fake runner was asked to boot for the entry below (the root disk and
# the command line as each VMM hands them on).
def expected_boot(backend: str, work: Path, state: Path) -> dict:
    if backend == "firecracker":
        cmdline = "console=ttyS0 reboot=k panic=1 root=/dev/vda ro"
        disks = [
            {"id": "rootfs", "path": f"{work}/root.img", "read_only": True, "is_root": True},
            {"id": "disk1", "path": f"{work}/data.img", "read_only": False, "is_root": False},
        ]
    else:
        cmdline = "console=ttyS0 reboot=k panic=1"
        disks = [
            {"id": "_disk0", "path": f"{work}/root.img", "read_only": True, "is_root": False},
            {"id": "_disk1", "path": f"{work}/data.img", "read_only": False, "is_root": False},
        ]
    return {
        "kernel": f"{work}/vmlinux",
        "initrd": f"{work}/initrd",
        "cmdline": cmdline,
        "vcpus": 2,
        "mem_mib": 256,
        "disks": disks,
        "nets": [],
        "vsock": {"cid": 3, "uds_path": f"{state}/vsock.sock"},
        "console": "stdout",
    }


@pytest.mark.parametrize(
    ("backend", "cls"),
    [("firecracker", "FirecrackerMachine"), ("cloud-hypervisor", "CloudHypervisorMachine")],
)
def test_a_vmm_machine_configured_inline_in_the_config_file(driver_env, run_driver, backend, cls):
    fake, env = vmm_env(driver_env, backend)
    images(driver_env)
    machine = {
        "backend": backend,
        # relative to the file's directory
        "kernel": "vmlinux",
        "initrd": str(driver_env.work / "initrd"),
        "root_disk": "root.img",
        "root_read_only": True,
        "disks": [{"path": "data.img"}],
        "cmdline": "console=ttyS0 reboot=k panic=1",
        "vcpus": 2,
        "memory_mib": 256,
    }
    config = write_config(
        driver_env,
        {"micro": machine},
        f"""
        t.assertTrue(isinstance(micro, {cls}))
        t.assertEqual(micro.start_command, "")
        micro.start()
        t.assertTrue(micro.booted)
        print("STARTED")
        """,
    )
    r = run_driver(["--config", config], env=env)
    assert r.returncode == 0, r
    assert "STARTED" in r.stdout, r
    assert "micro: starting vm" in r.stderr, r
    assert [b["spec"] for b in boots(fake)] == [
        expected_boot(backend, driver_env.work, driver_env.state_dir("micro"))
    ]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"backend": "xen", "kernel": "vmlinux", "cmdline": ""},
         '`vms.micro.backend`: unknown backend "xen" (expected one of "qemu", '
         '"firecracker", "cloud-hypervisor")'),
        ({"backend": "firecracker", "kernel": "vmlinux", "cmdline": "", "ram": 1},
         "machine `micro` (`vms.micro`): unknown key `ram`"),
        ({"backend": "cloud-hypervisor", "cmdline": ""},
         "machine `micro` (`vms.micro`): `kernel` is missing"),
        ({"backend": "firecracker", "kernel": "vmlinux", "cmdline": "", "vcpus": "2"},
         'machine `micro` (`vms.micro`): `vcpus`: expected an integer 1-32, got "2"'),
        ({"backend": "firecracker", "kernel": "bzImage", "cmdline": ""},
         "machine `micro` (`vms.micro`): `kernel`: {work}/bzImage does not exist or is not a file"),
    ],
)  # fmt: skip
def test_a_bad_vmm_entry_is_an_error_naming_the_machine_and_the_key(
    driver_env, run_driver, entry, message
):
    fake, env = vmm_env(driver_env, "firecracker")
    images(driver_env)
    config = write_config(driver_env, {"micro": entry}, "raise SystemExit('it ran')\n")
    r = run_driver(["--config", config], env=env)
    assert r.returncode != 0, r
    assert f"invalid --config file `{config}`: " in r.stderr, r
    assert message.format(work=driver_env.work) in r.stderr, r
    assert "it ran" not in r.stderr + r.stdout
    assert boots(fake) == []


def test_a_firecracker_and_a_cloud_hypervisor_machine_in_one_config_file(driver_env, run_driver):
    fake, env = vmm_env(driver_env, "firecracker")
    env[VARIABLE["cloud-hypervisor"]] = str(STANDINS / "cloud-hypervisor")
    images(driver_env)
    config = write_config(
        driver_env,
        {
            "fc": {"backend": "firecracker", "kernel": "vmlinux", "cmdline": "console=ttyS0"},
            "ch": {"backend": "cloud-hypervisor", "kernel": "vmlinux", "cmdline": "x"},
        },
        """
        t.assertEqual(sorted(type(m).__name__ for m in machines),
                      ["CloudHypervisorMachine", "FirecrackerMachine"])
        start_all()
        t.assertTrue(fc.booted and ch.booted)
        print("BOTH")
        """,
    )
    r = run_driver(["--config", config], env=env)
    assert r.returncode == 0, r
    assert "BOTH" in r.stdout, r
    booted = {b["spec"]["vsock"]["uds_path"]: b["spec"]["cmdline"] for b in boots(fake)}
    assert booted == {
        f"{driver_env.state_dir('fc')}/vsock.sock": "console=ttyS0",
        f"{driver_env.state_dir('ch')}/vsock.sock": "x",
    }
