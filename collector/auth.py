"""Who may call what: engineer roles, upload identities, and the audit trail.

Roles rank viewer < engineer < admin (DESIGN §5): viewers read facts and findings,
engineers also download raw bundles (and later request live snapshots), admins also
manage tokens and users. Every engineer call is written to the audit log, allowed or
denied, with the token's public id, never the token.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import grpc

from agent.keys import PublicKey, fingerprint_of
from agent.transport.proof import PROOF_WINDOW_S, proof_message
from collector.edge import Rejected
from collector.storage import AgentRecord, Store, TokenRecord
from collector.storage.errors import AuthError, NotFound
from protos import collector_pb2

__all__ = ["ROLES", "EngineerAuth", "UploadIdentity", "authorize_upload", "bearer_token"]

ROLES = {"viewer": 1, "engineer": 2, "admin": 3}


def bearer_token(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class EngineerAuth:
    """Checks an engineer's bearer token and role, and audits the call either way."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def require(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        *,
        role: str,
        action: str,
        target: str = "",
    ) -> TokenRecord:
        peer = context.peer() or ""
        token = bearer_token(context)
        if token is None:
            await self._audit(None, action, target, peer, "denied", "no bearer token")
            raise Rejected(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{action}: engineer token required (metadata 'authorization: Bearer <token>')",
            )
        try:
            record = await asyncio.to_thread(self._store.authenticate, token, {"engineer"})
        except AuthError as exc:
            await self._audit(None, action, target, peer, "denied", str(exc))
            raise
        if ROLES.get(record.role or "", 0) < ROLES[role]:
            await self._audit(record, action, target, peer, "denied", f"needs role {role}")
            raise Rejected(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{action}: role {record.role!r} is not allowed; it needs {role!r} or above",
            )
        await self._audit(record, action, target, peer, "ok", "")
        return record

    async def _audit(
        self,
        record: TokenRecord | None,
        action: str,
        target: str,
        peer: str,
        outcome: str,
        detail: str,
    ) -> None:
        await asyncio.to_thread(
            self._store.audit,
            actor=record.id if record else "",
            actor_label=record.label if record else "",
            role=(record.role or "") if record else "",
            action=action,
            target=target,
            peer=peer,
            outcome=outcome,
            detail=detail,
        )


@dataclass(frozen=True)
class UploadIdentity:
    """Who is uploading: the agent record the bundle must be signed by."""

    agent: AgentRecord
    public_key: PublicKey
    case_token: TokenRecord | None


async def authorize_upload(
    store: Store,
    context: grpc.aio.ServicerContext[Any, Any],
    *,
    bundle_id: str,
    sha256: str,
    size: int,
    proof: collector_pb2.AgentProof,
) -> UploadIdentity:
    """Check the proof of key possession; resolve (or, for case tokens, create) the agent.

    Enrolled agents name their agent id and are checked against the stored key. A
    customer's one-shot upload carries a case token and its public key instead; the
    key becomes an identity bound to that case on first use.
    """
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
    if proof.agent_id:
        try:
            agent = await asyncio.to_thread(store.get_agent, proof.agent_id)
        except NotFound:
            raise Rejected(
                grpc.StatusCode.UNAUTHENTICATED,
                f"unknown agent {proof.agent_id!r}: enroll it first",
            ) from None
        key = PublicKey(agent.public_key)
    elif token is not None:
        case_token = await asyncio.to_thread(store.authenticate, token, {"case"})
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
        agent = await asyncio.to_thread(
            store.create_agent,
            key.raw,
            fingerprint_of(key.raw),
            proof.hostname[:255] or f"case {case_token.case_id}",
            case_token.id,
            case_token.case_id,
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
    return UploadIdentity(agent=agent, public_key=key, case_token=case_token)
