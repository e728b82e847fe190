"""The database statements one live answer costs the collector, counted and pinned.

A hunt over a thousand agents is a thousand of these uploads at once: every statement
per bundle (and every transaction, each an fsync) is paid a thousand times on the
collector's CPU (benchmarks/README.md, the hunt rows). A real collector on loopback
over SQLite, a real enrolled agent uploading a real signed bundle that answers a live
request; SQLAlchemy's ``before_cursor_execute`` counts what each collector thread sends.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import event

from agent.keys import SigningKey
from agent.transport import UploadTarget, enroll, upload_bundle
from tests.collector.conftest import RunningCollector
from tests.collector.test_metrics import live_answer

# GetUploadState: the agent and the bundle, in one read. Upload: the same, then the
# bundle again once its bytes are verified (another stream may have stored it meanwhile).
# Then one write: BEGIN IMMEDIATE, the bundle, its host, the host's agent, the live
# request ``done`` (RETURNING). Each read is BEGIN and its SELECTs.
INGEST_STATEMENTS = 3 + 3 + 2 + 5
INGEST_TRANSACTIONS = 4
# The analysis worker: one read (is it analysed yet? where is its blob?), then one
# write: BEGIN IMMEDIATE, the bundle with its previous analysis, the analysis row, its
# metrics row (this bundle has no findings and no filesystems).
ANALYSIS_STATEMENTS = 2 + 4


def test_statements_per_live_answer_are_pinned(sqlite_collector: RunningCollector, tmp_path: Path) -> None:
    c = sqlite_collector
    key = SigningKey.generate()
    with c.channel() as ch:
        agent_id = enroll(ch, token=c.enroll_token(), key=key, hostname="web-1", agent_version="t").agent_id
        request = c.store.create_live_request(
            agent_id=agent_id,
            hostname="web-1",
            requested_by="tok",
            requested_label="bob",
            scopes=("facts",),
            since_s=0,
            reason="statement count",
            expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5),
        )
        answer = live_answer(tmp_path / "live", key, agent_id, request.request_id)
        here = threading.get_ident()  # this test's own reads are not the collector's
        sent: list[tuple[str, str]] = []

        def count(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
            if threading.get_ident() != here:
                sent.append((threading.current_thread().name, statement.split(None, 1)[0].upper()))

        event.listen(c.store.engine, "before_cursor_execute", count)
        try:
            receipt = upload_bundle(ch, answer, bundle_id="ab" * 16, target=UploadTarget(key=key, agent_id=agent_id))
            ingest = list(sent)
            deadline = time.monotonic() + 30
            while c.store.get_analysis(receipt.bundle_id) is None and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            event.remove(c.store.engine, "before_cursor_execute", count)
    done = c.store.get_live_request(request.request_id)
    assert done.state == "done" and done.bundle_id == receipt.bundle_id
    assert c.store.get_analysis(receipt.bundle_id) is not None

    on_receipt = [s for thread, s in ingest if thread != "casefile-analysis"]
    kinds = Counter(on_receipt)
    assert len(on_receipt) == INGEST_STATEMENTS, on_receipt
    assert kinds["BEGIN"] == INGEST_TRANSACTIONS and kinds["UPDATE"] == 1 and kinds["INSERT"] == 3, kinds
    assert "SAVEPOINT" not in kinds  # a lone write needs none (collector.storage.group_commit)
    analysis = [s for thread, s in sent if thread == "casefile-analysis"]
    assert len(analysis) == ANALYSIS_STATEMENTS, analysis
    assert "DELETE" not in analysis  # a first analysis has nothing to replace
    # Nothing else ran meanwhile: every statement is accounted for.
    assert len(sent) == INGEST_STATEMENTS + ANALYSIS_STATEMENTS, sent

