"""Cloud Hypervisor's API: its state machine, its errors, and the VmSpec it builds from a
VmConfig for the runner.

Errors answer the status the spec documents for the case (404: the VM is not created; 405: not
booted, or not paused for vm.resume) and otherwise 500 as Cloud Hypervisor does, with a JSON
list of messages: "Error from API", then the operation's error as Cloud Hypervisor's ApiError
names it ("The VM could not boot", ...), then the cause ("VM is not created", "VM is already
created" and "Invalid VM state transition: A to B" as in Cloud Hypervisor's VmError; the others
are the stand-in's wording).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from . import cloud_hypervisor_spec as spec
from .errors import Fault, not_supported, open_error, readable_file
from .operations import Operation, find
from .runner import Disk, Net, Runner, RunnerError, VmSpec, Vsock
from .schema import SchemaError, validate
from .server import Response

FROM_API = "Error from API"
NOT_CREATED = "VM is not created"
#: What each VM operation's failure is called (Cloud Hypervisor's ApiError messages).
FAILURE = {
    "bootVM": "The VM could not boot",
    "createVM": "The VM could not be created",
    "deleteVM": "The VM could not be deleted",
    "infoVM": "The VM info is not available",
    "pauseVM": "The VM could not be paused",
    "resumeVM": "The VM could not resume",
    "shutdownVM": "The VM could not shutdown",
    "rebootVM": "The VM could not reboot",
    "snapshotVM": "The VM could not be snapshotted",
    "restoreVM": "The VM could not be restored",
    "power-buttonVM": "Error triggering power button",
    "addNetVM": "The network device could not be added to the VM",
    "shutdownVMM": "The VMM could not shutdown",
}
#: VmConfig fields the stand-in cannot run (each is refused at vm.create, naming it).
UNSUPPORTED_FIELDS = (
    "fs",
    "generic_vhost_user",
    "pmem",
    "devices",
    "user_devices",
    "vdpa",
    "numa",
    "tpm",
    "balloon",
    "landlock_rules",
)
#: Files of a snapshot directory (destination_url / source_url): the configuration (as Cloud
#: Hypervisor's config.json), the runner's device state and its memory.
CONFIG_FILE = "config.json"
STATE_FILE = "state.json"
MEMORY_FILE = "memory-ranges"
MIB = 1 << 20


def api_error(status: int, op_id: str, cause: str) -> Fault:
    return Fault(status, FROM_API, FAILURE.get(op_id, op_id), cause)


class CloudHypervisorApi:
    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.config: dict | None = None
        self.state = spec.CREATED
        self.vm_spec: VmSpec | None = None
        self.vm_active = False
        self.exit_requested: int | None = None

    # --- the Api protocol -------------------------------------------------------------------

    def handle(self, method: str, path: str, body: bytes | None) -> Response:
        try:
            status, data = self._dispatch(method, path, body)
        except Fault as err:
            status, data = err.status, (err.messages or None)
        payload = b"" if data is None else json.dumps(data).encode()
        return Response(status, payload)

    def exit_status(self) -> int | None:
        if self.exit_requested is not None:
            return self.exit_requested
        if not self.vm_active:
            return None
        return self.runner.exited()

    def stop(self) -> None:
        if self.vm_active and self.runner.exited() is None:
            self.runner.shutdown()
        self.vm_active = False

    # --- routing and validation ---------------------------------------------------------------

    def _dispatch(self, method: str, path: str, raw: bytes | None) -> tuple[int, Any]:
        op, _params, known = find(spec.OPERATIONS, method, path)
        if op is None:
            if not known:
                raise Fault(404, "Not Found")
            if method in ("GET", "PUT"):
                raise Fault(400, "Bad Request")
            raise Fault(400)
        body = self._body(op, raw)
        if not op.implemented:
            raise Fault(spec.unsupported_status(op), FROM_API, not_supported(op.name))
        handler = getattr(self, "op_" + op.operation_id.replace("-", "_"))
        return handler(op, body)

    def _body(self, op: Operation, raw: bytes | None) -> Any:
        if op.body is None:
            return None
        if not raw:
            raise Fault(400, "Bad Request")
        try:
            body = json.loads(raw)
            validate(body, op.body, spec.DEFINITIONS)
        except (json.JSONDecodeError, UnicodeDecodeError, SchemaError) as err:
            raise Fault(400, "Failed to deserialize JSON", str(err)) from None
        return body

    def _created(self, op: Operation) -> dict:
        if self.config is None:
            raise api_error(404, op.operation_id, NOT_CREATED)
        return self.config

    def _booted(self, op: Operation) -> None:
        self._created(op)
        if self.state not in (spec.RUNNING, spec.PAUSED):
            raise api_error(405, op.operation_id, "VM is not running")

    def _transition(self, op: Operation, target: str) -> Fault:
        return api_error(
            500, op.operation_id, f"Invalid VM state transition: {self.state} to {target}"
        )

    def _runner_call(self, op: Operation, call) -> None:
        try:
            call()
        except RunnerError as err:
            raise api_error(500, op.operation_id, str(err)) from None

    # --- operations ---------------------------------------------------------------------------

    def op_pingVMM(self, _op, _body) -> tuple[int, Any]:
        return 200, {
            "build_version": "nixos-test-ng stand-in",
            "version": spec.API_VERSION,
            "pid": os.getpid(),
            "features": [],
        }

    def op_shutdownVMM(self, _op, _body) -> tuple[int, Any]:
        self.stop()
        self.exit_requested = 0
        return 204, None

    def op_infoVM(self, op, _body) -> tuple[int, Any]:
        config = self._created(op)
        return 200, {
            "config": config,
            "state": self.state,
            "memory_actual_size": config["memory"]["size"],
        }

    def op_createVM(self, op, body: dict) -> tuple[int, Any]:
        if self.config is not None:
            raise api_error(500, op.operation_id, "VM is already created")
        config = with_defaults(body)
        try:
            build_spec(config)
        except ValueError as err:
            raise api_error(500, op.operation_id, str(err)) from None
        self.config = config
        self.state = spec.CREATED
        return 204, None

    def op_deleteVM(self, _op, _body) -> tuple[int, Any]:
        self.stop()
        self.config = None
        self.vm_spec = None
        self.state = spec.CREATED
        return 204, None

    def op_bootVM(self, op, _body) -> tuple[int, Any]:
        config = self._created(op)
        if self.state in (spec.RUNNING, spec.PAUSED):
            raise self._transition(op, spec.RUNNING)
        vm = build_spec(config)
        for label, path in [("kernel", vm.kernel), ("initramfs", vm.initrd)] + [
            (f"disk {d.id}", d.path) for d in vm.disks
        ]:
            if path is not None and not readable_file(path):
                raise api_error(
                    500, op.operation_id, f"Cannot open the {label} {path}: {open_error(path)}"
                )
        self._runner_call(op, lambda: self.runner.boot(vm))
        self.vm_spec = vm
        self.state = spec.RUNNING
        self.vm_active = True
        return 204, None

    def op_pauseVM(self, op, _body) -> tuple[int, Any]:
        self._booted(op)
        if self.state == spec.PAUSED:
            raise self._transition(op, spec.PAUSED)
        self._runner_call(op, self.runner.pause)
        self.state = spec.PAUSED
        return 204, None

    def op_resumeVM(self, op, _body) -> tuple[int, Any]:
        self._created(op)
        if self.state != spec.PAUSED:
            raise api_error(405, op.operation_id, f"VM is not paused (it is {self.state})")
        self._runner_call(op, self.runner.resume)
        self.state = spec.RUNNING
        return 204, None

    def op_shutdownVM(self, op, _body) -> tuple[int, Any]:
        self._booted(op)
        self._runner_call(op, self.runner.shutdown)
        self.vm_active = False
        self.state = spec.SHUTDOWN
        return 204, None

    def op_rebootVM(self, op, _body) -> tuple[int, Any]:
        self._booted(op)
        self._runner_call(op, self.runner.reboot)
        self.state = spec.RUNNING
        return 204, None

    def op_power_buttonVM(self, op, _body) -> tuple[int, Any]:
        self._booted(op)
        self._runner_call(op, self.runner.power_button)
        return 204, None

    def op_addNetVM(self, op, body: dict) -> tuple[int, Any]:
        config = self._created(op)
        if self.state in (spec.RUNNING, spec.PAUSED):
            raise api_error(
                500, op.operation_id, not_supported("hot-plugging a network device (boot first)")
            )
        nets = config.setdefault("net", [])
        candidate = copy.deepcopy(nets) + [dict(body)]
        try:
            new = _nets(candidate)
        except ValueError as err:
            raise api_error(400, op.operation_id, str(err)) from None
        ids = [n.id for n in new]
        if len(set(ids)) != len(ids):
            raise api_error(409, op.operation_id, f"Identifier {ids[-1]} is not unique")
        nets.append(dict(body, id=ids[-1]))
        return 204, None

    def op_snapshotVM(self, op, body: dict) -> tuple[int, Any]:
        config = self._created(op)
        if "destination_url" not in body:
            raise Fault(400, "Failed to deserialize JSON", "missing field `destination_url`")
        if self.state not in (spec.RUNNING, spec.PAUSED):
            raise api_error(405, op.operation_id, "VM is not running")
        if self.state != spec.PAUSED:
            raise api_error(500, op.operation_id, "VM is not paused")
        folder = _snapshot_dir(op, body["destination_url"])
        if not folder.is_dir():
            raise api_error(500, op.operation_id, f"No snapshot directory {folder}")
        self._runner_call(
            op,
            lambda: self.runner.snapshot(
                str(folder / STATE_FILE), str(folder / MEMORY_FILE), False
            ),
        )
        assert self.vm_spec is not None
        saved = {"config": config, "spec": self.vm_spec.to_json()}
        (folder / CONFIG_FILE).write_text(json.dumps(saved))
        return 204, None

    def op_restoreVM(self, op, body: dict) -> tuple[int, Any]:
        if self.config is not None:
            raise api_error(404, op.operation_id, "VM is already created")
        folder = _snapshot_dir(op, body["source_url"])
        try:
            saved = json.loads((folder / CONFIG_FILE).read_text())
        except (OSError, ValueError) as err:
            raise api_error(500, op.operation_id, f"Cannot read the snapshot: {err}") from None
        vm = VmSpec.from_json(saved["spec"])
        resume = bool(body.get("resume", False))
        self._runner_call(
            op,
            lambda: self.runner.restore(
                str(folder / STATE_FILE), str(folder / MEMORY_FILE), vm, resume
            ),
        )
        self.config = saved["config"]
        self.vm_spec = vm
        self.state = spec.RUNNING if resume else spec.PAUSED
        self.vm_active = True
        return 204, None


def _snapshot_dir(op: Operation, url: str) -> Path:
    parsed = urlparse(url)
    if parsed.scheme != "file" or not parsed.path:
        raise api_error(500, op.operation_id, f"Unsupported URL {url!r} (expected file:///dir)")
    return Path(unquote(parsed.path))


def with_defaults(body: dict) -> dict:
    """The VmConfig with Cloud Hypervisor's defaults for cpus, memory, serial and console."""
    config = copy.deepcopy(body)
    config.setdefault("cpus", {"boot_vcpus": 1, "max_vcpus": 1})
    config.setdefault("memory", {"size": spec.DEFAULT_MEMORY_BYTES})
    config.setdefault("serial", {"mode": spec.DEFAULT_SERIAL_MODE})
    config.setdefault("console", {"mode": spec.DEFAULT_CONSOLE_MODE})
    return config


def _console(config: dict) -> Any:
    chosen = []
    for name in ("serial", "console"):
        part = config[name]
        mode = part["mode"]
        if mode in ("Off", "Null"):
            continue
        if mode == "Tty":
            chosen.append("stdout")
        elif mode == "File":
            if "file" not in part:
                raise ValueError(f"{name} mode File needs `file`")
            chosen.append(("file", part["file"]))
        else:
            raise ValueError(not_supported(f"{name} mode {mode}"))
    if len(chosen) == 2 and chosen[0] != chosen[1]:
        raise ValueError(
            not_supported("a serial port and a virtio-console going to different places")
        )
    return chosen[0] if chosen else None


def _nets(nets: list[dict]) -> list[Net]:
    out = []
    for index, net in enumerate(nets):
        if net.get("vhost_user"):
            raise ValueError(not_supported(f"net[{index}]: vhost-user network devices"))
        if "tap" not in net:
            raise ValueError(
                not_supported(f"net[{index}] without `tap` (the stand-in needs a TAP device name)")
            )
        out.append(Net(net.get("id", f"_net{index}"), net["tap"], net.get("mac")))
    return out


def build_spec(config: dict) -> VmSpec:
    """The VM a VmConfig describes; ValueError naming what the stand-in cannot run."""
    for name in UNSUPPORTED_FIELDS:
        if config.get(name):
            raise ValueError(not_supported(f"VmConfig.{name}"))
    payload = config["payload"]
    for name in ("firmware", "igvm", "host_data"):
        if name in payload:
            raise ValueError(not_supported(f"payload.{name} (the stand-in boots a kernel)"))
    if "kernel" not in payload:
        raise ValueError("payload needs a kernel")
    cpus = config["cpus"]
    if cpus["max_vcpus"] < cpus["boot_vcpus"]:
        raise ValueError("Max vCPUs lower than boot vCPUs")
    memory = config["memory"]
    if memory["size"] <= 0 or memory["size"] % MIB:
        raise ValueError(f"memory.size {memory['size']} is not a positive multiple of 1 MiB")
    for name in ("zones", "hotplug_size"):
        if memory.get(name):
            raise ValueError(not_supported(f"memory.{name}"))
    disks = []
    for index, disk in enumerate(config.get("disks", [])):
        if disk.get("vhost_user"):
            raise ValueError(not_supported(f"disks[{index}]: vhost-user disks"))
        if "path" not in disk:
            raise ValueError(f"disks[{index}] needs a path")
        disks.append(
            Disk(disk.get("id", f"_disk{index}"), disk["path"], disk.get("readonly", False), False)
        )
    vsock = config.get("vsock")
    return VmSpec(
        kernel=payload["kernel"],
        initrd=payload.get("initramfs"),
        cmdline=payload.get("cmdline", ""),
        vcpus=cpus["boot_vcpus"],
        mem_mib=memory["size"] // MIB,
        disks=disks,
        nets=_nets(config.get("net", [])),
        vsock=Vsock(vsock["cid"], vsock["socket"]) if vsock else None,
        console=_console(config),
    )
