"""Findings, timeline, diff and HTML report of stored bundles, over the real Query API."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner

from agent.keys import SigningKey
from agent.transport import UploadTarget, enroll, upload_bundle
from collector.cli import app as collector_app
from protos import collector_pb2, collector_pb2_grpc, facts_pb2
from tests.collector.conftest import RunningCollector
from tests.fixtures.analysis.crafted import COLLECTED, GIB, generate_logs, healthy_snapshot, write_bundle


def _md(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _upload(c: RunningCollector, tmp: Path, bundles: list[tuple[facts_pb2.Snapshot, dict | None]]) -> list[str]:  # type: ignore[type-arg]
    """Crafted facts (+ log JSONL) sealed into real bundles, uploaded through Ingest."""
    key = SigningKey.generate()
    ids = []
    with c.channel() as ch:
        agent_id = enroll(ch, token=c.enroll_token(), key=key, hostname="db-1", agent_version="t").agent_id
        for i, (snapshot, logs) in enumerate(bundles):
            snapshot.agent_id = agent_id
            path = write_bundle(tmp / str(i), key, snapshot, logs)
            upload_bundle(ch, path, bundle_id=snapshot.bundle_id, target=UploadTarget(key=key, agent_id=agent_id))
            ids.append(snapshot.bundle_id)
    return ids


def test_findings_timeline_diff_report(collector: RunningCollector, tmp_path: Path) -> None:
    before = healthy_snapshot()
    after = healthy_snapshot()
    for snap in (before, after):  # the diff compares only what both bundles say they collected
        snap.collectors.add(name="disks", state=facts_pb2.CollectorStatus.OK)
    after.disks.partitions[1].percent, after.disks.partitions[1].used = 99.0, 99 * GIB
    other_host = healthy_snapshot("web-7")
    logs = generate_logs(burst_at=COLLECTED - dt.timedelta(hours=2, minutes=5))
    a, b, w = _upload(collector, tmp_path, [(before, logs), (after, None), (other_host, None)])
    viewer = _md(collector.engineer_token("viewer"))
    with collector.channel() as ch:
        stub = collector_pb2_grpc.QueryStub(ch)
        findings = json.loads(stub.GetFindings(collector_pb2.GetBundleRequest(bundle_id=b), metadata=viewer).json)
        assert findings["worst"] == "critical" and findings["findings"][0]["code"] == "disk-full"

        tl = json.loads(stub.GetTimeline(collector_pb2.TimelineRequest(bundle_id=a), metadata=viewer).json)
        assert tl["summary"].startswith("errors began 2026-11-22 14:02 UTC, 2 h 05 min before collection")
        assert tl["interval_s"] == 300
        tl10 = json.loads(
            stub.GetTimeline(collector_pb2.TimelineRequest(bundle_id=a, interval_s=600), metadata=viewer).json
        )
        assert tl10["interval_s"] == 600

        d = stub.DiffBundles(collector_pb2.DiffRequest(a=a, b=b), metadata=viewer)
        assert json.loads(d.json)["sections"]["filesystems"]["changed"] == [
            {"key": "/var", "field": "used_pct", "before": 63.0, "after": 99.0, "unit": "%",
             "size_before": 63 * GIB, "size_after": 99 * GIB, "tolerance": 1.0}
        ]
        assert "~ /var used: 63.0 % -> 99.0 % (63.0 GiB -> 99.0 GiB)" in d.text
        with pytest.raises(grpc.RpcError) as err:
            stub.DiffBundles(collector_pb2.DiffRequest(a=a, b=w), metadata=viewer)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "different hosts" in (err.value.details() or "")
        assert stub.DiffBundles(collector_pb2.DiffRequest(a=a, b=w, force=True), metadata=viewer).text

        html = stub.RenderReport(collector_pb2.GetBundleRequest(bundle_id=a), metadata=viewer).html.decode()
        assert html.startswith("<!DOCTYPE html>") and html.count("<svg") == 5

        with pytest.raises(grpc.RpcError) as err:
            stub.GetFindings(collector_pb2.GetBundleRequest(bundle_id=a))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            stub.GetFindings(collector_pb2.GetBundleRequest(bundle_id="f" * 32), metadata=viewer)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as err:
            stub.GetTimeline(collector_pb2.TimelineRequest(bundle_id=a, interval_s=7), metadata=viewer)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    runner = CliRunner()
    common = ["--collector", collector.address, "--token", collector.engineer_token("viewer"),
              "--ca-fingerprint", collector.fingerprint]
    r = runner.invoke(collector_app, ["findings", b, *common])
    assert r.exit_code == 20, r.output
    assert "disk-full" in r.output
    r = runner.invoke(collector_app, ["timeline", a, *common, "--interval", "10m"])
    assert r.exit_code == 0 and "errors began" in r.output, r.output
    r = runner.invoke(collector_app, ["diff", a, b, *common])
    assert r.exit_code == 0 and "used: 63.0 % -> 99.0 % (63.0 GiB -> 99.0 GiB)" in r.output, r.output
    out = tmp_path / "report.html"
    r = runner.invoke(collector_app, ["report", a, *common, "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert out.read_text().startswith("<!DOCTYPE html>")


def test_the_worker_analyses_a_received_bundle_in_its_own_process(
    sqlite_collector: RunningCollector, tmp_path: Path
) -> None:
    """After the receipt, the bundle is analysed off the collector's interpreter (a child
    process at a lower priority) and the findings stored with the current rule version."""
    import os
    import time

    import psutil

    from agent.analysis import registered_rules
    from collector.analysis import ANALYSIS_NICE, rules_version

    full = healthy_snapshot()
    full.disks.partitions[1].percent, full.disks.partitions[1].used = 99.0, 99 * GIB
    (bundle_id,) = _upload(sqlite_collector, tmp_path, [(full, None)])
    store = sqlite_collector.server.store
    deadline = time.monotonic() + 60
    while (stored := store.get_analysis(bundle_id)) is None:
        assert time.monotonic() < deadline, "the worker never analysed the bundle"
        time.sleep(0.1)
    assert stored.version == rules_version(registered_rules())
    assert json.loads(stored.findings_json)["findings"][0]["code"] == "disk-full"
    pool = sqlite_collector.server.analysis._pool
    assert pool is not None
    children = [p for p in psutil.Process(os.getpid()).children() if p.pid in {q.pid for q in pool._processes.values()}]
    assert len(children) == 1
    assert children[0].nice() >= min(19, psutil.Process(os.getpid()).nice() + min(ANALYSIS_NICE, 1))
