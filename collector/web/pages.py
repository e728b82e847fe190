"""Reading pages: cases, hosts, a host, a bundle (findings, timeline, facts, logs), diff,
download and the bundle's report. Each calls the Query RPC handlers it shows."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from agent.bundle import is_bundle_id
from collector.live import SCOPES
from collector.web.actions import CasesRequest, LogRequest
from collector.web.app import REPORT_CSP, Console
from collector.web.calls import CallFailed, Driven
from collector.web.logs import SEVERITY_LEVELS
from collector.web.sessions import Session
from collector.web.views import (
    Offer,
    Worst,
    bundle_sections,
    fact_tree,
    offered_scopes,
    timeline_svg,
    when,
    when_us,
    worst_by,
)
from protos import collector_pb2

__all__ = ["routes"]

_PAGE = 100  # bundles or hosts per page; cases: CASES_PAGE


def _page(request: Request) -> str:
    """The ``page`` query parameter: the API's opaque token of the page to show."""
    return request.query_params.get("page", "")[:1000]


def _bundle_id(request: Request) -> str:
    value = request.path_params["bundle_id"]
    if not is_bundle_id(value):
        raise CallFailed(grpc.StatusCode.NOT_FOUND, "no such bundle")
    return str(value)


def routes(console: Console) -> list[Route]:
    q = console.query

    async def home(request: Request) -> Response:
        return RedirectResponse("/cases", status_code=303)

    async def cases(request: Request, s: Session) -> Response:
        token = _page(request)
        page, nxt = await console.actions.ListCases(CasesRequest(token), console.context(request, s))
        return console.render(request, "cases.html", cases=page, when_us=when_us, nxt=nxt, first=not token)

    async def case(request: Request, s: Session) -> Response:
        case_id = request.query_params.get("id", "")
        ctx = console.context(request, s)
        bundles = await q.ListBundles(
            collector_pb2.ListBundlesRequest(
                case_id=case_id, without_case=not case_id, page_size=_PAGE, page_token=_page(request)
            ),
            ctx,
        )
        worst = await _worst(ctx, [b.bundle_id for b in bundles.bundles], "info")
        return console.render(
            request, "case.html", case_id=case_id, bundles=bundles.bundles, worst=worst, when=when,
            nxt=bundles.next_page_token, first=not _page(request),
        )

    async def hosts(request: Request, s: Session) -> Response:
        ctx = console.context(request, s)
        token = _page(request)
        listed = await q.ListHosts(collector_pb2.ListHostsRequest(page_size=_PAGE, page_token=token), ctx)
        worst = await _worst(ctx, [h.last_bundle_id for h in listed.hosts if h.last_bundle_id], "warning")
        agent_ids = [a for h in listed.hosts for a in h.agent_ids] + [a.agent_id for a in listed.agents_without_bundles]
        online = await console.router.online_among(agent_ids) if console.router is not None else set()
        labels = await asyncio.to_thread(console.store.agent_labels, agent_ids)
        return console.render(
            request, "hosts.html", hosts=listed.hosts, waiting=listed.agents_without_bundles,
            online=online, labels=labels, worst=worst, when=when, nxt=listed.next_page_token, first=not token,
        )

    async def host(request: Request, s: Session) -> Response:
        name = request.query_params.get("name", "")
        ctx = console.context(request, s)
        token = _page(request)
        bundles = await q.ListBundles(
            collector_pb2.ListBundlesRequest(hostname=name, page_size=_PAGE, page_token=token), ctx
        )
        worst = await _worst(ctx, [b.bundle_id for b in bundles.bundles], "info")
        agent_ids = sorted({b.agent_id for b in bundles.bundles})
        online = await console.router.online_among(agent_ids) if console.router is not None else set()
        labels = await asyncio.to_thread(console.store.agent_labels, agent_ids)
        offer = await _offer(name) if s.role in ("engineer", "admin") else None
        return console.render(
            request, "host.html", name=name, bundles=bundles.bundles, worst=worst,
            online=online, labels=labels, offer=offer, when=when, nxt=bundles.next_page_token, first=not token,
        )

    async def _offer(name: str) -> Offer:
        """The snapshot form's scopes: what the policies of the host's enrolled agents allow
        (the agents a request by host name may go to; ``collector.live``)."""
        found = await asyncio.to_thread(console.store.agents_by_hostname, name)
        enrolled = [a.id for a in found if a.case_id is None]
        policies = await asyncio.to_thread(console.store.agent_live_policies, enrolled)
        return offered_scopes(enrolled, policies, SCOPES)

    async def _worst(
        ctx: grpc.aio.ServicerContext[Any, Any], bundle_ids: list[str], min_severity: str
    ) -> dict[str, Worst]:
        """The worst finding of each of these bundles (one ListFindings call, by bundle id)."""
        if not bundle_ids:
            return {}
        found = await q.ListFindings(
            collector_pb2.ListFindingsRequest(bundle_ids=bundle_ids, min_severity=min_severity, page_size=1000), ctx
        )
        return worst_by(found.findings, "bundle_id")

    async def bundle(request: Request, s: Session) -> Response:
        bundle_id = _bundle_id(request)
        ctx = console.context(request, s)
        req = collector_pb2.GetBundleRequest(bundle_id=bundle_id)
        detail = await q.GetBundle(req, ctx)
        findings = json.loads((await q.GetFindings(req, ctx)).json)
        timeline = json.loads((await q.GetTimeline(collector_pb2.TimelineRequest(bundle_id=bundle_id), ctx)).json)
        earlier = await q.ListBundles(
            collector_pb2.ListBundlesRequest(
                hostname=detail.summary.hostname, until=detail.summary.created_at, page_size=1
            ),
            ctx,
        )
        previous = earlier.bundles[0].bundle_id if earlier.bundles else ""
        return console.render(
            request, "bundle.html", b=detail.summary, findings=findings, timeline=timeline,
            chart=timeline_svg(timeline), tree=fact_tree(detail.facts), previous=previous, when=when,
            severities=SEVERITY_LEVELS, sections=bundle_sections(detail, timeline),
        )

    async def logs(request: Request, s: Session) -> Response:
        bundle_id = _bundle_id(request)
        p = request.query_params
        req = LogRequest(
            bundle_id, p.get("source", ""), p.get("severity", ""), p.get("text", ""), p.get("since", ""),
            p.get("until", ""), p.get("page", "0") or "0",
        )
        got = await console.actions.ReadLogs(req, console.context(request, s))
        args = {k: p.get(k, "") for k in ("source", "severity", "text", "since", "until")}
        return console.render(request, "logs.html", bundle_id=bundle_id, page=got, args=args,
                              severities=SEVERITY_LEVELS)

    async def diff(request: Request, s: Session) -> Response:
        bundle_id = _bundle_id(request)
        against = request.query_params.get("against", "")
        result = await q.DiffBundles(
            collector_pb2.DiffRequest(a=against, b=bundle_id), console.context(request, s)
        )
        return console.render(request, "diff.html", bundle_id=bundle_id, against=against,
                              diff=json.loads(result.json), text=result.text)

    async def download(request: Request, s: Session) -> Response:
        bundle_id = _bundle_id(request)
        chunks = Driven(
            q.DownloadBundle(collector_pb2.GetBundleRequest(bundle_id=bundle_id), console.context(request, s))
        )
        first = await chunks.next()  # the header; a refusal (role, not found) raises here
        if first is None:
            raise CallFailed(grpc.StatusCode.INTERNAL, "the download ended before its header")
        header = first.header

        async def body() -> AsyncIterator[bytes]:
            # One chunk ahead: the last bytes go out only once the stream has ended, and
            # with it its audit row (``ok``): a browser closes the connection as soon as it
            # holds them, which would otherwise cancel a stream still finishing.
            try:
                chunk = await chunks.next()
                while chunk is not None:
                    following = await chunks.next()
                    yield chunk.data
                    chunk = following
            finally:
                await chunks.close()

        safe_name = "".join(c for c in header.file_name if c.isalnum() or c in "._-") or f"{bundle_id}.casefile"
        return StreamingResponse(
            body(), media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{safe_name}"', "Content-Length": str(header.size)},
        )

    async def report(request: Request, s: Session) -> Response:
        bundle_id = _bundle_id(request)
        got = await q.RenderReport(collector_pb2.GetBundleRequest(bundle_id=bundle_id), console.context(request, s))
        return HTMLResponse(got.html.decode("utf-8", "replace"), headers={"Content-Security-Policy": REPORT_CSP})

    return [
        Route("/", home),
        Route("/cases", console.page(cases)),
        Route("/case", console.page(case)),
        Route("/hosts", console.page(hosts)),
        Route("/host", console.page(host)),
        Route("/bundles/{bundle_id}", console.page(bundle)),
        Route("/bundles/{bundle_id}/logs", console.page(logs)),
        Route("/bundles/{bundle_id}/diff", console.page(diff)),
        Route("/bundles/{bundle_id}/download", console.page(download)),
        Route("/bundles/{bundle_id}/report", console.page(report)),
    ]
