"""Hunts in the console: a form that calls ``CreateHunt``, a hunt's page from
``GetHuntResults`` and its per-host states polled from ``PollHuntStatus``.

All are the Hunt service's own handlers, called through :class:`WebContext`: the role
(engineer and up), the checks and the audit rows (``hunt.create`` plus one ``hunt.request``
per host, ``hunt.results`` for each view of a hunt) are the API's. The page's progress
poll calls ``PollHuntStatus``, the service's GetHuntStatus with the same check that
writes an audit row only when it refuses: the view was audited once, not every 4 s. There is no
RPC that lists hunts, so the console lists none: a hunt is opened by its id (the form on
this page and on the fleet page), and the console reads no hunt table of its own.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from agent.transport.live_states import state_of
from agent.units import parse_duration
from collector.live import SCOPES
from collector.services.hunt_service import HuntService
from collector.storage.errors import InvalidArgument
from collector.storage.text import clip
from collector.web.app import Console
from collector.web.calls import CallFailed
from collector.web.sessions import Session
from collector.web.views import when
from protos import collector_pb2

__all__ = ["ACTIVE", "routes", "spec_of"]

# A host in one of these may still change; ``offline`` and ``queued`` only when its agent returns.
ACTIVE = frozenset({"queued", "offline", "delivered", "collecting", "uploading"})


def _text(form: dict[str, Any], name: str) -> str:
    value = form.get(name, "")
    return value.strip() if isinstance(value, str) else ""


def _duration_s(text: str, what: str) -> int:
    if not text:
        return 0
    try:
        return int(parse_duration(text).total_seconds())
    except ValueError as exc:
        raise InvalidArgument(f"{what}: {exc}") from None


def spec_of(form: dict[str, Any]) -> collector_pb2.HuntSpec:
    """The form as the RPC's request; the handler checks every field (labels, pattern, case,
    scopes, ranges). Here only what the form adds: a required reason, durations as text."""
    reason = _text(form, "reason")
    if not reason:
        raise InvalidArgument("A reason is required: every selected host's owner sees it.")
    scopes = form.get("scope", [])
    scopes = [scopes] if isinstance(scopes, str) else list(scopes)
    # One per line: a value may hold spaces and commas, never a line break (no control characters).
    labels = [line.strip() for line in _text(form, "labels").splitlines() if line.strip()]
    return collector_pb2.HuntSpec(
        labels=labels,
        host_pattern=_text(form, "host_pattern"),
        case_id=_text(form, "case"),
        scopes=scopes,
        reason=reason,
        expires_s=_duration_s(_text(form, "expires"), "expiry"),
        since_seconds=_duration_s(_text(form, "since"), "logs window"),
    )


def _host(h: collector_pb2.HuntHost) -> dict[str, str]:
    return {"request_id": h.request_id, "agent_id": h.agent_id, "hostname": h.hostname, "state": state_of(h),
            "detail": h.detail, "bundle_id": h.bundle_id,
            "updated": when(h.updated_at) if h.HasField("updated_at") else ""}


def routes(console: Console) -> list[Route]:
    def service() -> HuntService:
        if console.hunts is None:
            raise CallFailed(grpc.StatusCode.UNIMPLEMENTED, "this collector has no live channel: no hunts")
        return console.hunts

    async def hunts(request: Request, s: Session) -> Response:
        wanted = request.query_params.get("id", "").strip()
        if wanted:  # "open hunt by id": the hunt's own page checks the id (the API does)
            return RedirectResponse(f"/hunts/{quote(clip(wanted, 40), safe='')}", status_code=303)
        return console.render(request, "hunts.html", form={}, chosen=["facts"], scopes=SCOPES, error="")

    async def create(request: Request, s: Session, form: dict[str, Any]) -> Response:
        shown = {k: _text(form, k) for k in ("labels", "host_pattern", "case", "reason", "expires", "since")}
        chosen = form.get("scope", [])
        chosen = [chosen] if isinstance(chosen, str) else list(chosen)
        try:
            spec = spec_of(form)
            status = await service().CreateHunt(spec, console.context(request, s))
        except (InvalidArgument, CallFailed) as exc:
            code = exc.code if isinstance(exc, CallFailed) else grpc.StatusCode.INVALID_ARGUMENT
            if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                raise
            http = exc.http if isinstance(exc, CallFailed) else 400
            # The form again, as typed, with the API's words: nothing was created.
            return console.render(
                request, "hunts.html", http, form=shown, chosen=chosen, scopes=SCOPES,
                error=str(getattr(exc, "message", exc)),
            )
        return RedirectResponse(f"/hunts/{status.hunt_id}", status_code=303)

    async def hunt_page(request: Request, s: Session) -> Response:
        ref = collector_pb2.HuntRef(hunt_id=request.path_params["hunt_id"])
        got = await service().GetHuntResults(ref, console.context(request, s))
        results = json.loads(got.json)
        hosts = [_host(h) for h in got.status.hosts]
        return console.render(
            request, "hunt.html", hunt=got.status, hosts=hosts, results=results, when=when,
            active=any(h["state"] in ACTIVE for h in hosts),
        )

    async def hunt_status(request: Request, s: Session) -> Response:
        ref = collector_pb2.HuntRef(hunt_id=request.path_params["hunt_id"])
        got = await service().PollHuntStatus(ref, console.context(request, s))
        hosts = [_host(h) for h in got.hosts]
        return JSONResponse({"hosts": hosts, "counts": dict(got.counts),
                             "active": any(h["state"] in ACTIVE for h in hosts)})

    return [
        Route("/hunts", console.page(hunts), methods=["GET"]),
        Route("/hunts", console.action(create), methods=["POST"]),
        Route("/hunts/{hunt_id}", console.page(hunt_page)),
        Route("/hunts/{hunt_id}/status", console.page(hunt_status)),
    ]
