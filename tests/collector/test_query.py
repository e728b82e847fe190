"""Query against a real collector: roles, audit, filters, pagination, download, health."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from agent.keys import SigningKey
from agent.transport import UploadTarget, enroll, upload_bundle
from collector.storage import AuditRecord
from protos import collector_pb2, collector_pb2_grpc
from tests.collector.conftest import RunningCollector, small_bundle


def _md(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _seed(c: RunningCollector, tmp: Path, n: int) -> list[str]:
    key = SigningKey.generate()
    ids = []
    with c.channel() as ch:
        agent_id = enroll(ch, token=c.enroll_token(), key=key, hostname="db-1", agent_version="t").agent_id
        for i in range(n):
            b = small_bundle(
                tmp / str(i),
                key,
                agent_id=agent_id,
                case_id="SR-9" if i % 2 else "SR-8",
                hostname="db-1" if i < n - 1 else "db-2",
            )
            upload_bundle(ch, b.path, bundle_id=b.bundle_id, target=UploadTarget(key=key, agent_id=agent_id))
            ids.append(b.bundle_id)
    return ids


def test_list_filter_paginate_show_download(collector: RunningCollector, tmp_path: Path) -> None:
    ids = _seed(collector, tmp_path, 5)
    token = collector.engineer_token("engineer")
    with collector.channel() as ch:
        q = collector_pb2_grpc.QueryStub(ch)
        hosts = q.ListHosts(collector_pb2.ListHostsRequest(), metadata=_md(token))
        assert {h.hostname for h in hosts.hosts} == {"db-1", "db-2"}
        assert sum(h.bundle_count for h in hosts.hosts) == 5
        seen: list[str] = []
        page = ""
        while True:
            resp = q.ListBundles(collector_pb2.ListBundlesRequest(page_size=2, page_token=page), metadata=_md(token))
            seen += [b.bundle_id for b in resp.bundles]
            page = resp.next_page_token
            if not page:
                break
        assert sorted(seen) == sorted(ids) and len(seen) == 5
        only = q.ListBundles(collector_pb2.ListBundlesRequest(case_id="SR-9", hostname="db-1"), metadata=_md(token))
        assert {b.bundle_id for b in only.bundles} == {ids[1], ids[3]}
        future = collector_pb2.ListBundlesRequest()
        future.since.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
        assert list(q.ListBundles(future, metadata=_md(token)).bundles) == []
        detail = q.GetBundle(collector_pb2.GetBundleRequest(bundle_id=ids[0]), metadata=_md(token))
        assert detail.facts.host.hostname == "db-1" and detail.facts.memory.total == 8 * 1024**3
        assert ids[0] in detail.manifest_json
        chunks = list(q.DownloadBundle(collector_pb2.GetBundleRequest(bundle_id=ids[0]), metadata=_md(token)))
        header, body = chunks[0].header, b"".join(c.data for c in chunks[1:])
        assert hashlib.sha256(body).hexdigest() == header.sha256 == detail.summary.sha256
        with pytest.raises(grpc.RpcError) as info:
            q.ListBundles(collector_pb2.ListBundlesRequest(page_token="garbage!"), metadata=_md(token))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as info:
            q.GetBundle(collector_pb2.GetBundleRequest(bundle_id="0" * 32), metadata=_md(token))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_roles_and_audit(collector: RunningCollector, tmp_path: Path) -> None:
    ids = _seed(collector, tmp_path, 1)
    viewer = collector.engineer_token("viewer")
    with collector.channel() as ch:
        q = collector_pb2_grpc.QueryStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            q.ListHosts(collector_pb2.ListHostsRequest())
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as info:
            q.ListHosts(collector_pb2.ListHostsRequest(), metadata=_md("cfu_wrong"))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        expired = collector.expired_token("engineer", role="admin")
        with pytest.raises(grpc.RpcError) as info:
            q.ListHosts(collector_pb2.ListHostsRequest(), metadata=_md(expired))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and "expired" in (info.value.details() or "")
        # A viewer reads facts but may not take the raw bundle.
        q.GetBundle(collector_pb2.GetBundleRequest(bundle_id=ids[0]), metadata=_md(viewer))
        with pytest.raises(grpc.RpcError) as info:
            list(q.DownloadBundle(collector_pb2.GetBundleRequest(bundle_id=ids[0]), metadata=_md(viewer)))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # An enrollment token is not an engineer token.
        with pytest.raises(grpc.RpcError) as info:
            q.ListHosts(collector_pb2.ListHostsRequest(), metadata=_md(collector.enroll_token()))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Still serving.
        assert q.ListHosts(collector_pb2.ListHostsRequest(), metadata=_md(viewer)).hosts
    entries = collector.store.list_audit(limit=50)
    actions = [(e.action, e.outcome) for e in entries]
    assert ("query.get_bundle", "ok") in actions
    assert ("query.download_bundle", "denied") in actions
    assert sum(1 for a in actions if a == ("query.list_hosts", "denied")) >= 3
    assert all(viewer not in (e.detail + e.actor + e.target) for e in entries)


def test_health_and_reflection(collector: RunningCollector) -> None:
    with collector.channel() as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="casefile.v1.Ingest"))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        answers = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in answers[0].list_services_response.service}
        assert {"casefile.v1.Ingest", "casefile.v1.Query", "casefile.v1.Enroll", "grpc.health.v1.Health"} <= names


# ---------------------------------------------------------------- request checks and the audit log


def _rows(c: RunningCollector, action: str) -> list[AuditRecord]:
    return [e for e in c.store.list_audit(limit=50) if e.action == action]


def test_unauthenticated_caller_cannot_bloat_audit_log(collector: RunningCollector) -> None:
    """A 1.9 MB bundle id from a caller with no token is refused before authorisation; its
    audit row keeps a bounded target with a cut marker, and the admin can still read the log."""
    admin = collector.engineer_token("admin")
    with collector.channel() as ch:
        q = collector_pb2_grpc.QueryStub(ch)
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as info:
                q.GetBundle(collector_pb2.GetBundleRequest(bundle_id="z" * 1_900_000))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert len(info.value.details() or "") < 1000
        rows = _rows(collector, "query.get_bundle")
        assert len(rows) == 3
        assert all(r.outcome == "invalid_argument" and r.actor == "" for r in rows)
        assert all(len(r.target) <= 600 and "[cut 1899500 chars]" in r.target for r in rows)
        assert q.ListAudit(collector_pb2.ListAuditRequest(), metadata=_md(admin)).entries


def test_oversized_bundle_id_gets_clear_invalid_argument(collector: RunningCollector) -> None:
    """A 100 KB id is not echoed whole into the status (16 KiB metadata limit)."""
    viewer = collector.engineer_token("viewer")
    with collector.channel() as ch, pytest.raises(grpc.RpcError) as info:
        collector_pb2_grpc.QueryStub(ch).GetBundle(
            collector_pb2.GetBundleRequest(bundle_id="a" * 100_000), metadata=_md(viewer)
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details() or ""
    assert "bundle_id" in details and "not a bundle id" in details and len(details) < 1000


def test_nul_in_query_parameter_is_rejected_and_audited(collector: RunningCollector) -> None:
    """A NUL (which PostgreSQL text cannot hold) gets INVALID_ARGUMENT, and the audit row
    is still written, with the NUL escaped."""
    viewer = collector.engineer_token("viewer")
    admin = collector.engineer_token("admin")
    with collector.channel() as ch:
        q = collector_pb2_grpc.QueryStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            q.GetBundle(collector_pb2.GetBundleRequest(bundle_id="ab\x00cd"), metadata=_md(viewer))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "bundle" in (info.value.details() or "")
        with pytest.raises(grpc.RpcError) as info:
            q.ListBundles(collector_pb2.ListBundlesRequest(hostname="db\x00-1"), metadata=_md(viewer))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as info:
            q.ListAudit(collector_pb2.ListAuditRequest(action="x\x00"), metadata=_md(admin))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    rows = _rows(collector, "query.get_bundle")
    assert [(r.outcome, r.target) for r in rows] == [("invalid_argument", "ab\\x00cd")]
    assert [r.outcome for r in _rows(collector, "query.list_bundles")] == ["invalid_argument"]
    # The audit writer itself is safe too, whoever calls it.
    entry = collector.store.audit(actor="tok_x", action="t", outcome="ok", target="a\x00b", detail="\x1b[31m")
    assert (entry.target, entry.detail) == ("a\\x00b", "\\x1b[31m")


def test_audit_records_the_outcome_not_just_the_authorization(collector: RunningCollector, tmp_path: Path) -> None:
    """One audit row per call, written when it ends, with its final outcome."""
    ids = _seed(collector, tmp_path, 1)
    viewer = collector.engineer_token("viewer")
    engineer = collector.engineer_token("engineer")
    with collector.channel() as ch:
        q = collector_pb2_grpc.QueryStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            q.GetBundle(collector_pb2.GetBundleRequest(bundle_id="0" * 32), metadata=_md(viewer))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as info:
            q.GetTimeline(collector_pb2.TimelineRequest(bundle_id=ids[0], interval_s=7), metadata=_md(viewer))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert list(q.DownloadBundle(collector_pb2.GetBundleRequest(bundle_id=ids[0]), metadata=_md(engineer)))
        with pytest.raises(grpc.RpcError) as info:
            list(q.DownloadBundle(collector_pb2.GetBundleRequest(bundle_id="1" * 32), metadata=_md(engineer)))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    got = [(r.outcome, r.target) for r in _rows(collector, "query.get_bundle")]
    assert got == [("not_found", "0" * 32)]
    assert _rows(collector, "query.get_bundle")[0].actor != ""
    assert "not found" in _rows(collector, "query.get_bundle")[0].detail
    assert [r.outcome for r in _rows(collector, "query.get_timeline")] == ["invalid_argument"]
    assert [(r.outcome, r.target) for r in _rows(collector, "query.download_bundle")] == [
        ("not_found", "1" * 32),
        ("ok", ids[0]),
    ]


def test_denied_call_with_revoked_token_names_the_token(collector: RunningCollector) -> None:
    """A refused but known token (revoked here) is named in the audit row."""
    store = collector.store
    token, rec = store.create_token("engineer", role="admin", label="ex-employee", ttl=dt.timedelta(hours=1))
    store.revoke_token(rec.id)
    with collector.channel() as ch, pytest.raises(grpc.RpcError) as info:
        collector_pb2_grpc.QueryStub(ch).ListAudit(collector_pb2.ListAuditRequest(), metadata=_md(token))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    row = store.list_audit(limit=1)[0]
    assert (row.action, row.outcome, row.actor) == ("query.list_audit", "denied", rec.id)
    assert "revoked" in row.detail and token not in row.detail
