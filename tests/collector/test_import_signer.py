"""The reserved agent that hand-carried bundles with an unknown signer are filed under
is never an uploader: its all-zero key must not let anyone sign an upload as it."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from agent.keys import SigningKey
from collector.services.handcarried import UNENROLLED_AGENT_ID, _unenrolled_agent
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
