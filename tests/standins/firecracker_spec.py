"""Firecracker's REST API, transcribed from the official OpenAPI spec
(firecracker-microvm/firecracker, src/firecracker/swagger/firecracker.yaml, API version
1.17.0-dev): every operation, and the schemas of the request bodies.

Every answer other than 200/204 carries `{"fault_message": "..."}` (the spec's `Error`
definition); the API server answers 400 for bad input and for a call in the wrong state.
"""

from __future__ import annotations

from .operations import Operation
from .schema import BOOLEAN, INTEGER, STRING, array, enum, integer, obj, ref

API_VERSION = "1.17.0-dev"

DEFINITIONS: dict[str, dict] = {
    "Balloon": obj(
        ("amount_mib", "deflate_on_oom"),
        amount_mib=INTEGER,
        deflate_on_oom=BOOLEAN,
        stats_polling_interval_s=INTEGER,
        free_page_hinting=BOOLEAN,
        free_page_reporting=BOOLEAN,
    ),
    "BalloonUpdate": obj(("amount_mib",), amount_mib=INTEGER),
    "BalloonStartCmd": obj(acknowledge_on_stop=BOOLEAN),
    "BalloonStatsUpdate": obj(("stats_polling_interval_s",), stats_polling_interval_s=INTEGER),
    "BootSource": obj(
        ("kernel_image_path",),
        boot_args=STRING,
        initrd_path=STRING,
        kernel_image_path=STRING,
    ),
    "CpuTemplate": enum("C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "None"),
    "CpuConfig": obj(
        kvm_capabilities=array(STRING),
        cpuid_modifiers=array(ref("CpuidLeafModifier")),
        msr_modifiers=array(ref("MsrModifier")),
        reg_modifiers=array(ref("ArmRegisterModifier")),
        vcpu_features=array(ref("VcpuFeatures")),
    ),
    "CpuidLeafModifier": obj(
        ("leaf", "subleaf", "flags", "modifiers"),
        leaf=STRING,
        subleaf=STRING,
        flags=integer("int32"),
        modifiers=array(ref("CpuidRegisterModifier")),
    ),
    "CpuidRegisterModifier": obj(
        ("register", "bitmap"), register=enum("eax", "ebx", "ecx", "edx"), bitmap=STRING
    ),
    "MsrModifier": obj(("addr", "bitmap"), addr=STRING, bitmap=STRING),
    "ArmRegisterModifier": obj(("addr", "bitmap"), addr=STRING, bitmap=STRING),
    "VcpuFeatures": obj(("index", "bitmap"), index=integer("int32"), bitmap=STRING),
    "Drive": obj(
        ("drive_id", "is_root_device"),
        drive_id=STRING,
        partuuid=STRING,
        is_root_device=BOOLEAN,
        cache_type=enum("Unsafe", "Writeback"),
        is_read_only=BOOLEAN,
        path_on_host=STRING,
        rate_limiter=ref("RateLimiter"),
        io_engine=enum("Sync", "Async"),
        socket=STRING,
    ),
    "Pmem": obj(
        ("id", "path_on_host"),
        id=STRING,
        path_on_host=STRING,
        root_device=BOOLEAN,
        read_only=BOOLEAN,
        rate_limiter=ref("RateLimiter"),
    ),
    "Logger": obj(
        level=enum("Error", "Warning", "Info", "Debug", "Trace", "Off"),
        log_path=STRING,
        show_level=BOOLEAN,
        show_log_origin=BOOLEAN,
        module=STRING,
    ),
    "MachineConfiguration": obj(
        ("mem_size_mib", "vcpu_count"),
        cpu_template=ref("CpuTemplate"),
        smt=BOOLEAN,
        mem_size_mib=INTEGER,
        track_dirty_pages=BOOLEAN,
        vcpu_count=integer(minimum=1, maximum=32),
        huge_pages=enum("None", "Transparent", "2M"),
    ),
    "MemoryBackend": obj(
        ("backend_type", "backend_path"), backend_type=enum("File", "Uffd"), backend_path=STRING
    ),
    "Metrics": obj(("metrics_path",), metrics_path=STRING),
    "MmdsConfig": obj(
        ("network_interfaces",),
        version=enum("V1", "V2"),
        network_interfaces=array(STRING),
        ipv4_address=STRING,
        imds_compat=BOOLEAN,
    ),
    "MmdsContentsObject": obj(extra=True),
    "NetworkInterface": obj(
        ("host_dev_name", "iface_id"),
        guest_mac=STRING,
        host_dev_name=STRING,
        iface_id=STRING,
        mtu=integer(minimum=68, maximum=65535),
        rx_rate_limiter=ref("RateLimiter"),
        tx_rate_limiter=ref("RateLimiter"),
    ),
    "PartialDrive": obj(
        ("drive_id",), drive_id=STRING, path_on_host=STRING, rate_limiter=ref("RateLimiter")
    ),
    "PartialNetworkInterface": obj(
        ("iface_id",),
        iface_id=STRING,
        rx_rate_limiter=ref("RateLimiter"),
        tx_rate_limiter=ref("RateLimiter"),
    ),
    "PartialPmem": obj(("id",), id=STRING, rate_limiter=ref("RateLimiter")),
    "RateLimiter": obj(bandwidth=ref("TokenBucket"), ops=ref("TokenBucket")),
    "SnapshotCreateParams": obj(
        ("mem_file_path", "snapshot_path"),
        mem_file_path=STRING,
        snapshot_path=STRING,
        snapshot_type=enum("Full", "Diff"),
    ),
    "NetworkOverride": obj(("iface_id", "host_dev_name"), iface_id=STRING, host_dev_name=STRING),
    "VsockOverride": obj(("uds_path",), uds_path=STRING),
    "SnapshotLoadParams": obj(
        ("snapshot_path",),
        enable_diff_snapshots=BOOLEAN,
        track_dirty_pages=BOOLEAN,
        mem_file_path=STRING,
        mem_backend=ref("MemoryBackend"),
        snapshot_path=STRING,
        resume_vm=BOOLEAN,
        network_overrides=array(ref("NetworkOverride")),
        vsock_override=ref("VsockOverride"),
        clock_realtime=BOOLEAN,
    ),
    "TokenBucket": obj(
        ("refill_time", "size"),
        one_time_burst=integer("int64", minimum=0),
        refill_time=integer("int64", minimum=0),
        size=integer("int64", minimum=0),
    ),
    "Vm": obj(("state",), state=enum("Paused", "Resumed")),
    "EntropyDevice": obj(rate_limiter=ref("RateLimiter")),
    "SerialDevice": obj(serial_out_path=STRING, rate_limiter=ref("TokenBucket")),
    "MemoryHotplugConfig": obj(
        total_size_mib=INTEGER,
        slot_size_mib=integer(minimum=128),
        block_size_mib=integer(minimum=2),
    ),
    "MemoryHotplugSizeUpdate": obj(requested_size_mib=INTEGER),
    "Vsock": obj(
        ("guest_cid", "uds_path"),
        guest_cid=integer(minimum=3),
        uds_path=STRING,
        vsock_id=STRING,
    ),
    "InstanceActionInfo": obj(
        ("action_type",), action_type=enum("FlushMetrics", "InstanceStart", "SendCtrlAltDel")
    ),
}

#: PATCH /machine-config takes a subset of the fields (the spec reuses MachineConfiguration;
#: Firecracker's own update type makes every field optional).
DEFINITIONS["MachineConfigurationUpdate"] = {
    **DEFINITIONS["MachineConfiguration"],
    "required": [],
}


def _op(method, path, op_id, body=None, required=True, responses=(204, 400), done=False):
    return Operation(
        method=method,
        path=path,
        operation_id=op_id,
        body=ref(body) if body else None,
        body_required=bool(body) and required,
        responses=responses,
        implemented=done,
    )


OPERATIONS: tuple[Operation, ...] = (
    _op("GET", "/", "describeInstance", responses=(200,), done=True),
    _op("PUT", "/actions", "createSyncAction", "InstanceActionInfo", done=True),
    _op("GET", "/balloon", "describeBalloonConfig", responses=(200, 400)),
    _op("PUT", "/balloon", "putBalloon", "Balloon"),
    _op("PATCH", "/balloon", "patchBalloon", "BalloonUpdate"),
    _op("GET", "/balloon/statistics", "describeBalloonStats", responses=(200, 400)),
    _op("PATCH", "/balloon/statistics", "patchBalloonStatsInterval", "BalloonStatsUpdate"),
    _op("PATCH", "/balloon/hinting/start", "startBalloonHinting", "BalloonStartCmd", False),
    _op("GET", "/balloon/hinting/status", "describeBalloonHinting", responses=(200, 400)),
    _op("PATCH", "/balloon/hinting/stop", "stopBalloonHinting"),
    _op("PUT", "/boot-source", "putGuestBootSource", "BootSource", done=True),
    _op("PUT", "/cpu-config", "putCpuConfiguration", "CpuConfig", False),
    _op("PUT", "/drives/{drive_id}", "putGuestDriveByID", "Drive", done=True),
    _op("PATCH", "/drives/{drive_id}", "patchGuestDriveByID", "PartialDrive", done=True),
    _op("PUT", "/pmem/{id}", "putGuestPmemByID", "Pmem"),
    _op("PATCH", "/pmem/{id}", "patchGuestPmemByID", "PartialPmem"),
    _op("PUT", "/logger", "putLogger", "Logger", done=True),
    _op("GET", "/machine-config", "getMachineConfiguration", responses=(200,), done=True),
    _op(
        "PUT",
        "/machine-config",
        "putMachineConfiguration",
        "MachineConfiguration",
        False,
        done=True,
    ),
    _op(
        "PATCH",
        "/machine-config",
        "patchMachineConfiguration",
        "MachineConfigurationUpdate",
        False,
        done=True,
    ),
    _op("PUT", "/metrics", "putMetrics", "Metrics", done=True),
    _op("PUT", "/mmds", "putMmds", "MmdsContentsObject", False),
    _op("PATCH", "/mmds", "patchMmds", "MmdsContentsObject", False),
    _op("GET", "/mmds", "getMmds", responses=(200, 404)),
    _op("PUT", "/mmds/config", "putMmdsConfig", "MmdsConfig"),
    _op("PUT", "/entropy", "putEntropyDevice", "EntropyDevice", responses=(204,)),
    _op("PUT", "/serial", "putSerialDevice", "SerialDevice", responses=(204,)),
    _op("PUT", "/hotplug/memory", "putMemoryHotplug", "MemoryHotplugConfig", responses=(204,)),
    _op(
        "PATCH",
        "/hotplug/memory",
        "patchMemoryHotplug",
        "MemoryHotplugSizeUpdate",
        responses=(204,),
    ),
    _op("GET", "/hotplug/memory", "getMemoryHotplug", responses=(200,)),
    _op(
        "PUT",
        "/network-interfaces/{iface_id}",
        "putGuestNetworkInterfaceByID",
        "NetworkInterface",
        done=True,
    ),
    _op(
        "PATCH",
        "/network-interfaces/{iface_id}",
        "patchGuestNetworkInterfaceByID",
        "PartialNetworkInterface",
    ),
    _op("PUT", "/snapshot/create", "createSnapshot", "SnapshotCreateParams", done=True),
    _op("PUT", "/snapshot/load", "loadSnapshot", "SnapshotLoadParams", done=True),
    _op("GET", "/version", "getFirecrackerVersion", responses=(200,), done=True),
    _op("PATCH", "/vm", "patchVm", "Vm", done=True),
    _op("GET", "/vm/config", "getExportVmConfig", responses=(200,), done=True),
    _op("PUT", "/vsock", "putGuestVsock", "Vsock", done=True),
)

#: Firecracker's instance states (InstanceInfo.state).
NOT_STARTED = "Not started"
RUNNING = "Running"
PAUSED = "Paused"

#: Defaults of GET /machine-config before any PUT (the spec's getMachineConfiguration text).
DEFAULT_MACHINE_CONFIG = {
    "vcpu_count": 1,
    "mem_size_mib": 128,
    "smt": False,
    "track_dirty_pages": False,
    "huge_pages": "None",
}
