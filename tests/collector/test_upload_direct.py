"""A small bundle's upload goes straight to Upload (one RPC, one authorisation) against a
real collector on loopback; a partial the collector holds is still resumed, and a large
bundle still asks GetUploadState first."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.transport import UploadTarget, upload_bundle
from agent.transport import client as client_module
from agent.transport.client import DIRECT_MAX_BYTES
from tests.collector.conftest import RunningCollector, small_bundle
from tests.collector.test_ingest import _cut_upload, _enrolled

UPLOAD = "/casefile.v1.Ingest/Upload"
STATE = "/casefile.v1.Ingest/GetUploadState"


class _Calls(grpc.UnaryUnaryClientInterceptor, grpc.StreamUnaryClientInterceptor):  # type: ignore[misc]
    """The Ingest methods called through a channel, in order, with how each ended."""

    def __init__(self) -> None:
        self.made: list[tuple[str, grpc.StatusCode]] = []

    def _note(self, details: Any, outcome: Any) -> Any:
        try:
            code = outcome.code() if outcome.exception() is not None else grpc.StatusCode.OK
        except Exception:
            code = grpc.StatusCode.UNKNOWN
        self.made.append((details.method, code))
        return outcome

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return self._note(details, continuation(details, request))

    def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return self._note(details, continuation(details, requests))


def _methods(calls: _Calls) -> list[str]:
    return [m.rsplit("/", 1)[1] for m, _ in calls.made]


def test_small_bundle_is_stored_in_one_rpc_and_a_reupload_takes_one_more(
    collector: RunningCollector, tmp_path: Path
) -> None:
    key, agent_id = _enrolled(collector)
    b = small_bundle(tmp_path / "out", key, agent_id=agent_id)
    assert b.size <= DIRECT_MAX_BYTES
    target = UploadTarget(key=key, agent_id=agent_id)
    calls = _Calls()
    with collector.channel() as raw:
        ch = grpc.intercept_channel(raw, calls)
        seen: list[tuple[int, int]] = []
        first = upload_bundle(
            ch, b.path, bundle_id=b.bundle_id, target=target, progress=lambda d, t: seen.append((d, t))
        )
        assert _methods(calls) == ["Upload"]
        assert seen == [(b.size, b.size)]  # sent in one go: all of it, once, at the end
        assert calls.made[0][1] == grpc.StatusCode.OK
        stored = collector.store.get_bundle(b.bundle_id)
        assert (stored.sha256, stored.size) == (b.sha256, b.size) == (first.sha256, first.size)
        # The same bundle again (an agent that lost the receipt): the stored one's receipt,
        # from the same one RPC, nothing stored twice.
        again = upload_bundle(ch, b.path, bundle_id=b.bundle_id, target=target)
    assert again == first
    assert _methods(calls) == ["Upload", "Upload"]
    assert [r.bundle_id for r in collector.store.list_bundles(agent_id=agent_id)[0]] == [b.bundle_id]


def test_small_bundle_resumes_a_partial_left_by_a_cut_stream(
    collector: RunningCollector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, agent_id = _enrolled(collector)
    b = small_bundle(tmp_path / "out", key, agent_id=agent_id, payload=os.urandom(DIRECT_MAX_BYTES // 2))
    assert b.size <= DIRECT_MAX_BYTES
    _cut_upload(collector, key, agent_id, b.path, b.bundle_id, upto=b.size // 2)
    held = collector.server.blobs.durable_offset(b.bundle_id, b.size, b.sha256)
    assert 0 < held <= b.size // 2
    ingest = collector.server._ingest
    assert ingest is not None
    for _ in range(400):  # the cut stream has let go of its partial
        if not ingest._active:
            break
        threading.Event().wait(0.025)
    assert not ingest._active
    slept: list[float] = []
    monkeypatch.setattr(client_module.time, "sleep", slept.append)
    seen: list[tuple[int, int]] = []
    calls = _Calls()
    with collector.channel() as raw:
        ch = grpc.intercept_channel(raw, calls)
        receipt = upload_bundle(
            ch,
            b.path,
            bundle_id=b.bundle_id,
            target=UploadTarget(key=key, agent_id=agent_id),
            attempts=1,
            progress=lambda done, total: seen.append((done, total)),
        )
    # The first guess (offset 0) is refused before any byte is kept; the client asks at
    # once where the partial ends and sends the rest: no backoff, no attempt spent.
    assert calls.made == [
        (UPLOAD, grpc.StatusCode.FAILED_PRECONDITION),
        (STATE, grpc.StatusCode.OK),
        (UPLOAD, grpc.StatusCode.OK),
    ]
    assert slept == []
    # Progress starts where the partial ends: the refused guess showed nothing.
    assert seen[0] == (held, b.size) and seen[-1] == (b.size, b.size)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    stored = collector.store.get_bundle(b.bundle_id)
    with collector.server.blobs.open_blob(stored.blob_key) as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == b.sha256 == receipt.sha256


def test_large_bundle_asks_for_the_upload_state_first(collector: RunningCollector, tmp_path: Path) -> None:
    key, agent_id = _enrolled(collector)
    b = small_bundle(tmp_path / "out", key, agent_id=agent_id, payload=os.urandom(DIRECT_MAX_BYTES + 1024))
    assert b.size > DIRECT_MAX_BYTES
    calls = _Calls()
    with collector.channel() as raw:
        ch = grpc.intercept_channel(raw, calls)
        receipt = upload_bundle(ch, b.path, bundle_id=b.bundle_id, target=UploadTarget(key=key, agent_id=agent_id))
    assert _methods(calls) == ["GetUploadState", "Upload"]
    assert receipt.sha256 == b.sha256 == collector.store.get_bundle(b.bundle_id).sha256
