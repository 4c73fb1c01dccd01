"""Cloud Hypervisor's REST API, transcribed from the official OpenAPI spec
(cloud-hypervisor/cloud-hypervisor, vmm/src/api/openapi/cloud-hypervisor.yaml, spec version
0.3.0): every operation under `/api/v1`, and the schemas of the request bodies.

Errors: the status code the spec documents for the case, with a JSON array of messages as the
body, from the outermost error to its root cause (Cloud Hypervisor's `error_response` in
vmm/src/api/http/mod.rs), e.g. `["Error from API", "The VM could not boot", "VM is not
created"]`; a body that does not deserialize is 400 `["Failed to deserialize JSON", ...]`, an
unknown path 404 `["Not Found"]`, a method the endpoint lacks 400 `["Bad Request"]`.
"""

from __future__ import annotations

from .operations import Operation
from .schema import BOOLEAN, INTEGER, STRING, array, enum, integer, obj, ref

API_VERSION = "0.3.0"
ROOT = "/api/v1"

I16 = integer("int16")
U8 = integer("uint8")
I32 = integer("int32")
I64 = integer("int64")

DEFINITIONS: dict[str, dict] = {
    "PayloadConfig": obj(
        firmware=STRING,
        kernel=STRING,
        cmdline=STRING,
        initramfs=STRING,
        igvm=STRING,
        host_data=STRING,
    ),
    "VmConfig": obj(
        ("payload",),
        cpus=ref("CpusConfig"),
        memory=ref("MemoryConfig"),
        payload=ref("PayloadConfig"),
        rate_limit_groups=array(ref("RateLimitGroupConfig")),
        disks=array(ref("DiskConfig")),
        net=array(ref("NetConfig")),
        rng=ref("RngConfig"),
        balloon=ref("BalloonConfig"),
        fs=array(ref("FsConfig")),
        generic_vhost_user=array(ref("GenericVhostUserConfig")),
        pmem=array(ref("PmemConfig")),
        serial=ref("SerialConfig"),
        console=ref("ConsoleConfig"),
        debug_console=ref("DebugConsoleConfig"),
        devices=array(ref("DeviceConfig")),
        user_devices=array(ref("UserDeviceConfig")),
        vdpa=array(ref("VdpaConfig")),
        vsock=ref("VsockConfig"),
        numa=array(ref("NumaConfig")),
        iommu=BOOLEAN,
        watchdog=BOOLEAN,
        rtc=ref("RtcConfig"),
        pvpanic=BOOLEAN,
        pci_segments=array(ref("PciSegmentConfig")),
        platform=ref("PlatformConfig"),
        tpm=ref("TpmConfig"),
        landlock_enable=BOOLEAN,
        landlock_rules=array(ref("LandlockConfig")),
    ),
    "CpuAffinity": obj(("vcpu", "host_cpus"), vcpu=INTEGER, host_cpus=array(INTEGER)),
    "CpuFeatures": obj(amx=BOOLEAN),
    "CpuTopology": obj(
        threads_per_core=INTEGER,
        cores_per_die=INTEGER,
        dies_per_package=INTEGER,
        packages=INTEGER,
    ),
    "CoreSchedulingMode": enum("Vm", "Vcpu", "Off"),
    "CpusConfig": obj(
        ("boot_vcpus", "max_vcpus"),
        boot_vcpus=integer(minimum=1),
        max_vcpus=integer(minimum=1),
        topology=ref("CpuTopology"),
        kvm_hyperv=BOOLEAN,
        max_phys_bits=INTEGER,
        nested=BOOLEAN,
        affinity=array(ref("CpuAffinity")),
        features=ref("CpuFeatures"),
        core_scheduling=ref("CoreSchedulingMode"),
    ),
    "PciSegmentConfig": obj(
        ("pci_segment",),
        pci_segment=I16,
        mmio32_aperture_weight=I32,
        mmio64_aperture_weight=I32,
    ),
    "PlatformConfig": obj(
        num_pci_segments=I16,
        iommu_segments=array(I16),
        iommu_address_width_bits=U8,
        system_serial_number=STRING,
        serial_number=STRING,
        system_uuid=STRING,
        uuid=STRING,
        oem_strings=array(STRING),
        system_manufacturer=STRING,
        system_product_name=STRING,
        system_version=STRING,
        system_family=STRING,
        system_sku_number=STRING,
        chassis_asset_tag=STRING,
        tdx=BOOLEAN,
        sev_snp=BOOLEAN,
        iommufd=BOOLEAN,
        vfio_p2p_dma=BOOLEAN,
    ),
    "MemoryZoneConfig": obj(
        ("id", "size"),
        id=STRING,
        size=I64,
        file=STRING,
        mergeable=BOOLEAN,
        shared=BOOLEAN,
        hugepages=BOOLEAN,
        hugepage_size=I64,
        host_numa_node=I32,
        hotplug_size=I64,
        hotplugged_size=I64,
        prefault=BOOLEAN,
        reserve=BOOLEAN,
    ),
    "MemoryConfig": obj(
        ("size",),
        size=I64,
        hotplug_size=I64,
        hotplugged_size=I64,
        mergeable=BOOLEAN,
        hotplug_method=STRING,
        shared=BOOLEAN,
        hugepages=BOOLEAN,
        hugepage_size=I64,
        prefault=BOOLEAN,
        reserve=BOOLEAN,
        thp=BOOLEAN,
        zones=array(ref("MemoryZoneConfig")),
    ),
    "TokenBucket": obj(
        ("size", "refill_time"),
        size=integer("int64", minimum=0),
        one_time_burst=integer("int64", minimum=0),
        refill_time=integer("int64", minimum=0),
    ),
    "RateLimiterConfig": obj(bandwidth=ref("TokenBucket"), ops=ref("TokenBucket")),
    "RateLimitGroupConfig": obj(
        ("id", "rate_limiter_config"), id=STRING, rate_limiter_config=ref("RateLimiterConfig")
    ),
    "VirtQueueAffinity": obj(
        ("queue_index", "host_cpus"), queue_index=INTEGER, host_cpus=array(INTEGER)
    ),
    "ImageType": enum("FlatVmdk", "FixedVhd", "Qcow2", "Raw", "Vhdx", "Unknown"),
    "LockGranularity": enum("ByteRange", "Full"),
    "DiskConfig": obj(
        path=STRING,
        readonly=BOOLEAN,
        direct=BOOLEAN,
        iommu=BOOLEAN,
        num_queues=INTEGER,
        queue_size=INTEGER,
        vhost_user=BOOLEAN,
        vhost_socket=STRING,
        rate_limiter_config=ref("RateLimiterConfig"),
        pci_segment=I16,
        pci_device_id=U8,
        id=STRING,
        serial=STRING,
        rate_limit_group=STRING,
        queue_affinity=array(ref("VirtQueueAffinity")),
        backing_files=BOOLEAN,
        sparse=BOOLEAN,
        image_type=ref("ImageType"),
        lock_granularity=ref("LockGranularity"),
    ),
    "NetConfig": obj(
        tap=STRING,
        ip=STRING,
        mask=STRING,
        mac=STRING,
        host_mac=STRING,
        mtu=INTEGER,
        iommu=BOOLEAN,
        num_queues=INTEGER,
        queue_size=INTEGER,
        vhost_user=BOOLEAN,
        vhost_socket=STRING,
        vhost_mode=STRING,
        id=STRING,
        pci_segment=I16,
        pci_device_id=U8,
        rate_limiter_config=ref("RateLimiterConfig"),
        offload_tso=BOOLEAN,
        offload_ufo=BOOLEAN,
        offload_csum=BOOLEAN,
    ),
    "RngConfig": obj(
        ("src",), id=STRING, pci_segment=I16, pci_device_id=U8, iommu=BOOLEAN, src=STRING
    ),
    "RtcConfig": obj(id=STRING, pci_segment=I16, pci_device_id=U8, iommu=BOOLEAN),
    "BalloonConfig": obj(
        ("size",),
        id=STRING,
        pci_segment=I16,
        pci_device_id=U8,
        iommu=BOOLEAN,
        size=I64,
        deflate_on_oom=BOOLEAN,
        free_page_reporting=BOOLEAN,
    ),
    "FsConfig": obj(
        ("num_queues", "queue_size", "socket", "tag"),
        tag=STRING,
        socket=STRING,
        num_queues=INTEGER,
        queue_size=INTEGER,
        pci_segment=I16,
        pci_device_id=U8,
        id=STRING,
    ),
    "GenericVhostUserConfig": obj(
        ("queue_sizes", "socket", "device_type"),
        socket=STRING,
        queue_sizes=array(integer("uint16")),
        pci_segment=I16,
        pci_device_id=U8,
        id=STRING,
        device_type=integer("uint32"),
    ),
    "PmemConfig": obj(
        ("file",),
        file=STRING,
        size=I64,
        iommu=BOOLEAN,
        discard_writes=BOOLEAN,
        pci_segment=I16,
        pci_device_id=U8,
        id=STRING,
    ),
    "ConsoleMode": enum("Off", "Pty", "Tty", "File", "Socket", "Null"),
    "ConsoleConfig": obj(
        ("mode",),
        file=STRING,
        socket=STRING,
        mode=ref("ConsoleMode"),
        iommu=BOOLEAN,
        id=STRING,
        pci_segment=I16,
        pci_device_id=U8,
    ),
    "SerialConfig": obj(("mode",), file=STRING, socket=STRING, mode=ref("ConsoleMode")),
    "DebugConsoleConfig": obj(("mode",), file=STRING, mode=ref("ConsoleMode"), iobase=INTEGER),
    "DeviceConfig": obj(
        path=STRING,
        iommu=BOOLEAN,
        pci_segment=I16,
        pci_device_id=U8,
        id=STRING,
        x_nv_gpudirect_clique=integer("int8"),
        x_exclude_mmap_bars=array(I64),
    ),
    "UserDeviceConfig": obj(
        ("socket",), socket=STRING, id=STRING, pci_segment=I16, pci_device_id=U8
    ),
    "TpmConfig": obj(("socket",), socket=STRING),
    "VdpaConfig": obj(
        ("path", "num_queues"),
        path=STRING,
        num_queues=INTEGER,
        iommu=BOOLEAN,
        pci_segment=I16,
        pci_device_id=U8,
        id=STRING,
    ),
    "VsockConfig": obj(
        ("cid", "socket"),
        cid=integer("int64", minimum=3),
        socket=STRING,
        iommu=BOOLEAN,
        pci_segment=I16,
        pci_device_id=U8,
        id=STRING,
    ),
    "NumaDistance": obj(("destination", "distance"), destination=I32, distance=I32),
    "NumaConfig": obj(
        ("guest_numa_id",),
        guest_numa_id=I32,
        cpus=array(I32),
        distances=array(ref("NumaDistance")),
        memory_zones=array(STRING),
        pci_segments=array(I32),
        device_id=STRING,
    ),
    "VmResize": obj(desired_vcpus=integer(minimum=1), desired_ram=I64, desired_balloon=I64),
    "VmResizeDisk": obj(id=STRING, desired_size=I64),
    "VmResizeZone": obj(id=STRING, desired_ram=I64),
    "VmRemoveDevice": obj(id=STRING),
    "VmSnapshotConfig": obj(destination_url=STRING),
    "VmCoredumpData": obj(destination_url=STRING),
    "MemoryRestoreMode": enum("Copy", "OnDemand", "CopyOnWrite"),
    "RestoreConfig": obj(
        ("source_url",),
        source_url=STRING,
        prefault=BOOLEAN,
        memory_restore_mode=ref("MemoryRestoreMode"),
        resume=BOOLEAN,
        zone_updates=array(ref("VmMemoryZoneUpdateData")),
    ),
    "ReceiveMigrationData": obj(
        ("receiver_url",),
        receiver_url=STRING,
        tls_dir=STRING,
        zone_updates=array(ref("VmMemoryZoneUpdateData")),
    ),
    "MigrationMode": enum("MemFDs", "Precopy", "Postcopy"),
    "VmMemoryZoneUpdateData": obj(
        ("id", "host_numa_node"),
        id={"type": "string", "minLength": 1},
        host_numa_node=integer("uint32", minimum=0),
    ),
    "TimeoutStrategy": enum("Cancel", "Ignore"),
    "SendMigrationData": obj(
        ("destination_url",),
        destination_url=STRING,
        local=BOOLEAN,
        preserve_source=BOOLEAN,
        downtime_ms=integer("int64", minimum=1),
        timeout_s=integer("int64", minimum=1),
        timeout_strategy=ref("TimeoutStrategy"),
        connections=integer("int64", minimum=1, maximum=128),
        tls_dir=STRING,
        memory_mode=ref("MigrationMode"),
    ),
    "VmAddUserDevice": obj(("socket",), socket=STRING, pci_segment=I16, pci_device_id=U8),
    "LandlockConfig": obj(("path", "access"), path=STRING, access=STRING),
}

ADD = (200, 204, 400, 404, 409, 500)


def _op(method, name, op_id, body=None, responses=(204,), done=False):
    return Operation(
        method=method,
        path=f"{ROOT}/{name}",
        operation_id=op_id,
        body=ref(body) if body else None,
        body_required=bool(body),
        responses=responses,
        implemented=done,
    )


OPERATIONS: tuple[Operation, ...] = (
    _op("GET", "vmm.ping", "pingVMM", responses=(200,), done=True),
    _op("PUT", "vmm.shutdown", "shutdownVMM", done=True),
    _op("GET", "vm.info", "infoVM", responses=(200, 404), done=True),
    _op("GET", "vm.counters", "countersVM", responses=(200,)),
    _op("GET", "vm.balloon-stats", "balloonStatsVM", responses=(200, 500)),
    _op("PUT", "vm.create", "createVM", "VmConfig", done=True),
    _op("PUT", "vm.delete", "deleteVM", done=True),
    _op("PUT", "vm.boot", "bootVM", responses=(204, 404), done=True),
    _op("PUT", "vm.pause", "pauseVM", responses=(204, 404, 405), done=True),
    _op("PUT", "vm.resume", "resumeVM", responses=(204, 404, 405), done=True),
    _op("PUT", "vm.shutdown", "shutdownVM", responses=(204, 404, 405), done=True),
    _op("PUT", "vm.reboot", "rebootVM", responses=(204, 404, 405), done=True),
    _op("PUT", "vm.power-button", "power-buttonVM", responses=(204, 404, 405), done=True),
    _op("PUT", "vm.resize", "resizeVM", "VmResize", responses=(204, 404, 429)),
    _op("PUT", "vm.resize-disk", "resizeDiskVM", "VmResizeDisk", responses=(204, 404, 500)),
    _op("PUT", "vm.resize-zone", "resizeZoneVM", "VmResizeZone", responses=(204, 404, 500)),
    _op("PUT", "vm.add-device", "addDeviceVM", "DeviceConfig", responses=ADD[:5]),
    _op("PUT", "vm.remove-device", "removeDeviceVM", "VmRemoveDevice", responses=(204, 404)),
    _op("PUT", "vm.add-disk", "addDiskVM", "DiskConfig", responses=ADD),
    _op("PUT", "vm.add-fs", "addFsVM", "FsConfig", responses=ADD),
    _op(
        "PUT",
        "vm.add-generic-vhost-user",
        "addGenericVhostUserVM",
        "GenericVhostUserConfig",
        responses=ADD,
    ),
    _op("PUT", "vm.add-pmem", "addPmemVM", "PmemConfig", responses=ADD),
    _op("PUT", "vm.add-net", "addNetVM", "NetConfig", responses=ADD, done=True),
    _op("PUT", "vm.add-vsock", "addVsockVM", "VsockConfig", responses=ADD),
    _op("PUT", "vm.add-vdpa", "addVdpaVM", "VdpaConfig", responses=ADD),
    _op("PUT", "vm.add-user-device", "addUserDeviceVM", "VmAddUserDevice", responses=ADD[:5]),
    _op("PUT", "vm.snapshot", "snapshotVM", "VmSnapshotConfig", (204, 404, 405), done=True),
    _op("PUT", "vm.coredump", "coredumpVM", "VmCoredumpData", responses=(204, 404, 405)),
    _op("PUT", "vm.nmi", "nmiVM"),
    _op("PUT", "vm.restore", "restoreVM", "RestoreConfig", (204, 400, 404, 409), done=True),
    _op("PUT", "vm.receive-migration", "receiveMigrationVM", "ReceiveMigrationData", (204, 500)),
    _op("PUT", "vm.send-migration", "sendMigrationVM", "SendMigrationData", (204, 500)),
)

#: VmState (the spec's enum).
CREATED = "Created"
RUNNING = "Running"
SHUTDOWN = "Shutdown"
PAUSED = "Paused"

#: Cloud Hypervisor's defaults for what a VmConfig leaves out.
DEFAULT_MEMORY_BYTES = 512 << 20
DEFAULT_SERIAL_MODE = "Null"
DEFAULT_CONSOLE_MODE = "Tty"


def unsupported_status(op: Operation) -> int:
    """The status the stand-in answers for an operation it does not carry out: the spec's
    500 for the operation when it documents one, else its 400, else 500."""
    if 500 in op.responses:
        return 500
    if 400 in op.responses:
        return 400
    return 500
