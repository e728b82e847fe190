"""The metadata schema: one SQLAlchemy Core definition for SQLite and PostgreSQL.

Times are stored as integer microseconds since the Unix epoch (UTC). Both
databases then compare, index and round-trip them identically, with no
timezone or precision surprises from either driver. ``to_micros`` and
``from_micros`` are the only converters. The record dataclasses at the end
carry the stored integers (``*_us`` fields) and datetime properties.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

__all__ = [
    "AgentRecord",
    "AuditRecord",
    "BundleRecord",
    "HostRecord",
    "agents",
    "audit_log",
    "bundles",
    "from_micros",
    "host_agents",
    "hosts",
    "metadata",
    "schema_version",
    "to_micros",
    "tokens",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Named constraints so migrations can refer to them the same way on both databases.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Kept outside ``metadata`` so version 1 (``create_all``) never creates or drops it:
# it must exist before any migration step can be recorded.
schema_version = Table(
    "schema_version",
    MetaData(),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", BigInteger, nullable=False),
    Column("description", Text, nullable=False),
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("role", String(16), nullable=True),
    Column("case_id", String(200), nullable=True),
    Column("label", Text, nullable=False),
    Column("secret_sha256", LargeBinary(32), nullable=False, unique=True),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=True),
    Column("max_uses", Integer, nullable=True),
    Column("uses", Integer, nullable=False),
    Column("revoked_at", BigInteger, nullable=True),
)

agents = Table(
    "agents",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("hostname", String(255), nullable=False),
    Column("public_key", LargeBinary(32), nullable=False),
    Column("fingerprint", String(80), nullable=False, unique=True),
    Column("created_at", BigInteger, nullable=False),
    Column("token_id", String(32), ForeignKey("tokens.id"), nullable=True),
    Column("case_id", String(200), nullable=True),
    Column("last_seen_at", BigInteger, nullable=True),
    # Step 12. What the agent's policy allows a live request, as reported on its last channel
    # connect (JSON: allowed_scopes, max_logs_window_s); NULL until it reports one.
    Column("live_policy_json", Text, nullable=True),
)

bundles = Table(
    "bundles",
    metadata,
    Column("bundle_id", String(32), primary_key=True),
    Column("agent_id", String(32), ForeignKey("agents.id"), nullable=False),
    Column("hostname", String(255), nullable=False),
    Column("case_id", String(200), nullable=True),
    Column("kind", String(32), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("received_at", BigInteger, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("key_fingerprint", String(80), nullable=False),
    Column("agent_version", String(64), nullable=False),
    Column("file_name", Text, nullable=False),
    Column("collectors_ok", Integer, nullable=False),
    Column("collectors_failed", Integer, nullable=False),
    Column("blob_key", String(64), nullable=False),
    Column("os", Text, nullable=False),
    Column("manifest_json", Text, nullable=False),
    Column("facts_pb", LargeBinary, nullable=False),
    # Step 5. The key that signed the manifest: the uploader's own key, or, for a bundle
    # carried to its case by someone else (a technician's laptop), the machine it came from.
    Column("origin_fingerprint", String(80), nullable=False, server_default=""),
    # Step 5. Collectors left out on purpose (SKIPPED, UNSUPPORTED), counted apart from
    # ``collectors_failed`` (ERROR, TIMEOUT): a platform guard is not a fault.
    Column("collectors_skipped", Integer, nullable=False, server_default="0"),
)
# One index per list query: equality on the filter column, then the page order, so
# a keyset page is a single index range scan on both databases.
Index("ix_bundles_page", bundles.c.created_at, bundles.c.bundle_id)
Index("ix_bundles_host_page", bundles.c.hostname, bundles.c.created_at, bundles.c.bundle_id)
Index("ix_bundles_case_page", bundles.c.case_id, bundles.c.created_at, bundles.c.bundle_id)
Index("ix_bundles_agent_page", bundles.c.agent_id, bundles.c.created_at, bundles.c.bundle_id)

hosts = Table(
    "hosts",
    metadata,
    Column("hostname", String(255), primary_key=True),
    Column("first_seen", BigInteger, nullable=False),
    Column("last_seen", BigInteger, nullable=False),
    Column("bundle_count", BigInteger, nullable=False),
    Column("last_bundle_id", String(32), nullable=False),
    Column("os", Text, nullable=False),
)

# A join table rather than a JSON list: adding an agent is then an idempotent
# insert, race-free without read-modify-write of a text column.
host_agents = Table(
    "host_agents",
    metadata,
    Column("hostname", String(255), ForeignKey("hosts.hostname"), primary_key=True),
    Column("agent_id", String(32), ForeignKey("agents.id"), primary_key=True),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("at", BigInteger, nullable=False),
    Column("actor", String(32), nullable=False),
    Column("actor_label", Text, nullable=False),
    Column("role", String(16), nullable=False),
    Column("action", String(100), nullable=False),
    Column("target", Text, nullable=False),
    Column("peer", Text, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("detail", Text, nullable=False),
)
Index("ix_audit_log_actor", audit_log.c.actor, audit_log.c.id)
Index("ix_audit_log_action", audit_log.c.action, audit_log.c.id)


def to_micros(value: datetime) -> int:
    """Aware datetime → integer microseconds since the epoch (UTC)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value.isoformat()} given; times must be timezone-aware")
    # Integer arithmetic on the timedelta: float seconds would lose microseconds.
    return (value - _EPOCH) // timedelta(microseconds=1)


def from_micros(value: int) -> datetime:
    """Integer microseconds since the epoch → aware UTC datetime."""
    return _EPOCH + timedelta(microseconds=value)


# Row shapes handed to callers: frozen, never Row objects. Times are integer
# microseconds since the epoch (``*_us``), as stored, with aware-UTC datetime
# properties of the same name without the suffix.


def _dt(value: int | None) -> datetime | None:
    return None if value is None else from_micros(value)


@dataclass(frozen=True)
class AgentRecord:
    """An agent identity: its Ed25519 public key and where it came from."""

    id: str
    hostname: str
    public_key: bytes
    fingerprint: str
    created_at_us: int
    token_id: str | None
    case_id: str | None
    last_seen_at_us: int | None

    @property
    def created_at(self) -> datetime:
        return from_micros(self.created_at_us)

    @property
    def last_seen_at(self) -> datetime | None:
        return _dt(self.last_seen_at_us)


@dataclass(frozen=True)
class BundleRecord:
    """A stored bundle's summary (its facts and manifest are fetched separately).

    ``case_id`` is ``None`` for bundles outside a case; an empty string given on
    insert is stored as ``None``. ``agent_id``/``key_fingerprint`` name the identity
    that uploaded it, ``origin_fingerprint`` the key that signed it (they differ for a
    bundle carried by someone else with a case token). ``os`` is a one-line OS description for the
    host listing (may be empty).
    """

    bundle_id: str
    agent_id: str
    hostname: str
    case_id: str | None
    kind: str
    created_at_us: int
    received_at_us: int
    size: int
    sha256: str
    key_fingerprint: str
    agent_version: str
    file_name: str
    collectors_ok: int
    collectors_failed: int
    blob_key: str
    os: str = ""
    # The manifest's signer; "" on insert means the uploader's own key (``key_fingerprint``).
    origin_fingerprint: str = ""
    collectors_skipped: int = 0

    @property
    def carried(self) -> bool:
        """Delivered by a key other than the one that signed it."""
        return bool(self.origin_fingerprint) and self.origin_fingerprint != self.key_fingerprint

    @property
    def created_at(self) -> datetime:
        return from_micros(self.created_at_us)

    @property
    def received_at(self) -> datetime:
        return from_micros(self.received_at_us)


@dataclass(frozen=True)
class HostRecord:
    """A host as seen through its bundles (first/last by bundle creation time)."""

    hostname: str
    first_seen_us: int
    last_seen_us: int
    bundle_count: int
    last_bundle_id: str
    os: str
    agent_ids: tuple[str, ...]

    @property
    def first_seen(self) -> datetime:
        return from_micros(self.first_seen_us)

    @property
    def last_seen(self) -> datetime:
        return from_micros(self.last_seen_us)


@dataclass(frozen=True)
class AuditRecord:
    """One audited action. ``actor`` is a token id, never a token."""

    id: int
    at_us: int
    actor: str
    actor_label: str
    role: str
    action: str
    target: str
    peer: str
    outcome: str
    detail: str

    @property
    def at(self) -> datetime:
        return from_micros(self.at_us)
