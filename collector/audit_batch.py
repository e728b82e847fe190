"""The audit rows of one console page, written in one transaction when the page is done.

A console page calls several API handlers (the bundle page: GetBundle, GetFindings,
GetTimeline, ListBundles); each writes its own audit row, as over gRPC. Written one by
one, each row is a commit with its own fsync (~9 ms on the shared CI machine under load,
four per bundle page). Inside :func:`one_commit` the rows are collected instead, each with
the time its call ended, and written together, in order, when the page is done: the same
rows, one commit. A call that ends after the page (a download's stream, a live snapshot
followed in its own task) finds the batch closed and writes its row itself.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from collector.storage import Store

__all__ = ["AuditBatch", "one_commit", "pending"]


@dataclass
class AuditBatch:
    rows: list[dict[str, Any]] = field(default_factory=list)
    closed: bool = False


_BATCH: contextvars.ContextVar[AuditBatch | None] = contextvars.ContextVar("casefile_audit_batch", default=None)


def pending() -> AuditBatch | None:
    """The open batch of the page being served, if any."""
    batch = _BATCH.get()
    return batch if batch is not None and not batch.closed else None


@asynccontextmanager
async def one_commit(store: Store) -> AsyncIterator[None]:
    """Collect the audit rows of the calls made inside; write them in one transaction at
    the end (also when the page fails: a refused call's row is written all the same)."""
    batch = AuditBatch()
    reset = _BATCH.set(batch)
    try:
        yield
    finally:
        _BATCH.reset(reset)
        batch.closed = True
        if batch.rows:
            await asyncio.to_thread(store.audit_rows, batch.rows)
