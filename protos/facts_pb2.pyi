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
    __slots__ = ("bundle_id", "agent_id", "case_id", "kind", "request_id", "collected_at", "agent_version", "key_fingerprint", "host", "cpu", "memory", "disks", "network", "logs", "fragmentation", "processes", "services", "clock", "timeseries", "network_depth", "recorded_history", "coredumps", "kernel_crashes", "crash_files", "trigger", "collectors", "plugin_facts")
    class PluginFactsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
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
    LOGS_FIELD_NUMBER: _ClassVar[int]
    FRAGMENTATION_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    TIMESERIES_FIELD_NUMBER: _ClassVar[int]
    NETWORK_DEPTH_FIELD_NUMBER: _ClassVar[int]
    RECORDED_HISTORY_FIELD_NUMBER: _ClassVar[int]
    COREDUMPS_FIELD_NUMBER: _ClassVar[int]
    KERNEL_CRASHES_FIELD_NUMBER: _ClassVar[int]
    CRASH_FILES_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    COLLECTORS_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_FACTS_FIELD_NUMBER: _ClassVar[int]
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
    logs: LogsFacts
    fragmentation: FragmentationFacts
    processes: ProcessFacts
    services: ServiceFacts
    clock: ClockFacts
    timeseries: TimeSeries
    network_depth: NetworkDepthFacts
    recorded_history: RecordedHistory
    coredumps: CoredumpFacts
    kernel_crashes: KernelCrashFacts
    crash_files: CrashFileFacts
    trigger: TriggerFacts
    collectors: _containers.RepeatedCompositeFieldContainer[CollectorStatus]
    plugin_facts: _containers.ScalarMap[str, str]
    def __init__(self, bundle_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., case_id: _Optional[str] = ..., kind: _Optional[str] = ..., request_id: _Optional[str] = ..., collected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., agent_version: _Optional[str] = ..., key_fingerprint: _Optional[str] = ..., host: _Optional[_Union[HostFacts, _Mapping]] = ..., cpu: _Optional[_Union[CpuFacts, _Mapping]] = ..., memory: _Optional[_Union[MemoryFacts, _Mapping]] = ..., disks: _Optional[_Union[DiskFacts, _Mapping]] = ..., network: _Optional[_Union[NetworkFacts, _Mapping]] = ..., logs: _Optional[_Union[LogsFacts, _Mapping]] = ..., fragmentation: _Optional[_Union[FragmentationFacts, _Mapping]] = ..., processes: _Optional[_Union[ProcessFacts, _Mapping]] = ..., services: _Optional[_Union[ServiceFacts, _Mapping]] = ..., clock: _Optional[_Union[ClockFacts, _Mapping]] = ..., timeseries: _Optional[_Union[TimeSeries, _Mapping]] = ..., network_depth: _Optional[_Union[NetworkDepthFacts, _Mapping]] = ..., recorded_history: _Optional[_Union[RecordedHistory, _Mapping]] = ..., coredumps: _Optional[_Union[CoredumpFacts, _Mapping]] = ..., kernel_crashes: _Optional[_Union[KernelCrashFacts, _Mapping]] = ..., crash_files: _Optional[_Union[CrashFileFacts, _Mapping]] = ..., trigger: _Optional[_Union[TriggerFacts, _Mapping]] = ..., collectors: _Optional[_Iterable[_Union[CollectorStatus, _Mapping]]] = ..., plugin_facts: _Optional[_Mapping[str, str]] = ...) -> None: ...

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

class LogsFacts(_message.Message):
    __slots__ = ("since", "max_bytes_total", "max_bytes_per_source", "sources")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_PER_SOURCE_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    since: _timestamp_pb2.Timestamp
    max_bytes_total: int
    max_bytes_per_source: int
    sources: _containers.RepeatedCompositeFieldContainer[LogSource]
    def __init__(self, since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., max_bytes_total: _Optional[int] = ..., max_bytes_per_source: _Optional[int] = ..., sources: _Optional[_Iterable[_Union[LogSource, _Mapping]]] = ...) -> None: ...

class LogSource(_message.Message):
    __slots__ = ("name", "origin", "artifact", "lines", "bytes", "first_ts", "last_ts", "truncated", "lines_dropped", "error", "severity_counts", "event_id_counts")
    class SeverityCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class EventIdCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    FIRST_TS_FIELD_NUMBER: _ClassVar[int]
    LAST_TS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    LINES_DROPPED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_COUNTS_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_COUNTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    origin: str
    artifact: str
    lines: int
    bytes: int
    first_ts: _timestamp_pb2.Timestamp
    last_ts: _timestamp_pb2.Timestamp
    truncated: bool
    lines_dropped: int
    error: str
    severity_counts: _containers.ScalarMap[str, int]
    event_id_counts: _containers.ScalarMap[str, int]
    def __init__(self, name: _Optional[str] = ..., origin: _Optional[str] = ..., artifact: _Optional[str] = ..., lines: _Optional[int] = ..., bytes: _Optional[int] = ..., first_ts: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_ts: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., truncated: _Optional[bool] = ..., lines_dropped: _Optional[int] = ..., error: _Optional[str] = ..., severity_counts: _Optional[_Mapping[str, int]] = ..., event_id_counts: _Optional[_Mapping[str, int]] = ...) -> None: ...

class FragmentationFacts(_message.Message):
    __slots__ = ("filesystems", "unsupported_reason")
    FILESYSTEMS_FIELD_NUMBER: _ClassVar[int]
    UNSUPPORTED_REASON_FIELD_NUMBER: _ClassVar[int]
    filesystems: _containers.RepeatedCompositeFieldContainer[FsFragmentation]
    unsupported_reason: str
    def __init__(self, filesystems: _Optional[_Iterable[_Union[FsFragmentation, _Mapping]]] = ..., unsupported_reason: _Optional[str] = ...) -> None: ...

class FsFragmentation(_message.Message):
    __slots__ = ("mountpoint", "device", "fstype", "method", "files_sampled", "files_fragmented", "pct_files_fragmented", "pct_bytes_in_fragmented", "fragments_mean", "fragments_p50", "fragments_p95", "fragments_max", "avg_extent_bytes", "worst", "skipped", "errors", "flagged_encoded", "flagged_unwritten", "duration_s", "max_files", "budget_s", "free_space", "vendor_fragmented_pct", "note", "histogram", "media", "local_snapshots", "files_eligible", "walk_complete")
    class HistogramEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    MOUNTPOINT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    FSTYPE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    FILES_SAMPLED_FIELD_NUMBER: _ClassVar[int]
    FILES_FRAGMENTED_FIELD_NUMBER: _ClassVar[int]
    PCT_FILES_FRAGMENTED_FIELD_NUMBER: _ClassVar[int]
    PCT_BYTES_IN_FRAGMENTED_FIELD_NUMBER: _ClassVar[int]
    FRAGMENTS_MEAN_FIELD_NUMBER: _ClassVar[int]
    FRAGMENTS_P50_FIELD_NUMBER: _ClassVar[int]
    FRAGMENTS_P95_FIELD_NUMBER: _ClassVar[int]
    FRAGMENTS_MAX_FIELD_NUMBER: _ClassVar[int]
    AVG_EXTENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    WORST_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_ENCODED_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_UNWRITTEN_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    MAX_FILES_FIELD_NUMBER: _ClassVar[int]
    BUDGET_S_FIELD_NUMBER: _ClassVar[int]
    FREE_SPACE_FIELD_NUMBER: _ClassVar[int]
    VENDOR_FRAGMENTED_PCT_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    MEDIA_FIELD_NUMBER: _ClassVar[int]
    LOCAL_SNAPSHOTS_FIELD_NUMBER: _ClassVar[int]
    FILES_ELIGIBLE_FIELD_NUMBER: _ClassVar[int]
    WALK_COMPLETE_FIELD_NUMBER: _ClassVar[int]
    mountpoint: str
    device: str
    fstype: str
    method: str
    files_sampled: int
    files_fragmented: int
    pct_files_fragmented: float
    pct_bytes_in_fragmented: float
    fragments_mean: float
    fragments_p50: float
    fragments_p95: float
    fragments_max: int
    avg_extent_bytes: float
    worst: _containers.RepeatedCompositeFieldContainer[FragmentedFile]
    skipped: int
    errors: int
    flagged_encoded: int
    flagged_unwritten: int
    duration_s: float
    max_files: int
    budget_s: float
    free_space: FreeSpaceFragmentation
    vendor_fragmented_pct: float
    note: str
    histogram: _containers.ScalarMap[str, int]
    media: str
    local_snapshots: int
    files_eligible: int
    walk_complete: bool
    def __init__(self, mountpoint: _Optional[str] = ..., device: _Optional[str] = ..., fstype: _Optional[str] = ..., method: _Optional[str] = ..., files_sampled: _Optional[int] = ..., files_fragmented: _Optional[int] = ..., pct_files_fragmented: _Optional[float] = ..., pct_bytes_in_fragmented: _Optional[float] = ..., fragments_mean: _Optional[float] = ..., fragments_p50: _Optional[float] = ..., fragments_p95: _Optional[float] = ..., fragments_max: _Optional[int] = ..., avg_extent_bytes: _Optional[float] = ..., worst: _Optional[_Iterable[_Union[FragmentedFile, _Mapping]]] = ..., skipped: _Optional[int] = ..., errors: _Optional[int] = ..., flagged_encoded: _Optional[int] = ..., flagged_unwritten: _Optional[int] = ..., duration_s: _Optional[float] = ..., max_files: _Optional[int] = ..., budget_s: _Optional[float] = ..., free_space: _Optional[_Union[FreeSpaceFragmentation, _Mapping]] = ..., vendor_fragmented_pct: _Optional[float] = ..., note: _Optional[str] = ..., histogram: _Optional[_Mapping[str, int]] = ..., media: _Optional[str] = ..., local_snapshots: _Optional[int] = ..., files_eligible: _Optional[int] = ..., walk_complete: _Optional[bool] = ...) -> None: ...

class FragmentedFile(_message.Message):
    __slots__ = ("path", "size", "fragments", "mapped_bytes", "fragmented", "open_by")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    FRAGMENTS_FIELD_NUMBER: _ClassVar[int]
    MAPPED_BYTES_FIELD_NUMBER: _ClassVar[int]
    FRAGMENTED_FIELD_NUMBER: _ClassVar[int]
    OPEN_BY_FIELD_NUMBER: _ClassVar[int]
    path: str
    size: int
    fragments: int
    mapped_bytes: int
    fragmented: bool
    open_by: _containers.RepeatedCompositeFieldContainer[FileUser]
    def __init__(self, path: _Optional[str] = ..., size: _Optional[int] = ..., fragments: _Optional[int] = ..., mapped_bytes: _Optional[int] = ..., fragmented: _Optional[bool] = ..., open_by: _Optional[_Iterable[_Union[FileUser, _Mapping]]] = ...) -> None: ...

class FileUser(_message.Message):
    __slots__ = ("pid", "name")
    PID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    pid: int
    name: str
    def __init__(self, pid: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...

class FreeSpaceFragmentation(_message.Message):
    __slots__ = ("available", "reason", "free_extents", "avg_free_extent_bytes", "largest_free_extent_bytes", "pct_free_in_small_extents", "vendor_fragmented_pct", "partial", "covered_pct", "small_free_bytes", "fs_free_bytes")
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FREE_EXTENTS_FIELD_NUMBER: _ClassVar[int]
    AVG_FREE_EXTENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    LARGEST_FREE_EXTENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    PCT_FREE_IN_SMALL_EXTENTS_FIELD_NUMBER: _ClassVar[int]
    VENDOR_FRAGMENTED_PCT_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    COVERED_PCT_FIELD_NUMBER: _ClassVar[int]
    SMALL_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    FS_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    available: bool
    reason: str
    free_extents: int
    avg_free_extent_bytes: float
    largest_free_extent_bytes: int
    pct_free_in_small_extents: float
    vendor_fragmented_pct: float
    partial: bool
    covered_pct: float
    small_free_bytes: int
    fs_free_bytes: int
    def __init__(self, available: _Optional[bool] = ..., reason: _Optional[str] = ..., free_extents: _Optional[int] = ..., avg_free_extent_bytes: _Optional[float] = ..., largest_free_extent_bytes: _Optional[int] = ..., pct_free_in_small_extents: _Optional[float] = ..., vendor_fragmented_pct: _Optional[float] = ..., partial: _Optional[bool] = ..., covered_pct: _Optional[float] = ..., small_free_bytes: _Optional[int] = ..., fs_free_bytes: _Optional[int] = ...) -> None: ...

class ProcessFacts(_message.Message):
    __slots__ = ("total", "zombies", "threads", "sample_seconds", "top_cpu", "top_rss")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    ZOMBIES_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOP_CPU_FIELD_NUMBER: _ClassVar[int]
    TOP_RSS_FIELD_NUMBER: _ClassVar[int]
    total: int
    zombies: int
    threads: int
    sample_seconds: float
    top_cpu: _containers.RepeatedCompositeFieldContainer[ProcessInfo]
    top_rss: _containers.RepeatedCompositeFieldContainer[ProcessInfo]
    def __init__(self, total: _Optional[int] = ..., zombies: _Optional[int] = ..., threads: _Optional[int] = ..., sample_seconds: _Optional[float] = ..., top_cpu: _Optional[_Iterable[_Union[ProcessInfo, _Mapping]]] = ..., top_rss: _Optional[_Iterable[_Union[ProcessInfo, _Mapping]]] = ...) -> None: ...

class ProcessInfo(_message.Message):
    __slots__ = ("pid", "name", "username", "cpu_percent", "rss", "cmdline", "started", "num_threads", "status", "agent")
    PID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    RSS_FIELD_NUMBER: _ClassVar[int]
    CMDLINE_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    NUM_THREADS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    pid: int
    name: str
    username: str
    cpu_percent: float
    rss: int
    cmdline: str
    started: _timestamp_pb2.Timestamp
    num_threads: int
    status: str
    agent: bool
    def __init__(self, pid: _Optional[int] = ..., name: _Optional[str] = ..., username: _Optional[str] = ..., cpu_percent: _Optional[float] = ..., rss: _Optional[int] = ..., cmdline: _Optional[str] = ..., started: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., num_threads: _Optional[int] = ..., status: _Optional[str] = ..., agent: _Optional[bool] = ...) -> None: ...

class ServiceFacts(_message.Message):
    __slots__ = ("manager", "failed", "total", "unsupported_reason")
    MANAGER_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    UNSUPPORTED_REASON_FIELD_NUMBER: _ClassVar[int]
    manager: str
    failed: _containers.RepeatedCompositeFieldContainer[ServiceInfo]
    total: int
    unsupported_reason: str
    def __init__(self, manager: _Optional[str] = ..., failed: _Optional[_Iterable[_Union[ServiceInfo, _Mapping]]] = ..., total: _Optional[int] = ..., unsupported_reason: _Optional[str] = ...) -> None: ...

class ServiceInfo(_message.Message):
    __slots__ = ("name", "state", "sub_state", "description", "result")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SUB_STATE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: str
    sub_state: str
    description: str
    result: str
    def __init__(self, name: _Optional[str] = ..., state: _Optional[str] = ..., sub_state: _Optional[str] = ..., description: _Optional[str] = ..., result: _Optional[str] = ...) -> None: ...

class ClockFacts(_message.Message):
    __slots__ = ("sync_source", "synchronized", "sync_known", "ntp_offset_ms", "collector_offset_ms", "collector_offset_known", "timezone", "detail")
    SYNC_SOURCE_FIELD_NUMBER: _ClassVar[int]
    SYNCHRONIZED_FIELD_NUMBER: _ClassVar[int]
    SYNC_KNOWN_FIELD_NUMBER: _ClassVar[int]
    NTP_OFFSET_MS_FIELD_NUMBER: _ClassVar[int]
    COLLECTOR_OFFSET_MS_FIELD_NUMBER: _ClassVar[int]
    COLLECTOR_OFFSET_KNOWN_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    sync_source: str
    synchronized: bool
    sync_known: bool
    ntp_offset_ms: float
    collector_offset_ms: float
    collector_offset_known: bool
    timezone: str
    detail: str
    def __init__(self, sync_source: _Optional[str] = ..., synchronized: _Optional[bool] = ..., sync_known: _Optional[bool] = ..., ntp_offset_ms: _Optional[float] = ..., collector_offset_ms: _Optional[float] = ..., collector_offset_known: _Optional[bool] = ..., timezone: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class TimeSeries(_message.Message):
    __slots__ = ("interval_s", "samples", "agent_cpu_known")
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    AGENT_CPU_KNOWN_FIELD_NUMBER: _ClassVar[int]
    interval_s: float
    samples: _containers.RepeatedCompositeFieldContainer[Sample]
    agent_cpu_known: bool
    def __init__(self, interval_s: _Optional[float] = ..., samples: _Optional[_Iterable[_Union[Sample, _Mapping]]] = ..., agent_cpu_known: _Optional[bool] = ...) -> None: ...

class Sample(_message.Message):
    __slots__ = ("at", "cpu_percent", "mem_percent", "swap_percent", "disk_read_bps", "disk_write_bps", "net_recv_bps", "net_sent_bps", "cpu_system_percent", "cpu_iowait_percent", "agent_cpu_percent", "agent_cpu_system_percent")
    AT_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEM_PERCENT_FIELD_NUMBER: _ClassVar[int]
    SWAP_PERCENT_FIELD_NUMBER: _ClassVar[int]
    DISK_READ_BPS_FIELD_NUMBER: _ClassVar[int]
    DISK_WRITE_BPS_FIELD_NUMBER: _ClassVar[int]
    NET_RECV_BPS_FIELD_NUMBER: _ClassVar[int]
    NET_SENT_BPS_FIELD_NUMBER: _ClassVar[int]
    CPU_SYSTEM_PERCENT_FIELD_NUMBER: _ClassVar[int]
    CPU_IOWAIT_PERCENT_FIELD_NUMBER: _ClassVar[int]
    AGENT_CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    AGENT_CPU_SYSTEM_PERCENT_FIELD_NUMBER: _ClassVar[int]
    at: _timestamp_pb2.Timestamp
    cpu_percent: float
    mem_percent: float
    swap_percent: float
    disk_read_bps: int
    disk_write_bps: int
    net_recv_bps: int
    net_sent_bps: int
    cpu_system_percent: float
    cpu_iowait_percent: float
    agent_cpu_percent: float
    agent_cpu_system_percent: float
    def __init__(self, at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cpu_percent: _Optional[float] = ..., mem_percent: _Optional[float] = ..., swap_percent: _Optional[float] = ..., disk_read_bps: _Optional[int] = ..., disk_write_bps: _Optional[int] = ..., net_recv_bps: _Optional[int] = ..., net_sent_bps: _Optional[int] = ..., cpu_system_percent: _Optional[float] = ..., cpu_iowait_percent: _Optional[float] = ..., agent_cpu_percent: _Optional[float] = ..., agent_cpu_system_percent: _Optional[float] = ...) -> None: ...

class NetworkDepthFacts(_message.Message):
    __slots__ = ("default_routes", "dns_servers", "dns_search", "resolve", "tcp_retrans_percent", "tcp_retrans_known", "listening", "connections_by_state", "collector", "tcp_out_segs", "tcp_retrans_segs")
    class ConnectionsByStateEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    DEFAULT_ROUTES_FIELD_NUMBER: _ClassVar[int]
    DNS_SERVERS_FIELD_NUMBER: _ClassVar[int]
    DNS_SEARCH_FIELD_NUMBER: _ClassVar[int]
    RESOLVE_FIELD_NUMBER: _ClassVar[int]
    TCP_RETRANS_PERCENT_FIELD_NUMBER: _ClassVar[int]
    TCP_RETRANS_KNOWN_FIELD_NUMBER: _ClassVar[int]
    LISTENING_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_BY_STATE_FIELD_NUMBER: _ClassVar[int]
    COLLECTOR_FIELD_NUMBER: _ClassVar[int]
    TCP_OUT_SEGS_FIELD_NUMBER: _ClassVar[int]
    TCP_RETRANS_SEGS_FIELD_NUMBER: _ClassVar[int]
    default_routes: _containers.RepeatedCompositeFieldContainer[Route]
    dns_servers: _containers.RepeatedScalarFieldContainer[str]
    dns_search: _containers.RepeatedScalarFieldContainer[str]
    resolve: ResolveTest
    tcp_retrans_percent: float
    tcp_retrans_known: bool
    listening: _containers.RepeatedCompositeFieldContainer[ListeningPort]
    connections_by_state: _containers.ScalarMap[str, int]
    collector: Reachability
    tcp_out_segs: int
    tcp_retrans_segs: int
    def __init__(self, default_routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ..., dns_servers: _Optional[_Iterable[str]] = ..., dns_search: _Optional[_Iterable[str]] = ..., resolve: _Optional[_Union[ResolveTest, _Mapping]] = ..., tcp_retrans_percent: _Optional[float] = ..., tcp_retrans_known: _Optional[bool] = ..., listening: _Optional[_Iterable[_Union[ListeningPort, _Mapping]]] = ..., connections_by_state: _Optional[_Mapping[str, int]] = ..., collector: _Optional[_Union[Reachability, _Mapping]] = ..., tcp_out_segs: _Optional[int] = ..., tcp_retrans_segs: _Optional[int] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("family", "gateway", "interface", "metric")
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    family: str
    gateway: str
    interface: str
    metric: int
    def __init__(self, family: _Optional[str] = ..., gateway: _Optional[str] = ..., interface: _Optional[str] = ..., metric: _Optional[int] = ...) -> None: ...

class ResolveTest(_message.Message):
    __slots__ = ("name", "ok", "duration_ms", "addresses", "error")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    name: str
    ok: bool
    duration_ms: float
    addresses: _containers.RepeatedScalarFieldContainer[str]
    error: str
    def __init__(self, name: _Optional[str] = ..., ok: _Optional[bool] = ..., duration_ms: _Optional[float] = ..., addresses: _Optional[_Iterable[str]] = ..., error: _Optional[str] = ...) -> None: ...

class ListeningPort(_message.Message):
    __slots__ = ("protocol", "address", "port", "pid", "process")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    protocol: str
    address: str
    port: int
    pid: int
    process: str
    def __init__(self, protocol: _Optional[str] = ..., address: _Optional[str] = ..., port: _Optional[int] = ..., pid: _Optional[int] = ..., process: _Optional[str] = ...) -> None: ...

class Reachability(_message.Message):
    __slots__ = ("target", "ok", "dns_ms", "connect_ms", "error")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    DNS_MS_FIELD_NUMBER: _ClassVar[int]
    CONNECT_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    target: str
    ok: bool
    dns_ms: float
    connect_ms: float
    error: str
    def __init__(self, target: _Optional[str] = ..., ok: _Optional[bool] = ..., dns_ms: _Optional[float] = ..., connect_ms: _Optional[float] = ..., error: _Optional[str] = ...) -> None: ...

class RecordedHistory(_message.Message):
    __slots__ = ("since_unix", "at_unix", "resolution_s", "series", "top", "detail")
    SINCE_UNIX_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_S_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    since_unix: float
    at_unix: _containers.RepeatedScalarFieldContainer[float]
    resolution_s: _containers.RepeatedScalarFieldContainer[float]
    series: _containers.RepeatedCompositeFieldContainer[RecordedSeries]
    top: _containers.RepeatedCompositeFieldContainer[RecordedTop]
    detail: str
    def __init__(self, since_unix: _Optional[float] = ..., at_unix: _Optional[_Iterable[float]] = ..., resolution_s: _Optional[_Iterable[float]] = ..., series: _Optional[_Iterable[_Union[RecordedSeries, _Mapping]]] = ..., top: _Optional[_Iterable[_Union[RecordedTop, _Mapping]]] = ..., detail: _Optional[str] = ...) -> None: ...

class RecordedSeries(_message.Message):
    __slots__ = ("metric", "values")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    metric: str
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, metric: _Optional[str] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class RecordedTop(_message.Message):
    __slots__ = ("by_cpu", "by_rss")
    BY_CPU_FIELD_NUMBER: _ClassVar[int]
    BY_RSS_FIELD_NUMBER: _ClassVar[int]
    by_cpu: _containers.RepeatedCompositeFieldContainer[RecordedProcess]
    by_rss: _containers.RepeatedCompositeFieldContainer[RecordedProcess]
    def __init__(self, by_cpu: _Optional[_Iterable[_Union[RecordedProcess, _Mapping]]] = ..., by_rss: _Optional[_Iterable[_Union[RecordedProcess, _Mapping]]] = ...) -> None: ...

class RecordedProcess(_message.Message):
    __slots__ = ("name", "cpu_percent", "rss_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    cpu_percent: float
    rss_bytes: int
    def __init__(self, name: _Optional[str] = ..., cpu_percent: _Optional[float] = ..., rss_bytes: _Optional[int] = ...) -> None: ...

class TriggerFacts(_message.Message):
    __slots__ = ("name", "when", "detail", "fired_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WHEN_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    FIRED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    when: str
    detail: str
    fired_at: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., when: _Optional[str] = ..., detail: _Optional[str] = ..., fired_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CoredumpFacts(_message.Message):
    __slots__ = ("coredumps", "total", "detail", "core_files")
    COREDUMPS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    CORE_FILES_FIELD_NUMBER: _ClassVar[int]
    coredumps: _containers.RepeatedCompositeFieldContainer[Coredump]
    total: int
    detail: str
    core_files: _containers.RepeatedCompositeFieldContainer[CoreFile]
    def __init__(self, coredumps: _Optional[_Iterable[_Union[Coredump, _Mapping]]] = ..., total: _Optional[int] = ..., detail: _Optional[str] = ..., core_files: _Optional[_Iterable[_Union[CoreFile, _Mapping]]] = ...) -> None: ...

class CoreFile(_message.Message):
    __slots__ = ("name", "size", "included", "reason", "pid")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    INCLUDED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    included: bool
    reason: str
    pid: int
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., included: _Optional[bool] = ..., reason: _Optional[str] = ..., pid: _Optional[int] = ...) -> None: ...

class Coredump(_message.Message):
    __slots__ = ("time", "pid", "uid", "gid", "signal", "signal_name", "executable", "corefile", "size", "command_line", "unit", "stack")
    TIME_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_NAME_FIELD_NUMBER: _ClassVar[int]
    EXECUTABLE_FIELD_NUMBER: _ClassVar[int]
    COREFILE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_LINE_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    STACK_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    pid: int
    uid: int
    gid: int
    signal: int
    signal_name: str
    executable: str
    corefile: str
    size: int
    command_line: str
    unit: str
    stack: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., pid: _Optional[int] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., signal: _Optional[int] = ..., signal_name: _Optional[str] = ..., executable: _Optional[str] = ..., corefile: _Optional[str] = ..., size: _Optional[int] = ..., command_line: _Optional[str] = ..., unit: _Optional[str] = ..., stack: _Optional[_Iterable[str]] = ...) -> None: ...

class KernelCrashFacts(_message.Message):
    __slots__ = ("pstore", "pstore_lines", "previous_boot", "detail")
    PSTORE_FIELD_NUMBER: _ClassVar[int]
    PSTORE_LINES_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_BOOT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    pstore: _containers.RepeatedCompositeFieldContainer[CrashFile]
    pstore_lines: _containers.RepeatedScalarFieldContainer[str]
    previous_boot: _containers.RepeatedScalarFieldContainer[str]
    detail: str
    def __init__(self, pstore: _Optional[_Iterable[_Union[CrashFile, _Mapping]]] = ..., pstore_lines: _Optional[_Iterable[str]] = ..., previous_boot: _Optional[_Iterable[str]] = ..., detail: _Optional[str] = ...) -> None: ...

class CrashFile(_message.Message):
    __slots__ = ("path", "size", "modified")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MODIFIED_FIELD_NUMBER: _ClassVar[int]
    path: str
    size: int
    modified: _timestamp_pb2.Timestamp
    def __init__(self, path: _Optional[str] = ..., size: _Optional[int] = ..., modified: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CrashFileFacts(_message.Message):
    __slots__ = ("directory", "files", "total", "detail")
    DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    directory: str
    files: _containers.RepeatedCompositeFieldContainer[CrashFile]
    total: int
    detail: str
    def __init__(self, directory: _Optional[str] = ..., files: _Optional[_Iterable[_Union[CrashFile, _Mapping]]] = ..., total: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...
