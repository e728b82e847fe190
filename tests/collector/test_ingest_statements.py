"""The database statements one live answer costs the collector, counted and pinned.

A hunt over a thousand agents is a thousand of these uploads at once: every statement
per bundle (and every transaction, each an fsync) is paid a thousand times on the
collector's CPU (benchmarks/README.md, the hunt rows). A real collector on loopback
over SQLite, a real enrolled agent uploading a real signed bundle that answers a live
request; SQLAlchemy's ``before_cursor_execute`` counts what each collector thread sends.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import event

from agent.keys import SigningKey
from agent.transport import UploadTarget, enroll, upload_bundle
from collector.storage import BundleRecord, Store
from tests.collector.conftest import RunningCollector
from tests.collector.test_metrics import live_answer, open_request

# A live answer is small, so no GetUploadState (agent.transport.client.DIRECT_MAX_BYTES).
# Upload: the agent and the bundle, in one read, then the bundle again once its bytes
# are verified (another stream may have stored it meanwhile). Then one write: BEGIN
# IMMEDIATE, the bundle, its host, the host's agent, the live request ``done``
# (RETURNING). Each read is BEGIN and its SELECTs.
INGEST_STATEMENTS = 3 + 2 + 5
INGEST_TRANSACTIONS = 3
# The analysis worker: one read (is it analysed yet? where is its blob?), then one
# write: BEGIN IMMEDIATE, the bundle with its previous analysis, the analysis row, its
# metrics row (this bundle has no findings and no filesystems).
ANALYSIS_STATEMENTS = 2 + 4


def test_statements_per_live_answer_are_pinned(sqlite_collector: RunningCollector, tmp_path: Path) -> None:
    c = sqlite_collector
    key = SigningKey.generate()
    with c.channel() as ch:
        agent_id = enroll(ch, token=c.enroll_token(), key=key, hostname="web-1", agent_version="t").agent_id
        request = open_request(c.store, agent_id, "statement count")
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



def test_a_request_moves_only_for_its_own_agent_in_one_write(store: Store) -> None:
    """What an agent's progress message and its answer's insert rely on: the request is
    moved only when it is this agent's and not final, by the one statement that moves it."""
    mine, other = (SigningKey.generate() for _ in range(2))
    a = store.create_agent(mine.public.raw, mine.fingerprint, "web-1", None, None)
    b = store.create_agent(other.public.raw, other.fingerprint, "web-2", None, None)
    req = store.create_live_request(
        agent_id=a.id,
        hostname="web-1",
        requested_by="tok",
        requested_label="bob",
        scopes=("facts",),
        since_s=0,
        reason="own agent only",
        expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5),
    )
    assert store.advance_live_request(req.request_id, "collecting", detail="x", agent_id=b.id) is None
    assert store.get_live_request(req.request_id).state == "queued"
    moved = store.advance_live_request(req.request_id, "collecting", detail="busy", agent_id=a.id)
    assert moved is not None and (moved.state, moved.detail) == ("collecting", "busy")
    rec = BundleRecord(
        bundle_id="cd" * 16,
        agent_id=b.id,
        hostname="web-2",
        case_id=None,
        kind="live",
        created_at_us=1,
        received_at_us=2,
        size=10,
        sha256="e" * 64,
        key_fingerprint=other.fingerprint,
        agent_version="t",
        file_name="x.tar.zst",
        collectors_ok=1,
        collectors_failed=0,
        blob_key="e" * 64,
        os="Linux",
        origin_fingerprint=other.fingerprint,
        collectors_skipped=0,
    )
    # Another agent's bundle naming the request is stored, and the request stays as it was.
    stored, inserted, answered = store.insert_bundle_answering(
        rec, facts_pb=b"", manifest_json="{}", request_id=req.request_id
    )
    assert inserted and stored.bundle_id == rec.bundle_id and answered is None
    assert store.get_live_request(req.request_id).state == "collecting"
    own = dataclasses.replace(rec, bundle_id="ef" * 16, agent_id=a.id, hostname="web-1", sha256="f" * 64)
    rid = req.request_id
    _, inserted, answered = store.insert_bundle_answering(own, facts_pb=b"", manifest_json="{}", request_id=rid)
    assert inserted and answered is not None and (answered.state, answered.bundle_id) == ("done", own.bundle_id)
    # Once final, nothing moves it: the same bundle again answers nothing.
    _, inserted, answered = store.insert_bundle_answering(own, facts_pb=b"", manifest_json="{}", request_id=rid)
    assert not inserted and answered is None
    assert store.advance_live_request(req.request_id, "failed", agent_id=a.id) is None
    assert store.get_live_request(req.request_id).bundle_id == own.bundle_id
