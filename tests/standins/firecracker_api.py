"""Firecracker's API: its state machine, its faults, and the VmSpec it builds for the runner.

Faults answer 400 `{"fault_message": ...}`. Messages quoted from Firecracker's sources:
"The requested operation is not supported after/before starting the microVM.", "Invalid request
method and/or path: ...", "An error occurred when deserializing the json body of a request:
...", "Empty PUT request.", "GET request cannot have a body.", "The ID cannot be empty.", "API
Resource IDs can only contain alphanumeric characters and underscores.", "Cannot start microvm
without kernel configuration.", "Diff snapshots are not allowed on uVMs with dirty page tracking
disabled.", "Loading a microVM snapshot not allowed after configuring boot-specific resources.";
the others are the stand-in's wording in the same style.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from . import firecracker_spec as spec
from .errors import Fault, not_supported, open_error, readable_file
from .operations import Operation, find
from .runner import Disk, Net, Runner, RunnerError, VmSpec, Vsock
from .schema import SchemaError, validate
from .server import Response

AFTER_START = "The requested operation is not supported after starting the microVM."
BEFORE_START = "The requested operation is not supported before starting the microVM."
NO_KERNEL = "Start microvm error: Cannot start microvm without kernel configuration."
LOAD_NOT_ALLOWED = (
    "Loading a microVM snapshot not allowed after configuring boot-specific resources."
)
DIFF_UNTRACKED = "Diff snapshots are not allowed on uVMs with dirty page tracking disabled."
SNAPSHOT_RUNNING = "Create snapshot error: save/restore unavailable while running"
ID_MISMATCH = "The id from the path does not match the id from the body!"
TOO_MANY_MEM = "too many fields: either `mem_backend` or `mem_file_path` exclusively is required."
MISSING_MEM = "missing field: either `mem_backend` or `mem_file_path` is required"
#: Firecracker's kernel command line when PUT /boot-source gives no boot_args (as in its
#: sources' DEFAULT_KERNEL_CMDLINE; it has no serial console).
DEFAULT_CMDLINE = (
    "reboot=k panic=1 pci=off nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux "
    "i8042.nopnp i8042.dumbkbd"
)
#: The file next to a snapshot's state file where the stand-in keeps the VM's configuration
#: (a real Firecracker keeps it inside the state file).
SIDECAR_SUFFIX = ".vmspec.json"
MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


def fault(message: str) -> Fault:
    return Fault(400, message)


def deserialize_error(detail: str) -> Fault:
    return fault(f"An error occurred when deserializing the json body of a request: {detail}.")


def checked_id(value: str) -> str:
    if not value:
        raise fault("The ID cannot be empty.")
    if not all(c == "_" or c.isalnum() for c in value):
        raise fault("API Resource IDs can only contain alphanumeric characters and underscores.")
    return value


class FirecrackerApi:
    def __init__(self, runner: Runner, instance_id: str = "anonymous-instance") -> None:
        self.runner = runner
        self.instance_id = instance_id
        self.state = spec.NOT_STARTED
        self.boot_source: dict | None = None
        self.drives: dict[str, dict] = {}
        self.machine_config: dict = dict(spec.DEFAULT_MACHINE_CONFIG)
        self.nets: dict[str, dict] = {}
        self.vsock: dict | None = None
        self.logger: dict | None = None
        self.metrics: dict | None = None
        #: Whether a boot-specific resource was configured (snapshot load refuses then).
        self.boot_configured = False
        self.vm_spec: VmSpec | None = None
        #: Whether a VM runs (the stand-in watches it and exits with it).
        self.vm_active = False

    # --- the Api protocol -------------------------------------------------------------------

    def handle(self, method: str, path: str, body: bytes | None) -> Response:
        try:
            status, data = self._dispatch(method, path, body)
        except Fault as err:
            status, data = err.status, {"fault_message": err.messages[0]}
        payload = b"" if data is None else json.dumps(data).encode()
        return Response(status, payload)

    def exit_status(self) -> int | None:
        if not self.vm_active:
            return None
        return self.runner.exited()

    def stop(self) -> None:
        if self.vm_active and self.runner.exited() is None:
            self.runner.shutdown()
        self.vm_active = False

    # --- routing and validation ---------------------------------------------------------------

    def _dispatch(self, method: str, path: str, raw: bytes | None) -> tuple[int, Any]:
        if method == "GET" and raw:
            raise fault("GET request cannot have a body.")
        op, params, _known = find(spec.OPERATIONS, method, path)
        if op is None:
            if method in ("PUT", "PATCH") and not raw:
                raise fault(f"Empty {method} request.")
            first = path.split("?", 1)[0].strip("/").split("/")[0]
            raise fault(f"Invalid request method and/or path: {method} {first}.")
        body = self._body(op, raw)
        if not op.implemented:
            raise fault(not_supported(op.name))
        for name in ("drive_id", "iface_id"):
            if name in params:
                checked_id(params[name])
        handler = getattr(self, "op_" + op.operation_id)
        return handler(body, **params)

    def _body(self, op: Operation, raw: bytes | None) -> Any:
        if op.body is None:
            return None
        if not raw:
            if op.body_required:
                raise fault(f"Empty {op.method} request.")
            return {}
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise deserialize_error(str(err)) from None
        try:
            validate(body, op.body, spec.DEFINITIONS)
        except SchemaError as err:
            raise deserialize_error(str(err)) from None
        return body

    def _pre_boot(self) -> None:
        if self.state != spec.NOT_STARTED:
            raise fault(AFTER_START)

    def _post_boot(self) -> None:
        if self.state == spec.NOT_STARTED:
            raise fault(BEFORE_START)

    # --- operations ---------------------------------------------------------------------------

    def op_describeInstance(self, _body) -> tuple[int, Any]:
        return 200, {
            "id": self.instance_id,
            "state": self.state,
            "vmm_version": spec.API_VERSION,
            "app_name": "Firecracker",
        }

    def op_getFirecrackerVersion(self, _body) -> tuple[int, Any]:
        return 200, {"firecracker_version": spec.API_VERSION}

    def op_putGuestBootSource(self, body: dict) -> tuple[int, Any]:
        self._pre_boot()
        kernel = body["kernel_image_path"]
        if not readable_file(kernel):
            raise fault(
                f"Boot source error: The kernel file cannot be opened: {open_error(kernel)}"
            )
        initrd = body.get("initrd_path")
        if initrd is not None and not readable_file(initrd):
            raise fault(
                "Boot source error: The initrd file cannot be opened due to invalid path or "
                f"invalid permissions. {open_error(initrd)}"
            )
        self.boot_source = body
        self.boot_configured = True
        return 204, None

    def op_putGuestDriveByID(self, body: dict, drive_id: str) -> tuple[int, Any]:
        self._pre_boot()
        if body["drive_id"] != drive_id:
            raise fault(ID_MISMATCH)
        if "socket" in body:
            raise fault(not_supported("vhost-user block drives (the `socket` field)"))
        missing = [f for f in ("path_on_host", "is_read_only") if f not in body]
        if missing:
            raise fault(f"Drive config error: a virtio-block drive needs {' and '.join(missing)}")
        path = body["path_on_host"]
        if not readable_file(path):
            raise fault(
                "Drive config error: Unable to open block device backing file "
                f"{path}: {open_error(path)}"
            )
        if body["is_root_device"] and any(
            d["is_root_device"] for i, d in self.drives.items() if i != drive_id
        ):
            raise fault("Drive config error: A root block device already exists!")
        self.drives[drive_id] = body
        self.boot_configured = True
        return 204, None

    def op_patchGuestDriveByID(self, body: dict, drive_id: str) -> tuple[int, Any]:
        self._post_boot()
        if body["drive_id"] != drive_id:
            raise fault(ID_MISMATCH)
        drive = self.drives.get(drive_id)
        if drive is None:
            raise fault(f"Drive config error: no drive with id {drive_id}")
        path = body.get("path_on_host")
        if path is not None and path != drive["path_on_host"]:
            raise fault(not_supported("changing a drive's path_on_host after boot"))
        if "rate_limiter" in body:
            drive["rate_limiter"] = body["rate_limiter"]
        return 204, None

    def op_getMachineConfiguration(self, _body) -> tuple[int, Any]:
        return 200, dict(self.machine_config)

    def op_putMachineConfiguration(self, body: dict) -> tuple[int, Any]:
        self._pre_boot()
        self._set_machine_config({**spec.DEFAULT_MACHINE_CONFIG, **body})
        return 204, None

    def op_patchMachineConfiguration(self, body: dict) -> tuple[int, Any]:
        self._pre_boot()
        self._set_machine_config({**self.machine_config, **body})
        return 204, None

    def _set_machine_config(self, config: dict) -> None:
        vcpus = config["vcpu_count"]
        if config.get("smt") and vcpus > 1 and vcpus % 2:
            raise fault(
                "Machine config error: The vCPU number is invalid! The vCPU number can only "
                "be 1 or an even number when SMT is enabled."
            )
        if config["mem_size_mib"] <= 0:
            raise fault("Machine config error: The memory size (MiB) is invalid.")
        if config.get("huge_pages") == "2M" and config["mem_size_mib"] % 2:
            raise fault(
                "Machine config error: The memory size (MiB) must be a multiple of the huge "
                "page size (2 MiB)."
            )
        self.machine_config = config
        self.boot_configured = True

    def op_putGuestNetworkInterfaceByID(self, body: dict, iface_id: str) -> tuple[int, Any]:
        self._pre_boot()
        if body["iface_id"] != iface_id:
            raise fault(ID_MISMATCH)
        mac = body.get("guest_mac")
        if mac is not None and not MAC.match(mac):
            raise deserialize_error(f"invalid MAC address `{mac}` (at `guest_mac`)")
        for other_id, other in self.nets.items():
            if other_id != iface_id and other["host_dev_name"] == body["host_dev_name"]:
                raise fault(
                    f"Network interface error: The host device name {body['host_dev_name']} "
                    "is already in use."
                )
            if other_id != iface_id and mac is not None and other.get("guest_mac") == mac:
                raise fault(f"Network interface error: The MAC address {mac} is already in use.")
        self.nets[iface_id] = body
        self.boot_configured = True
        return 204, None

    def op_putGuestVsock(self, body: dict) -> tuple[int, Any]:
        self._pre_boot()
        self.vsock = body
        self.boot_configured = True
        return 204, None

    def op_putLogger(self, body: dict) -> tuple[int, Any]:
        path = body.get("log_path")
        if path is not None:
            try:
                open(path, "a").close()
            except OSError as err:
                raise fault(f"Logger error: Failed to open target file: {err.strerror}") from None
        self.logger = body
        return 204, None

    def op_putMetrics(self, body: dict) -> tuple[int, Any]:
        if self.metrics is not None:
            raise fault("Metrics error: Reinitialization of metrics not allowed.")
        try:
            open(body["metrics_path"], "a").close()
        except OSError as err:
            raise fault(f"Metrics error: Failed to open target file: {err.strerror}") from None
        self.metrics = body
        return 204, None

    def op_createSyncAction(self, body: dict) -> tuple[int, Any]:
        action = body["action_type"]
        if action == "InstanceStart":
            self._instance_start()
        elif action == "SendCtrlAltDel":
            self._post_boot()
            self._runner_call(self.runner.ctrl_alt_del, "Internal VMM error")
        else:
            self._flush_metrics()
        return 204, None

    def _instance_start(self) -> None:
        self._pre_boot()
        if self.boot_source is None:
            raise fault(NO_KERNEL)
        vm = self.build_spec()
        self._runner_call(lambda: self.runner.boot(vm), "Start microvm error")
        self.vm_spec = vm
        self.state = spec.RUNNING
        self.vm_active = True

    def _flush_metrics(self) -> None:
        if self.metrics is None:
            raise fault("Metrics error: The metrics system is not initialized.")
        with open(self.metrics["metrics_path"], "a") as out:
            out.write(json.dumps({"standin": True, "state": self.state}) + "\n")

    def op_patchVm(self, body: dict) -> tuple[int, Any]:
        self._post_boot()
        if body["state"] == "Paused":
            if self.state != spec.PAUSED:
                self._runner_call(self.runner.pause, "Failed to pause the microVM")
            self.state = spec.PAUSED
        else:
            if self.state != spec.RUNNING:
                self._runner_call(self.runner.resume, "Failed to resume the microVM")
            self.state = spec.RUNNING
        return 204, None

    def op_createSnapshot(self, body: dict) -> tuple[int, Any]:
        self._post_boot()
        if self.state != spec.PAUSED:
            raise fault(SNAPSHOT_RUNNING)
        diff = body.get("snapshot_type", "Full") == "Diff"
        if diff and not self.machine_config.get("track_dirty_pages"):
            raise fault(DIFF_UNTRACKED)
        state_path, mem_path = body["snapshot_path"], body["mem_file_path"]
        self._runner_call(
            lambda: self.runner.snapshot(state_path, mem_path, diff), "Create snapshot error"
        )
        assert self.vm_spec is not None
        sidecar = {"spec": self.vm_spec.to_json(), "config": self._full_config()}
        Path(state_path + SIDECAR_SUFFIX).write_text(json.dumps(sidecar))
        return 204, None

    def op_loadSnapshot(self, body: dict) -> tuple[int, Any]:
        self._pre_boot()
        if self.boot_configured:
            raise fault(LOAD_NOT_ALLOWED)
        has_file, has_backend = "mem_file_path" in body, "mem_backend" in body
        if has_file and has_backend:
            raise fault(TOO_MANY_MEM)
        if not has_file and not has_backend:
            raise fault(MISSING_MEM)
        if has_backend:
            backend = body["mem_backend"]
            if backend["backend_type"] != "File":
                raise fault(not_supported("mem_backend of type Uffd"))
            mem_path = backend["backend_path"]
        else:
            mem_path = body["mem_file_path"]
        state_path = body["snapshot_path"]
        try:
            saved = json.loads(Path(state_path + SIDECAR_SUFFIX).read_text())
        except (OSError, ValueError) as err:
            raise fault(
                "Load snapshot error: Failed to restore from snapshot: cannot read the "
                f"snapshot state {state_path}: {err}"
            ) from None
        vm = VmSpec.from_json(saved["spec"])
        config = saved["config"]
        nets = {n["iface_id"]: n for n in config["network-interfaces"]}
        for override in body.get("network_overrides", []):
            iface = override["iface_id"]
            if iface not in nets:
                raise fault(
                    "Load snapshot error: Failed to restore from snapshot: Invalid network "
                    f"override: no interface {iface} in the snapshot"
                )
            nets[iface]["host_dev_name"] = override["host_dev_name"]
            for net in vm.nets:
                if net.id == iface:
                    net.tap = override["host_dev_name"]
        if "vsock_override" in body:
            if vm.vsock is None or config["vsock"] is None:
                raise fault(
                    "Load snapshot error: Failed to restore from snapshot: vsock_override "
                    "given, but the snapshot has no vsock device"
                )
            vm.vsock.uds_path = body["vsock_override"]["uds_path"]
            config["vsock"]["uds_path"] = vm.vsock.uds_path
        resume = bool(body.get("resume_vm", False))
        self._runner_call(
            lambda: self.runner.restore(state_path, mem_path, vm, resume),
            "Load snapshot error: Failed to restore from snapshot",
        )
        self.vm_spec = vm
        self.drives = {d["drive_id"]: d for d in config["drives"]}
        self.nets = nets
        self.vsock = config["vsock"]
        self.machine_config = dict(config["machine-config"])
        tracked = body.get("track_dirty_pages", body.get("enable_diff_snapshots", False))
        self.machine_config["track_dirty_pages"] = bool(tracked)
        self.state = spec.RUNNING if resume else spec.PAUSED
        self.vm_active = True
        return 204, None

    def op_getExportVmConfig(self, _body) -> tuple[int, Any]:
        return 200, self._full_config()

    # --- helpers ------------------------------------------------------------------------------

    def _runner_call(self, call, prefix: str) -> None:
        try:
            call()
        except RunnerError as err:
            raise fault(f"{prefix}: {err}") from None

    def _full_config(self) -> dict:
        return {
            "balloon": None,
            "drives": list(self.drives.values()),
            "boot-source": self.boot_source,
            "cpu-config": None,
            "logger": self.logger,
            "machine-config": dict(self.machine_config),
            "metrics": self.metrics,
            "mmds-config": None,
            "network-interfaces": list(self.nets.values()),
            "vsock": self.vsock,
            "entropy": None,
        }

    def build_spec(self) -> VmSpec:
        """The VM the configuration describes, as Firecracker would boot it: the root drive
        first, `root=/dev/vda` (or `root=PARTUUID=...`) and `ro`/`rw` added to the command
        line."""
        assert self.boot_source is not None
        cmdline = self.boot_source.get("boot_args", DEFAULT_CMDLINE)
        ordered = sorted(self.drives.values(), key=lambda d: not d["is_root_device"])
        root = ordered[0] if ordered and ordered[0]["is_root_device"] else None
        if root is not None:
            device = f"PARTUUID={root['partuuid']}" if root.get("partuuid") else "/dev/vda"
            mode = "ro" if root["is_read_only"] else "rw"
            cmdline = f"{cmdline} root={device} {mode}".strip()
        return VmSpec(
            kernel=self.boot_source["kernel_image_path"],
            initrd=self.boot_source.get("initrd_path"),
            cmdline=cmdline,
            vcpus=self.machine_config["vcpu_count"],
            mem_mib=self.machine_config["mem_size_mib"],
            disks=[
                Disk(d["drive_id"], d["path_on_host"], d["is_read_only"], d["is_root_device"])
                for d in ordered
            ],
            nets=[
                Net(n["iface_id"], n["host_dev_name"], n.get("guest_mac"))
                for n in self.nets.values()
            ],
            vsock=Vsock(self.vsock["guest_cid"], self.vsock["uds_path"]) if self.vsock else None,
            console="stdout",
        )
