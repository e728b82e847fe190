"""Query: what engineers call — hosts, bundles, one bundle's facts, the original file.

Reading facts needs the viewer role; downloading the raw bundle needs engineer, because
it holds raw artifacts (logs, command output). Every call is audited once, when it ends,
with its outcome (``EngineerAuth.audited``); request fields are checked first.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from agent.analysis import BundleView, build_timeline, diff_bundles, render_diff_text
from agent.bundle import is_bundle_id
from collector.auth import EngineerAuth
from collector.edge import Rejected, server_stream, unary
from collector.live import LiveRouter, audit_entry, request_snapshot
from collector.services.fleet import FleetQueries, stored_analysis
from collector.storage import AgentRecord, BlobStore, BundleRecord, HostRecord, Store
from collector.storage.errors import InvalidArgument
from collector.storage.text import CONTROL_RE, clip
from collector.timestamps import timestamp_us
from protos import collector_pb2, collector_pb2_grpc, facts_pb2

__all__ = ["QueryService", "summary_of"]

# Findings, the default timeline and the report are read from the analysis stored once
# per bundle (collector/analysis.py). What is not stored (a diff, a timeline at another
# interval) reads the blob: verified again (the blob store is not trusted more than the
# wire), in a worker thread because a large bundle takes seconds.

_DOWNLOAD_CHUNK = 256 * 1024


def summary_of(rec: BundleRecord) -> collector_pb2.BundleSummary:
    return collector_pb2.BundleSummary(
        bundle_id=rec.bundle_id,
        agent_id=rec.agent_id,
        hostname=rec.hostname,
        case_id=rec.case_id or "",
        kind=rec.kind,
        created_at=timestamp_us(rec.created_at_us),
        received_at=timestamp_us(rec.received_at_us),
        size=rec.size,
        sha256=rec.sha256,
        key_fingerprint=rec.key_fingerprint,
        agent_version=rec.agent_version,
        file_name=rec.file_name,
        collectors_ok=rec.collectors_ok,
        collectors_failed=rec.collectors_failed,
        origin_fingerprint=rec.origin_fingerprint or rec.key_fingerprint,
        collectors_skipped=rec.collectors_skipped,
    )


def _host(rec: HostRecord) -> collector_pb2.Host:
    return collector_pb2.Host(
        hostname=rec.hostname,
        agent_ids=list(rec.agent_ids),
        first_seen=timestamp_us(rec.first_seen_us),
        last_seen=timestamp_us(rec.last_seen_us),
        bundle_count=rec.bundle_count,
        last_bundle_id=rec.last_bundle_id,
        os=rec.os,
    )


def _when(ts: Timestamp, present: bool) -> dt.datetime | None:
    return ts.ToDatetime(tzinfo=dt.UTC) if present else None


# Request fields are checked before authorisation and before anything is written: ids
# have fixed formats, free text is bounded and holds no control character (NUL cannot
# be stored in PostgreSQL text at all). The messages never echo more than a short prefix.

_AGENT_ID_RE = re.compile(r"ag_[0-9A-Za-z_-]{1,29}")
_FREE_TEXT_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # tab and newline allowed


def _bundle_id(field: str, value: str) -> str:
    if not is_bundle_id(value):
        raise InvalidArgument(f"{field} {clip(value, 40)!r} is not a bundle id (32 lowercase hex digits)")
    return value


def _text(field: str, value: str, limit: int, *, multiline: bool = False) -> str:
    if len(value) > limit:
        raise InvalidArgument(f"{field} is {len(value)} characters long; at most {limit} are allowed")
    if (_FREE_TEXT_CONTROL_RE if multiline else CONTROL_RE).search(value):
        raise InvalidArgument(f"{field} {clip(value, 40)!r} holds a control character")
    return value


def _agent_id(field: str, value: str) -> str:
    if value and not _AGENT_ID_RE.fullmatch(value):
        raise InvalidArgument(f"{field} {clip(value, 40)!r} is not an agent id (ag_…, at most 32 characters)")
    return value


def _page_token(value: str) -> str:
    return _text("page_token", value, 1000)


def _bundle_filters(request: collector_pb2.ListBundlesRequest) -> str:
    """A listing's filters as its audit target: ``host=web1,case=SR-1``."""
    case = "(none)" if request.without_case else request.case_id
    pairs = (("host", request.hostname), ("case", case), ("agent", request.agent_id))
    return ",".join(f"{k}={v}" for k, v in pairs if v)


audited = EngineerAuth.audited


class QueryService(FleetQueries, collector_pb2_grpc.QueryServicer):
    def __init__(self, store: Store, blobs: BlobStore, router: LiveRouter | None = None) -> None:
        self._store = store
        self._blobs = blobs
        self._auth = EngineerAuth(store)
        self._router = router

    @unary
    @audited("query.list_hosts")
    async def ListHosts(
        self, request: collector_pb2.ListHostsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> collector_pb2.ListHostsResponse:
        _page_token(request.page_token)
        await self._auth.require(context, role="viewer")
        first = not request.page_token

        def read() -> tuple[tuple[list[HostRecord], str | None], list[tuple[AgentRecord, tuple[str, ...]]]]:
            # Both reads in one thread hop: while a hunt's uploads keep the event loop and
            # the interpreter lock busy, each hop back to the loop waits its turn.
            page = self._store.list_hosts(page_size=request.page_size or 100, cursor=request.page_token or None)
            return page, (self._store.agents_without_bundles() if first else [])

        (hosts, nxt), waiting = await asyncio.to_thread(read)
        resp = collector_pb2.ListHostsResponse(hosts=[_host(h) for h in hosts], next_page_token=nxt or "")
        if first:
            resp.agents_without_bundles.extend(await self._agents_without_bundles(waiting))
        return resp

    async def _agents_without_bundles(
        self, found: list[tuple[AgentRecord, tuple[str, ...]]]
    ) -> list[collector_pb2.AgentWithoutBundles]:
        """Machines set up but not hosts yet (no bundle), and whether each is connected now."""
        ids = [agent.id for agent, _ in found]
        online = await self._router.online_among(ids) if self._router is not None else set()
        listed = []
        for agent, cases in found:
            entry = collector_pb2.AgentWithoutBundles(
                agent_id=agent.id,
                hostname=agent.hostname,
                enrolled_at=timestamp_us(agent.created_at_us),
                connected=agent.id in online,
                case_ids=list(cases),
            )
            if agent.last_seen_at_us is not None:
                entry.last_seen.CopyFrom(timestamp_us(agent.last_seen_at_us))
            listed.append(entry)
        return listed

    @unary
    @audited("query.list_bundles", _bundle_filters)
    async def ListBundles(
        self, request: collector_pb2.ListBundlesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> collector_pb2.ListBundlesResponse:
        _text("hostname", request.hostname, 255)
        _text("case_id", request.case_id, 200)
        _agent_id("agent_id", request.agent_id)
        _page_token(request.page_token)
        if request.without_case and request.case_id:
            raise InvalidArgument("without_case and case_id exclude each other")
        await self._auth.require(context, role="viewer")
        rows, nxt = await asyncio.to_thread(
            self._store.list_bundles,
            hostname=request.hostname or None,
            case_id=request.case_id or None,
            agent_id=request.agent_id or None,
            since=_when(request.since, request.HasField("since")),
            until=_when(request.until, request.HasField("until")),
            page_size=request.page_size or 100,
            cursor=request.page_token or None,
            without_case=request.without_case,
        )
        return collector_pb2.ListBundlesResponse(bundles=[summary_of(r) for r in rows], next_page_token=nxt or "")

    @unary
    @audited("query.get_bundle", lambda r: r.bundle_id)
    async def GetBundle(
        self, request: collector_pb2.GetBundleRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> collector_pb2.BundleDetail:
        _bundle_id("bundle_id", request.bundle_id)
        await self._auth.require(context, role="viewer")
        rec = await asyncio.to_thread(self._store.get_bundle, request.bundle_id)
        facts_pb, manifest_json = await asyncio.to_thread(self._store.get_bundle_content, request.bundle_id)
        return collector_pb2.BundleDetail(
            summary=summary_of(rec),
            facts=facts_pb2.Snapshot.FromString(facts_pb),
            manifest_json=manifest_json,
        )

    @server_stream
    @audited("query.download_bundle", lambda r: r.bundle_id)
    async def DownloadBundle(
        self, request: collector_pb2.GetBundleRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[collector_pb2.DownloadChunk]:
        _bundle_id("bundle_id", request.bundle_id)
        await self._auth.require(context, role="engineer")
        rec = await asyncio.to_thread(self._store.get_bundle, request.bundle_id)
        fh = await asyncio.to_thread(self._blobs.open_blob, rec.blob_key)
        try:
            yield collector_pb2.DownloadChunk(
                header=collector_pb2.DownloadHeader(
                    bundle_id=rec.bundle_id, file_name=rec.file_name, size=rec.size, sha256=rec.sha256
                )
            )
            while True:
                data = await asyncio.to_thread(fh.read, _DOWNLOAD_CHUNK)
                if not data:
                    break
                yield collector_pb2.DownloadChunk(data=data)
        finally:
            fh.close()

    async def _view(self, bundle_id: str) -> BundleView:
        rec = await asyncio.to_thread(self._store.get_bundle, bundle_id)
        return await asyncio.to_thread(BundleView.from_file, self._blobs.blob_path(rec.blob_key))

    @unary
    @audited("query.get_findings", lambda r: r.bundle_id)
    async def GetFindings(
        self, request: collector_pb2.GetBundleRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> collector_pb2.FindingsResponse:
        _bundle_id("bundle_id", request.bundle_id)
        await self._auth.require(context, role="viewer")
        stored = await stored_analysis(self._store, self._blobs, request.bundle_id)
        return collector_pb2.FindingsResponse(json=stored.findings_json)

    @unary
    @audited("query.get_timeline", lambda r: r.bundle_id)
    async def GetTimeline(
        self, request: collector_pb2.TimelineRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> collector_pb2.TimelineResponse:
        _bundle_id("bundle_id", request.bundle_id)
        await self._auth.require(context, role="viewer")
        interval = request.interval_s or None
        if interval is not None and (interval < 10 or interval > 86400 or interval % 10):
            raise ValueError(f"interval_s {interval} must be a multiple of 10 between 10 and 86400")
        if interval is None:
            stored = await stored_analysis(self._store, self._blobs, request.bundle_id)
            return collector_pb2.TimelineResponse(json=stored.timeline_json)
        view = await self._view(request.bundle_id)
        timeline = await asyncio.to_thread(build_timeline, view, interval)
        return collector_pb2.TimelineResponse(json=json.dumps(timeline.to_dict(), ensure_ascii=False))

    @unary
    @audited("query.diff", lambda r: f"{r.a},{r.b}")
    async def DiffBundles(
        self, request: collector_pb2.DiffRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> collector_pb2.DiffResponse:
        _bundle_id("a", request.a)
        _bundle_id("b", request.b)
        await self._auth.require(context, role="viewer")
        a, b = await self._view(request.a), await self._view(request.b)
        result = await asyncio.to_thread(diff_bundles, a, b, force=request.force)
        return collector_pb2.DiffResponse(
            json=json.dumps(result.to_dict(), ensure_ascii=False), text=render_diff_text(result)
        )

    @unary
    @audited("query.render_report", lambda r: r.bundle_id)
    async def RenderReport(
        self, request: collector_pb2.GetBundleRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> collector_pb2.ReportResponse:
        _bundle_id("bundle_id", request.bundle_id)
        await self._auth.require(context, role="viewer")
        stored = await stored_analysis(self._store, self._blobs, request.bundle_id)
        return collector_pb2.ReportResponse(html=stored.report_html.encode("utf-8"))

    @server_stream
    @audited("live.request_snapshot", lambda r: r.host)
    async def RequestSnapshot(
        self, request: collector_pb2.SnapshotRequestSpec, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[collector_pb2.SnapshotEvent]:
        _text("host", request.host, 255)
        for scope in request.scopes:
            _text("scope", scope, 100)
        _text("reason", request.reason, 2000, multiline=True)
        _text("spec", request.spec, 60)
        token = await self._auth.require(context, role="engineer")
        if self._router is None:
            raise Rejected(grpc.StatusCode.UNIMPLEMENTED, "this collector serves no live channel")
        async for event in request_snapshot(self._store, self._router, token, request):
            yield event

    @unary
    @audited("query.list_audit", lambda r: r.action)
    async def ListAudit(
        self, request: collector_pb2.ListAuditRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> collector_pb2.ListAuditResponse:
        _text("actor", request.actor, 32)
        _text("action", request.action, 100)
        _text("outcome", request.outcome, 16)
        await self._auth.require(context, role="admin")
        rows = await asyncio.to_thread(
            self._store.list_audit,
            request.limit or 100,
            before_id=request.before_id or None,
            actor=request.actor or None,
            action=request.action or None,
            outcome=request.outcome or None,
        )
        return collector_pb2.ListAuditResponse(entries=[audit_entry(r) for r in rows])
