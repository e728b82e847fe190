"""The stored-analysis tables (migration step 5), apart from the methods that use them so
that the migrations can create them without importing the store (no import circle)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

__all__ = [
    "analysis_metadata",
    "bundle_analysis",
    "bundle_metrics",
    "create_analysis_tables",
    "finding_rows",
    "fs_metrics",
]

analysis_metadata = MetaData(
    naming_convention={"ix": "ix_%(table_name)s_%(column_0_N_name)s", "pk": "pk_%(table_name)s"}
)

# The rendered outputs: what GetFindings, GetTimeline and RenderReport return.
bundle_analysis = Table(
    "bundle_analysis",
    analysis_metadata,
    Column("bundle_id", String(32), primary_key=True),
    Column("version", String(40), nullable=False),
    Column("analysed_at", BigInteger, nullable=False),
    Column("findings_json", Text, nullable=False),
    Column("timeline_json", Text, nullable=False),
    Column("report_html_z", LargeBinary, nullable=False),  # zlib: reports compress ~8x
)
Index(None, bundle_analysis.c.version, bundle_analysis.c.bundle_id)

finding_rows = Table(
    "finding_rows",
    analysis_metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("bundle_id", String(32), nullable=False),
    Column("hostname", String(255), nullable=False),
    Column("case_id", String(200), nullable=True),
    Column("agent_id", String(32), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("rule", String(64), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("rank", Integer, nullable=False),  # 3 critical, 2 warning, 1 info: "at least warning"
    Column("title", Text, nullable=False),
    Column("subject", Text, nullable=False),
    Column("numbers_json", Text, nullable=False),  # {fact path: number}
    Column("evidence_json", Text, nullable=False),  # [fact path or log source]
)
# Equality on the filter, then the page order (newest first), as for bundles.
Index(None, finding_rows.c.created_at, finding_rows.c.id)
Index(None, finding_rows.c.rule, finding_rows.c.created_at, finding_rows.c.id)
Index(None, finding_rows.c.hostname, finding_rows.c.created_at, finding_rows.c.id)
Index(None, finding_rows.c.case_id, finding_rows.c.created_at, finding_rows.c.id)
Index(None, finding_rows.c.agent_id, finding_rows.c.created_at, finding_rows.c.id)
Index(None, finding_rows.c.rank, finding_rows.c.created_at, finding_rows.c.id)
Index(None, finding_rows.c.bundle_id)

# One row per bundle: the host-wide metrics. NULL when the bundle did not carry the fact.
bundle_metrics = Table(
    "bundle_metrics",
    analysis_metadata,
    Column("bundle_id", String(32), primary_key=True),
    Column("hostname", String(255), nullable=False),
    Column("case_id", String(200), nullable=True),
    Column("agent_id", String(32), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("cpu_percent", Float, nullable=True),
    Column("memory_percent", Float, nullable=True),
    Column("swap_percent", Float, nullable=True),
    Column("load1", Float, nullable=True),
    Column("load5", Float, nullable=True),
    Column("load15", Float, nullable=True),
    Column("tcp_retrans_pct", Float, nullable=True),
    Column("clock_ntp_offset_ms", Float, nullable=True),
    Column("clock_collector_offset_ms", Float, nullable=True),
)
Index(None, bundle_metrics.c.created_at, bundle_metrics.c.bundle_id)
Index(None, bundle_metrics.c.hostname, bundle_metrics.c.created_at)

# One row per filesystem of a bundle: use and fragmentation. The bundle's time is copied
# in so a query on filesystems walks this table newest first and stops at its limit,
# instead of sorting every matching filesystem of the fleet.
fs_metrics = Table(
    "fs_metrics",
    analysis_metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("bundle_id", String(32), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("mountpoint", Text, nullable=False),
    Column("fstype", String(64), nullable=False),
    Column("use_pct", Float, nullable=True),
    Column("fragmented_files_pct", Float, nullable=True),
    Column("fragmented_bytes_pct", Float, nullable=True),
    Column("fragments_p95", Float, nullable=True),
)
Index(None, fs_metrics.c.bundle_id)
Index(None, fs_metrics.c.created_at, fs_metrics.c.bundle_id)


def create_analysis_tables(conn: Connection) -> None:
    """The migration step that adds stored analysis."""
    analysis_metadata.create_all(conn)
