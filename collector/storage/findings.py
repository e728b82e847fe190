"""Stored analysis: one row per analysed bundle, its findings and typed metrics, indexed.

The collector analyses each bundle once (``collector.analysis``) and keeps the result
here, so fleet questions (``ListFindings``, the metric filter language) are index
range scans and per-bundle queries (findings, timeline, report) never re-verify the blob.
The tables live in their own ``MetaData``: a migration step creates them. Host, case,
agent and creation time are copied from ``bundles`` into each table because every fleet
query filters and orders on them, and a join per row would defeat the indexes.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    bindparam,
    delete,
    or_,
    select,
    text,
)

from collector.storage.base import StoreBase
from collector.storage.errors import InvalidArgument, NotFound
from collector.storage.findings_schema import (
    analysis_metadata,
    bundle_analysis,
    bundle_metrics,
    create_analysis_tables,
    finding_rows,
    fs_metrics,
)
from collector.storage.schema import bundles

__all__ = [
    "AnalysisRows",
    "FindingRow",
    "FindingsMethods",
    "FsRow",
    "StoredAnalysis",
    "analysis_metadata",
    "bundle_analysis",
    "bundle_metrics",
    "create_analysis_tables",
    "finding_rows",
    "fs_metrics",
]

@dataclass(frozen=True)
class FindingRow:
    rule: str
    severity: str
    rank: int
    title: str
    subject: str
    numbers: dict[str, float]
    evidence: tuple[str, ...]


@dataclass(frozen=True)
class FsRow:
    mountpoint: str
    fstype: str
    use_pct: float | None
    fragmented_files_pct: float | None
    fragmented_bytes_pct: float | None
    fragments_p95: float | None


@dataclass(frozen=True)
class AnalysisRows:
    """Everything one analysis of one bundle stores."""

    version: str
    findings_json: str
    timeline_json: str
    report_html: str
    findings: tuple[FindingRow, ...]
    metrics: dict[str, float | None]  # bundle_metrics column -> value
    filesystems: tuple[FsRow, ...]


@dataclass(frozen=True)
class StoredAnalysis:
    bundle_id: str
    version: str
    analysed_at_us: int
    findings_json: str
    timeline_json: str
    report_html: str


@dataclass(frozen=True)
class ListedFinding:
    id: int
    bundle_id: str
    hostname: str
    case_id: str | None
    agent_id: str
    created_at_us: int
    rule: str
    severity: str
    title: str
    subject: str
    numbers: dict[str, float]
    evidence: tuple[str, ...]


def _listed(m: Any) -> ListedFinding:
    return ListedFinding(
        id=m["id"],
        bundle_id=m["bundle_id"],
        hostname=m["hostname"],
        case_id=m["case_id"],
        agent_id=m["agent_id"],
        created_at_us=m["created_at"],
        rule=m["rule"],
        severity=m["severity"],
        title=m["title"],
        subject=m["subject"],
        numbers=json.loads(m["numbers_json"]),
        evidence=tuple(json.loads(m["evidence_json"])),
    )


def decode_position(token: str | None) -> tuple[int, int] | None:
    """A page token is ``<created_at>.<id>`` of the last row handed out."""
    if not token:
        return None
    head, sep, tail = token.partition(".")
    if not sep or not head.isdigit() or not tail.isdigit() or len(token) > 40:
        raise InvalidArgument(f"page_token {token[:40]!r} is not one this collector handed out")
    return int(head), int(tail)


# The previous analysis's columns, read beside the bundle's by ``put_analysis``.
_PREVIOUS = [c.label(f"previous_{c.name}") for c in bundle_analysis.c]

# What every analysis runs, built once with its values as parameters (a statement built
# per call, and its cache key derived each time, cost more CPU than SQLite's own work).
_ANALYSED_JOIN = bundles.outerjoin(bundle_analysis, bundle_analysis.c.bundle_id == bundles.c.bundle_id)
_WHERE_AND_PREVIOUS = (
    select(bundles.c.hostname, bundles.c.case_id, bundles.c.agent_id, bundles.c.created_at, *_PREVIOUS)
    .select_from(_ANALYSED_JOIN)
    .where(bundles.c.bundle_id == bindparam("b_id"))
)
_BLOB_TO_ANALYSE = (
    select(bundles.c.blob_key)
    .select_from(_ANALYSED_JOIN)
    .where(bundles.c.bundle_id == bindparam("b_id"), bundle_analysis.c.bundle_id.is_(None))
)
_INSERT_ANALYSIS = bundle_analysis.insert()
_INSERT_METRICS = bundle_metrics.insert()


class FindingsMethods(StoreBase):
    """Writing and reading stored analysis."""

    def put_analysis(self, bundle_id: str, rows: AnalysisRows, *, analysed_at_us: int) -> StoredAnalysis | None:
        """Replace the bundle's stored analysis in one transaction; returns the previous one.

        Readers see the old analysis or the new one, never a mix.
        """
        report_z = zlib.compress(rows.report_html.encode("utf-8"), 6)  # before the write lock

        def replace(conn: Connection) -> Any:
            # The bundle row locked (PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises):
            # the worker and a query analysing the same bundle at once then replace in turn
            # instead of colliding on the primary key.
            where_cols = (bundles.c.hostname, bundles.c.case_id, bundles.c.agent_id, bundles.c.created_at)
            if self._pg:
                # The previous analysis read after the lock is held: a row locked by a
                # concurrent replacement would be re-checked, but not a joined one.
                b = conn.execute(
                    select(*where_cols).where(bundles.c.bundle_id == bundle_id).with_for_update()
                ).first()
                previous = select(*_PREVIOUS).where(bundle_analysis.c.bundle_id == bundle_id)
                old = None if b is None else conn.execute(previous).first()
            else:  # BEGIN IMMEDIATE: nobody else writes meanwhile; one statement reads both
                b = conn.execute(_WHERE_AND_PREVIOUS, {"b_id": bundle_id}).first()
                old = None if b is None or b.previous_version is None else b
            if b is None:
                raise NotFound(f"bundle {bundle_id!r} not found", what="bundle", key=bundle_id)
            if old is not None:
                # The four tables are written only here, together: without an analysis
                # row the bundle has none of the others either (its first analysis).
                for table in (bundle_analysis, finding_rows, bundle_metrics, fs_metrics):
                    conn.execute(delete(table).where(table.c.bundle_id == bundle_id))
            where = {"hostname": b.hostname, "case_id": b.case_id, "agent_id": b.agent_id, "created_at": b.created_at}
            conn.execute(
                _INSERT_ANALYSIS,
                {
                    "bundle_id": bundle_id,
                    "version": rows.version,
                    "analysed_at": analysed_at_us,
                    "findings_json": rows.findings_json,
                    "timeline_json": rows.timeline_json,
                    "report_html_z": report_z,
                },
            )
            if rows.findings:
                conn.execute(
                    finding_rows.insert(),
                    [
                        {
                            "bundle_id": bundle_id,
                            **where,
                            "rule": f.rule,
                            "severity": f.severity,
                            "rank": f.rank,
                            "title": f.title,
                            "subject": f.subject,
                            "numbers_json": json.dumps(f.numbers, sort_keys=True),
                            "evidence_json": json.dumps(list(f.evidence)),
                        }
                        for f in rows.findings
                    ],
                )
            conn.execute(_INSERT_METRICS, {"bundle_id": bundle_id, **where, **rows.metrics})
            if rows.filesystems:
                conn.execute(
                    fs_metrics.insert(),
                    [{"bundle_id": bundle_id, "created_at": b.created_at, **vars(fs)} for fs in rows.filesystems],
                )
            return old

        old = self._write_grouped(replace)
        for name in ("finding_rows", "bundle_metrics", "fs_metrics"):
            self._rows_inserted(name)  # keeps SQLite's planner statistics current
        return None if old is None else _stored({k.removeprefix("previous_"): v for k, v in old._mapping.items()})

    def blob_to_analyse(self, bundle_id: str) -> str | None:
        """The blob key of ``bundle_id`` if it is stored and not analysed yet, else None:
        one small read where the analysis worker would read the stored analysis whole."""
        with self._read() as conn:
            key = conn.execute(_BLOB_TO_ANALYSE, {"b_id": bundle_id}).scalar()
        return None if key is None else str(key)

    def get_analysis(self, bundle_id: str) -> StoredAnalysis | None:
        with self._read() as conn:
            row = conn.execute(select(bundle_analysis).where(bundle_analysis.c.bundle_id == bundle_id)).first()
        return None if row is None else _stored(row._mapping)

    def stored_findings_of(self, bundle_ids: Sequence[str]) -> dict[str, list[tuple[str, str, str]]]:
        """``(key, severity, title)`` of each stored finding, per bundle, in the analysis's
        order (``key`` is ``rule:subject``, or the rule alone, as ``Finding.key``). A bundle
        with no stored analysis is absent; an analysed one without findings maps to ``[]``."""
        ids = list(bundle_ids)
        if not ids:
            return {}
        f = finding_rows.c
        with self._read() as conn:
            analysed = conn.execute(
                select(bundle_analysis.c.bundle_id).where(bundle_analysis.c.bundle_id.in_(ids))
            ).scalars()
            out: dict[str, list[tuple[str, str, str]]] = {bundle_id: [] for bundle_id in analysed}
            rows = conn.execute(
                select(f.bundle_id, f.rule, f.subject, f.severity, f.title)
                .where(f.bundle_id.in_(ids))
                .order_by(f.bundle_id, f.id)
            )
            for bundle_id, rule, subject, severity, title in rows:
                if bundle_id in out:
                    out[bundle_id].append((f"{rule}:{subject}" if subject else rule, severity, title))
        return out

    def bundles_to_analyse(
        self, *, version: str | None = None, since_us: int | None = None, after: str = "", limit: int = 100
    ) -> list[str]:
        """Bundle ids without stored analysis (or, given ``version``, analysed by another one),
        in id order after ``after``: the start-up sweep and ``reanalyze`` page through it."""
        j = bundles.outerjoin(bundle_analysis, bundle_analysis.c.bundle_id == bundles.c.bundle_id)
        cond: ColumnElement[bool] = bundle_analysis.c.bundle_id.is_(None)
        if version is not None:
            cond = or_(cond, bundle_analysis.c.version != version)
        if since_us is not None:
            cond = and_(cond, bundles.c.created_at >= since_us)
        stmt = (
            select(bundles.c.bundle_id)
            .select_from(j)
            .where(cond, bundles.c.bundle_id > after)
            .order_by(bundles.c.bundle_id)
            .limit(limit)
        )
        with self._read() as conn:
            return [r[0] for r in conn.execute(stmt)]

    def list_findings(
        self,
        *,
        rules: Sequence[str] = (),
        min_rank: int = 0,
        hostname: str | None = None,
        case_id: str | None = None,
        agent_id: str | None = None,
        since_us: int | None = None,
        until_us: int | None = None,
        text: str | None = None,
        page_size: int = 100,
        cursor: str | None = None,
        bundle_ids: Sequence[str] = (),
    ) -> tuple[list[ListedFinding], str | None]:
        """Stored findings, newest bundle first, keyset-paged; every value is a bound parameter."""
        t = finding_rows.c
        conds: list[ColumnElement[bool]] = []
        if bundle_ids:
            conds.append(t.bundle_id.in_(list(bundle_ids)))
        if rules:
            conds.append(t.rule.in_(list(rules)))
        if min_rank:
            conds.append(t.rank >= min_rank)
        if hostname:
            conds.append(t.hostname == hostname)
        if case_id:
            conds.append(t.case_id == case_id)
        if agent_id:
            conds.append(t.agent_id == agent_id)
        if since_us is not None:
            conds.append(t.created_at >= since_us)
        if until_us is not None:
            conds.append(t.created_at < until_us)
        if text:
            # Substring, case-insensitive; LIKE metacharacters in the text match themselves.
            pattern = "%" + text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            conds.append(or_(t.title.ilike(pattern, escape="\\"), t.subject.ilike(pattern, escape="\\")))
        pos = decode_position(cursor)
        if pos is not None:
            conds.append(or_(t.created_at < pos[0], and_(t.created_at == pos[0], t.id < pos[1])))
        size = max(1, min(page_size, 1000))
        stmt = select(finding_rows).where(*conds).order_by(t.created_at.desc(), t.id.desc()).limit(size + 1)
        with self._read() as conn:
            rows = [_listed(r._mapping) for r in conn.execute(stmt)]
        more = len(rows) > size
        rows = rows[:size]
        nxt = f"{rows[-1].created_at_us}.{rows[-1].id}" if more and rows else None
        return rows, nxt

    def run_metric_query(self, stmt: Any) -> list[dict[str, Any]]:
        """Execute a statement built by ``collector.query_lang`` (bound parameters only).

        On PostgreSQL without parallel workers, for this transaction only: a page of at
        most 1,000 rows walked along an index gains nothing from them, and their start
        cost more than the walk (two-metric filter over 1M bundles: p50 28 ms with two
        workers, 6 ms without; benchmarks/README.md)."""
        with self._read() as conn:
            if self._pg:
                conn.execute(text("SET LOCAL max_parallel_workers_per_gather = 0"))
            return [dict(r._mapping) for r in conn.execute(stmt)]


def _stored(m: Any) -> StoredAnalysis:
    return StoredAnalysis(
        bundle_id=m["bundle_id"],
        version=m["version"],
        analysed_at_us=m["analysed_at"],
        findings_json=m["findings_json"],
        timeline_json=m["timeline_json"],
        report_html=zlib.decompress(m["report_html_z"]).decode("utf-8"),
    )
