"""Sealed (age) uploads through a real collector on loopback, verified after their last
byte and while they arrive: the collector opens them with its identity and stores the
bundle that was inside (its bytes, its sha256); a sealed upload cut mid-stream resumes
like any other; a payload damaged on the way is refused and nothing is stored."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pyrage
import pytest

from agent.errors import UploadError
from agent.keys import SigningKey
from agent.transport import UploadTarget, file_sha256, upload_bundle
from collector.services.sealed import CollectorRecipient
from tests.collector.conftest import RunningCollector, small_bundle
from tests.collector.test_ingest import _cut_upload, _enrolled, _no_verifier_left, verifying_collector

__all__ = ["verifying_collector"]  # the fixture, shared with test_ingest


def _seal(plain: Path, c: RunningCollector) -> Path:
    recipient = CollectorRecipient(c.data_dir).recipient()
    assert recipient is not None
    sealed = plain.with_name(plain.name + ".age")
    sealed.write_bytes(pyrage.encrypt(plain.read_bytes(), [pyrage.x25519.Recipient.from_str(recipient)]))
    return sealed


def _nothing_opened_left(c: RunningCollector) -> bool:
    return not list((c.data_dir / "staging").glob("*.opened"))


def test_a_sealed_upload_stores_the_bundle_inside(verifying_collector: RunningCollector, tmp_path: Path) -> None:
    c = verifying_collector
    key, agent_id = _enrolled(c)
    target = UploadTarget(key=key, agent_id=agent_id)
    b = small_bundle(tmp_path / "b", key, agent_id=agent_id, payload=os.urandom(700 * 1024))
    sealed = _seal(b.path, c)
    damaged = bytearray(sealed.read_bytes())
    damaged[len(damaged) // 2] ^= 0x20
    bad = tmp_path / "damaged.age"
    bad.write_bytes(bytes(damaged))
    with c.channel() as ch:
        with pytest.raises(UploadError, match="INVALID_ARGUMENT") as info:
            upload_bundle(ch, bad, bundle_id=b.bundle_id, target=target)
        assert "tampered with or cut short" in str(info.value), str(info.value)
        assert c.store.list_bundles()[0] == [] and _nothing_opened_left(c)
        receipt = upload_bundle(ch, sealed, bundle_id=b.bundle_id, target=target)
    stored = c.store.get_bundle(b.bundle_id)
    assert stored.sha256 == b.sha256 == receipt.sha256 and stored.size == b.size
    with c.server.blobs.open_blob(stored.blob_key) as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == b.sha256
    assert _no_verifier_left(c) and _nothing_opened_left(c)
    assert not (c.data_dir / "staging" / f"{b.bundle_id}.part").exists()


def test_a_cut_sealed_upload_resumes(verifying_collector: RunningCollector, tmp_path: Path) -> None:
    c = verifying_collector
    key, agent_id = _enrolled(c)
    b = small_bundle(tmp_path / "b", key, agent_id=agent_id, payload=os.urandom(2 * 1024 * 1024))
    sealed = _seal(b.path, c)
    _cut_upload(c, key, agent_id, sealed, b.bundle_id, upto=sealed.stat().st_size // 3)
    assert _no_verifier_left(c)
    with c.channel() as ch:
        for _ in range(100):
            try:
                upload_bundle(ch, sealed, bundle_id=b.bundle_id, target=UploadTarget(key=key, agent_id=agent_id))
                break
            except UploadError as err:  # the cut stream may still be closing
                assert "ABORTED" in str(err)
                threading.Event().wait(0.05)
    assert c.store.get_bundle(b.bundle_id).sha256 == b.sha256
    assert _nothing_opened_left(c)


def _left_behind(c: RunningCollector, bundle_id: str) -> list[str]:
    staging = c.data_dir / "staging"
    return sorted(p.name for p in staging.iterdir() if p.name.startswith(bundle_id) or p.suffix == ".opened")


def test_a_sealed_bundle_sent_again_gets_its_receipt(verifying_collector: RunningCollector, tmp_path: Path) -> None:
    """The stored bundle is the one inside; a resend of the sealed file (a lost receipt, an
    upload run twice) or a new sealing of the same bundle opens to the same bytes: the
    same receipt, stored once. What opens to other bytes under the id is refused."""
    c = verifying_collector
    key, agent_id = _enrolled(c)
    target = UploadTarget(key=key, agent_id=agent_id)
    b = small_bundle(tmp_path / "b", key, agent_id=agent_id, payload=os.urandom(600 * 1024))
    resealed = _seal(b.path, c).rename(tmp_path / "resealed.tar.zst.age")
    sealed = _seal(b.path, c)
    assert file_sha256(resealed) != file_sha256(sealed)  # age: new bytes at every sealing
    other = small_bundle(tmp_path / "o", key, agent_id=agent_id, bundle_id=b.bundle_id, payload=b"other")
    assert other.sha256 != b.sha256
    other_sealed = _seal(other.path, c)
    plain_named_sealed = tmp_path / "plain.tar.zst.age"
    plain_named_sealed.write_bytes(other.path.read_bytes())
    with c.channel() as ch:
        first = upload_bundle(ch, sealed, bundle_id=b.bundle_id, target=target)
        for again in (sealed, resealed):
            receipt = upload_bundle(ch, again, bundle_id=b.bundle_id, target=target)
            assert receipt == first and receipt.sha256 == b.sha256, (again, receipt)
            assert _left_behind(c, b.bundle_id) == []
        for different in (other_sealed, plain_named_sealed):
            with pytest.raises(UploadError, match="ALREADY_EXISTS") as info:
                upload_bundle(ch, different, bundle_id=b.bundle_id, target=target)
            said = str(info.value)
            assert "already stored with sha256" in said and "refusing different bytes" in said, said
            assert _left_behind(c, b.bundle_id) == []
    bundles, _ = c.store.list_bundles()
    assert [(x.bundle_id, x.sha256) for x in bundles] == [(b.bundle_id, b.sha256)]
    with c.server.blobs.open_blob(bundles[0].blob_key) as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == b.sha256
    assert _no_verifier_left(c)


def test_a_sealed_resend_under_a_used_up_case_token(verifying_collector: RunningCollector, tmp_path: Path) -> None:
    """A one-use case token is used up by the bundle it stored; sending that sealed file
    again still finds its receipt (and uses nothing), while other bytes under its id and a
    new bundle are refused."""
    c = verifying_collector
    token, record = c.store.create_token("case", case_id="SR-5", label="customer", max_uses=1)
    key = SigningKey.generate()
    target = UploadTarget(key=key, case_token=token)
    b = small_bundle(tmp_path / "b", key, case_id="SR-5")
    sealed = _seal(b.path, c)
    with c.channel() as ch:
        first = upload_bundle(ch, sealed, bundle_id=b.bundle_id, target=target)
        assert upload_bundle(ch, sealed, bundle_id=b.bundle_id, target=target) == first
        other = small_bundle(tmp_path / "o", key, case_id="SR-5", bundle_id=b.bundle_id, payload=b"other")
        with pytest.raises(UploadError, match="ALREADY_EXISTS"):
            upload_bundle(ch, _seal(other.path, c), bundle_id=b.bundle_id, target=target)
        fresh = small_bundle(tmp_path / "n", key, case_id="SR-5")
        with pytest.raises(UploadError, match="UNAUTHENTICATED"):
            upload_bundle(ch, _seal(fresh.path, c), bundle_id=fresh.bundle_id, target=target)
    assert [x.bundle_id for x in c.store.list_bundles()[0]] == [b.bundle_id]
    assert c.store.get_token(record.id).uses == 1
    assert _left_behind(c, b.bundle_id) == []
