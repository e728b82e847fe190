"""Fleet questions over the stored analysis: ListFindings and QueryMetrics, and the
per-bundle outputs (findings, timeline, report) read from storage instead of the blob.

A bundle whose analysis is not stored yet (just received, the worker still busy) is
analysed on demand here, once, and stored: the next call reads it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from typing import Any

import grpc

from agent.analysis.model import SEVERITY_RANK
from agent.bundle import is_bundle_id
from collector.analysis import analyse_bundle
from collector.auth import EngineerAuth
from collector.edge import unary
from collector.query_lang import FIELDS, compile_query
from collector.storage import BlobBackend, Store
from collector.storage.errors import InvalidArgument
from collector.storage.findings import ListedFinding, StoredAnalysis
from collector.storage.text import CONTROL_RE, clip
from collector.timestamps import timestamp_us
from protos import collector_pb2

__all__ = ["FleetQueries", "stored_analysis"]

_AGENT_ID_RE = re.compile(r"ag_[0-9A-Za-z_-]{1,29}")
_RULE_RE = re.compile(r"[a-z][a-z0-9-]{0,63}")


async def stored_analysis(store: Store, blobs: BlobBackend, bundle_id: str) -> StoredAnalysis:
    """The bundle's stored analysis, made now when there is none yet."""
    found = await asyncio.to_thread(store.get_analysis, bundle_id)
    if found is not None:
        return found
    await asyncio.to_thread(analyse_bundle, store, blobs, bundle_id)
    made = await asyncio.to_thread(store.get_analysis, bundle_id)
    assert made is not None  # just written in its own committed transaction
    return made


def _text(field: str, value: str, limit: int) -> str:
    if len(value) > limit:
        raise InvalidArgument(f"{field} is {len(value)} characters long; at most {limit} are allowed")
    if CONTROL_RE.search(value):
        raise InvalidArgument(f"{field} {clip(value, 40)!r} holds a control character")
    return value


def _check_findings_request(r: collector_pb2.ListFindingsRequest) -> int:
    """Validate every field before authorisation; returns the minimum severity rank."""
    if len(r.rules) > 50:
        raise InvalidArgument(f"{len(r.rules)} rules given; at most 50 are allowed")
    for rule in r.rules:
        if not _RULE_RE.fullmatch(rule):
            raise InvalidArgument(f"rule {clip(rule, 40)!r} is not a finding code (lowercase-dashed)")
    if r.min_severity and r.min_severity not in SEVERITY_RANK:
        raise InvalidArgument(f"min_severity {clip(r.min_severity, 20)!r} is not info, warning or critical")
    _text("hostname", r.hostname, 255)
    _text("case_id", r.case_id, 200)
    _text("text", r.text, 200)
    _text("page_token", r.page_token, 100)
    if r.agent_id and not _AGENT_ID_RE.fullmatch(r.agent_id):
        raise InvalidArgument(f"agent_id {clip(r.agent_id, 40)!r} is not an agent id (ag_…, at most 32 characters)")
    if r.page_size < 0 or r.page_size > 1000:
        raise InvalidArgument(f"page_size {r.page_size} is not between 0 and 1000")
    if len(r.bundle_ids) > 1000:
        raise InvalidArgument(f"{len(r.bundle_ids)} bundle ids given; at most 1000 are allowed")
    for bundle_id in r.bundle_ids:
        if not is_bundle_id(bundle_id):
            raise InvalidArgument(f"bundle id {clip(bundle_id, 40)!r} is not a bundle id (32 lowercase hex digits)")
    return SEVERITY_RANK.get(r.min_severity, 0)


def _micros(ts: Any, present: bool) -> int | None:
    return int(ts.ToMicroseconds()) if present else None


def _finding_pb(f: ListedFinding) -> collector_pb2.StoredFinding:
    return collector_pb2.StoredFinding(
        bundle_id=f.bundle_id,
        hostname=f.hostname,
        case_id=f.case_id or "",
        agent_id=f.agent_id,
        created_at=timestamp_us(f.created_at_us),
        rule=f.rule,
        severity=f.severity,
        title=f.title,
        subject=f.subject,
        numbers=f.numbers,
        evidence=list(f.evidence),
    )


def _findings_target(r: collector_pb2.ListFindingsRequest) -> str:
    pairs = (
        ("rule", ",".join(r.rules)),
        ("severity", r.min_severity),
        ("host", r.hostname),
        ("case", r.case_id),
        ("agent", r.agent_id),
        ("bundles", str(len(r.bundle_ids)) if r.bundle_ids else ""),
    )
    return clip(",".join(f"{k}={v}" for k, v in pairs if v), 200)


audited = EngineerAuth.audited


class FleetQueries:
    """Mixed into ``QueryService``: the fleet RPCs (viewer role, audited like the others)."""

    _store: Store
    _blobs: BlobBackend
    _auth: EngineerAuth

    @unary
    @audited("query.list_findings", _findings_target)
    async def ListFindings(
        self, request: collector_pb2.ListFindingsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> collector_pb2.ListFindingsResponse:
        min_rank = _check_findings_request(request)
        await self._auth.require(context, role="viewer")
        rows, nxt = await asyncio.to_thread(
            self._store.list_findings,
            rules=list(request.rules),
            min_rank=min_rank,
            hostname=request.hostname or None,
            case_id=request.case_id or None,
            agent_id=request.agent_id or None,
            since_us=_micros(request.since, request.HasField("since")),
            until_us=_micros(request.until, request.HasField("until")),
            text=request.text or None,
            page_size=request.page_size or 100,
            cursor=request.page_token or None,
            bundle_ids=list(request.bundle_ids),
        )
        return collector_pb2.ListFindingsResponse(findings=[_finding_pb(f) for f in rows], next_page_token=nxt or "")

    @unary
    @audited("query.query_metrics", lambda r: clip(r.query, 200))
    async def QueryMetrics(
        self, request: collector_pb2.QueryMetricsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> collector_pb2.QueryMetricsResponse:
        if request.limit < 0 or request.limit > 1000:
            raise InvalidArgument(f"limit {request.limit} is not between 0 and 1000")
        if CONTROL_RE.search(request.query):
            raise InvalidArgument("query holds a control character")
        compiled = compile_query(request.query, now=dt.datetime.now(dt.UTC), limit=request.limit or 100)
        await self._auth.require(context, role="viewer")
        rows = await asyncio.to_thread(self._store.run_metric_query, compiled.statement)
        labels = [(f, f"v{i}") for i, f in enumerate(compiled.fields) if FIELDS[f].numeric]
        out = []
        for row in rows:
            values = {f: float(row[label]) for f, label in labels if row[label] is not None}
            out.append(
                collector_pb2.MetricRow(
                    bundle_id=row["bundle_id"],
                    hostname=row["hostname"],
                    case_id=row["case_id"] or "",
                    agent_id=row["agent_id"],
                    created_at=timestamp_us(row["created_at"]),
                    mountpoint=row.get("mountpoint") or "",
                    values=values,
                )
            )
        return collector_pb2.QueryMetricsResponse(rows=out)
