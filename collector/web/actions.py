"""What the console does that has no RPC yet: sign-in, sign-out, tokens, a bundle's logs.

Each is a handler of the same shape as the Query RPCs, wrapped the same way
(``edge.unary`` for the status, ``EngineerAuth.audited`` for the one audit row) and
calling ``EngineerAuth.require`` for the role: the console adds no permission logic of
its own. Tokens are managed as ``casefile-collector token`` does, but by an admin
token holder (audited under that token, not as the local operator).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.bundle import is_bundle_id
from agent.identity_text import identity_problem
from agent.units import parse_duration
from collector.auth import EngineerAuth
from collector.edge import unary
from collector.storage import BlobStore, Store, TokenRecord
from collector.storage.case_list import CaseSummary
from collector.storage.errors import InvalidArgument
from collector.storage.text import clip
from collector.web.logs import LogPage, parse_filter, read_log_page

__all__ = ["CASES_PAGE", "CasesRequest", "ConsoleActions", "LogRequest", "NewToken", "TokenRef"]

audited = EngineerAuth.audited

CASES_PAGE = 50  # cases per page of the case listing

_TOKEN_DEFAULTS = {"enroll": ("24h", 1), "case": ("14d", None), "engineer": ("30d", None)}


@dataclass(frozen=True)
class NewToken:
    kind: str
    role: str = ""
    case_id: str = ""
    label: str = ""
    ttl: str = ""
    uses: int | None = None


@dataclass(frozen=True)
class TokenRef:
    token_id: str


@dataclass(frozen=True)
class CasesRequest:
    """A page of the case listing: the opaque token of the previous page's last case."""

    page_token: str = ""


@dataclass(frozen=True)
class LogRequest:
    """The log viewer's query string, as typed: checked by the handler, before authorisation."""

    bundle_id: str
    source: str = ""
    severity: str = ""
    text: str = ""
    since: str = ""
    until: str = ""
    page: str = "0"


def _check_new_token(req: NewToken) -> tuple[dt.timedelta, int | None]:
    if req.kind not in _TOKEN_DEFAULTS:
        raise InvalidArgument(f"kind {clip(req.kind, 20)!r} is not enroll, case or engineer")
    if req.kind == "engineer" and req.role not in ("viewer", "engineer", "admin"):
        raise InvalidArgument(f"role {clip(req.role, 20)!r} is not viewer, engineer or admin")
    if req.kind == "case" and not req.case_id:
        raise InvalidArgument("a case token needs a case id (the support case it uploads to)")
    for name, value in (("label", req.label), ("case id", req.case_id)):
        if value and (problem := identity_problem(value)) is not None:
            raise InvalidArgument(f"{name} {problem}")
    try:
        ttl = parse_duration(req.ttl or _TOKEN_DEFAULTS[req.kind][0])
    except ValueError as exc:
        raise InvalidArgument(f"lifetime: {exc}") from None
    if req.uses is not None and req.uses < 1:
        raise InvalidArgument(f"uses {req.uses} must be at least 1")
    return ttl, req.uses if req.uses is not None else _TOKEN_DEFAULTS[req.kind][1]


class ConsoleActions:
    def __init__(self, store: Store, blobs: BlobStore, cache_dir: Path) -> None:
        self._store = store
        self._blobs = blobs
        self._cache_dir = cache_dir  # the log viewer's indexes
        self._auth = EngineerAuth(store)

    @unary
    @audited("console.sign_in")
    async def SignIn(self, request: None, context: Any) -> TokenRecord:
        """The token's record if it may use the console (any engineer role)."""
        return await self._auth.require(context, role="viewer")

    @unary
    @audited("console.sign_out")
    async def SignOut(self, request: None, context: Any) -> TokenRecord:
        return await self._auth.require(context, role="viewer")

    @unary
    @audited("token.list")
    async def ListTokens(self, request: None, context: Any) -> list[TokenRecord]:
        await self._auth.require(context, role="admin")
        return await asyncio.to_thread(self._store.list_tokens)

    @unary
    @audited("token.create", lambda r: f"{r.kind}:{r.role or r.case_id}")
    async def CreateToken(self, request: NewToken, context: Any) -> tuple[str, TokenRecord]:
        ttl, uses = _check_new_token(request)
        await self._auth.require(context, role="admin")
        return await asyncio.to_thread(
            lambda: self._store.create_token(
                request.kind,
                role=request.role if request.kind == "engineer" else None,
                case_id=request.case_id if request.kind == "case" else None,
                label=request.label,
                ttl=ttl,
                max_uses=uses,
            )
        )

    @unary
    @audited("token.revoke", lambda r: r.token_id)
    async def RevokeToken(self, request: TokenRef, context: Any) -> TokenRecord:
        if not request.token_id or len(request.token_id) > 40 or not request.token_id.isascii():
            raise InvalidArgument(f"token id {clip(request.token_id, 40)!r} is not a token id")
        await self._auth.require(context, role="admin")
        return await asyncio.to_thread(self._store.revoke_token, request.token_id)

    @unary
    @audited("query.list_cases")
    async def ListCases(self, request: CasesRequest, context: Any) -> tuple[list[CaseSummary], str | None]:
        """Cases by their newest bundle, with hosts and worst finding: what ListBundles and
        ListFindings show, so the viewer role (as those)."""
        if len(request.page_token) > 1000 or not request.page_token.isascii():
            raise InvalidArgument("page token is not one this collector handed out")
        await self._auth.require(context, role="viewer")
        return await asyncio.to_thread(
            self._store.list_cases, page_size=CASES_PAGE, cursor=request.page_token or None
        )

    @unary
    @audited("query.read_logs", lambda r: r.bundle_id)
    async def ReadLogs(self, request: LogRequest, context: Any) -> LogPage:
        """A page of the bundle's log lines: raw artifacts, so engineer and up (as download)."""
        r = request
        if not is_bundle_id(r.bundle_id):
            raise InvalidArgument(f"bundle id {clip(r.bundle_id, 40)!r} is not a bundle id")
        flt = parse_filter(r.source, r.severity, r.text, r.since, r.until)
        if not r.page.isdigit() or len(r.page) > 6:
            raise InvalidArgument(f"page {clip(r.page, 10)!r} is not a page number")
        await self._auth.require(context, role="engineer")
        rec = await asyncio.to_thread(self._store.get_bundle, r.bundle_id)
        path = self._blobs.blob_path(rec.blob_key)
        return await asyncio.to_thread(read_log_page, r.bundle_id, path, self._cache_dir, flt, int(r.page))
