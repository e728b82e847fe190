"""Who may upload: an enrolled agent proving possession of its key, or a case token.

Every upload (``GetUploadState`` and ``Upload``, and a hand-carried import's identity)
starts here: the proof is checked against the key stored at enrollment, or, under a case
token, the key becomes an identity bound to the token's case on first use
(``collector.auth`` holds the engineers' side: roles and the audit trail).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import grpc

from agent.keys import PublicKey, fingerprint_of
from agent.transport.proof import PROOF_WINDOW_S, check_proof_text, proof_message
from collector.auth import bearer_token
from collector.edge import Rejected
from collector.storage import AgentRecord, BundleRecord, Store, TokenRecord
from collector.storage.errors import NotFound
from protos import collector_pb2

__all__ = ["UploadIdentity", "authorize_upload"]


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
        agent = (
            existing
            if existing is not None
            else await asyncio.to_thread(
                store.bind_case_key,
                key.raw,
                fingerprint_of(key.raw),
                proof.hostname or f"case {case_token.case_id}",
                case_token.id,
                case_token.case_id or "",
            )
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
