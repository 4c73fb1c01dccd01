"""The Cloud Hypervisor stand-in, driven over its API socket with the fake runner."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from standins.client import CLOUD_HYPERVISOR

API = "/api/v1"


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    out = {}
    for name in ("vmlinux", "initrd", "root.img", "data.img"):
        (tmp_path / name).write_bytes(b"x")
        out[name] = str(tmp_path / name)
    return out


@pytest.fixture
def vmm(standin):
    return standin(CLOUD_HYPERVISOR).start()


def put(vmm, op: str, body=None):
    return vmm.put(f"{API}/{op}", body)


def error(answer, status: int) -> list[str]:
    assert answer.status == status, answer
    assert isinstance(answer.data, list) and all(isinstance(m, str) for m in answer.data)
    return answer.data


def vm_config(files, tmp_path: Path) -> dict:
    return {
        "payload": {
            "kernel": files["vmlinux"],
            "initramfs": files["initrd"],
            "cmdline": "console=ttyS0 root=/dev/vda",
        },
        "cpus": {"boot_vcpus": 2, "max_vcpus": 2},
        "memory": {"size": 256 << 20, "shared": True},
        "disks": [
            {"path": files["root.img"], "readonly": False, "id": "root"},
            {"path": files["data.img"], "readonly": True},
        ],
        "net": [{"tap": "tap-a", "mac": "52:54:00:12:34:56", "id": "net0", "num_queues": 2}],
        "vsock": {"cid": 3, "socket": str(tmp_path / "v.sock")},
        "serial": {"mode": "Tty"},
        "console": {"mode": "Off"},
        "rng": {"src": "/dev/urandom"},
    }


def test_cloud_hypervisor_full_lifecycle(vmm, files, tmp_path):
    ping = vmm.get(f"{API}/vmm.ping")
    assert ping.status == 200 and ping.data["version"] == "0.3.0"
    assert ping.data["pid"] == vmm.proc.pid
    assert error(vmm.get(f"{API}/vm.info"), 404) == [
        "Error from API",
        "The VM info is not available",
        "VM is not created",
    ]
    config = vm_config(files, tmp_path)
    assert put(vmm, "vm.create", config).status == 204
    info = vmm.get(f"{API}/vm.info").data
    assert info["state"] == "Created" and info["config"] == config
    assert info["memory_actual_size"] == 256 << 20
    assert put(vmm, "vm.boot").status == 204
    assert vmm.get(f"{API}/vm.info").data["state"] == "Running"
    assert vmm.calls()[0] == {
        "call": "boot",
        "spec": {
            "kernel": files["vmlinux"],
            "initrd": files["initrd"],
            "cmdline": "console=ttyS0 root=/dev/vda",
            "vcpus": 2,
            "mem_mib": 256,
            "disks": [
                {"id": "root", "path": files["root.img"], "read_only": False, "is_root": False},
                {"id": "_disk1", "path": files["data.img"], "read_only": True, "is_root": False},
            ],
            "nets": [{"id": "net0", "tap": "tap-a", "mac": "52:54:00:12:34:56"}],
            "vsock": {"cid": 3, "uds_path": str(tmp_path / "v.sock")},
            "console": "stdout",
        },
    }
    for op, state in [
        ("vm.pause", "Paused"),
        ("vm.resume", "Running"),
        ("vm.power-button", "Running"),
        ("vm.reboot", "Running"),
        ("vm.shutdown", "Shutdown"),
        ("vm.boot", "Running"),
    ]:
        assert put(vmm, op).status == 204, op
        assert vmm.get(f"{API}/vm.info").data["state"] == state, op
    assert put(vmm, "vm.delete").status == 204
    assert vmm.get(f"{API}/vm.info").status == 404
    assert vmm.call_names() == [
        "boot",
        "pause",
        "resume",
        "power_button",
        "reboot",
        "shutdown",
        "boot",
        "shutdown",
    ]


def test_cloud_hypervisor_defaults_and_console_modes(vmm, files, tmp_path):
    assert put(vmm, "vm.create", {"payload": {"kernel": files["vmlinux"]}}).status == 204
    info = vmm.get(f"{API}/vm.info").data["config"]
    assert info["cpus"] == {"boot_vcpus": 1, "max_vcpus": 1}
    assert info["memory"] == {"size": 512 << 20}
    assert (info["serial"], info["console"]) == ({"mode": "Null"}, {"mode": "Tty"})
    assert put(vmm, "vm.boot").status == 204
    spec = vmm.calls()[0]["spec"]
    assert (spec["vcpus"], spec["mem_mib"], spec["console"]) == (1, 512, "stdout")
    put(vmm, "vm.delete")
    to_file = {
        "payload": {"kernel": files["vmlinux"]},
        "serial": {"mode": "File", "file": str(tmp_path / "serial.log")},
        "console": {"mode": "Off"},
    }
    assert put(vmm, "vm.create", to_file).status == 204
    assert put(vmm, "vm.boot").status == 204
    assert vmm.calls()[-1]["spec"]["console"] == ["file", str(tmp_path / "serial.log")]


@pytest.mark.parametrize(
    ("op", "body", "status", "messages"),
    [
        ("vm.boot", None, 404, ["Error from API", "The VM could not boot", "VM is not created"]),
        (
            "vm.pause",
            None,
            404,
            ["Error from API", "The VM could not be paused", "VM is not created"],
        ),
        (
            "vm.shutdown",
            None,
            404,
            ["Error from API", "The VM could not shutdown", "VM is not created"],
        ),
        (
            "vm.reboot",
            None,
            404,
            ["Error from API", "The VM could not reboot", "VM is not created"],
        ),
        (
            "vm.power-button",
            None,
            404,
            ["Error from API", "Error triggering power button", "VM is not created"],
        ),
        (
            "vm.snapshot",
            {"destination_url": "file:///tmp"},
            404,
            ["Error from API", "The VM could not be snapshotted", "VM is not created"],
        ),
        (
            "vm.add-net",
            {"tap": "t"},
            404,
            [
                "Error from API",
                "The network device could not be added to the VM",
                "VM is not created",
            ],
        ),
        ("vm.create", None, 400, ["Bad Request"]),
        ("vm.create", {}, 400, ["Failed to deserialize JSON", "missing field `payload`"]),
        (
            "vm.create",
            {"payload": {"kernel": "/k"}, "cpus": {"boot_vcpus": 0, "max_vcpus": 1}},
            400,
            [
                "Failed to deserialize JSON",
                "invalid value: integer `0`, expected at least 1 (at `cpus.boot_vcpus`)",
            ],
        ),
        (
            "vm.create",
            {"payload": {"kernel": "/k"}, "disks": [{"path": "/d", "readonly": "yes"}]},
            400,
            [
                "Failed to deserialize JSON",
                'invalid type: string "yes", expected a boolean (at `disks[0].readonly`)',
            ],
        ),
        (
            "vm.create",
            {"payload": {"kernel": "/k"}, "serial": {"mode": "Serial"}},
            400,
            [
                "Failed to deserialize JSON",
                "unknown variant `Serial`, expected one of `Off`, `Pty`, `Tty`, `File`, "
                "`Socket`, `Null` (at `serial.mode`)",
            ],
        ),
        (
            "vm.create",
            {"payload": {"kernel": "/k", "initrd": "/i"}},
            400,
            [
                "Failed to deserialize JSON",
                "unknown field `initrd`, expected one of `firmware`, `kernel`, `cmdline`, "
                "`initramfs`, `igvm`, `host_data` (at `payload`)",
            ],
        ),
        (
            "vm.create",
            {
                "payload": {"kernel": "/k"},
                "fs": [{"tag": "t", "socket": "/s", "num_queues": 1, "queue_size": 8}],
            },
            500,
            [
                "Error from API",
                "The VM could not be created",
                "not supported by the stand-in: VmConfig.fs",
            ],
        ),
        (
            "vm.create",
            {"payload": {"kernel": "/k"}, "memory": {"size": 1000}},
            500,
            [
                "Error from API",
                "The VM could not be created",
                "memory.size 1000 is not a positive multiple of 1 MiB",
            ],
        ),
        (
            "vm.create",
            {"payload": {"kernel": "/k"}, "net": [{"ip": "10.0.0.1"}]},
            500,
            [
                "Error from API",
                "The VM could not be created",
                "not supported by the stand-in: net[0] without `tap` (the stand-in needs a TAP "
                "device name)",
            ],
        ),
        (
            "vm.resize",
            {"desired_vcpus": 2},
            500,
            ["Error from API", "not supported by the stand-in: PUT /api/v1/vm.resize"],
        ),
        (
            "vm.add-disk",
            {"path": "/d"},
            500,
            ["Error from API", "not supported by the stand-in: PUT /api/v1/vm.add-disk"],
        ),
        ("vm.nope", None, 404, ["Not Found"]),
    ],
)
def test_cloud_hypervisor_bad_requests(vmm, op, body, status, messages):
    assert error(put(vmm, op, body), status) == messages
    assert vmm.get(f"{API}/vm.info").status == 404
    assert vmm.calls() == []


def test_cloud_hypervisor_bad_json_and_methods(vmm):
    answer = vmm.request("PUT", f"{API}/vm.create", raw=b"{nope")
    assert error(answer, 400)[0] == "Failed to deserialize JSON"
    assert error(vmm.get(f"{API}/vm.boot"), 400) == ["Bad Request"]
    assert error(vmm.put(f"{API}/vm.info"), 400) == ["Bad Request"]
    answer = vmm.request("PATCH", f"{API}/vm.boot", {})
    assert (answer.status, answer.raw) == (400, b"")


def test_cloud_hypervisor_state_errors(vmm, files, tmp_path):
    assert put(vmm, "vm.create", vm_config(files, tmp_path)).status == 204
    assert error(put(vmm, "vm.create", vm_config(files, tmp_path)), 500) == [
        "Error from API",
        "The VM could not be created",
        "VM is already created",
    ]
    not_running = ["Error from API", "The VM could not be paused", "VM is not running"]
    assert error(put(vmm, "vm.pause"), 405) == not_running
    assert error(put(vmm, "vm.shutdown"), 405)[1] == "The VM could not shutdown"
    assert error(put(vmm, "vm.resume"), 405) == [
        "Error from API",
        "The VM could not resume",
        "VM is not paused (it is Created)",
    ]
    assert put(vmm, "vm.boot").status == 204
    assert error(put(vmm, "vm.boot"), 500) == [
        "Error from API",
        "The VM could not boot",
        "Invalid VM state transition: Running to Running",
    ]
    assert error(put(vmm, "vm.resume"), 405)[2] == "VM is not paused (it is Running)"
    snapshot = {"destination_url": f"file://{tmp_path}"}
    assert error(put(vmm, "vm.snapshot", snapshot), 500)[2] == "VM is not paused"
    assert put(vmm, "vm.pause").status == 204
    assert error(put(vmm, "vm.pause"), 500)[2] == "Invalid VM state transition: Paused to Paused"
    assert error(put(vmm, "vm.snapshot", {}), 400) == [
        "Failed to deserialize JSON",
        "missing field `destination_url`",
    ]
    assert error(put(vmm, "vm.restore", {"source_url": f"file://{tmp_path}"}), 404)[2] == (
        "VM is already created"
    )
    assert vmm.call_names() == ["boot", "pause"]


def test_cloud_hypervisor_boot_with_a_missing_kernel(vmm, files, tmp_path):
    config = {"payload": {"kernel": str(tmp_path / "missing")}}
    assert put(vmm, "vm.create", config).status == 204
    assert error(put(vmm, "vm.boot"), 500) == [
        "Error from API",
        "The VM could not boot",
        f"Cannot open the kernel {tmp_path / 'missing'}: No such file or directory (os error 2)",
    ]
    assert vmm.get(f"{API}/vm.info").data["state"] == "Created"


def test_cloud_hypervisor_runner_failure(standin, files, tmp_path):
    vmm = standin(CLOUD_HYPERVISOR).start(NTNG_FAKE_RUNNER_FAIL="pause=monitor gone")
    put(vmm, "vm.create", vm_config(files, tmp_path))
    put(vmm, "vm.boot")
    assert error(put(vmm, "vm.pause"), 500) == [
        "Error from API",
        "The VM could not be paused",
        "monitor gone",
    ]
    assert vmm.get(f"{API}/vm.info").data["state"] == "Running"


def test_cloud_hypervisor_snapshot_and_restore(standin, files, tmp_path):
    first = standin(CLOUD_HYPERVISOR, "first").start()
    config = vm_config(files, tmp_path)
    put(first, "vm.create", config)
    put(first, "vm.boot")
    put(first, "vm.pause")
    folder = tmp_path / "snap"
    assert error(put(first, "vm.snapshot", {"destination_url": f"file://{folder}"}), 500)[2] == (
        f"No snapshot directory {folder}"
    )
    folder.mkdir()
    assert put(first, "vm.snapshot", {"destination_url": f"file://{folder}"}).status == 204
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "memory-ranges",
        "state.json",
    ]
    assert first.calls()[-1] == {
        "call": "snapshot",
        "state_path": str(folder / "state.json"),
        "mem_path": str(folder / "memory-ranges"),
        "diff": False,
    }
    booted = first.calls()[0]["spec"]

    second = standin(CLOUD_HYPERVISOR, "second").start()
    assert put(second, "vm.restore", {"source_url": f"file://{folder}"}).status == 204
    info = second.get(f"{API}/vm.info").data
    assert info["state"] == "Paused" and info["config"]["payload"] == config["payload"]
    assert second.calls() == [
        {
            "call": "restore",
            "state_path": str(folder / "state.json"),
            "mem_path": str(folder / "memory-ranges"),
            "spec": booted,
            "resume": False,
        }
    ]
    assert put(second, "vm.resume").status == 204
    assert second.get(f"{API}/vm.info").data["state"] == "Running"

    third = standin(CLOUD_HYPERVISOR, "third").start()
    restore = {"source_url": f"file://{folder}", "resume": True, "memory_restore_mode": "OnDemand"}
    assert put(third, "vm.restore", restore).status == 204
    assert third.get(f"{API}/vm.info").data["state"] == "Running"
    assert third.calls()[0]["resume"] is True
    fourth = standin(CLOUD_HYPERVISOR, "fourth").start()
    missing = {"source_url": f"file://{tmp_path / 'none'}"}
    assert error(put(fourth, "vm.restore", missing), 500)[1] == "The VM could not be restored"
    assert error(put(fourth, "vm.restore", {"source_url": "tcp:1.2.3.4:5"}), 500)[2] == (
        "Unsupported URL 'tcp:1.2.3.4:5' (expected file:///dir)"
    )


def test_cloud_hypervisor_add_net_before_boot(vmm, files, tmp_path):
    put(vmm, "vm.create", {"payload": {"kernel": files["vmlinux"]}})
    assert put(vmm, "vm.add-net", {"tap": "tap-x", "mac": "52:54:00:00:00:01"}).status == 204
    assert put(vmm, "vm.add-net", {"tap": "tap-y", "id": "_net0"}).status == 409
    assert error(put(vmm, "vm.add-net", {"mac": "52:54:00:00:00:02"}), 400)[1] == (
        "The network device could not be added to the VM"
    )
    assert vmm.get(f"{API}/vm.info").data["config"]["net"] == [
        {"tap": "tap-x", "mac": "52:54:00:00:00:01", "id": "_net0"}
    ]
    put(vmm, "vm.boot")
    assert vmm.calls()[0]["spec"]["nets"] == [
        {"id": "_net0", "tap": "tap-x", "mac": "52:54:00:00:00:01"}
    ]
    assert error(put(vmm, "vm.add-net", {"tap": "tap-z"}), 500)[2] == (
        "not supported by the stand-in: hot-plugging a network device (boot first)"
    )


def test_cloud_hypervisor_vmm_shutdown_ends_the_process(vmm, files, tmp_path):
    put(vmm, "vm.create", vm_config(files, tmp_path))
    put(vmm, "vm.boot")
    assert put(vmm, "vmm.shutdown").status == 204
    assert vmm.wait() == 0
    assert not os.path.exists(vmm.socket)
    assert vmm.call_names() == ["boot", "shutdown"]


def test_cloud_hypervisor_exits_with_the_vm(vmm, files, tmp_path):
    put(vmm, "vm.create", vm_config(files, tmp_path))
    put(vmm, "vm.boot")
    vmm.vm_exits(0)
    assert vmm.wait() == 0
    assert not os.path.exists(vmm.socket)


def test_cloud_hypervisor_power_button_powers_the_guest_off(standin, files, tmp_path):
    vmm = standin(CLOUD_HYPERVISOR).start(NTNG_FAKE_RUNNER_EXIT_ON="power_button=5")
    put(vmm, "vm.create", vm_config(files, tmp_path))
    put(vmm, "vm.boot")
    assert put(vmm, "vm.power-button").status == 204
    assert vmm.wait() == 5


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_cloud_hypervisor_signal_ends_it_cleanly(vmm, files, tmp_path, signum):
    put(vmm, "vm.create", vm_config(files, tmp_path))
    put(vmm, "vm.boot")
    assert vmm.signal(signum) == -signum
    assert not os.path.exists(vmm.socket)
    assert vmm.call_names() == ["boot", "shutdown"]


@pytest.mark.parametrize("form", ["plain", "path="])
def test_cloud_hypervisor_accepts_a_drivers_arguments(standin, tmp_path, form):
    vmm = standin(CLOUD_HYPERVISOR)
    socket = vmm.socket if form == "plain" else f"path={vmm.socket}"
    args = ["-v", "-vv", "--api-socket", socket, "--log-file", str(tmp_path / "ch.log")]
    vmm.start(args + ["--seccomp", "false"])
    assert vmm.get(f"{API}/vmm.ping").status == 200
    assert vmm.signal() == -signal.SIGTERM


def test_cloud_hypervisor_replaces_a_stale_socket(standin):
    vmm = standin(CLOUD_HYPERVISOR)
    Path(vmm.socket).write_text("")
    vmm.start()
    assert vmm.get(f"{API}/vmm.ping").status == 200


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "error: the stand-in needs --api-socket PATH"),
        (
            ["--api-socket", "SOCK", "--kernel", "/k"],
            "error: Found argument '--kernel' which wasn't expected, or isn't valid in this "
            "context.",
        ),
        (
            ["--api-socket", "fd=3"],
            "error: the stand-in takes --api-socket PATH or --api-socket path=PATH, not 'fd=3'",
        ),
        (
            ["--api-socket", "SOCK", "--seccomp", "maybe"],
            "error: invalid value 'maybe' for '--seccomp'",
        ),
    ],
)
def test_cloud_hypervisor_bad_arguments(standin, args, message):
    vmm = standin(CLOUD_HYPERVISOR)
    vmm.start([vmm.socket if a == "SOCK" else a for a in args], wait=False)
    assert vmm.wait() == 1
    assert vmm.stderr().splitlines()[0] == message
    assert not os.path.exists(vmm.socket)
