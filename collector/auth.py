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
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import grpc

from agent.keys import PublicKey, fingerprint_of
from agent.transport.proof import PROOF_WINDOW_S, check_proof_text, proof_message
from collector import audit_batch
from collector.edge import Rejected, status_for
from collector.storage import AgentRecord, BundleRecord, Store, TokenRecord
from collector.storage.audit import outcome_for_status
from collector.storage.errors import AuthError, NotFound
from protos import collector_pb2

__all__ = [
    "ROLES",
    "AuditedCall",
    "EngineerAuth",
    "UploadIdentity",
    "authorize_upload",
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

    async def _check(
        self, call: AuditedCall, context: grpc.aio.ServicerContext[Any, Any], role: str
    ) -> TokenRecord:
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


@dataclass(frozen=True)
class UploadIdentity:
    """Who is uploading: the agent record the bundle must be signed by.

    ``closed`` says why this identity may not start a new upload (its case token is
    used up, or has had too many uploads refused), or is None; it may still ask again
    for the receipt of a bundle it stored.
    """

    agent: AgentRecord
    public_key: PublicKey
    case_token: TokenRecord | None
    closed: str | None = None
    # The bundle ``looked_up`` (the upload's id) as read beside the agent (``stored``
    # None: not stored then), for the upload's first check without reading it again.
    looked_up: str = ""
    stored: BundleRecord | None = None

    @property
    def bundle_key(self) -> PublicKey | None:
        """The key the bundle must be signed by; ``None``: the key its manifest names.

        An upload under a case token delivers to the token's case, so a bundle made on
        another machine may be carried in by anyone holding the token (a technician's
        laptop); its signature is then checked against its own manifest's key, which is
        recorded as its origin. An enrolled agent still uploads only what it signed.
        """
        return None if self.case_token is not None else self.public_key


async def authorize_upload(
    store: Store,
    context: grpc.aio.ServicerContext[Any, Any],
    *,
    bundle_id: str,
    sha256: str,
    size: int,
    proof: collector_pb2.AgentProof,
    max_refused: int | None = None,
) -> UploadIdentity:
    """Check the proof of key possession; resolve (or, for case tokens, create) the agent.

    Enrolled agents name their agent id and are checked against the stored key. A
    customer's one-shot upload carries a case token and its public key instead; the
    key becomes an identity bound to that case on first use.
    """
    try:
        check_proof_text(proof)
    except ValueError as exc:
        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"upload proof for bundle {bundle_id}: {exc}") from None
    now = int(time.time())
    if abs(now - proof.timestamp_unix) > PROOF_WINDOW_S:
        raise Rejected(
            grpc.StatusCode.UNAUTHENTICATED,
            f"upload proof for bundle {bundle_id} is {now - proof.timestamp_unix:+d} s from the "
            f"collector's clock (allowed ±{PROOF_WINDOW_S} s): check the agent's clock",
        )
    message = proof_message(bundle_id, sha256, size, proof.timestamp_unix)
    token = bearer_token(context)
    case_token: TokenRecord | None = None
    closed: str | None = None
    looked_up, stored = "", None
    if proof.agent_id:
        try:
            agent, stored = await asyncio.to_thread(store.agent_and_bundle, proof.agent_id, bundle_id)
            looked_up = bundle_id
        except NotFound:
            raise Rejected(
                grpc.StatusCode.UNAUTHENTICATED,
                f"unknown agent {proof.agent_id!r}: enroll it first",
            ) from None
        if agent.id == "ag_signer-not-enrolled":
            # The reserved agent that bundles imported with an unknown signer are filed
            # under (collector.services.handcarried): nobody uploads as it.
            raise Rejected(grpc.StatusCode.UNAUTHENTICATED, f"agent {agent.id!r} takes no uploads")
        key = PublicKey(agent.public_key)
        if agent.case_id is not None:
            # An identity made by a case token stays bound to that case: every upload
            # needs a valid token for its own case, never just the key.
            case_token = await _case_token_for(store, token, agent)
    elif token is not None:
        case_token = await asyncio.to_thread(store.authenticate, token, {"case"}, count_uses=False)
        if len(proof.public_key) != 32:
            raise Rejected(
                grpc.StatusCode.INVALID_ARGUMENT,
                "a case-token upload must carry the agent's 32-byte public key",
            )
        key = PublicKey(bytes(proof.public_key))
        if not key.verify(bytes(proof.signature), message):
            raise Rejected(
                grpc.StatusCode.UNAUTHENTICATED,
                f"upload proof for bundle {bundle_id} is not signed by the key it carries",
            )
        # A new identity only once the token is known good, the proof checked and the
        # token still open for uploads (not used up, fewer than ``max_refused`` refused):
        # a refused call writes nothing; a closed token may only find the one it made.
        closed = await _closed(store, case_token, max_refused)
        existing = await _existing_case_agent(store, key, case_token, bundle_id, closed) if closed else None
        agent = existing if existing is not None else await asyncio.to_thread(
            store.bind_case_key,
            key.raw,
            fingerprint_of(key.raw),
            proof.hostname or f"case {case_token.case_id}",
            case_token.id,
            case_token.case_id or "",
        )
    else:
        raise Rejected(
            grpc.StatusCode.UNAUTHENTICATED,
            "upload needs an enrolled agent id or a case token ('authorization: Bearer <token>')",
        )
    if not key.verify(bytes(proof.signature), message):
        raise Rejected(
            grpc.StatusCode.UNAUTHENTICATED,
            f"upload proof for bundle {bundle_id} does not match the key of agent {agent.id} ({key.fingerprint})",
        )
    if proof.agent_id and case_token is not None:
        closed = await _closed(store, case_token, max_refused)
    return UploadIdentity(
        agent=agent, public_key=key, case_token=case_token, closed=closed, looked_up=looked_up, stored=stored
    )


async def _closed(store: Store, token: TokenRecord, max_refused: int | None) -> str | None:
    """Why ``token`` takes no new upload, or None."""
    if token.max_uses is not None and token.uses >= token.max_uses:
        return f"case token {token.id} is used up ({token.uses}/{token.max_uses} uploads)"
    if max_refused is not None:
        refused = await asyncio.to_thread(store.refused_uploads, token.id)
        if refused >= max_refused:
            return (
                f"case token {token.id} has had {refused} uploads refused (at most {max_refused}); "
                "ask support for a new token"
            )
    return None


async def _existing_case_agent(
    store: Store, key: PublicKey, token: TokenRecord, bundle_id: str, closed: str
) -> AgentRecord:
    """The identity this key already has in the token's case; a closed token makes none."""
    try:
        agent = await asyncio.to_thread(store.get_agent_by_fingerprint, key.fingerprint)
    except NotFound:
        agent = None
    if agent is None or (token.case_id or "") not in await asyncio.to_thread(store.cases_of, agent.id):
        raise Rejected(grpc.StatusCode.UNAUTHENTICATED, f"bundle {bundle_id}: {closed}")
    return agent


async def _case_token_for(store: Store, token: str | None, agent: AgentRecord) -> TokenRecord:
    """The presented case token, if valid; the case-bound ``agent`` is bound to its case too.

    A token of another case than the agent's first is a new case for the same machine
    (the bundle must still be of the token's case: ingest checks the manifest). Uses are
    not checked here (a replay of a stored bundle needs none); the ingest service refuses
    a used-up token before taking bytes and counts a use at commit.
    """
    if token is None:
        raise Rejected(
            grpc.StatusCode.UNAUTHENTICATED,
            f"agent {agent.id} is bound to case {agent.case_id!r}: every upload needs that "
            "case's token ('authorization: Bearer <token>')",
        )
    record = await asyncio.to_thread(store.authenticate, token, {"case"}, count_uses=False)
    await asyncio.to_thread(store.bind_case, agent.id, record.case_id or "", record.id)
    return record
