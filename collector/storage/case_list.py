"""The case listing: support cases by their newest bundle, keyset-paged, for the console.

A case is the set of bundles carrying its id; ``case_activity`` (kept with each bundle
insert) holds each case's newest bundle time and bundle count, so one page is a range of
its index, not an aggregate over every case's bundles (that was ~20 ms on SQLite for
200,000 case bundles when the machine was quiet, ~200 ms under load, and grows with the
bundles). The hosts (``case_hosts``) and the worst finding (``finding_rows``) of the
page's cases are then read for those cases only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, or_, select

from collector.storage.base import StoreBase
from collector.storage.case_activity_schema import case_activity, case_hosts
from collector.storage.cursors import clamp_page_size, decode_case_cursor, encode_case_cursor
from collector.storage.findings_schema import finding_rows

__all__ = ["CaseListMethods", "CaseSummary", "WorstFinding"]

_HOSTS_SHOWN = 20  # host names listed per case (the rest are counted)


@dataclass(frozen=True)
class WorstFinding:
    severity: str
    rank: int
    title: str
    count: int  # findings of at least the listing's minimum rank


@dataclass(frozen=True)
class CaseSummary:
    case_id: str
    last_us: int  # the newest bundle's creation time
    bundle_count: int
    hosts: tuple[str, ...]  # at most _HOSTS_SHOWN, sorted
    host_count: int
    worst: WorstFinding | None


class CaseListMethods(StoreBase):
    def list_cases(
        self, *, page_size: int = 50, cursor: str | None = None, min_rank: int = 2
    ) -> tuple[list[CaseSummary], str | None]:
        """A page of cases, the one with the newest bundle first; the next page's cursor or None."""
        size = clamp_page_size(page_size)
        a = case_activity.c
        query = select(a.case_id, a.last_created_at.label("last"), a.bundle_count.label("n"))
        if cursor:
            at, case_id = decode_case_cursor(cursor)
            # The redundant "<=" bounds the index range scan, as for bundle pages.
            query = query.where(a.last_created_at <= at, or_(a.last_created_at < at, a.case_id < case_id))
        query = query.order_by(a.last_created_at.desc(), a.case_id.desc()).limit(size + 1)
        with self._read() as conn:
            rows = list(conn.execute(query))
            more = len(rows) > size
            rows = rows[:size]
            ids = [r.case_id for r in rows]
            hosts = self._case_hosts(conn, ids)
            worst = self._case_worst(conn, ids, min_rank)
        page = [
            CaseSummary(
                case_id=r.case_id,
                last_us=int(r.last),
                bundle_count=int(r.n),
                hosts=tuple(sorted(hosts.get(r.case_id, ()))[:_HOSTS_SHOWN]),
                host_count=len(hosts.get(r.case_id, ())),
                worst=worst.get(r.case_id),
            )
            for r in rows
        ]
        nxt = encode_case_cursor(page[-1].last_us, page[-1].case_id) if more and page else None
        return page, nxt

    @staticmethod
    def _case_hosts(conn: Connection, ids: Sequence[str]) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        if not ids:
            return out
        h = case_hosts.c
        for case_id, hostname in conn.execute(select(h.case_id, h.hostname).where(h.case_id.in_(list(ids)))):
            out.setdefault(case_id, set()).add(hostname)
        return out

    @staticmethod
    def _case_worst(conn: Connection, ids: Sequence[str], min_rank: int) -> dict[str, WorstFinding]:
        out: dict[str, WorstFinding] = {}
        if not ids:
            return out
        f = finding_rows.c
        rows = conn.execute(
            select(f.case_id, f.severity, f.rank, f.title)
            .where(f.case_id.in_(list(ids)), f.rank >= min_rank)
            .order_by(f.case_id, f.rank.desc(), f.created_at.desc(), f.id.desc())
        )
        for case_id, severity, rank, title in rows:
            seen = out.get(case_id)
            out[case_id] = (
                WorstFinding(severity, rank, title, 1)
                if seen is None
                else WorstFinding(seen.severity, seen.rank, seen.title, seen.count + 1)
            )
        return out
