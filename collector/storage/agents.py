"""Agent identities: an Ed25519 public key, the token that enrolled it, its case."""

from __future__ import annotations

import json
import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.exc import IntegrityError

from agent.keys import fingerprint_of
from collector.storage.base import StoreBase
from collector.storage.errors import Conflict, InvalidArgument, NotFound, StoreError
from collector.storage.schema import AgentRecord, agents, to_micros, tokens

__all__ = ["AgentMethods"]


def _agent(row: Row[Any]) -> AgentRecord:
    m = row._mapping
    return AgentRecord(
        id=m["id"],
        hostname=m["hostname"],
        public_key=bytes(m["public_key"]),
        fingerprint=m["fingerprint"],
        created_at_us=m["created_at"],
        token_id=m["token_id"],
        case_id=m["case_id"],
        last_seen_at_us=m["last_seen_at"],
    )


class AgentMethods(StoreBase):
    """Registering and looking up agents."""

    def create_agent(
        self,
        public_key: bytes,
        fingerprint: str,
        hostname: str,
        token_id: str | None,
        case_id: str | None = None,
    ) -> AgentRecord:
        """Register an agent key; enrolling the same key again returns the same agent."""
        if len(public_key) != 32:
            raise InvalidArgument(f"public key must be 32 raw bytes, got {len(public_key)}")
        if fingerprint != fingerprint_of(public_key):
            raise InvalidArgument(f"fingerprint {fingerprint!r} does not match the public key")
        if not hostname or len(hostname) > 255:
            raise InvalidArgument("hostname must be 1-255 characters")
        stmt = (
            self._insert(agents)
            .values(
                id="ag_" + secrets.token_hex(8),
                hostname=hostname,
                public_key=public_key,
                fingerprint=fingerprint,
                created_at=self._now(),
                token_id=token_id,
                case_id=case_id or None,
                last_seen_at=None,
            )
            .on_conflict_do_nothing(index_elements=["fingerprint"])
            .returning(*agents.c)
        )
        try:
            with self._write() as conn:
                row = conn.execute(stmt).first()
                if row is None:
                    row = conn.execute(
                        select(agents).where(agents.c.fingerprint == fingerprint)
                    ).one()
                    existing = _agent(row)
                    if existing.public_key != public_key or existing.case_id != (case_id or None):
                        raise Conflict(
                            f"key {fingerprint} is already enrolled as {existing.id} "
                            f"with a different binding",
                            key=existing.id,
                        )
        except IntegrityError as exc:
            if token_id is not None and not self._token_exists(token_id):
                raise NotFound(f"token {token_id!r} not found", what="token", key=token_id) from exc
            raise StoreError(f"agent for {fingerprint} could not be stored: {exc.orig}") from exc
        return _agent(row)

    def _token_exists(self, token_id: str) -> bool:
        with self._read() as conn:
            found = conn.execute(select(tokens.c.id).where(tokens.c.id == token_id)).first()
        return found is not None

    def get_agent(self, agent_id: str) -> AgentRecord:
        with self._read() as conn:
            row = conn.execute(select(agents).where(agents.c.id == agent_id)).first()
        if row is None:
            raise NotFound(f"agent {agent_id!r} not found", what="agent", key=agent_id)
        return _agent(row)

    def get_agent_by_fingerprint(self, fingerprint: str) -> AgentRecord:
        with self._read() as conn:
            row = conn.execute(select(agents).where(agents.c.fingerprint == fingerprint)).first()
        if row is None:
            raise NotFound(f"no agent with key {fingerprint}", what="agent", key=fingerprint)
        return _agent(row)

    def touch_agent(
        self, agent_id: str, at: datetime | None = None, *, live_policy: dict[str, Any] | None = None
    ) -> None:
        """Record that the agent was seen (channel connect, upload); ``live_policy``: what its
        policy allows a live request, as it reported on connect (kept until the next report)."""
        when = to_micros(at) if at is not None else self._now()
        values: dict[str, Any] = {"last_seen_at": when}
        if live_policy is not None:
            values["live_policy_json"] = json.dumps(live_policy, sort_keys=True)
        done = self._write_grouped(
            lambda conn: conn.execute(agents.update().where(agents.c.id == agent_id).values(**values)).rowcount
        )
        if done == 0:
            raise NotFound(f"agent {agent_id!r} not found", what="agent", key=agent_id)

    def agent_live_policies(self, agent_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The live policy each of these agents last reported; an agent that never did is absent."""
        if not agent_ids:
            return {}
        out: dict[str, dict[str, Any]] = {}
        with self._read() as conn:
            rows = conn.execute(
                select(agents.c.id, agents.c.live_policy_json).where(
                    agents.c.id.in_(agent_ids), agents.c.live_policy_json.is_not(None)
                )
            )
            for agent_id, text in rows:
                try:
                    found = json.loads(text)
                except ValueError:
                    continue
                if isinstance(found, dict):
                    out[agent_id] = found
        return out
