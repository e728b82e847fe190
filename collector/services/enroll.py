"""Enroll: one-time token + agent public key → agent id (DESIGN §4, §5)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from agent.identity_text import check_identity_text
from agent.keys import PublicKey
from agent.labels import parse_labels
from collector.edge import Rejected, unary
from collector.storage import Store
from collector.storage.errors import Conflict, NotFound
from protos import collector_pb2, collector_pb2_grpc

__all__ = ["EnrollService"]


class EnrollService(collector_pb2_grpc.EnrollServicer):
    def __init__(self, store: Store) -> None:
        self._store = store

    @unary
    async def Enroll(
        self,
        request: collector_pb2.EnrollRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> collector_pb2.EnrollResponse:
        if len(request.public_key) != 32:
            raise Rejected(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"public_key must be a raw 32-byte Ed25519 key, got {len(request.public_key)} bytes",
            )
        key = PublicKey(bytes(request.public_key))
        # Checked before the token is looked at: a refused Enroll spends no use and
        # leaves no agent row. The host name is later printed in engineers' terminals
        # and stored in PostgreSQL (no NUL), so it is refused rather than cut or cleaned.
        try:
            hostname = check_identity_text("hostname", request.hostname)
            labels = parse_labels(list(request.labels))
        except ValueError as exc:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"enroll refused: {exc}") from None
        token = await asyncio.to_thread(self._store.authenticate, request.token, {"enroll"})
        # Consume only after the request is known good (hostname, key binding), so a
        # malformed call does not burn a single-use token.
        try:
            bound = await asyncio.to_thread(self._store.get_agent_by_fingerprint, key.fingerprint)
        except NotFound:
            bound = None
        if bound is not None and bound.case_id is not None:
            raise Conflict(
                f"key {key.fingerprint} is already enrolled as {bound.id} with a different binding "
                f"(case {bound.case_id!r}); generate a new key to enroll this host",
                key=bound.id,
            )
        await asyncio.to_thread(self._store.consume_token, token.id)
        agent = await asyncio.to_thread(
            self._store.create_agent,
            key.raw,
            key.fingerprint,
            hostname,
            token.id,
            None,
        )
        await asyncio.to_thread(self._store.set_agent_labels, agent.id, labels)
        shown = "".join(f" {k}={v}" for k, v in sorted(labels.items()))
        await asyncio.to_thread(
            self._store.audit,
            actor=token.id,
            actor_label=token.label,
            role="",
            action="enroll",
            target=agent.id,
            peer=context.peer() or "",
            outcome="ok",
            detail=f"{hostname} {key.fingerprint}{shown}",
        )
        return collector_pb2.EnrollResponse(agent_id=agent.id, key_fingerprint=key.fingerprint)
