import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Snapshot(_message.Message):
    __slots__ = ("bundle_id", "agent_id", "case_id", "kind", "request_id", "collected_at", "agent_version", "key_fingerprint", "host", "cpu", "memory", "disks", "network", "collectors")
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    COLLECTED_AT_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    KEY_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    COLLECTORS_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    agent_id: str
    case_id: str
    kind: str
    request_id: str
    collected_at: _timestamp_pb2.Timestamp
    agent_version: str
    key_fingerprint: str
    host: HostFacts
    cpu: CpuFacts
    memory: MemoryFacts
    disks: DiskFacts
    network: NetworkFacts
    collectors: _containers.RepeatedCompositeFieldContainer[CollectorStatus]
    def __init__(self, bundle_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., case_id: _Optional[str] = ..., kind: _Optional[str] = ..., request_id: _Optional[str] = ..., collected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., agent_version: _Optional[str] = ..., key_fingerprint: _Optional[str] = ..., host: _Optional[_Union[HostFacts, _Mapping]] = ..., cpu: _Optional[_Union[CpuFacts, _Mapping]] = ..., memory: _Optional[_Union[MemoryFacts, _Mapping]] = ..., disks: _Optional[_Union[DiskFacts, _Mapping]] = ..., network: _Optional[_Union[NetworkFacts, _Mapping]] = ..., collectors: _Optional[_Iterable[_Union[CollectorStatus, _Mapping]]] = ...) -> None: ...

class HostFacts(_message.Message):
    __slots__ = ("hostname", "fqdn", "os", "os_release", "os_version", "kernel", "arch", "boot_time", "uptime_seconds", "timezone", "python_version", "virtualized", "virtualization")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    FQDN_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    OS_RELEASE_FIELD_NUMBER: _ClassVar[int]
    OS_VERSION_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    BOOT_TIME_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    PYTHON_VERSION_FIELD_NUMBER: _ClassVar[int]
    VIRTUALIZED_FIELD_NUMBER: _ClassVar[int]
    VIRTUALIZATION_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    fqdn: str
    os: str
    os_release: str
    os_version: str
    kernel: str
    arch: str
    boot_time: _timestamp_pb2.Timestamp
    uptime_seconds: float
    timezone: str
    python_version: str
    virtualized: bool
    virtualization: str
    def __init__(self, hostname: _Optional[str] = ..., fqdn: _Optional[str] = ..., os: _Optional[str] = ..., os_release: _Optional[str] = ..., os_version: _Optional[str] = ..., kernel: _Optional[str] = ..., arch: _Optional[str] = ..., boot_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., uptime_seconds: _Optional[float] = ..., timezone: _Optional[str] = ..., python_version: _Optional[str] = ..., virtualized: _Optional[bool] = ..., virtualization: _Optional[str] = ...) -> None: ...

class CpuFacts(_message.Message):
    __slots__ = ("logical_count", "physical_count", "total_percent", "per_core_percent", "sample_seconds", "load1", "load5", "load15", "freq_current_mhz", "freq_min_mhz", "freq_max_mhz", "times_percent", "ctx_switches", "interrupts", "soft_interrupts")
    LOGICAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    PHYSICAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PERCENT_FIELD_NUMBER: _ClassVar[int]
    PER_CORE_PERCENT_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LOAD1_FIELD_NUMBER: _ClassVar[int]
    LOAD5_FIELD_NUMBER: _ClassVar[int]
    LOAD15_FIELD_NUMBER: _ClassVar[int]
    FREQ_CURRENT_MHZ_FIELD_NUMBER: _ClassVar[int]
    FREQ_MIN_MHZ_FIELD_NUMBER: _ClassVar[int]
    FREQ_MAX_MHZ_FIELD_NUMBER: _ClassVar[int]
    TIMES_PERCENT_FIELD_NUMBER: _ClassVar[int]
    CTX_SWITCHES_FIELD_NUMBER: _ClassVar[int]
    INTERRUPTS_FIELD_NUMBER: _ClassVar[int]
    SOFT_INTERRUPTS_FIELD_NUMBER: _ClassVar[int]
    logical_count: int
    physical_count: int
    total_percent: float
    per_core_percent: _containers.RepeatedScalarFieldContainer[float]
    sample_seconds: float
    load1: float
    load5: float
    load15: float
    freq_current_mhz: float
    freq_min_mhz: float
    freq_max_mhz: float
    times_percent: CpuTimesPercent
    ctx_switches: int
    interrupts: int
    soft_interrupts: int
    def __init__(self, logical_count: _Optional[int] = ..., physical_count: _Optional[int] = ..., total_percent: _Optional[float] = ..., per_core_percent: _Optional[_Iterable[float]] = ..., sample_seconds: _Optional[float] = ..., load1: _Optional[float] = ..., load5: _Optional[float] = ..., load15: _Optional[float] = ..., freq_current_mhz: _Optional[float] = ..., freq_min_mhz: _Optional[float] = ..., freq_max_mhz: _Optional[float] = ..., times_percent: _Optional[_Union[CpuTimesPercent, _Mapping]] = ..., ctx_switches: _Optional[int] = ..., interrupts: _Optional[int] = ..., soft_interrupts: _Optional[int] = ...) -> None: ...

class CpuTimesPercent(_message.Message):
    __slots__ = ("user", "system", "idle", "iowait", "irq", "softirq", "steal", "nice")
    USER_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    IDLE_FIELD_NUMBER: _ClassVar[int]
    IOWAIT_FIELD_NUMBER: _ClassVar[int]
    IRQ_FIELD_NUMBER: _ClassVar[int]
    SOFTIRQ_FIELD_NUMBER: _ClassVar[int]
    STEAL_FIELD_NUMBER: _ClassVar[int]
    NICE_FIELD_NUMBER: _ClassVar[int]
    user: float
    system: float
    idle: float
    iowait: float
    irq: float
    softirq: float
    steal: float
    nice: float
    def __init__(self, user: _Optional[float] = ..., system: _Optional[float] = ..., idle: _Optional[float] = ..., iowait: _Optional[float] = ..., irq: _Optional[float] = ..., softirq: _Optional[float] = ..., steal: _Optional[float] = ..., nice: _Optional[float] = ...) -> None: ...

class MemoryFacts(_message.Message):
    __slots__ = ("total", "available", "used", "free", "percent", "buffers", "cached", "shared", "swap_total", "swap_used", "swap_free", "swap_percent", "swap_in", "swap_out")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    BUFFERS_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    SHARED_FIELD_NUMBER: _ClassVar[int]
    SWAP_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SWAP_USED_FIELD_NUMBER: _ClassVar[int]
    SWAP_FREE_FIELD_NUMBER: _ClassVar[int]
    SWAP_PERCENT_FIELD_NUMBER: _ClassVar[int]
    SWAP_IN_FIELD_NUMBER: _ClassVar[int]
    SWAP_OUT_FIELD_NUMBER: _ClassVar[int]
    total: int
    available: int
    used: int
    free: int
    percent: float
    buffers: int
    cached: int
    shared: int
    swap_total: int
    swap_used: int
    swap_free: int
    swap_percent: float
    swap_in: int
    swap_out: int
    def __init__(self, total: _Optional[int] = ..., available: _Optional[int] = ..., used: _Optional[int] = ..., free: _Optional[int] = ..., percent: _Optional[float] = ..., buffers: _Optional[int] = ..., cached: _Optional[int] = ..., shared: _Optional[int] = ..., swap_total: _Optional[int] = ..., swap_used: _Optional[int] = ..., swap_free: _Optional[int] = ..., swap_percent: _Optional[float] = ..., swap_in: _Optional[int] = ..., swap_out: _Optional[int] = ...) -> None: ...

class DiskFacts(_message.Message):
    __slots__ = ("partitions", "io")
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    IO_FIELD_NUMBER: _ClassVar[int]
    partitions: _containers.RepeatedCompositeFieldContainer[Partition]
    io: _containers.RepeatedCompositeFieldContainer[DiskIo]
    def __init__(self, partitions: _Optional[_Iterable[_Union[Partition, _Mapping]]] = ..., io: _Optional[_Iterable[_Union[DiskIo, _Mapping]]] = ...) -> None: ...

class Partition(_message.Message):
    __slots__ = ("device", "mountpoint", "fstype", "options", "total", "used", "free", "percent", "inodes_total", "inodes_used", "inodes_free", "error")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MOUNTPOINT_FIELD_NUMBER: _ClassVar[int]
    FSTYPE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    INODES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    INODES_USED_FIELD_NUMBER: _ClassVar[int]
    INODES_FREE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    device: str
    mountpoint: str
    fstype: str
    options: str
    total: int
    used: int
    free: int
    percent: float
    inodes_total: int
    inodes_used: int
    inodes_free: int
    error: str
    def __init__(self, device: _Optional[str] = ..., mountpoint: _Optional[str] = ..., fstype: _Optional[str] = ..., options: _Optional[str] = ..., total: _Optional[int] = ..., used: _Optional[int] = ..., free: _Optional[int] = ..., percent: _Optional[float] = ..., inodes_total: _Optional[int] = ..., inodes_used: _Optional[int] = ..., inodes_free: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class DiskIo(_message.Message):
    __slots__ = ("name", "read_count", "write_count", "read_bytes", "write_bytes", "read_time_ms", "write_time_ms", "busy_time_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    READ_COUNT_FIELD_NUMBER: _ClassVar[int]
    WRITE_COUNT_FIELD_NUMBER: _ClassVar[int]
    READ_BYTES_FIELD_NUMBER: _ClassVar[int]
    WRITE_BYTES_FIELD_NUMBER: _ClassVar[int]
    READ_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    WRITE_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    BUSY_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    read_count: int
    write_count: int
    read_bytes: int
    write_bytes: int
    read_time_ms: int
    write_time_ms: int
    busy_time_ms: int
    def __init__(self, name: _Optional[str] = ..., read_count: _Optional[int] = ..., write_count: _Optional[int] = ..., read_bytes: _Optional[int] = ..., write_bytes: _Optional[int] = ..., read_time_ms: _Optional[int] = ..., write_time_ms: _Optional[int] = ..., busy_time_ms: _Optional[int] = ...) -> None: ...

class NetworkFacts(_message.Message):
    __slots__ = ("interfaces",)
    INTERFACES_FIELD_NUMBER: _ClassVar[int]
    interfaces: _containers.RepeatedCompositeFieldContainer[Interface]
    def __init__(self, interfaces: _Optional[_Iterable[_Union[Interface, _Mapping]]] = ...) -> None: ...

class Interface(_message.Message):
    __slots__ = ("name", "is_up", "mtu", "speed_mbps", "duplex", "mac", "addresses", "counters")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IS_UP_FIELD_NUMBER: _ClassVar[int]
    MTU_FIELD_NUMBER: _ClassVar[int]
    SPEED_MBPS_FIELD_NUMBER: _ClassVar[int]
    DUPLEX_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    is_up: bool
    mtu: int
    speed_mbps: int
    duplex: str
    mac: str
    addresses: _containers.RepeatedCompositeFieldContainer[Address]
    counters: NicCounters
    def __init__(self, name: _Optional[str] = ..., is_up: _Optional[bool] = ..., mtu: _Optional[int] = ..., speed_mbps: _Optional[int] = ..., duplex: _Optional[str] = ..., mac: _Optional[str] = ..., addresses: _Optional[_Iterable[_Union[Address, _Mapping]]] = ..., counters: _Optional[_Union[NicCounters, _Mapping]] = ...) -> None: ...

class Address(_message.Message):
    __slots__ = ("family", "address", "netmask", "broadcast")
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    NETMASK_FIELD_NUMBER: _ClassVar[int]
    BROADCAST_FIELD_NUMBER: _ClassVar[int]
    family: str
    address: str
    netmask: str
    broadcast: str
    def __init__(self, family: _Optional[str] = ..., address: _Optional[str] = ..., netmask: _Optional[str] = ..., broadcast: _Optional[str] = ...) -> None: ...

class NicCounters(_message.Message):
    __slots__ = ("bytes_sent", "bytes_recv", "packets_sent", "packets_recv", "errin", "errout", "dropin", "dropout")
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECV_FIELD_NUMBER: _ClassVar[int]
    PACKETS_SENT_FIELD_NUMBER: _ClassVar[int]
    PACKETS_RECV_FIELD_NUMBER: _ClassVar[int]
    ERRIN_FIELD_NUMBER: _ClassVar[int]
    ERROUT_FIELD_NUMBER: _ClassVar[int]
    DROPIN_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    bytes_sent: int
    bytes_recv: int
    packets_sent: int
    packets_recv: int
    errin: int
    errout: int
    dropin: int
    dropout: int
    def __init__(self, bytes_sent: _Optional[int] = ..., bytes_recv: _Optional[int] = ..., packets_sent: _Optional[int] = ..., packets_recv: _Optional[int] = ..., errin: _Optional[int] = ..., errout: _Optional[int] = ..., dropin: _Optional[int] = ..., dropout: _Optional[int] = ...) -> None: ...

class CollectorStatus(_message.Message):
    __slots__ = ("name", "state", "duration_ms", "error")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[CollectorStatus.State]
        OK: _ClassVar[CollectorStatus.State]
        ERROR: _ClassVar[CollectorStatus.State]
        TIMEOUT: _ClassVar[CollectorStatus.State]
        UNSUPPORTED: _ClassVar[CollectorStatus.State]
        SKIPPED: _ClassVar[CollectorStatus.State]
    STATE_UNSPECIFIED: CollectorStatus.State
    OK: CollectorStatus.State
    ERROR: CollectorStatus.State
    TIMEOUT: CollectorStatus.State
    UNSUPPORTED: CollectorStatus.State
    SKIPPED: CollectorStatus.State
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: CollectorStatus.State
    duration_ms: float
    error: str
    def __init__(self, name: _Optional[str] = ..., state: _Optional[_Union[CollectorStatus.State, str]] = ..., duration_ms: _Optional[float] = ..., error: _Optional[str] = ...) -> None: ...
