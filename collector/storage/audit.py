"""The audit log: who (a token id, never a token) did what, to what, with what outcome."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, bindparam, or_, select

from agent.transport.live_states import CALL_ENDS
from collector.storage.base import StoreBase
from collector.storage.cursors import clamp_page_size
from collector.storage.errors import InvalidArgument
from collector.storage.schema import AuditRecord, agents, audit_log, to_micros
from collector.storage.text import clip, printable
from collector.storage.tokens import redact_tokens

__all__ = ["OUTCOMES", "AuditMethods", "outcome_for_status"]

# The outcome of a call: ok, denied (UNAUTHENTICATED / PERMISSION_DENIED), or the
# lowercased gRPC status code it ended with; the three codes whose names do not fit the
# 16-character column are shortened. "error" is an older, unspecific failure. A live
# snapshot request records how the request ended: done, denied, offline, expired,
# timeout or failed.
_SHORT_STATUS = {
    "deadline_exceeded": "deadline",
    "resource_exhausted": "exhausted",
    "failed_precondition": "precondition",
    "unauthenticated": "denied",
    "permission_denied": "denied",
}
OUTCOMES = frozenset(
    {
        "ok",
        "denied",
        "error",
        "cancelled",
        "unknown",
        "invalid_argument",
        "deadline",
        "not_found",
        "already_exists",
        "exhausted",
        "precondition",
        "aborted",
        "out_of_range",
        "unimplemented",
        "internal",
        "unavailable",
        "data_loss",
    }
    # How a live request ended (``agent.transport.live_states``): done, offline, timeout…
    | {str(s) for s in CALL_ENDS}
)


def outcome_for_status(code_name: str) -> str:
    """The audit outcome for a gRPC status code name (``"NOT_FOUND"`` -> ``"not_found"``)."""
    name = code_name.lower()
    outcome = _SHORT_STATUS.get(name, name)
    return outcome if outcome in OUTCOMES else "error"


def _field(text: str) -> str:
    """A caller-influenced audit field: no token, no control character, bounded length."""
    return clip(printable(redact_tokens(text)))


def _audit(row: Row[Any]) -> AuditRecord:
    m = row._mapping
    return AuditRecord(
        id=m["id"],
        at_us=m["at"],
        actor=m["actor"],
        actor_label=m["actor_label"],
        role=m["role"],
        action=m["action"],
        target=m["target"],
        peer=m["peer"],
        outcome=m["outcome"],
        detail=m["detail"],
    )


# Built once: one row per engineer call and per agent connect, a thousand for a hunt (a
# statement built per row, and its cache key derived each time, cost more CPU than the
# insert itself: 110 ms under the writer lock for a hunt's rows).
_INSERT = audit_log.insert()
_INSERT_RETURNING = _INSERT.returning(*audit_log.c)


class AuditMethods(StoreBase):
    """Appending to and reading the audit log."""

    def audit(
        self,
        *,
        actor: str,
        action: str,
        outcome: str,
        actor_label: str = "",
        role: str = "",
        target: str = "",
        peer: str = "",
        detail: str = "",
        at: datetime | None = None,
    ) -> AuditRecord:
        """Append one entry. ``actor`` is a token id; anything token-shaped is redacted.

        Text fields are stored printable (control characters escaped) and cut to a
        bounded length with a marker, whoever supplied them.
        """
        values = self._audit_values(
            actor=actor,
            action=action,
            outcome=outcome,
            actor_label=actor_label,
            role=role,
            target=target,
            peer=peer,
            detail=detail,
            at=at,
        )
        row = self._write_grouped(lambda conn: conn.execute(_INSERT_RETURNING, values).one(), urgent=True)
        self._rows_inserted("audit_log")
        return _audit(row)

    def _audit_values(
        self,
        *,
        actor: str,
        action: str,
        outcome: str,
        actor_label: str = "",
        role: str = "",
        target: str = "",
        peer: str = "",
        detail: str = "",
        at: datetime | None = None,
    ) -> dict[str, Any]:
        if outcome not in OUTCOMES:
            raise InvalidArgument(f"audit outcome {outcome!r} unknown; expected {sorted(OUTCOMES)}")
        return {
            "at": to_micros(at) if at is not None else self._now(),
            "actor": printable(redact_tokens(actor))[:32],
            "actor_label": _field(actor_label),
            "role": printable(role)[:16],
            "action": printable(action)[:100],
            "target": _field(target),
            "peer": _field(peer),
            "outcome": outcome,
            "detail": _field(detail),
        }

    def seen_and_audited(
        self, seen: list[str], entries: list[dict[str, Any]], policies: dict[str, dict[str, Any]] | None = None
    ) -> None:
        """In one transaction: ``last_seen_at`` of the agents ``seen`` set to now, and one
        audit row per entry (the keyword arguments of :meth:`audit`).

        The Channel's group commit (``collector.services.channel_log``): after a collector
        restart thousands of agents reconnect at once, and two commits each (each an fsync
        on SQLite) would queue them for longer than they wait. An agent id no longer
        enrolled is skipped, not an error: it was seen, and its audit row says so.
        ``policies``: the live policy an agent reported on connecting (``agents.live_policy_json``).
        """
        rows = [self._audit_values(**e) for e in entries]
        now = self._now()
        with self._write() as conn:
            if seen:
                stmt = agents.update().where(agents.c.id == bindparam("agent_id")).values(last_seen_at=bindparam("at"))
                conn.execute(stmt, [{"agent_id": a, "at": now} for a in dict.fromkeys(seen)])
            if policies:
                stmt = (
                    agents.update()
                    .where(agents.c.id == bindparam("agent_id"))
                    .values(live_policy_json=bindparam("policy"))
                )
                conn.execute(
                    stmt, [{"agent_id": a, "policy": json.dumps(p, sort_keys=True)} for a, p in policies.items()]
                )
            if rows:
                conn.execute(audit_log.insert(), rows)
        if rows:
            self._rows_inserted("audit_log", len(rows))

    def audit_rows(self, rows: list[dict[str, Any]]) -> int:
        """Append several entries in one transaction, in order; how many.

        Each holds :meth:`audit`'s keyword arguments (without ``at``: now). A console
        page's calls, each with the time it ended (``collector.audit_batch``), and a hunt's
        row per host (``collector.hunts``).
        """
        values = [self._audit_values(**r) for r in rows]
        if not values:
            return 0

        def insert(conn: Connection) -> None:
            for v in values:  # one statement each: ids in call order on both databases
                conn.execute(_INSERT, v)

        self._write_grouped(insert, urgent=True)
        self._rows_inserted("audit_log", len(values))
        return len(values)

    def list_audit(
        self,
        limit: int = 100,
        *,
        before_id: int | None = None,
        actor: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
    ) -> list[AuditRecord]:
        """Newest entries first; pass the last entry's id as ``before_id`` for more."""
        a = audit_log.c
        query = select(audit_log).order_by(a.id.desc()).limit(clamp_page_size(limit))
        if before_id is not None:
            query = query.where(a.id < before_id)
        if actor is not None:
            # What the table shows: "alice (tok_…)" is found by the token id or by its label;
            # "root (casefile-collector CLI)" by "root" as well as by the label whole.
            query = query.where(
                or_(a.actor == actor, a.actor_label == actor, a.actor_label.startswith(f"{actor} (", autoescape=True))
            )
        if action is not None:
            # An action is found by its name or any dotted part of it: "live" and "snapshot"
            # both find "live.snapshot".
            query = query.where(
                or_(
                    a.action == action,
                    a.action.startswith(f"{action}.", autoescape=True),
                    a.action.endswith(f".{action}", autoescape=True),
                    a.action.contains(f".{action}.", autoescape=True),
                )
            )
        if outcome is not None:
            query = query.where(a.outcome == outcome)
        with self._read() as conn:
            return [_audit(r) for r in conn.execute(query)]
