"""Refused uploads counted per case token (migration step 4).

A case token is handed to a customer, so whoever holds it is not an enrolled machine:
each upload it sends that fails verification (a wrong hash, a bad signature, a bomb)
is counted here, durably and across replicas, and ingest stops taking new uploads
under a token once the count reaches its limit. Its own table, so the tokens table and
migration step 1 stay as they were.
"""

from __future__ import annotations

from sqlalchemy import select

from collector.storage.base import StoreBase
from collector.storage.refusals_schema import create_refusal_tables, upload_refusals

__all__ = ["RefusalMethods", "create_refusal_tables", "upload_refusals"]

class RefusalMethods(StoreBase):
    """Counting and reading refused uploads per case token."""

    def count_refused_upload(self, token_id: str) -> int:
        """Count one refused upload under ``token_id``; returns the count now."""
        ins = self._insert(upload_refusals).values(token_id=token_id, refused=1, last_at=self._now())
        r = upload_refusals.c
        stmt = ins.on_conflict_do_update(
            index_elements=[r.token_id],
            set_={"refused": r.refused + 1, "last_at": ins.excluded.last_at},
        ).returning(r.refused)
        with self._write() as conn:
            return int(conn.execute(stmt).scalar_one())

    def refused_uploads(self, token_id: str) -> int:
        with self._read() as conn:
            found = conn.execute(
                select(upload_refusals.c.refused).where(upload_refusals.c.token_id == token_id)
            ).scalar()
        return int(found or 0)
