"""Fleet questions over a real collector: analysis stored once after the receipt,
ListFindings and the metric query across bundles, reanalysis, and the start-up sweep."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import MappingProxyType

import grpc
import pytest
from typer.testing import CliRunner

from agent.analysis import BundleView, Finding, Rule, analyse, build_rule_registry
from agent.analysis.model import Evidence
from agent.analysis.rules import BUILTIN_RULES
from agent.keys import SigningKey
from agent.transport import UploadTarget, enroll, upload_bundle
from collector.analysis import reanalyze, rules_version
from collector.cli import app as collector_app
from collector.cli import rpc_error_message
from collector.server import ServerConfig
from collector.storage import Store
from protos import collector_pb2, collector_pb2_grpc, facts_pb2
from tests.collector.conftest import RunningCollector, _run_server
from tests.fixtures.analysis.crafted import healthy_snapshot, write_bundle


def _md(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _upload(c: RunningCollector, tmp: Path, snapshots: list[facts_pb2.Snapshot]) -> list[str]:
    key = SigningKey.generate()
    ids = []
    with c.channel() as ch:
        agent_id = enroll(ch, token=c.enroll_token(), key=key, hostname="db-1", agent_version="t").agent_id
        for i, snapshot in enumerate(snapshots):
            snapshot.agent_id = agent_id
            path = write_bundle(tmp / f"b{i}", key, snapshot, None)
            upload_bundle(ch, path, bundle_id=snapshot.bundle_id, target=UploadTarget(key=key, agent_id=agent_id))
            ids.append(snapshot.bundle_id)
    return ids


def _analysed(store: Store, ids: Iterable[str], timeout: float = 60.0) -> None:
    """Wait for the background worker (never the query path) to store each analysis."""
    deadline = time.monotonic() + timeout
    for bundle_id in ids:
        while store.get_analysis(bundle_id) is None:
            assert time.monotonic() < deadline, f"bundle {bundle_id} was not analysed in {timeout} s"
            time.sleep(0.05)


def _fragmented(hostname: str) -> facts_pb2.Snapshot:
    s = healthy_snapshot(hostname)
    f = s.fragmentation.filesystems[0]
    f.pct_files_fragmented, f.pct_bytes_in_fragmented, f.fragments_p95 = 45.0, 52.0, 9.0
    s.memory.percent = 94.0
    return s


def test_bundles_are_analysed_after_receipt_and_found_across_hosts(collector: RunningCollector, tmp_path: Path) -> None:
    full = healthy_snapshot("db-1")
    full.disks.partitions[1].percent = 99.0
    frag = _fragmented("web-2")
    calm = healthy_snapshot("web-3")
    ids = _upload(collector, tmp_path, [full, frag, calm])
    _analysed(collector.store, ids)  # by the worker: nothing below has asked for them yet

    viewer = _md(collector.engineer_token("viewer"))
    with collector.channel() as ch:
        stub = collector_pb2_grpc.QueryStub(ch)
        resp = stub.ListFindings(
            collector_pb2.ListFindingsRequest(rules=["disk-full"], min_severity="warning"), metadata=viewer
        )
        assert [(f.bundle_id, f.hostname, f.subject, f.severity) for f in resp.findings] == [
            (ids[0], "db-1", "/var:space", "critical")
        ]
        assert resp.findings[0].numbers["disks.partitions[1].percent"] == 99.0
        assert "disks.partitions[1].percent" in resp.findings[0].evidence

        heavy = stub.ListFindings(
            collector_pb2.ListFindingsRequest(rules=["fragmentation-heavy"], hostname="web-2"), metadata=viewer
        )
        assert [(f.bundle_id, f.subject) for f in heavy.findings] == [(ids[1], "/var")]
        assert not stub.ListFindings(
            collector_pb2.ListFindingsRequest(rules=["fragmentation-heavy"], hostname="web-3"), metadata=viewer
        ).findings
        texts = stub.ListFindings(collector_pb2.ListFindingsRequest(text="FRAGMENTED"), metadata=viewer)
        assert {f.bundle_id for f in texts.findings} == {ids[1]}

        # Pages: one finding a page, every finding once, newest bundle first.
        seen, token = [], ""
        while True:
            page = stub.ListFindings(
                collector_pb2.ListFindingsRequest(page_size=1, page_token=token), metadata=viewer
            )
            seen.extend((f.bundle_id, f.rule, f.subject) for f in page.findings)
            token = page.next_page_token
            if not token:
                break
        assert len(seen) == len(set(seen)) and {b for b, _, _ in seen} >= {ids[0], ids[1]}

        q = stub.QueryMetrics(
            collector_pb2.QueryMetricsRequest(
                query="fs.fragmented_bytes_pct > 30 and memory.percent > 90 since 2026-01-01"
            ),
            metadata=viewer,
        )
        assert [(r.bundle_id, r.hostname, r.mountpoint) for r in q.rows] == [(ids[1], "web-2", "/var")]
        assert q.rows[0].values == {"fs.fragmented_bytes_pct": 52.0, "memory.percent": 94.0}
        mem = stub.QueryMetrics(collector_pb2.QueryMetricsRequest(query="memory.percent < 50"), metadata=viewer)
        assert {r.bundle_id for r in mem.rows} == {ids[0], ids[2]}

        with pytest.raises(grpc.RpcError) as err:
            stub.QueryMetrics(collector_pb2.QueryMetricsRequest(query="memory.percnt > 90"), metadata=viewer)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "position 1" in (err.value.details() or "") and "unknown field 'memory.percnt'" in (
            err.value.details() or ""
        )
        with pytest.raises(grpc.RpcError) as err:
            stub.ListFindings(collector_pb2.ListFindingsRequest(min_severity="bad"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as err:
            stub.ListFindings(collector_pb2.ListFindingsRequest())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

        # The per-bundle outputs come from the stored analysis.
        stored = collector.store.get_analysis(ids[0])
        assert stored is not None
        got = stub.GetFindings(collector_pb2.GetBundleRequest(bundle_id=ids[0]), metadata=viewer).json
        assert got == stored.findings_json and json.loads(got)["worst"] == "critical"
        tl = stub.GetTimeline(collector_pb2.TimelineRequest(bundle_id=ids[0]), metadata=viewer).json
        assert tl == stored.timeline_json

    actions = [a.action for a in collector.store.list_audit(50)]
    assert "query.list_findings" in actions and "query.query_metrics" in actions

    runner = CliRunner()
    common = ["--collector", collector.address, "--token", collector.engineer_token("viewer"),
              "--ca-fingerprint", collector.fingerprint]
    listing = ["findings", *common, "--rule", "disk-full", "--severity", "warning", "--since", "3650d", "--json"]
    r = runner.invoke(collector_app, listing)
    assert r.exit_code == 0, r.output
    assert [f["bundleId"] for f in json.loads(r.output)["findings"]] == [ids[0]]
    r = runner.invoke(collector_app, ["findings", ids[0], *common])  # one bundle, as before
    assert r.exit_code == 20 and "disk-full" in r.output, r.output
    r = runner.invoke(collector_app, ["query", "fs.fragmented_bytes_pct >= 52", *common, "--json"])
    assert r.exit_code == 0, r.output
    assert [row["bundleId"] for row in json.loads(r.output)["rows"]] == [ids[1]]
    r = runner.invoke(collector_app, ["query", "memory.percent >", *common])
    assert isinstance(r.exception, grpc.RpcError)  # main() turns it into exit 2 with the details
    assert rpc_error_message(r.exception) == (
        2, "query error at position 17: memory.percent compares with a number, not the end of the query"
    )


class MemoryAboveThird(Rule):
    """A rule added after the bundles were analysed, registered the way plugins are."""

    code = "test-memory-third"
    title = "Memory over a third"
    description = "Memory in use above a threshold (a rule for the reanalysis test)."
    options = MappingProxyType({"pct": 33.0})

    def evaluate(self, view: BundleView) -> Iterator[Finding]:
        m = view.snapshot.memory
        if m.percent > self.opt("pct"):
            yield self.finding(
                "warning", f"memory {m.percent:.0f}%", "Above a third.", [Evidence("memory.percent", m.percent)], ""
            )


def test_findings_of_given_bundles_are_read_as_stored(collector: RunningCollector, tmp_path: Path) -> None:
    full = healthy_snapshot("db-1")
    full.disks.partitions[1].percent = 99.0
    ids = _upload(collector, tmp_path, [full, _fragmented("web-2"), healthy_snapshot("web-3")])
    _analysed(collector.store, ids)
    viewer = _md(collector.engineer_token("viewer"))
    with collector.channel() as ch:
        stub = collector_pb2_grpc.QueryStub(ch)
        only = stub.ListFindings(collector_pb2.ListFindingsRequest(bundle_ids=[ids[1]]), metadata=viewer)
        assert only.findings and {f.bundle_id for f in only.findings} == {ids[1]}
        with pytest.raises(grpc.RpcError) as bad:
            stub.ListFindings(collector_pb2.ListFindingsRequest(bundle_ids=["../x"]), metadata=viewer)
        assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    # What a hunt's comparison reads: the keys, severities and titles the analysis gives,
    # in its order, without reading the blob again.
    stored = collector.store.stored_findings_of([*ids, "f" * 32])
    assert set(stored) == set(ids)  # an unknown (unanalysed) bundle is absent
    for bundle_id in ids:
        rec = collector.store.get_bundle(bundle_id)
        fresh = analyse(BundleView.from_file(collector.server.blobs.blob_path(rec.blob_key))).findings.findings
        assert stored[bundle_id] == [(f.key, f.severity, f.title) for f in fresh]
    assert any(key == "disk-full:/var:space" for key, _, _ in stored[ids[0]])


def test_reanalysis_runs_newer_rules_and_says_what_changed(collector: RunningCollector, tmp_path: Path) -> None:
    ids = _upload(collector, tmp_path, [healthy_snapshot("db-1"), healthy_snapshot("db-2")])
    _analysed(collector.store, ids)
    assert not collector.store.list_findings(rules=["test-memory-third"])[0]

    newer = build_rule_registry((*BUILTIN_RULES, MemoryAboveThird))
    result = reanalyze(collector.store, collector.server.blobs, registry=newer)
    assert (result.examined, result.changed, result.failed) == (2, 2, 0)
    rows, _ = collector.store.list_findings(rules=["test-memory-third"])
    assert sorted(r.bundle_id for r in rows) == sorted(ids) and rows[0].numbers == {"memory.percent": 37.5}
    stored = collector.store.get_analysis(ids[0])
    assert stored is not None and stored.version == rules_version(newer)
    assert "test-memory-third" in stored.findings_json

    # Resumable: a second run finds nothing left at another version.
    assert reanalyze(collector.store, collector.server.blobs, registry=newer).examined == 0

    # A changed threshold is a new rule set: every bundle is examined, none changes.
    class Tuned(MemoryAboveThird):
        options = MappingProxyType({"pct": 30.0})

    tuned = reanalyze(collector.store, collector.server.blobs, registry=build_rule_registry((*BUILTIN_RULES, Tuned)))
    assert (tuned.examined, tuned.changed) == (2, 0)

    # Back to the installed rules through the operator command: the test finding goes.
    url = collector.store.engine.url.render_as_string(hide_password=False)
    r = CliRunner().invoke(
        collector_app, ["reanalyze", "--data-dir", str(collector.data_dir), "--db-url", url, "--json"]
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["changed"] == 2
    assert not collector.store.list_findings(rules=["test-memory-third"])[0]


def test_bundle_stored_but_never_analysed_is_picked_up_at_start(tmp_path: Path) -> None:
    data = tmp_path / "collector"
    config = ServerConfig(address="127.0.0.1:0", data_dir=data)
    first = _run_server(config)
    c = next(first)
    # The worker is gone before the upload: the collector dies with the bundle stored
    # and acknowledged, its analysis only queued in memory.
    c.server.analysis.stop()
    (bundle_id,) = _upload(c, tmp_path, [_fragmented("web-9")])
    time.sleep(0.5)
    assert c.store.get_analysis(bundle_id) is None
    next(first, None)

    second = _run_server(config)
    c2 = next(second)
    try:
        _analysed(c2.store, [bundle_id])
        rows, _ = c2.store.list_findings(rules=["fragmentation-heavy"])
        assert [r.bundle_id for r in rows] == [bundle_id]
    finally:
        next(second, None)


def test_put_analysis_of_an_unknown_bundle_is_not_found(store: Store) -> None:
    from collector.storage.errors import NotFound
    from collector.storage.findings import AnalysisRows

    rows = AnalysisRows("r0", "{}", "{}", "", (), {}, ())
    with pytest.raises(NotFound):
        store.put_analysis("0" * 32, rows, analysed_at_us=int(dt.datetime.now(dt.UTC).timestamp() * 1e6))


def test_concurrent_replacements_of_one_analysis_never_collide(store: Store) -> None:
    """The worker and an on-demand query may store one bundle's analysis at the same time."""
    import threading

    from collector.storage.findings import AnalysisRows, FindingRow, FsRow
    from tests.collector.test_storage_bundles import make_agent, make_bundle

    rec = make_bundle(make_agent(store))
    store.insert_bundle(rec, facts_pb=b"", manifest_json="{}")
    finding = FindingRow("disk-full", "critical", 3, "full", "/var:space", {"p": 99.0}, ("p",))
    rows = AnalysisRows("r1", '{"findings": []}', "{}", "<html>", (finding, finding), {"memory_percent": 50.0},
                        (FsRow("/var", "ext4", 99.0, 1.0, 2.0, 3.0),))
    errors: list[BaseException] = []

    def replace() -> None:
        try:
            for _ in range(15):
                store.put_analysis(rec.bundle_id, rows, analysed_at_us=1)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=replace) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.list_findings()[0]) == 2  # one analysis' rows, never two interleaved
    stored = store.get_analysis(rec.bundle_id)
    assert stored is not None and stored.report_html == "<html>"
