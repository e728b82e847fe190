"""Case bindings: which support cases an agent key is bound to by case tokens.

A case token lets a key upload to the token's case. One machine often serves several
cases over its life (SR-1 in spring, SR-2 in autumn), so an identity is not tied to the
case of its first token: each case whose valid token it presents adds a row here
(one per agent and case, with the token that first bound it). ``agents.case_id`` keeps the case
the identity was first made for; it still marks an identity made by a case token, which
never uploads without a token for the bundle's case.

The table (``cases_schema``) lives in its own ``MetaData``, as the live tables do; migration
step 6 creates it and copies every existing ``agents.case_id`` in as a binding.
"""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import Connection, exists, select

from agent.keys import fingerprint_of
from collector.storage.agents import _agent
from collector.storage.base import StoreBase
from collector.storage.cases_schema import agent_cases, create_case_tables
from collector.storage.errors import Conflict, InvalidArgument
from collector.storage.schema import AgentRecord, agents, bundles

__all__ = ["CaseMethods", "agent_cases", "create_case_tables"]

class CaseMethods(StoreBase):
    """Identities made or used by case tokens, and the cases they are bound to."""

    def bind_case_key(
        self, public_key: bytes, fingerprint: str, hostname: str, token_id: str, case_id: str
    ) -> AgentRecord:
        """The identity of a key that presents a valid token for ``case_id``, bound to it.

        Made on first use (an identity of that case); a key already known, enrolled or
        made for another case, keeps its identity and gains the binding. Idempotent.
        """
        if len(public_key) != 32:
            raise InvalidArgument(f"public key must be 32 raw bytes, got {len(public_key)}")
        if fingerprint != fingerprint_of(public_key):
            raise InvalidArgument(f"fingerprint {fingerprint!r} does not match the public key")
        if not hostname or len(hostname) > 255 or not case_id:
            raise InvalidArgument("hostname must be 1-255 characters and the case id non-empty")
        now = self._now()
        made = (
            self._insert(agents)
            .values(
                id="ag_" + secrets.token_hex(8),
                hostname=hostname,
                public_key=public_key,
                fingerprint=fingerprint,
                created_at=now,
                token_id=token_id,
                case_id=case_id,
                last_seen_at=None,
            )
            .on_conflict_do_nothing(index_elements=["fingerprint"])
        )
        with self._write() as conn:
            conn.execute(made)
            row = conn.execute(select(agents).where(agents.c.fingerprint == fingerprint)).one()
            agent = _agent(row)
            if agent.public_key != public_key:
                raise Conflict(f"key {fingerprint} is stored with other key bytes", key=agent.id)
            self._bind(conn, agent.id, case_id, token_id, now)
        return agent

    def bind_case(self, agent_id: str, case_id: str, token_id: str) -> None:
        """Record that the known identity ``agent_id`` uploads to ``case_id`` (idempotent)."""
        with self._write() as conn:
            self._bind(conn, agent_id, case_id, token_id, self._now())

    def _bind(self, conn: Connection, agent_id: str, case_id: str, token_id: str, now: int) -> None:
        conn.execute(
            self._insert(agent_cases)
            .values(agent_id=agent_id, case_id=case_id, token_id=token_id, bound_at=now)
            .on_conflict_do_nothing(index_elements=["agent_id", "case_id"])
        )

    def cases_of(self, agent_id: str) -> tuple[str, ...]:
        """The cases an identity is bound to, in the order it was bound to them."""
        c = agent_cases.c
        query = select(c.case_id).where(c.agent_id == agent_id).order_by(c.bound_at, c.case_id)
        with self._read() as conn:
            return tuple(str(v) for v in conn.execute(query).scalars())

    def _case_rows(self, conn: Connection, agent_ids: list[str]) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {a: [] for a in agent_ids}
        if agent_ids:
            c = agent_cases.c
            rows: Any = conn.execute(
                select(c.agent_id, c.case_id).where(c.agent_id.in_(agent_ids)).order_by(c.bound_at, c.case_id)
            )
            for agent_id, case_id in rows:
                found[agent_id].append(case_id)
        return found

    def agents_without_bundles(self, limit: int = 1000) -> list[tuple[AgentRecord, tuple[str, ...]]]:
        """Identities that have stored no bundle yet, with their cases; most recently
        seen first, then newest. A host listing shows only machines with bundles; these
        are the machines set up (or connected) that are not hosts yet."""
        a = agents.c
        query = (
            select(agents)
            # One column, so the lookup is answered from the agent index alone (``SELECT *``
            # read each agent's first bundle row, facts and all: 2.6x slower, measured).
            .where(~exists(select(bundles.c.agent_id).where(bundles.c.agent_id == a.id)))
            .order_by(a.last_seen_at.desc().nulls_last(), a.created_at.desc(), a.id)
            .limit(max(1, min(limit, 1000)))
        )
        with self._read() as conn:
            found = [_agent(r) for r in conn.execute(query)]
            cases = self._case_rows(conn, [r.id for r in found])
        return [(r, tuple(cases[r.id])) for r in found]
