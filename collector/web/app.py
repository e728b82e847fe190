"""The console's ASGI application: sessions, CSRF, security headers, error pages.

Pages live in ``collector.web.pages`` (reading) and ``collector.web.work`` (sign-in,
live snapshots, audit, tokens), put together by ``collector.web.serve``; both go
through :class:`Console` to call the API's own handlers (``collector.web.calls``), so a
page can only do what the signed-in token could do over gRPC, and each call writes the
audit row its RPC would.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from jinja2 import Environment, FileSystemLoader
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from collector.audit_batch import one_commit
from collector.edge import status_for
from collector.live import LiveRouter
from collector.services.hunt_service import HuntService
from collector.services.query import QueryService
from collector.storage import BlobStore, Store
from collector.storage.text import clip
from collector.web.actions import ConsoleActions
from collector.web.calls import CallFailed, http_status, servicer_context
from collector.web.sessions import COOKIE, Session, SessionTable, expired_cookie_header

__all__ = ["CSP", "Console", "SignInNeeded", "safe_next"]

log = logging.getLogger("casefile.collector.web")

HERE = Path(__file__).parent
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# The bundle's own HTML report carries inline CSS: served sandboxed, no script at all.
REPORT_CSP = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'"
_MAX_FORM_BYTES = 64 * 1024
_NEXT_RE = re.compile(r"/[A-Za-z0-9/_.?=&%+:,-]*")


class SignInNeeded(Exception):
    """No (valid) session: the answer is the sign-in page."""


class Forbidden(Exception):
    """A state-changing request without the session's CSRF token."""


def safe_next(value: str | None) -> str:
    """Where to go after sign-in: a path on this console only, never another site."""
    if not value or not _NEXT_RE.fullmatch(value) or value.startswith("//") or "/\\" in value:
        return "/cases"
    return value


class SecurityHeaders:
    """Every response: strict CSP, no sniffing, no framing, no referrer, HTTPS only."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if "content-security-policy" not in headers:
                    headers["Content-Security-Policy"] = CSP
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "no-referrer"
                headers["X-Frame-Options"] = "SAMEORIGIN"
                headers["Strict-Transport-Security"] = "max-age=31536000"
                headers["Cross-Origin-Opener-Policy"] = "same-origin"
                if "cache-control" not in headers:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, with_headers)


Endpoint = Callable[[Request], Awaitable[Response]]


class Console:
    """The console over one collector's store, blobs and live router."""

    def __init__(self, store: Store, blobs: BlobStore, router: LiveRouter | None, cache_dir: Path) -> None:
        self.store = store
        self.router = router
        self.query = QueryService(store, blobs, router)
        # Hunts deliver live requests: without a live router (no agent channel) there are none.
        self.hunts = HuntService(store, blobs, router) if router is not None else None
        self.actions = ConsoleActions(store, blobs, cache_dir)
        self.sessions = SessionTable(store)
        self.templates = Environment(
            loader=FileSystemLoader(HERE / "templates"), autoescape=True, trim_blocks=True, lstrip_blocks=True
        )

    def asgi(self, routes: list[Route]) -> ASGIApp:
        """The application serving ``routes`` (from ``pages`` and ``work``) and the assets."""
        everything: list[Route | Mount] = [*routes, Mount("/static", app=StaticFiles(directory=HERE / "static"))]
        return SecurityHeaders(
            Starlette(routes=everything, exception_handlers={404: self._not_found, 405: self._not_allowed})
        )

    # ---------------------------------------------------------------- rendering

    def render(self, request: Request, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        session: Session | None = ctx.pop("session", None) or getattr(request.state, "session", None)
        page = self.templates.get_template(template).render(session=session, path=request.url.path, **ctx)
        return HTMLResponse(page, status_code=status)

    def error(self, request: Request, status: int, message: str) -> HTMLResponse:
        titles = {400: "Bad request", 403: "Not allowed", 404: "Not found", 409: "Not possible now"}
        return self.render(request, "error.html", status, title=titles.get(status, "Error"), message=message)

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        return self.error(request, 404, "There is no such page.")

    async def _not_allowed(self, request: Request, exc: Exception) -> Response:
        return self.error(request, 405, "That method is not allowed here.")

    # ---------------------------------------------------------------- sessions

    async def session_of(self, request: Request) -> Session | None:
        return await self.sessions.get(request.cookies.get(COOKIE))

    def peer(self, request: Request) -> str:
        client = request.client
        return f"console ipv4:{client.host}:{client.port}" if client else "console"

    def context(self, request: Request, session: Session) -> grpc.aio.ServicerContext[Any, Any]:
        return servicer_context(session.token, self.peer(request))

    async def form(self, request: Request) -> dict[str, str | list[str]]:
        """The urlencoded form; repeated fields become lists. Bounded in size."""
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
            raise CallFailed(grpc.StatusCode.INVALID_ARGUMENT, "expected a form (application/x-www-form-urlencoded)")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > _MAX_FORM_BYTES:
                raise CallFailed(grpc.StatusCode.INVALID_ARGUMENT, f"form larger than {_MAX_FORM_BYTES} bytes")
        parsed = urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=100)
        return {k: (v[0] if len(v) == 1 else v) for k, v in parsed.items()}

    def page(self, fn: Callable[[Request, Session], Awaitable[Response]]) -> Endpoint:
        """A page for signed-in engineers; API refusals become HTTP statuses."""

        async def endpoint(request: Request) -> Response:
            session = await self.session_of(request)
            try:
                if session is None or not session.signed_in:
                    raise SignInNeeded
                request.state.session = session
                async with one_commit(self.store):  # the page's audit rows: one commit
                    return await fn(request, session)
            except SignInNeeded:
                return self.to_sign_in(request, drop_cookie=session is None)
            except CallFailed as exc:
                if exc.code is grpc.StatusCode.UNAUTHENTICATED:
                    # The token was revoked or expired since sign-in: the session ends.
                    if session is not None:
                        await self.sessions.delete(request.cookies.get(COOKIE, ""))
                    return self.to_sign_in(request, drop_cookie=True)
                return self.error(request, exc.http, exc.message)
            except Forbidden as exc:
                return self.error(request, 403, str(exc))
            except Exception as exc:  # a domain error raised outside a handler: its status, never a crash
                code, message = status_for(exc)
                if code is grpc.StatusCode.INTERNAL:
                    log.exception("console %s %s failed", request.method, request.url.path)
                return self.error(request, http_status(code), clip(message))

        return endpoint

    def action(self, fn: Callable[[Request, Session, dict[str, Any]], Awaitable[Response]]) -> Endpoint:
        """A state-changing POST: the session's CSRF token must come with the form."""

        async def handler(request: Request, session: Session) -> Response:
            form = await self.form(request)
            presented = form.get("csrf")
            if not session.csrf_ok(presented if isinstance(presented, str) else None):
                raise Forbidden("The form's security token is missing or stale; reload the page and try again.")
            return await fn(request, session, form)

        return self.page(handler)

    def to_sign_in(self, request: Request, *, drop_cookie: bool) -> Response:
        """To the sign-in page, back here after; ``drop_cookie``: the cookie names no session."""
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if request.method != "GET":
            target = "/cases"
        response = RedirectResponse("/signin?" + urllib.parse.urlencode({"next": target}), status_code=303)
        if request.cookies.get(COOKIE) and drop_cookie:
            response.headers.append("set-cookie", expired_cookie_header())
        return response
