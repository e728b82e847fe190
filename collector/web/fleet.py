"""Fleet questions in the console: stored findings across bundles (``ListFindings``) and
the metric query language (``QueryMetrics``), both through the API's own handlers."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from collector.web.app import Console
from collector.web.sessions import Session
from collector.web.views import when
from protos import collector_pb2

__all__ = ["routes"]

_FIELDS = ("rule", "severity", "host", "case", "text")
_PAGE = 200  # findings per page (the API's next_page_token links the next)


def routes(console: Console) -> list[Route]:
    async def fleet(request: Request, s: Session) -> Response:
        p = request.query_params
        args = {k: p.get(k, "") for k in (*_FIELDS, "q")}
        page = p.get("page", "")[:100]
        ctx = console.context(request, s)
        findings = rows = None
        if any(args[k] for k in _FIELDS):
            findings = await console.query.ListFindings(
                collector_pb2.ListFindingsRequest(
                    rules=[args["rule"]] if args["rule"] else [], min_severity=args["severity"],
                    hostname=args["host"], case_id=args["case"], text=args["text"], page_size=_PAGE,
                    page_token=page,
                ),
                ctx,
            )
        if args["q"]:
            rows = await console.query.QueryMetrics(collector_pb2.QueryMetricsRequest(query=args["q"], limit=200), ctx)
        return console.render(
            request, "fleet.html", args=args, findings=findings, rows=rows, when=when, page=page
        )

    return [Route("/fleet", console.page(fleet))]
