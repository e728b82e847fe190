"""A bundle's identity is the signed manifest's; ``facts.pb`` repeats it and may not contradict it.

Both stay in the format (collectors and agents of earlier releases read the Snapshot's
fields), so the agent stamps the facts from the manifest's header
(``agent.bundle.identity.stamp_snapshot``) and the collector refuses, on upload and on
``import``, a bundle whose facts state another identity. Bundles written the earlier
way (the facts filled on their own, with the same values) and bundles whose facts
state no identity still go in.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest

from agent.bundle import BundleMeta, BundleWriter, WrittenBundle, new_bundle_id, verify_bundle
from agent.bundle.identity import identity_problems
from agent.collect import CollectionSpec
from agent.errors import UploadError
from agent.keys import SigningKey
from agent.oneshot import PrivacyOptions, collect_bundle
from agent.transport import UploadTarget, enroll, upload_bundle
from collector.server import default_db_url
from collector.services.handcarried import ImportRefused, import_bundles
from collector.storage import BlobStore, NotFound, Store
from protos import facts_pb2
from tests.collector.conftest import RunningCollector, small_bundle


def _bundle(out: Path, key: SigningKey, facts: facts_pb2.Snapshot, *, agent_id: str = "", case_id: str | None = None,
            bundle_id: str | None = None) -> WrittenBundle:  # fmt: skip
    """A real signed bundle around ``facts`` as given, whatever identity they state."""
    meta = BundleMeta(
        bundle_id=bundle_id or new_bundle_id(),
        hostname="web-1",
        case_id=case_id,
        agent_id=agent_id,
        agent_version="test",
        created_at=dt.datetime.now(dt.UTC),
    )
    out.mkdir(parents=True, exist_ok=True)
    with BundleWriter(out, key=key, meta=meta) as w:
        w.add_bytes("facts.pb", facts.SerializeToString())
        return w.finish(spec={}, collectors=[], truncated=[], redaction=None)


def _facts(**identity: str) -> facts_pb2.Snapshot:
    snap = facts_pb2.Snapshot(**identity)  # type: ignore[arg-type]
    snap.host.hostname = "web-1"
    return snap


def test_a_collected_bundle_states_its_identity_once_and_the_facts_repeat_it(tmp_path: Path) -> None:
    key = SigningKey.generate()
    collected = collect_bundle(
        key=key,
        output_dir=tmp_path / "out",
        agent_id="ag_identity",
        case_id="SR-5",
        spec=CollectionSpec(only=("host",)),
        privacy=PrivacyOptions(home=tmp_path / "home"),
    )
    vb = verify_bundle(collected.bundle.path, expected_key=key.public, keep=("facts.pb",))
    facts = facts_pb2.Snapshot.FromString(vb.kept["facts.pb"])
    m = vb.manifest
    assert identity_problems(facts, m) == []
    assert (facts.bundle_id, facts.agent_id, facts.case_id, facts.kind, facts.request_id) == (
        m.bundle_id, "ag_identity", "SR-5", "one-shot", ""
    )  # fmt: skip
    assert (facts.agent_version, facts.key_fingerprint) == (m.agent_version, key.fingerprint)
    # collected_at is the manifest's created_at, which keeps milliseconds only.
    assert abs(facts.collected_at.ToDatetime(tzinfo=dt.UTC) - m.created) < dt.timedelta(milliseconds=1)


def test_each_field_the_facts_contradict_is_named(tmp_path: Path) -> None:
    key = SigningKey.generate()
    bid = new_bundle_id()
    manifest_of = {"bundle_id": bid, "agent_id": "ag_1", "case_id": "SR-1", "kind": "one-shot",
                   "request_id": "", "agent_version": "test", "key_fingerprint": key.fingerprint}  # fmt: skip
    written = _bundle(tmp_path, key, _facts(), agent_id="ag_1", case_id="SR-1", bundle_id=bid)
    m = verify_bundle(written.path).manifest
    assert identity_problems(_facts(**manifest_of), m) == []
    assert identity_problems(facts_pb2.Snapshot(), m) == []  # states nothing: read from the manifest
    for name, other in [("bundle_id", new_bundle_id()), ("agent_id", "ag_2"), ("case_id", "SR-2"),
                        ("kind", "live"), ("request_id", "lr_1"), ("agent_version", "0.1"),
                        ("key_fingerprint", SigningKey.generate().fingerprint)]:  # fmt: skip
        problems = identity_problems(_facts(**{**manifest_of, name: other}), m)
        assert problems == [
            f"facts.pb {name} {other!r} differs from the signed manifest's {manifest_of[name]!r}"
        ]


def _enrolled(c: RunningCollector) -> tuple[SigningKey, str]:
    key = SigningKey.generate()
    with c.channel() as ch:
        resp = enroll(ch, token=c.enroll_token(), key=key, hostname="web-1", agent_version="test")
    return key, resp.agent_id


def test_upload_refuses_facts_that_contradict_the_manifest(sqlite_collector: RunningCollector, tmp_path: Path) -> None:
    c = sqlite_collector
    key, agent_id = _enrolled(c)
    target = UploadTarget(key=key, agent_id=agent_id)
    earlier_way = small_bundle(tmp_path / "a", key, agent_id=agent_id, case_id="SR-1")  # facts filled on their own
    no_identity = _bundle(tmp_path / "b", key, _facts(), agent_id=agent_id)
    other_id = new_bundle_id()
    other_bundle = _bundle(tmp_path / "c", key, _facts(bundle_id=other_id), agent_id=agent_id)
    other_case = _bundle(tmp_path / "d", key, _facts(case_id="SR-2"), agent_id=agent_id, case_id="SR-1")
    with c.channel() as ch:
        for good in (earlier_way, no_identity):
            assert upload_bundle(ch, good.path, bundle_id=good.bundle_id, target=target).bundle_id == good.bundle_id
        signed = "differs from the signed manifest's"
        for bad, why in [
            (other_bundle, f"facts.pb bundle_id {other_id!r} {signed} {other_bundle.bundle_id!r}"),
            (other_case, f"facts.pb case_id 'SR-2' {signed} 'SR-1'"),
        ]:
            with pytest.raises(UploadError, match="INVALID_ARGUMENT") as info:
                upload_bundle(ch, bad.path, bundle_id=bad.bundle_id, target=target)
            assert f"bundle {bad.bundle_id} rejected: {why}" in str(info.value)
            with pytest.raises(NotFound):
                c.store.get_bundle(bad.bundle_id)
    assert c.store.get_bundle(earlier_way.bundle_id).case_id == "SR-1"


def test_import_refuses_facts_that_contradict_the_manifest(tmp_path: Path) -> None:
    key = SigningKey.generate()
    good = small_bundle(tmp_path / "a", key)
    bad = _bundle(tmp_path / "b", key, _facts(kind="live"))
    store = Store.open(default_db_url(tmp_path))
    try:
        imported, refused = asyncio.run(import_bundles(store, BlobStore(tmp_path), [good.path, bad.path], None))
        assert not isinstance(imported, ImportRefused) and imported.inserted
        assert isinstance(refused, ImportRefused)
        why = "facts.pb kind 'live' differs from the signed manifest's 'one-shot'"
        assert str(refused) == f"{bad.path}: refused: {why}"
        with pytest.raises(NotFound):
            store.get_bundle(bad.bundle_id)
    finally:
        store.close()
