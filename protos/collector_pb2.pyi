import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from protos import facts_pb2 as _facts_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LiveState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LIVE_STATE_UNSPECIFIED: _ClassVar[LiveState]
    LIVE_STATE_QUEUED: _ClassVar[LiveState]
    LIVE_STATE_DELIVERED: _ClassVar[LiveState]
    LIVE_STATE_COLLECTING: _ClassVar[LiveState]
    LIVE_STATE_UPLOADING: _ClassVar[LiveState]
    LIVE_STATE_DONE: _ClassVar[LiveState]
    LIVE_STATE_DENIED: _ClassVar[LiveState]
    LIVE_STATE_FAILED: _ClassVar[LiveState]
    LIVE_STATE_EXPIRED: _ClassVar[LiveState]
    LIVE_STATE_OFFLINE: _ClassVar[LiveState]
    LIVE_STATE_TIMEOUT: _ClassVar[LiveState]
LIVE_STATE_UNSPECIFIED: LiveState
LIVE_STATE_QUEUED: LiveState
LIVE_STATE_DELIVERED: LiveState
LIVE_STATE_COLLECTING: LiveState
LIVE_STATE_UPLOADING: LiveState
LIVE_STATE_DONE: LiveState
LIVE_STATE_DENIED: LiveState
LIVE_STATE_FAILED: LiveState
LIVE_STATE_EXPIRED: LiveState
LIVE_STATE_OFFLINE: LiveState
LIVE_STATE_TIMEOUT: LiveState

class EnrollRequest(_message.Message):
    __slots__ = ("token", "public_key", "hostname", "agent_version", "labels")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    token: str
    public_key: bytes
    hostname: str
    agent_version: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, token: _Optional[str] = ..., public_key: _Optional[bytes] = ..., hostname: _Optional[str] = ..., agent_version: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("agent_id", "key_fingerprint")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    key_fingerprint: str
    def __init__(self, agent_id: _Optional[str] = ..., key_fingerprint: _Optional[str] = ...) -> None: ...

class AgentProof(_message.Message):
    __slots__ = ("agent_id", "public_key", "timestamp_unix", "signature", "hostname")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_UNIX_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    public_key: bytes
    timestamp_unix: int
    signature: bytes
    hostname: str
    def __init__(self, agent_id: _Optional[str] = ..., public_key: _Optional[bytes] = ..., timestamp_unix: _Optional[int] = ..., signature: _Optional[bytes] = ..., hostname: _Optional[str] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("bundle_id", "size", "sha256", "offset", "proof", "file_name")
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    size: int
    sha256: str
    offset: int
    proof: AgentProof
    file_name: str
    def __init__(self, bundle_id: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., offset: _Optional[int] = ..., proof: _Optional[_Union[AgentProof, _Mapping]] = ..., file_name: _Optional[str] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadStateRequest(_message.Message):
    __slots__ = ("bundle_id", "size", "sha256", "proof")
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    size: int
    sha256: str
    proof: AgentProof
    def __init__(self, bundle_id: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., proof: _Optional[_Union[AgentProof, _Mapping]] = ...) -> None: ...

class UploadState(_message.Message):
    __slots__ = ("committed_offset", "complete", "receipt")
    COMMITTED_OFFSET_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    committed_offset: int
    complete: bool
    receipt: Receipt
    def __init__(self, committed_offset: _Optional[int] = ..., complete: _Optional[bool] = ..., receipt: _Optional[_Union[Receipt, _Mapping]] = ...) -> None: ...

class Receipt(_message.Message):
    __slots__ = ("bundle_id", "sha256", "size", "agent_id", "hostname", "case_id", "received_at", "key_fingerprint")
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    KEY_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    sha256: str
    size: int
    agent_id: str
    hostname: str
    case_id: str
    received_at: _timestamp_pb2.Timestamp
    key_fingerprint: str
    def __init__(self, bundle_id: _Optional[str] = ..., sha256: _Optional[str] = ..., size: _Optional[int] = ..., agent_id: _Optional[str] = ..., hostname: _Optional[str] = ..., case_id: _Optional[str] = ..., received_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., key_fingerprint: _Optional[str] = ...) -> None: ...

class ClockRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClockResponse(_message.Message):
    __slots__ = ("now",)
    NOW_FIELD_NUMBER: _ClassVar[int]
    now: _timestamp_pb2.Timestamp
    def __init__(self, now: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListHostsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class Host(_message.Message):
    __slots__ = ("hostname", "agent_ids", "first_seen", "last_seen", "bundle_count", "last_bundle_id", "os")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    AGENT_IDS_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    agent_ids: _containers.RepeatedScalarFieldContainer[str]
    first_seen: _timestamp_pb2.Timestamp
    last_seen: _timestamp_pb2.Timestamp
    bundle_count: int
    last_bundle_id: str
    os: str
    def __init__(self, hostname: _Optional[str] = ..., agent_ids: _Optional[_Iterable[str]] = ..., first_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., bundle_count: _Optional[int] = ..., last_bundle_id: _Optional[str] = ..., os: _Optional[str] = ...) -> None: ...

class AgentWithoutBundles(_message.Message):
    __slots__ = ("agent_id", "hostname", "enrolled_at", "last_seen", "connected", "case_ids")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    ENROLLED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    CASE_IDS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    hostname: str
    enrolled_at: _timestamp_pb2.Timestamp
    last_seen: _timestamp_pb2.Timestamp
    connected: bool
    case_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, agent_id: _Optional[str] = ..., hostname: _Optional[str] = ..., enrolled_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., connected: _Optional[bool] = ..., case_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ListHostsResponse(_message.Message):
    __slots__ = ("hosts", "next_page_token", "agents_without_bundles")
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    AGENTS_WITHOUT_BUNDLES_FIELD_NUMBER: _ClassVar[int]
    hosts: _containers.RepeatedCompositeFieldContainer[Host]
    next_page_token: str
    agents_without_bundles: _containers.RepeatedCompositeFieldContainer[AgentWithoutBundles]
    def __init__(self, hosts: _Optional[_Iterable[_Union[Host, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., agents_without_bundles: _Optional[_Iterable[_Union[AgentWithoutBundles, _Mapping]]] = ...) -> None: ...

class ListBundlesRequest(_message.Message):
    __slots__ = ("hostname", "case_id", "agent_id", "since", "until", "page_size", "page_token", "without_case")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    WITHOUT_CASE_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    case_id: str
    agent_id: str
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    without_case: bool
    def __init__(self, hostname: _Optional[str] = ..., case_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., without_case: _Optional[bool] = ...) -> None: ...

class BundleSummary(_message.Message):
    __slots__ = ("bundle_id", "agent_id", "hostname", "case_id", "kind", "created_at", "received_at", "size", "sha256", "key_fingerprint", "agent_version", "file_name", "collectors_ok", "collectors_failed", "origin_fingerprint", "collectors_skipped")
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    KEY_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    COLLECTORS_OK_FIELD_NUMBER: _ClassVar[int]
    COLLECTORS_FAILED_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    COLLECTORS_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    agent_id: str
    hostname: str
    case_id: str
    kind: str
    created_at: _timestamp_pb2.Timestamp
    received_at: _timestamp_pb2.Timestamp
    size: int
    sha256: str
    key_fingerprint: str
    agent_version: str
    file_name: str
    collectors_ok: int
    collectors_failed: int
    origin_fingerprint: str
    collectors_skipped: int
    def __init__(self, bundle_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., hostname: _Optional[str] = ..., case_id: _Optional[str] = ..., kind: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., received_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., key_fingerprint: _Optional[str] = ..., agent_version: _Optional[str] = ..., file_name: _Optional[str] = ..., collectors_ok: _Optional[int] = ..., collectors_failed: _Optional[int] = ..., origin_fingerprint: _Optional[str] = ..., collectors_skipped: _Optional[int] = ...) -> None: ...

class ListBundlesResponse(_message.Message):
    __slots__ = ("bundles", "next_page_token")
    BUNDLES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    bundles: _containers.RepeatedCompositeFieldContainer[BundleSummary]
    next_page_token: str
    def __init__(self, bundles: _Optional[_Iterable[_Union[BundleSummary, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetBundleRequest(_message.Message):
    __slots__ = ("bundle_id",)
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    def __init__(self, bundle_id: _Optional[str] = ...) -> None: ...

class BundleDetail(_message.Message):
    __slots__ = ("summary", "facts", "manifest_json")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    FACTS_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    summary: BundleSummary
    facts: _facts_pb2.Snapshot
    manifest_json: str
    def __init__(self, summary: _Optional[_Union[BundleSummary, _Mapping]] = ..., facts: _Optional[_Union[_facts_pb2.Snapshot, _Mapping]] = ..., manifest_json: _Optional[str] = ...) -> None: ...

class DownloadHeader(_message.Message):
    __slots__ = ("bundle_id", "file_name", "size", "sha256")
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    file_name: str
    size: int
    sha256: str
    def __init__(self, bundle_id: _Optional[str] = ..., file_name: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class DownloadChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: DownloadHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[DownloadHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("hello", "challenge_response", "progress", "probe_answer")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    PROBE_ANSWER_FIELD_NUMBER: _ClassVar[int]
    hello: ChannelHello
    challenge_response: ChallengeResponse
    progress: SnapshotProgress
    probe_answer: ProbeAnswer
    def __init__(self, hello: _Optional[_Union[ChannelHello, _Mapping]] = ..., challenge_response: _Optional[_Union[ChallengeResponse, _Mapping]] = ..., progress: _Optional[_Union[SnapshotProgress, _Mapping]] = ..., probe_answer: _Optional[_Union[ProbeAnswer, _Mapping]] = ...) -> None: ...

class CollectorMessage(_message.Message):
    __slots__ = ("challenge", "snapshot_request", "accepted", "probe")
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_REQUEST_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    PROBE_FIELD_NUMBER: _ClassVar[int]
    challenge: Challenge
    snapshot_request: SnapshotRequest
    accepted: ChannelAccepted
    probe: Probe
    def __init__(self, challenge: _Optional[_Union[Challenge, _Mapping]] = ..., snapshot_request: _Optional[_Union[SnapshotRequest, _Mapping]] = ..., accepted: _Optional[_Union[ChannelAccepted, _Mapping]] = ..., probe: _Optional[_Union[Probe, _Mapping]] = ...) -> None: ...

class Probe(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    def __init__(self, nonce: _Optional[bytes] = ...) -> None: ...

class ProbeAnswer(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    def __init__(self, nonce: _Optional[bytes] = ...) -> None: ...

class ChannelHello(_message.Message):
    __slots__ = ("agent_id", "agent_version", "policy")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    agent_version: str
    policy: LivePolicy
    def __init__(self, agent_id: _Optional[str] = ..., agent_version: _Optional[str] = ..., policy: _Optional[_Union[LivePolicy, _Mapping]] = ...) -> None: ...

class LivePolicy(_message.Message):
    __slots__ = ("allowed_scopes", "max_logs_window_s")
    ALLOWED_SCOPES_FIELD_NUMBER: _ClassVar[int]
    MAX_LOGS_WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    allowed_scopes: _containers.RepeatedScalarFieldContainer[str]
    max_logs_window_s: int
    def __init__(self, allowed_scopes: _Optional[_Iterable[str]] = ..., max_logs_window_s: _Optional[int] = ...) -> None: ...

class Challenge(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    def __init__(self, nonce: _Optional[bytes] = ...) -> None: ...

class ChallengeResponse(_message.Message):
    __slots__ = ("signature",)
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    signature: bytes
    def __init__(self, signature: _Optional[bytes] = ...) -> None: ...

class ChannelAccepted(_message.Message):
    __slots__ = ("agent_id", "doorbell_port", "park_after_s")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    DOORBELL_PORT_FIELD_NUMBER: _ClassVar[int]
    PARK_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    doorbell_port: int
    park_after_s: int
    def __init__(self, agent_id: _Optional[str] = ..., doorbell_port: _Optional[int] = ..., park_after_s: _Optional[int] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ("request_id", "scopes", "since_seconds", "requested_by", "reason", "expires_at_unix", "spec_envelope")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    SINCE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    SPEC_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    since_seconds: int
    requested_by: str
    reason: str
    expires_at_unix: int
    spec_envelope: bytes
    def __init__(self, request_id: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., since_seconds: _Optional[int] = ..., requested_by: _Optional[str] = ..., reason: _Optional[str] = ..., expires_at_unix: _Optional[int] = ..., spec_envelope: _Optional[bytes] = ...) -> None: ...

class SnapshotProgress(_message.Message):
    __slots__ = ("request_id", "state", "detail", "bundle_id", "live_state")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    LIVE_STATE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    state: str
    detail: str
    bundle_id: str
    live_state: LiveState
    def __init__(self, request_id: _Optional[str] = ..., state: _Optional[str] = ..., detail: _Optional[str] = ..., bundle_id: _Optional[str] = ..., live_state: _Optional[_Union[LiveState, str]] = ...) -> None: ...

class FindingsResponse(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...

class TimelineRequest(_message.Message):
    __slots__ = ("bundle_id", "interval_s")
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    interval_s: int
    def __init__(self, bundle_id: _Optional[str] = ..., interval_s: _Optional[int] = ...) -> None: ...

class TimelineResponse(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...

class DiffRequest(_message.Message):
    __slots__ = ("a", "b", "force")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    a: str
    b: str
    force: bool
    def __init__(self, a: _Optional[str] = ..., b: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class DiffResponse(_message.Message):
    __slots__ = ("json", "text")
    JSON_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    json: str
    text: str
    def __init__(self, json: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class ReportResponse(_message.Message):
    __slots__ = ("html",)
    HTML_FIELD_NUMBER: _ClassVar[int]
    html: bytes
    def __init__(self, html: _Optional[bytes] = ...) -> None: ...

class SnapshotRequestSpec(_message.Message):
    __slots__ = ("host", "scopes", "since_seconds", "reason", "wait_s", "timeout_s", "spec")
    HOST_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    SINCE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    host: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    since_seconds: int
    reason: str
    wait_s: int
    timeout_s: int
    spec: str
    def __init__(self, host: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., since_seconds: _Optional[int] = ..., reason: _Optional[str] = ..., wait_s: _Optional[int] = ..., timeout_s: _Optional[int] = ..., spec: _Optional[str] = ...) -> None: ...

class SnapshotEvent(_message.Message):
    __slots__ = ("request_id", "state", "detail", "bundle_id", "at", "agent_id", "live_state")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    LIVE_STATE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    state: str
    detail: str
    bundle_id: str
    at: _timestamp_pb2.Timestamp
    agent_id: str
    live_state: LiveState
    def __init__(self, request_id: _Optional[str] = ..., state: _Optional[str] = ..., detail: _Optional[str] = ..., bundle_id: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., agent_id: _Optional[str] = ..., live_state: _Optional[_Union[LiveState, str]] = ...) -> None: ...

class ListAuditRequest(_message.Message):
    __slots__ = ("actor", "action", "outcome", "limit", "before_id")
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    BEFORE_ID_FIELD_NUMBER: _ClassVar[int]
    actor: str
    action: str
    outcome: str
    limit: int
    before_id: int
    def __init__(self, actor: _Optional[str] = ..., action: _Optional[str] = ..., outcome: _Optional[str] = ..., limit: _Optional[int] = ..., before_id: _Optional[int] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("id", "at", "actor", "actor_label", "role", "action", "target", "peer", "outcome", "detail")
    ID_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTOR_LABEL_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    id: int
    at: _timestamp_pb2.Timestamp
    actor: str
    actor_label: str
    role: str
    action: str
    target: str
    peer: str
    outcome: str
    detail: str
    def __init__(self, id: _Optional[int] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., actor: _Optional[str] = ..., actor_label: _Optional[str] = ..., role: _Optional[str] = ..., action: _Optional[str] = ..., target: _Optional[str] = ..., peer: _Optional[str] = ..., outcome: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class ListAuditResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ...) -> None: ...

class ListFindingsRequest(_message.Message):
    __slots__ = ("rules", "min_severity", "hostname", "case_id", "agent_id", "since", "until", "text", "page_size", "page_token", "bundle_ids")
    RULES_FIELD_NUMBER: _ClassVar[int]
    MIN_SEVERITY_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_IDS_FIELD_NUMBER: _ClassVar[int]
    rules: _containers.RepeatedScalarFieldContainer[str]
    min_severity: str
    hostname: str
    case_id: str
    agent_id: str
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    text: str
    page_size: int
    page_token: str
    bundle_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, rules: _Optional[_Iterable[str]] = ..., min_severity: _Optional[str] = ..., hostname: _Optional[str] = ..., case_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., text: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., bundle_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class StoredFinding(_message.Message):
    __slots__ = ("bundle_id", "hostname", "case_id", "agent_id", "created_at", "rule", "severity", "title", "subject", "numbers", "evidence")
    class NumbersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    NUMBERS_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    hostname: str
    case_id: str
    agent_id: str
    created_at: _timestamp_pb2.Timestamp
    rule: str
    severity: str
    title: str
    subject: str
    numbers: _containers.ScalarMap[str, float]
    evidence: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, bundle_id: _Optional[str] = ..., hostname: _Optional[str] = ..., case_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rule: _Optional[str] = ..., severity: _Optional[str] = ..., title: _Optional[str] = ..., subject: _Optional[str] = ..., numbers: _Optional[_Mapping[str, float]] = ..., evidence: _Optional[_Iterable[str]] = ...) -> None: ...

class ListFindingsResponse(_message.Message):
    __slots__ = ("findings", "next_page_token")
    FINDINGS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    findings: _containers.RepeatedCompositeFieldContainer[StoredFinding]
    next_page_token: str
    def __init__(self, findings: _Optional[_Iterable[_Union[StoredFinding, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class QueryMetricsRequest(_message.Message):
    __slots__ = ("query", "limit")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    query: str
    limit: int
    def __init__(self, query: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class MetricRow(_message.Message):
    __slots__ = ("bundle_id", "hostname", "case_id", "agent_id", "created_at", "mountpoint", "values")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    MOUNTPOINT_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    hostname: str
    case_id: str
    agent_id: str
    created_at: _timestamp_pb2.Timestamp
    mountpoint: str
    values: _containers.ScalarMap[str, float]
    def __init__(self, bundle_id: _Optional[str] = ..., hostname: _Optional[str] = ..., case_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., mountpoint: _Optional[str] = ..., values: _Optional[_Mapping[str, float]] = ...) -> None: ...

class QueryMetricsResponse(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[MetricRow]
    def __init__(self, rows: _Optional[_Iterable[_Union[MetricRow, _Mapping]]] = ...) -> None: ...

class HuntSpec(_message.Message):
    __slots__ = ("labels", "host_pattern", "case_id", "scopes", "reason", "expires_s", "since_seconds")
    LABELS_FIELD_NUMBER: _ClassVar[int]
    HOST_PATTERN_FIELD_NUMBER: _ClassVar[int]
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_S_FIELD_NUMBER: _ClassVar[int]
    SINCE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedScalarFieldContainer[str]
    host_pattern: str
    case_id: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    expires_s: int
    since_seconds: int
    def __init__(self, labels: _Optional[_Iterable[str]] = ..., host_pattern: _Optional[str] = ..., case_id: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ..., expires_s: _Optional[int] = ..., since_seconds: _Optional[int] = ...) -> None: ...

class HuntRef(_message.Message):
    __slots__ = ("hunt_id",)
    HUNT_ID_FIELD_NUMBER: _ClassVar[int]
    hunt_id: str
    def __init__(self, hunt_id: _Optional[str] = ...) -> None: ...

class HuntHost(_message.Message):
    __slots__ = ("agent_id", "hostname", "request_id", "state", "detail", "bundle_id", "updated_at", "live_state")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    LIVE_STATE_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    hostname: str
    request_id: str
    state: str
    detail: str
    bundle_id: str
    updated_at: _timestamp_pb2.Timestamp
    live_state: LiveState
    def __init__(self, agent_id: _Optional[str] = ..., hostname: _Optional[str] = ..., request_id: _Optional[str] = ..., state: _Optional[str] = ..., detail: _Optional[str] = ..., bundle_id: _Optional[str] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., live_state: _Optional[_Union[LiveState, str]] = ...) -> None: ...

class HuntStatus(_message.Message):
    __slots__ = ("hunt_id", "case_id", "created_by", "created_at", "expires_at", "scopes", "selector", "reason", "hosts", "counts")
    class CountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    HUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    hunt_id: str
    case_id: str
    created_by: str
    created_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    scopes: _containers.RepeatedScalarFieldContainer[str]
    selector: str
    reason: str
    hosts: _containers.RepeatedCompositeFieldContainer[HuntHost]
    counts: _containers.ScalarMap[str, int]
    def __init__(self, hunt_id: _Optional[str] = ..., case_id: _Optional[str] = ..., created_by: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., scopes: _Optional[_Iterable[str]] = ..., selector: _Optional[str] = ..., reason: _Optional[str] = ..., hosts: _Optional[_Iterable[_Union[HuntHost, _Mapping]]] = ..., counts: _Optional[_Mapping[str, int]] = ...) -> None: ...

class HuntResults(_message.Message):
    __slots__ = ("status", "json")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    status: HuntStatus
    json: str
    def __init__(self, status: _Optional[_Union[HuntStatus, _Mapping]] = ..., json: _Optional[str] = ...) -> None: ...
