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
