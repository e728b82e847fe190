"""Pages that change something: sign-in and sign-out, live snapshots, tokens; and audit.

Sign-in exchanges an engineer token for a session (``ConsoleActions.SignIn`` checks it
and audits the attempt); the sign-in form itself is a pre-session with a CSRF token,
and a successful sign-in always gets a new session id. A live snapshot runs the
``RequestSnapshot`` handler in a task of the collector's loop, as the signed-in
engineer; the page follows its events by polling (plain script, no inline code).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from dataclasses import dataclass, field
from typing import Any

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from agent.transport.live_states import state_of
from collector.web.actions import NewToken, TokenRef
from collector.web.app import Console, safe_next
from collector.web.calls import CallFailed, servicer_context
from collector.web.sessions import COOKIE, Session, cookie_header, expired_cookie_header
from collector.web.views import when
from protos import collector_pb2

__all__ = ["SnapshotRun", "routes"]

_FINAL = frozenset({"done", "denied", "failed", "expired", "offline", "timeout", "refused"})
_MAX_RUNS = 1000


@dataclass
class SnapshotRun:
    """One live request followed for the engineer who made it."""

    owner: str  # token id
    host: str
    events: list[dict[str, str]] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    refusal: CallFailed | None = None
    task: asyncio.Task[None] | None = None

    @property
    def final(self) -> bool:
        return bool(self.events) and self.events[-1]["state"] in _FINAL


def _event(e: collector_pb2.SnapshotEvent) -> dict[str, str]:
    return {"state": state_of(e), "detail": e.detail, "bundle_id": e.bundle_id, "request_id": e.request_id,
            "at": when(e.at) if e.HasField("at") else ""}


def _field(form: dict[str, Any], name: str) -> str:
    value = form.get(name, "")
    return value if isinstance(value, str) else ""


def routes(console: Console) -> list[Route]:
    runs: dict[str, SnapshotRun] = {}

    # ---------------------------------------------------------------- sign-in / out

    async def signin_form(request: Request) -> Response:
        session_id = request.cookies.get(COOKIE)
        session = await console.sessions.get(session_id)
        nxt = safe_next(request.query_params.get("next"))
        if session is not None and session.signed_in:
            return RedirectResponse(nxt, status_code=303)
        return await _signin_page(request, nxt, "", 200)

    async def _signin_page(request: Request, nxt: str, error: str, status: int) -> Response:
        session_id, pre = await console.sessions.anonymous(replaces=request.cookies.get(COOKIE))
        response = console.render(request, "signin.html", status, session=None, csrf=pre.csrf, next=nxt, error=error)
        response.headers.append("set-cookie", cookie_header(session_id, pre))
        return response

    async def signin(request: Request) -> Response:
        old = request.cookies.get(COOKIE)
        pre = await console.sessions.get(old)
        try:
            form = await console.form(request)
        except (CallFailed, ValueError) as exc:  # not a form, too large, too many fields
            return console.error(request, 400, str(exc))
        nxt = safe_next(_field(form, "next"))
        if pre is None or not pre.csrf_ok(_field(form, "csrf")):
            return await _signin_page(request, nxt, "The sign-in form expired; please try again.", 403)
        token = _field(form, "token").strip()
        try:
            rec = await console.actions.SignIn(None, servicer_context(token or None, console.peer(request)))
        except CallFailed as exc:
            message = (
                "This token was not accepted: it is unknown, expired, revoked or not an engineer token."
                if exc.code is grpc.StatusCode.UNAUTHENTICATED else exc.message
            )
            status = 401 if exc.code is grpc.StatusCode.UNAUTHENTICATED else exc.http
            return await _signin_page(request, nxt, message, status)
        session_id, session = await console.sessions.sign_in(
            old, token=token, token_id=rec.id, label=rec.label, role=rec.role or "viewer",
            token_expires_at=rec.expires_at_us / 1e6 if rec.expires_at_us else None,
        )
        response = RedirectResponse(nxt, status_code=303)
        response.headers.append("set-cookie", cookie_header(session_id, session))
        return response

    async def signout(request: Request, s: Session, form: dict[str, Any]) -> Response:
        try:
            await console.actions.SignOut(None, console.context(request, s))
        finally:
            await console.sessions.delete(request.cookies.get(COOKIE, ""))
        response = RedirectResponse("/signin", status_code=303)
        response.headers.append("set-cookie", expired_cookie_header())
        return response

    # ---------------------------------------------------------------- live snapshots

    async def follow(
        run: SnapshotRun, spec: collector_pb2.SnapshotRequestSpec, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        try:
            async for event in console.query.RequestSnapshot(spec, ctx):
                run.events.append(_event(event))
                run.started.set()
        except CallFailed as exc:
            if run.events or exc.code is grpc.StatusCode.FAILED_PRECONDITION:
                state = "offline" if " offline since " in exc.message else "refused"
                run.events.append({"state": state, "detail": exc.message, "bundle_id": "", "request_id": "", "at": ""})
            else:
                run.refusal = exc
        finally:
            run.started.set()

    async def snapshot(request: Request, s: Session, form: dict[str, Any]) -> Response:
        scopes = form.get("scope", [])
        scopes = [scopes] if isinstance(scopes, str) else list(scopes)
        host, reason = _field(form, "host"), _field(form, "reason").strip()
        if not reason:
            return console.error(request, 400, "A reason is required: the host's owner sees it.")
        try:
            wait_min = int(_field(form, "wait_minutes") or 0)
        except ValueError:
            return console.error(request, 400, "Queue time must be a whole number of minutes.")
        spec = collector_pb2.SnapshotRequestSpec(
            host=host, scopes=scopes, reason=reason, wait_s=max(0, wait_min) * 60, timeout_s=120
        )
        run = SnapshotRun(owner=s.token_id, host=host)
        run.task = asyncio.create_task(follow(run, spec, console.context(request, s)))
        await run.started.wait()
        if run.refusal is not None:
            raise run.refusal  # the API's answer: 403 for a viewer, 400 for a bad scope
        run_id = secrets.token_urlsafe(12)
        if len(runs) >= _MAX_RUNS:
            for key in [k for k, r in runs.items() if r.final][: len(runs) // 2 or 1]:
                del runs[key]
        runs[run_id] = run
        return RedirectResponse(f"/snapshots/{run_id}", status_code=303)

    def _run(request: Request, s: Session) -> SnapshotRun:
        run = runs.get(request.path_params["run_id"])
        if run is None or run.owner != s.token_id:
            raise CallFailed(grpc.StatusCode.NOT_FOUND, "no such snapshot request (they are kept until restart)")
        return run

    async def snapshot_page(request: Request, s: Session) -> Response:
        run = _run(request, s)
        return console.render(request, "snapshot.html", run=run, run_id=request.path_params["run_id"])

    async def snapshot_events(request: Request, s: Session) -> Response:
        run = _run(request, s)
        return JSONResponse({"events": run.events, "final": run.final})

    # ---------------------------------------------------------------- audit and tokens

    async def audit(request: Request, s: Session) -> Response:
        p = request.query_params
        try:
            before = int(p.get("before", "0") or 0)
        except ValueError:
            before = 0
        got = await console.query.ListAudit(
            collector_pb2.ListAuditRequest(
                limit=100, before_id=before, actor=p.get("actor", ""), action=p.get("action", ""),
                outcome=p.get("outcome", ""),
            ),
            console.context(request, s),
        )
        args = {k: p.get(k, "") for k in ("actor", "action", "outcome")}
        return console.render(request, "audit.html", entries=got.entries, args=args, when=when)

    async def tokens(request: Request, s: Session) -> Response:
        rows = await console.actions.ListTokens(None, console.context(request, s))
        return console.render(request, "tokens.html", tokens=rows, created=None, fmt=_fmt_us)

    async def token_create(request: Request, s: Session, form: dict[str, Any]) -> Response:
        uses = _field(form, "uses").strip()
        if uses and not uses.isdigit():
            return console.error(request, 400, f"uses {uses[:20]!r} is not a whole number")
        req = NewToken(
            kind=_field(form, "kind"), role=_field(form, "role"), case_id=_field(form, "case_id").strip(),
            label=_field(form, "label").strip(), ttl=_field(form, "ttl").strip(), uses=int(uses) if uses else None,
        )
        plain, rec = await console.actions.CreateToken(req, console.context(request, s))
        rows = await console.actions.ListTokens(None, console.context(request, s))
        # Shown once, in this answer only (no-store), never in a URL or a redirect.
        return console.render(request, "tokens.html", tokens=rows, created=(plain, rec), fmt=_fmt_us)

    async def token_revoke(request: Request, s: Session, form: dict[str, Any]) -> Response:
        token_id = _field(form, "token_id")
        await console.actions.RevokeToken(TokenRef(token_id), console.context(request, s))
        await console.sessions.end_for_token(token_id)
        return RedirectResponse("/tokens", status_code=303)

    return [
        Route("/signin", signin_form, methods=["GET"]),
        Route("/signin", signin, methods=["POST"]),
        Route("/signout", console.action(signout), methods=["POST"]),
        Route("/snapshots", console.action(snapshot), methods=["POST"]),
        Route("/snapshots/{run_id}", console.page(snapshot_page)),
        Route("/snapshots/{run_id}/events", console.page(snapshot_events)),
        Route("/audit", console.page(audit)),
        Route("/tokens", console.page(tokens), methods=["GET"]),
        Route("/tokens", console.action(token_create), methods=["POST"]),
        Route("/tokens/revoke", console.action(token_revoke), methods=["POST"]),
    ]


def _fmt_us(us: int | None) -> str:
    if us is None:
        return ""
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
