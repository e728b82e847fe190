"""Who may call what: engineer roles, upload identities, and the audit trail.

Roles rank viewer < engineer < admin (DESIGN §5): viewers read facts and findings,
engineers also download raw bundles (and later request live snapshots), admins also
manage tokens and users. Every engineer call is written to the audit log once, when it
ends, with its outcome (ok, denied, or the error status) and the token's public id, never
the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import grpc

from collector import audit_batch
from collector.edge import Rejected, status_for
from collector.storage import Store, TokenRecord
from collector.storage.audit import outcome_for_status
from collector.storage.errors import AuthError

__all__ = [
    "ROLES",
    "AuditedCall",
    "EngineerAuth",
    "bearer_token",
    "record_outcome",
]

ROLES = {"viewer": 1, "engineer": 2, "admin": 3}


def bearer_token(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


@dataclass
class AuditedCall:
    """One engineer call being audited: filled in as it runs, written once when it ends."""

    action: str
    target: str = ""
    record: TokenRecord | None = None
    actor: str = ""  # the token id of a refused but known token
    detail: str = ""
    # Set by a handler whose call succeeds or fails for a reason of its own (a live
    # request the agent denied, found offline, let expire): recorded instead of what the
    # call's status alone says.
    outcome: str = ""
    outcome_detail: str = ""


_CURRENT_CALL: contextvars.ContextVar[AuditedCall | None] = contextvars.ContextVar(
    "casefile_audited_call", default=None
)

Handler = TypeVar("Handler", bound=Callable[..., Any])


def record_outcome(outcome: str, detail: str = "") -> None:
    """Inside an audited handler: the outcome its audit row records (see ``AuditedCall``)."""
    call = _CURRENT_CALL.get()
    if call is not None:
        call.outcome, call.outcome_detail = outcome, detail


class EngineerAuth:
    """Checks an engineer's bearer token and role; the call is audited either way.

    A handler wrapped by :meth:`audited` calls :meth:`require`, which only notes who
    called; the wrapper writes exactly one audit row when the handler finishes, with its
    final outcome: ``ok``, ``denied``, or the status it failed with (``not_found``…).
    """

    def __init__(self, store: Store) -> None:
        self._store = store

    async def require(self, context: grpc.aio.ServicerContext[Any, Any], *, role: str) -> TokenRecord:
        """The caller's token, if it holds ``role``; notes who called for the audit row.

        Only inside a handler wrapped by :meth:`audited`, which names the action and target
        and writes the row when the handler ends.
        """
        call = _CURRENT_CALL.get()
        if call is None:
            raise RuntimeError("EngineerAuth.require() outside a handler wrapped by EngineerAuth.audited")
        return await self._check(call, context, role)

    async def _check(self, call: AuditedCall, context: grpc.aio.ServicerContext[Any, Any], role: str) -> TokenRecord:
        token = bearer_token(context)
        if token is None:
            call.detail = "no bearer token"
            raise Rejected(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{call.action}: engineer token required (metadata 'authorization: Bearer <token>')",
            )
        try:
            record = await asyncio.to_thread(self._store.authenticate, token, {"engineer"})
        except AuthError as exc:
            call.actor = exc.token_id or ""
            call.detail = str(exc)
            raise
        call.record = record
        if ROLES.get(record.role or "", 0) < ROLES[role]:
            call.detail = f"needs role {role}"
            raise Rejected(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{call.action}: role {record.role!r} is not allowed; it needs {role!r} or above",
            )
        return record

    @staticmethod
    def audited(
        action: str, target: Callable[[Any], str] = lambda _request: "", *, refusals_only: bool = False
    ) -> Callable[[Handler], Handler]:
        """Wrap a Query handler (coroutine or async generator) taking ``(self, request,
        context)`` whose ``self._auth`` is an EngineerAuth: one audit row per call, written
        when it ends. ``action``/``target`` name the call from the start, so a request
        refused before authorisation (a malformed id) is audited too.

        ``refusals_only``: a call that ends ``ok`` writes no row; every other outcome
        (denied, not found, an error) does. Only for a repeated read whose view is audited
        by another call (the console's poll of a hunt it shows): the check is the same."""

        @contextlib.asynccontextmanager
        async def scope(self: Any, request: Any, context: Any) -> AsyncIterator[None]:
            call = AuditedCall(action=action, target=target(request))
            reset = _CURRENT_CALL.set(call)
            outcome, detail = "ok", ""
            try:
                yield
            except BaseException as exc:
                outcome, detail = _outcome(call, exc)
                if call.outcome and outcome != "cancelled":
                    outcome, detail = call.outcome, call.outcome_detail
                raise
            else:
                if call.outcome:
                    outcome, detail = call.outcome, call.outcome_detail
            finally:
                _CURRENT_CALL.reset(reset)
                if not (refusals_only and outcome == "ok"):
                    await _written(self._auth._write(call, context.peer() or "", outcome, detail))

        def wrap(fn: Handler) -> Handler:
            if inspect.isasyncgenfunction(fn):

                @functools.wraps(fn)
                async def stream(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
                    async with scope(self, request, context):
                        async for item in fn(self, request, context):
                            yield item

                return cast(Handler, stream)

            @functools.wraps(fn)
            async def unary(self: Any, request: Any, context: Any) -> Any:
                async with scope(self, request, context):
                    return await fn(self, request, context)

            return cast(Handler, unary)

        return wrap

    async def _write(self, call: AuditedCall, peer: str, outcome: str, detail: str) -> None:
        record = call.record
        row: dict[str, Any] = {
            "actor": record.id if record else call.actor,
            "actor_label": record.label if record else "",
            "role": (record.role or "") if record else "",
            "action": call.action,
            "target": call.target,
            "peer": peer,
            "outcome": outcome,
            "detail": detail,
        }
        batch = audit_batch.pending()  # a console page: its rows go in one commit (collector.audit_batch)
        if batch is not None:
            batch.rows.append({**row, "at": datetime.now(UTC)})
            return
        await asyncio.to_thread(self._store.audit, **row)


# Audit rows being written by calls whose caller went away meanwhile (strong references).
_WRITING: set[asyncio.Task[None]] = set()


async def _written(write: Coroutine[Any, Any, None]) -> None:
    """Await an audit row's write; a cancellation of the caller does not lose the row.

    A call ends when its caller goes away too: a console download whose browser closed
    the connection after the last byte cancels the stream while its row is being written,
    and a second cancellation would drop a write not yet started in its thread. The write
    runs in a task of its own, shielded, and finishes either way.
    """
    task = asyncio.ensure_future(write)
    _WRITING.add(task)
    task.add_done_callback(_WRITING.discard)
    await asyncio.shield(task)


def _outcome(call: AuditedCall, exc: BaseException) -> tuple[str, str]:
    """``(outcome, detail)`` for a call that ended with ``exc``."""
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return "cancelled", "the caller went away"
    if isinstance(exc, grpc.aio.AbortError):
        return "error", "aborted by the handler"
    code, message = status_for(exc)
    outcome = outcome_for_status(code.name)
    if outcome == "denied" and call.detail:
        message = call.detail
    return outcome, message
