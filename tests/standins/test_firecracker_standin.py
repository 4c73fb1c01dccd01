"""The Firecracker stand-in, driven over its API socket with the fake runner."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from standins import firecracker_api as fc
from standins.client import FIRECRACKER

DESERIALIZE = "An error occurred when deserializing the json body of a request: "


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    out = {}
    for name in ("vmlinux", "initrd", "root.img", "data.img"):
        (tmp_path / name).write_bytes(b"x")
        out[name] = str(tmp_path / name)
    return out


@pytest.fixture
def vmm(standin):
    return standin(FIRECRACKER).start()


def fault(answer) -> str:
    assert answer.status == 400, answer
    assert set(answer.data) == {"fault_message"}, answer.data
    return answer.data["fault_message"]


def configure(vmm, files, tmp_path: Path, **machine) -> None:
    """The configuration a driver sends before InstanceStart."""
    assert (
        vmm.put("/logger", {"log_path": str(tmp_path / "fc.log"), "level": "Debug"}).status == 204
    )
    assert vmm.put("/metrics", {"metrics_path": str(tmp_path / "metrics.json")}).status == 204
    config = {"vcpu_count": 2, "mem_size_mib": 256, **machine}
    assert vmm.put("/machine-config", config).status == 204
    boot = {
        "kernel_image_path": files["vmlinux"],
        "initrd_path": files["initrd"],
        "boot_args": "console=ttyS0 panic=-1",
    }
    assert vmm.put("/boot-source", boot).status == 204
    data = {
        "drive_id": "data",
        "path_on_host": files["data.img"],
        "is_root_device": False,
        "is_read_only": True,
    }
    assert vmm.put("/drives/data", data).status == 204
    root = {
        "drive_id": "rootfs",
        "path_on_host": files["root.img"],
        "is_root_device": True,
        "is_read_only": False,
        "cache_type": "Writeback",
        "rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}},
    }
    assert vmm.put("/drives/rootfs", root).status == 204
    net = {"iface_id": "eth0", "host_dev_name": "tap-a", "guest_mac": "52:54:00:12:34:56"}
    assert vmm.put("/network-interfaces/eth0", net).status == 204
    vsock = {"guest_cid": 3, "uds_path": str(tmp_path / "v.sock")}
    assert vmm.put("/vsock", vsock).status == 204


def start(vmm) -> None:
    assert vmm.put("/actions", {"action_type": "InstanceStart"}).status == 204


def test_firecracker_full_boot_sequence(vmm, files, tmp_path):
    assert vmm.get("/").data == {
        "id": "anonymous-instance",
        "state": "Not started",
        "vmm_version": "1.17.0-dev",
        "app_name": "Firecracker",
    }
    assert vmm.get("/machine-config").data == fc.spec.DEFAULT_MACHINE_CONFIG
    configure(vmm, files, tmp_path)
    assert vmm.get("/machine-config").data["vcpu_count"] == 2
    start(vmm)
    assert vmm.get("/").data["state"] == "Running"
    [boot] = vmm.calls()
    assert boot == {
        "call": "boot",
        "spec": {
            "kernel": files["vmlinux"],
            "initrd": files["initrd"],
            "cmdline": "console=ttyS0 panic=-1 root=/dev/vda rw",
            "vcpus": 2,
            "mem_mib": 256,
            "disks": [
                {"id": "rootfs", "path": files["root.img"], "read_only": False, "is_root": True},
                {"id": "data", "path": files["data.img"], "read_only": True, "is_root": False},
            ],
            "nets": [{"id": "eth0", "tap": "tap-a", "mac": "52:54:00:12:34:56"}],
            "vsock": {"cid": 3, "uds_path": str(tmp_path / "v.sock")},
            "console": "stdout",
        },
    }
    config = vmm.get("/vm/config").data
    assert [d["drive_id"] for d in config["drives"]] == ["data", "rootfs"]
    assert config["boot-source"]["kernel_image_path"] == files["vmlinux"]
    assert config["network-interfaces"][0]["host_dev_name"] == "tap-a"
    assert config["vsock"]["guest_cid"] == 3
    assert config["machine-config"]["mem_size_mib"] == 256
    assert vmm.put("/actions", {"action_type": "FlushMetrics"}).status == 204
    assert json.loads((tmp_path / "metrics.json").read_text().splitlines()[-1])["standin"]
    assert vmm.get("/version").data == {"firecracker_version": "1.17.0-dev"}


def test_firecracker_partuuid_and_read_only_root(vmm, files):
    vmm.put("/boot-source", {"kernel_image_path": files["vmlinux"], "boot_args": "quiet"})
    root = {
        "drive_id": "r",
        "path_on_host": files["root.img"],
        "is_root_device": True,
        "is_read_only": True,
        "partuuid": "abcd-01",
    }
    assert vmm.put("/drives/r", root).status == 204
    start(vmm)
    assert vmm.calls()[0]["spec"]["cmdline"] == "quiet root=PARTUUID=abcd-01 ro"


@pytest.mark.parametrize(
    ("method", "path", "body", "message"),
    [
        ("PUT", "/boot-source", {}, DESERIALIZE + "missing field `kernel_image_path`."),
        (
            "PUT",
            "/boot-source",
            {"kernel_image_path": "/k", "kernel": "/k"},
            DESERIALIZE + "unknown field `kernel`, expected one of `boot_args`, `initrd_path`, "
            "`kernel_image_path`.",
        ),
        (
            "PUT",
            "/machine-config",
            {"vcpu_count": "2", "mem_size_mib": 128},
            DESERIALIZE + 'invalid type: string "2", expected an integer (at `vcpu_count`).',
        ),
        (
            "PUT",
            "/machine-config",
            {"vcpu_count": 33, "mem_size_mib": 128},
            DESERIALIZE + "invalid value: integer `33`, expected at most 32 (at `vcpu_count`).",
        ),
        (
            "PUT",
            "/machine-config",
            {"vcpu_count": 3, "mem_size_mib": 128, "smt": True},
            "Machine config error: The vCPU number is invalid! The vCPU number can only be 1 or "
            "an even number when SMT is enabled.",
        ),
        (
            "PUT",
            "/actions",
            {"action_type": "Reboot"},
            DESERIALIZE + "unknown variant `Reboot`, expected one of `FlushMetrics`, "
            "`InstanceStart`, `SendCtrlAltDel` (at `action_type`).",
        ),
        (
            "PUT",
            "/drives/d",
            {
                "drive_id": "d",
                "is_root_device": False,
                "rate_limiter": {"bandwidth": {"size": 1}},
            },
            DESERIALIZE + "missing field `refill_time` (at `rate_limiter.bandwidth`).",
        ),
        ("PUT", "/vsock", {"guest_cid": 2, "uds_path": "/v"}, None),
        ("GET", "/nope", None, "Invalid request method and/or path: GET nope."),
        ("PUT", "/vm", {"state": "Paused"}, "Invalid request method and/or path: PUT vm."),
        ("PUT", "/balloon", {"amount_mib": 1, "deflate_on_oom": True}, None),
        ("PUT", "/boot-source", None, "Empty PUT request."),
        ("PUT", "/actions", {"action_type": "InstanceStart"}, fc.NO_KERNEL),
        ("PATCH", "/vm", {"state": "Paused"}, fc.BEFORE_START),
        ("PUT", "/actions", {"action_type": "SendCtrlAltDel"}, fc.BEFORE_START),
        ("PUT", "/snapshot/create", {"snapshot_path": "/s", "mem_file_path": "/m"}, None),
        (
            "PUT",
            "/drives/a-b",
            {"drive_id": "a-b", "is_root_device": False},
            "API Resource IDs can only contain alphanumeric characters and underscores.",
        ),
        ("PUT", "/drives/one", {"drive_id": "two", "is_root_device": False}, fc.ID_MISMATCH),
        (
            "PUT",
            "/network-interfaces/eth0",
            {"iface_id": "eth0", "host_dev_name": "t", "guest_mac": "nope"},
            DESERIALIZE + "invalid MAC address `nope` (at `guest_mac`).",
        ),
    ],
)
def test_firecracker_bad_requests(vmm, method, path, body, message):
    answer = vmm.request(method, path, body)
    got = fault(answer)
    expected = {
        "/vsock": DESERIALIZE + "invalid value: integer `2`, expected at least 3 (at `guest_cid`).",
        "/balloon": "not supported by the stand-in: PUT /balloon",
        "/snapshot/create": fc.BEFORE_START,
    }
    assert got == (message if message is not None else expected[path])
    assert vmm.get("/").data["state"] == "Not started"
    assert vmm.calls() == []


def test_firecracker_bad_json_and_a_body_on_get(vmm):
    got = fault(vmm.request("PUT", "/boot-source", raw=b"{nope"))
    assert got.startswith(DESERIALIZE + "Expecting property name enclosed in double quotes")
    assert fault(vmm.request("GET", "/", raw=b"{}")) == "GET request cannot have a body."


def test_firecracker_missing_files(vmm, files, tmp_path):
    missing = str(tmp_path / "missing")
    got = fault(vmm.put("/boot-source", {"kernel_image_path": missing}))
    assert got == (
        "Boot source error: The kernel file cannot be opened: "
        "No such file or directory (os error 2)"
    )
    got = fault(
        vmm.put("/boot-source", {"kernel_image_path": files["vmlinux"], "initrd_path": missing})
    )
    assert got.startswith("Boot source error: The initrd file cannot be opened")
    drive = {
        "drive_id": "d",
        "path_on_host": missing,
        "is_root_device": True,
        "is_read_only": False,
    }
    got = fault(vmm.put("/drives/d", drive))
    assert got == (
        f"Drive config error: Unable to open block device backing file {missing}: "
        "No such file or directory (os error 2)"
    )
    got = fault(vmm.put("/drives/e", {"drive_id": "e", "is_root_device": False}))
    assert got == "Drive config error: a virtio-block drive needs path_on_host and is_read_only"


def test_firecracker_one_root_device(vmm, files):
    def root(name):
        body = {
            "drive_id": name,
            "path_on_host": files["root.img"],
            "is_root_device": True,
            "is_read_only": False,
        }
        return vmm.put(f"/drives/{name}", body)

    assert root("a").status == 204
    assert root("a").status == 204  # updating the same drive is no second root
    assert fault(root("b")) == "Drive config error: A root block device already exists!"


def test_firecracker_state_machine_pause_resume_snapshot(vmm, files, tmp_path):
    configure(vmm, files, tmp_path)
    start(vmm)
    for path, body in [
        ("/boot-source", {"kernel_image_path": files["vmlinux"]}),
        ("/machine-config", {"vcpu_count": 1, "mem_size_mib": 64}),
        ("/vsock", {"guest_cid": 4, "uds_path": "/x"}),
        ("/actions", {"action_type": "InstanceStart"}),
        ("/snapshot/load", {"snapshot_path": "/s", "mem_file_path": "/m"}),
    ]:
        assert fault(vmm.put(path, body)) == fc.AFTER_START, path
    snap = {"snapshot_path": str(tmp_path / "s"), "mem_file_path": str(tmp_path / "m")}
    assert fault(vmm.put("/snapshot/create", snap)) == fc.SNAPSHOT_RUNNING
    assert vmm.patch("/vm", {"state": "Paused"}).status == 204
    assert vmm.get("/").data["state"] == "Paused"
    assert vmm.put("/snapshot/create", {**snap, "snapshot_type": "Full"}).status == 204
    assert (tmp_path / "s").is_file() and (tmp_path / "m").is_file()
    assert (
        fault(vmm.put("/snapshot/create", {**snap, "snapshot_type": "Diff"})) == fc.DIFF_UNTRACKED
    )
    assert vmm.patch("/vm", {"state": "Resumed"}).status == 204
    assert vmm.get("/").data["state"] == "Running"
    assert vmm.put("/actions", {"action_type": "SendCtrlAltDel"}).status == 204
    assert vmm.call_names() == ["boot", "pause", "snapshot", "resume", "ctrl_alt_del"]
    assert vmm.calls()[2] == {
        "call": "snapshot",
        "state_path": snap["snapshot_path"],
        "mem_path": snap["mem_file_path"],
        "diff": False,
    }


def test_firecracker_diff_snapshot_with_dirty_page_tracking(vmm, files, tmp_path):
    configure(vmm, files, tmp_path, track_dirty_pages=True)
    start(vmm)
    vmm.patch("/vm", {"state": "Paused"})
    snap = {"snapshot_path": str(tmp_path / "s"), "mem_file_path": str(tmp_path / "m")}
    assert vmm.put("/snapshot/create", {**snap, "snapshot_type": "Diff"}).status == 204
    assert vmm.calls()[-1]["diff"] is True


def snapshot_of_a_running_vm(vmm, files, tmp_path) -> dict:
    configure(vmm, files, tmp_path)
    start(vmm)
    vmm.patch("/vm", {"state": "Paused"})
    snap = {"snapshot_path": str(tmp_path / "s"), "mem_file_path": str(tmp_path / "m")}
    assert vmm.put("/snapshot/create", snap).status == 204
    return snap


def test_firecracker_snapshot_load_in_a_fresh_process(standin, files, tmp_path):
    first = standin(FIRECRACKER, "first").start()
    snap = snapshot_of_a_running_vm(first, files, tmp_path)
    booted = first.calls()[0]["spec"]
    second = standin(FIRECRACKER, "second").start()
    assert second.put("/logger", {"level": "Info"}).status == 204  # allowed before a load
    load = {
        "snapshot_path": snap["snapshot_path"],
        "mem_backend": {"backend_type": "File", "backend_path": snap["mem_file_path"]},
        "resume_vm": True,
        "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap-b"}],
        "vsock_override": {"uds_path": str(tmp_path / "v2.sock")},
    }
    assert second.put("/snapshot/load", load).status == 204
    assert second.get("/").data["state"] == "Running"
    [restore] = second.calls()
    expected = dict(booted, nets=[dict(booted["nets"][0], tap="tap-b")])
    expected["vsock"] = {"cid": 3, "uds_path": str(tmp_path / "v2.sock")}
    assert restore == {
        "call": "restore",
        "state_path": snap["snapshot_path"],
        "mem_path": snap["mem_file_path"],
        "spec": expected,
        "resume": True,
    }
    config = second.get("/vm/config").data
    assert config["boot-source"] is None
    assert config["network-interfaces"][0]["host_dev_name"] == "tap-b"
    assert fault(second.put("/actions", {"action_type": "InstanceStart"})) == fc.AFTER_START
    # a load without resume_vm leaves the VM paused
    third = standin(FIRECRACKER, "third").start()
    paused = {"snapshot_path": snap["snapshot_path"], "mem_file_path": snap["mem_file_path"]}
    assert third.put("/snapshot/load", paused).status == 204
    assert third.get("/").data["state"] == "Paused"
    assert third.calls()[0]["resume"] is False


def test_firecracker_snapshot_load_refusals(standin, files, tmp_path):
    vmm = standin(FIRECRACKER).start()
    both = {
        "snapshot_path": "/s",
        "mem_file_path": "/m",
        "mem_backend": {"backend_type": "File", "backend_path": "/m"},
    }
    assert fault(vmm.put("/snapshot/load", both)) == fc.TOO_MANY_MEM
    assert fault(vmm.put("/snapshot/load", {"snapshot_path": "/s"})) == fc.MISSING_MEM
    uffd = {"snapshot_path": "/s", "mem_backend": {"backend_type": "Uffd", "backend_path": "/u"}}
    assert fault(vmm.put("/snapshot/load", uffd)) == (
        "not supported by the stand-in: mem_backend of type Uffd"
    )
    missing = {"snapshot_path": str(tmp_path / "none"), "mem_file_path": "/m"}
    assert fault(vmm.put("/snapshot/load", missing)).startswith(
        "Load snapshot error: Failed to restore from snapshot: cannot read the snapshot state"
    )
    vmm.put("/machine-config", {"vcpu_count": 1, "mem_size_mib": 64})
    load = {"snapshot_path": "/s", "mem_file_path": "/m"}
    assert fault(vmm.put("/snapshot/load", load)) == fc.LOAD_NOT_ALLOWED
    assert vmm.calls() == []


def test_firecracker_runner_failure_is_a_fault(standin, files):
    vmm = standin(FIRECRACKER).start(NTNG_FAKE_RUNNER_FAIL="boot=qemu died: bad kernel")
    vmm.put("/boot-source", {"kernel_image_path": files["vmlinux"]})
    got = fault(vmm.put("/actions", {"action_type": "InstanceStart"}))
    assert got == "Start microvm error: qemu died: bad kernel"
    assert vmm.get("/").data["state"] == "Not started"


def test_firecracker_exits_with_the_vm(vmm, files):
    vmm.put("/boot-source", {"kernel_image_path": files["vmlinux"]})
    start(vmm)
    vmm.vm_exits(3)
    assert vmm.wait() == 3
    assert not os.path.exists(vmm.socket)
    assert "shutdown" not in vmm.call_names()


def test_firecracker_exits_after_the_guest_reboot_request(standin, files):
    vmm = standin(FIRECRACKER).start(NTNG_FAKE_RUNNER_EXIT_ON="ctrl_alt_del=0")
    vmm.put("/boot-source", {"kernel_image_path": files["vmlinux"]})
    start(vmm)
    assert vmm.put("/actions", {"action_type": "SendCtrlAltDel"}).status == 204
    assert vmm.wait() == 0
    assert not os.path.exists(vmm.socket)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_firecracker_signal_ends_it_cleanly(vmm, files, signum):
    vmm.put("/boot-source", {"kernel_image_path": files["vmlinux"]})
    start(vmm)
    assert vmm.signal(signum) == -signum
    assert not os.path.exists(vmm.socket)
    assert vmm.call_names() == ["boot", "shutdown"]


def test_firecracker_accepts_a_drivers_arguments(standin, tmp_path):
    vmm = standin(FIRECRACKER)
    args = ["--api-sock", vmm.socket, "--id", "m1", "--level", "Debug"]
    args += ["--log-path", str(tmp_path / "log"), "--no-seccomp", "--boot-timer"]
    vmm.start(args)
    assert vmm.get("/").data["id"] == "m1"
    assert vmm.signal() == -signal.SIGTERM


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "Arguments parsing error: the stand-in needs --api-sock PATH."),
        (
            ["--api-sock", "SOCK", "--bogus"],
            "Arguments parsing error: Found argument '--bogus' which wasn't expected, "
            "or isn't valid in this context.",
        ),
        (
            ["--api-sock"],
            "Arguments parsing error: The argument '--api-sock' requires a value, "
            "but none was supplied.",
        ),
    ],
)
def test_firecracker_bad_arguments(standin, args, message):
    vmm = standin(FIRECRACKER)
    vmm.start([vmm.socket if a == "SOCK" else a for a in args], wait=False)
    assert vmm.wait() == 1
    assert vmm.stderr().splitlines()[0] == message
    assert not os.path.exists(vmm.socket)


def test_firecracker_refuses_an_existing_socket_path(standin):
    vmm = standin(FIRECRACKER)
    Path(vmm.socket).write_text("")
    vmm.start(wait=False)
    assert vmm.wait() == 1
    assert "Failed to open the API socket at" in vmm.stderr()


def test_firecracker_unknown_runner(standin):
    vmm = standin(FIRECRACKER)
    vmm.start(wait=False, NTNG_STANDIN_RUNNER="bogus")
    assert vmm.wait() == 1
    assert "NTNG_STANDIN_RUNNER='bogus' is not a runner" in vmm.stderr()


def test_firecracker_keep_alive_serves_many_requests_on_one_connection(vmm):
    for _ in range(20):
        assert vmm.get("/").status == 200
    first = vmm.conn.sock
    vmm.get("/machine-config")
    assert vmm.conn.sock is first


def test_firecracker_patch_drive_after_boot(vmm, files, tmp_path):
    patch = {"drive_id": "rootfs", "rate_limiter": {"ops": {"size": 10, "refill_time": 10}}}
    assert fault(vmm.patch("/drives/rootfs", patch)) == fc.BEFORE_START
    configure(vmm, files, tmp_path)
    start(vmm)
    assert vmm.patch("/drives/rootfs", patch).status == 204
    drives = {d["drive_id"]: d for d in vmm.get("/vm/config").data["drives"]}
    assert drives["rootfs"]["rate_limiter"] == patch["rate_limiter"]
    same_path = {"drive_id": "rootfs", "path_on_host": files["root.img"]}
    assert vmm.patch("/drives/rootfs", same_path).status == 204
    swap = {"drive_id": "rootfs", "path_on_host": files["data.img"]}
    assert fault(vmm.patch("/drives/rootfs", swap)) == (
        "not supported by the stand-in: changing a drive's path_on_host after boot"
    )
    assert fault(vmm.patch("/drives/nope", {"drive_id": "nope"})) == (
        "Drive config error: no drive with id nope"
    )


def test_firecracker_metrics_and_logger(vmm, tmp_path):
    assert fault(vmm.put("/actions", {"action_type": "FlushMetrics"})) == (
        "Metrics error: The metrics system is not initialized."
    )
    metrics = {"metrics_path": str(tmp_path / "m.json")}
    assert vmm.put("/metrics", metrics).status == 204
    assert fault(vmm.put("/metrics", metrics)) == (
        "Metrics error: Reinitialization of metrics not allowed."
    )
    bad = {"log_path": str(tmp_path / "no" / "such" / "log")}
    assert fault(vmm.put("/logger", bad)) == (
        "Logger error: Failed to open target file: No such file or directory"
    )
    assert fault(vmm.put("/logger", {"level": "Loud"})).startswith(
        DESERIALIZE + "unknown variant `Loud`"
    )


def test_firecracker_patch_machine_config_merges(vmm):
    assert vmm.put("/machine-config", {"vcpu_count": 2, "mem_size_mib": 256}).status == 204
    assert vmm.patch("/machine-config", {"mem_size_mib": 512}).status == 204
    config = vmm.get("/machine-config").data
    assert (config["vcpu_count"], config["mem_size_mib"]) == (2, 512)
    assert vmm.put("/machine-config", {"vcpu_count": 1, "mem_size_mib": 64}).status == 204
    assert vmm.get("/machine-config").data == {
        **fc.spec.DEFAULT_MACHINE_CONFIG,
        "vcpu_count": 1,
        "mem_size_mib": 64,
    }
