"""Hand-carried bundles at the store: the reserved agent that bundles with an unknown
signer are filed under is never an uploader, and a bundle id keeps its first bytes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from agent.keys import SigningKey
from collector.server import default_db_url
from collector.services.handcarried import UNENROLLED_AGENT_ID, ImportRefused, _unenrolled_agent, import_bundles
from collector.storage import BlobStore, Store
from protos import collector_pb2
from tests.collector.conftest import RunningCollector, small_bundle
from tests.collector.test_ingest import _header, _raw_upload


def test_the_signer_not_enrolled_agent_takes_no_uploads(collector: RunningCollector, tmp_path: Path) -> None:
    assert _unenrolled_agent(collector.store) == UNENROLLED_AGENT_ID
    assert _unenrolled_agent(collector.store) == UNENROLLED_AGENT_ID  # made once
    key = SigningKey.generate()
    b = small_bundle(tmp_path, key)
    hdr = _header(key, UNENROLLED_AGENT_ID, b.path, b.bundle_id)
    with pytest.raises(grpc.RpcError) as err:
        chunks = [collector_pb2.UploadChunk(header=hdr), collector_pb2.UploadChunk(data=b.path.read_bytes())]
        _raw_upload(collector, chunks)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "takes no uploads" in (err.value.details() or "")


def test_other_bytes_under_a_stored_id_are_refused_and_the_store_keeps_the_first(tmp_path: Path) -> None:
    key = SigningKey.generate()
    first = small_bundle(tmp_path / "a", key, payload=b"first")
    other = small_bundle(tmp_path / "b", key, payload=b"other", bundle_id=first.bundle_id)
    store = Store.open(default_db_url(tmp_path))
    try:
        blobs = BlobStore(tmp_path)
        (got,) = asyncio.run(import_bundles(store, blobs, [first.path], None))
        assert not isinstance(got, ImportRefused) and got.inserted and not got.signer_enrolled
        again, refused = asyncio.run(import_bundles(store, blobs, [first.path, other.path], None))
        assert not isinstance(again, ImportRefused) and not again.inserted
        assert isinstance(refused, ImportRefused) and "refusing different bytes" in str(refused)
        assert store.get_bundle(first.bundle_id).sha256 == got.record.sha256
    finally:
        store.close()
