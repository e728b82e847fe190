"""The Prometheus endpoint of a real collector, scraped over loopback after real traffic."""

from __future__ import annotations

import datetime as dt
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.bundle import BundleMeta, BundleWriter
from agent.errors import UploadError
from agent.keys import SigningKey
from agent.transport import UploadTarget, enroll, upload_bundle
from collector.listen import ListenError
from collector.server import ServerConfig
from collector.storage import LiveRequestRecord, Store
from protos import facts_pb2
from tests.collector.conftest import RunningCollector, _run_server, small_bundle


@pytest.fixture
def metered(tmp_path: Path) -> Iterator[RunningCollector]:
    config = ServerConfig(address="127.0.0.1:0", data_dir=tmp_path / "collector", metrics_address="127.0.0.1:0")
    yield from _run_server(config)


def scrape(c: RunningCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    assert c.server.metrics_port > 0
    with urllib.request.urlopen(f"http://127.0.0.1:{c.server.metrics_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def open_request(store: Store, agent_id: str, reason: str, hostname: str = "web-1") -> LiveRequestRecord:
    """A queued facts-scope live request for ``agent_id``, as an engineer's would be, open 5 minutes."""
    return store.create_live_request(
        agent_id=agent_id,
        hostname=hostname,
        requested_by="tok",
        requested_label="bob",
        scopes=("facts",),
        since_s=0,
        reason=reason,
        expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5),
    )


def live_answer(out: Path, key: SigningKey, agent_id: str, request_id: str) -> Path:
    """A signed bundle whose manifest names a live request, as the agent's answer would."""
    snap = facts_pb2.Snapshot(agent_id=agent_id, kind="live")
    snap.host.hostname = "web-1"
    meta = BundleMeta(
        bundle_id="ab" * 16,
        hostname="web-1",
        case_id=None,
        kind="live",
        agent_id=agent_id,
        agent_version="test",
        created_at=dt.datetime.now(dt.UTC),
        request_id=request_id,
    )
    out.mkdir(parents=True)
    with BundleWriter(out, key=key, meta=meta) as w:
        w.add_bytes("facts.pb", snap.SerializeToString())
        return w.finish(spec={"test": True}, collectors=[], truncated=[], redaction=None).path


def test_metrics_after_real_uploads(metered: RunningCollector, tmp_path: Path) -> None:
    c = metered
    key = SigningKey.generate()
    with c.channel() as ch:
        agent_id = enroll(ch, token=c.enroll_token(), key=key, hostname="web-1", agent_version="t").agent_id
        target = UploadTarget(key=key, agent_id=agent_id)
        good = small_bundle(tmp_path / "good", key, agent_id=agent_id, payload=b"x" * 50_000)
        upload_bundle(ch, good.path, bundle_id=good.bundle_id, target=target)
        upload_bundle(ch, good.path, bundle_id=good.bundle_id, target=target)  # idempotent: no new bytes
        foreign = small_bundle(tmp_path / "foreign", SigningKey.generate(), agent_id=agent_id)
        with pytest.raises(UploadError, match="INVALID_ARGUMENT"):
            upload_bundle(ch, foreign.path, bundle_id=foreign.bundle_id, target=target)
        # A live request answered by an upload: created → done is one latency sample.
        request = open_request(c.store, agent_id, "metrics test")
        answer = live_answer(tmp_path / "live", key, agent_id, request.request_id)
        upload_bundle(ch, answer, bundle_id="ab" * 16, target=target)
    assert c.store.get_live_request(request.request_id).state == "done"

    m = scrape(c)
    assert m[("casefile_ingested_bundles_total", ())] == 2
    assert m[("casefile_ingested_bytes_total", ())] == good.size + foreign.size + answer.stat().st_size
    failures = {labels: v for (name, labels), v in m.items() if name == "casefile_verification_failures_total"}
    assert failures == {(("reason", "wrong-key"),): 1}
    assert m[("casefile_uploads_in_flight", ())] == 0
    assert m[("casefile_connected_agents", ())] == 0
    assert m[("casefile_parked_agents", ())] == 0
    assert m[("casefile_snapshot_latency_seconds_count", ())] == 1
    assert m[("casefile_snapshot_latency_seconds_sum", ())] >= 0
    upload = "/casefile.v1.Ingest/Upload"
    # Small bundles go straight to Upload; the repeated one is answered with the stored
    # bundle's receipt before any of its bytes is kept (no bytes counted above).
    assert m[("casefile_grpc_requests_total", (("code", "OK"), ("method", upload)))] == 3
    assert ("casefile_grpc_requests_total", (("code", "OK"), ("method", "/casefile.v1.Ingest/GetUploadState"))) not in m
    assert m[("casefile_grpc_requests_total", (("code", "INVALID_ARGUMENT"), ("method", upload)))] == 1
    assert m[("casefile_grpc_requests_total", (("code", "OK"), ("method", "/casefile.v1.Enroll/Enroll")))] == 1


def test_no_metrics_endpoint_by_default(sqlite_collector: RunningCollector) -> None:
    assert sqlite_collector.server.metrics_port == 0


def test_metrics_port_in_use_refuses_the_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = ServerConfig(
            address="127.0.0.1:0", data_dir=tmp_path / "collector", metrics_address=f"127.0.0.1:{port}"
        )
        with pytest.raises(ListenError, match=f"port {port} is already in use.*--metrics-address"):
            next(_run_server(config))
