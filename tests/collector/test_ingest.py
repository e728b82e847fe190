"""Ingest against a real collector on loopback: resume, idempotence, rejection."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import io
import os
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.bundle import BundleMeta, new_bundle_id
from agent.errors import EnrollmentError, UploadError
from agent.keys import SigningKey
from agent.transport import UploadTarget, enroll, file_sha256, upload_bundle
from agent.transport.proof import make_proof
from collector.storage import NotFound
from protos import collector_pb2, collector_pb2_grpc
from tests.bombs import zero_bomb
from tests.collector.conftest import RunningCollector, small_bundle


def _enrolled(c: RunningCollector, hostname: str = "web-1") -> tuple[SigningKey, str]:
    key = SigningKey.generate()
    with c.channel() as ch:
        resp = enroll(ch, token=c.enroll_token(), key=key, hostname=hostname, agent_version="test")
    return key, resp.agent_id


def _header(key: SigningKey, agent_id: str, path: Path, bundle_id: str, offset: int = 0) -> collector_pb2.UploadHeader:
    size, sha = path.stat().st_size, file_sha256(path)
    return collector_pb2.UploadHeader(
        bundle_id=bundle_id,
        size=size,
        sha256=sha,
        offset=offset,
        file_name=path.name,
        proof=make_proof(key, agent_id=agent_id, bundle_id=bundle_id, sha256=sha, size=size),
    )


def _raw_upload(c: RunningCollector, chunks: list[collector_pb2.UploadChunk]) -> collector_pb2.Receipt:
    with c.channel() as ch:
        return collector_pb2_grpc.IngestStub(ch).Upload(iter(chunks), timeout=30)


def test_upload_then_query_roundtrip(collector: RunningCollector, tmp_path: Path) -> None:
    key, agent_id = _enrolled(collector)
    b = small_bundle(tmp_path / "out", key, agent_id=agent_id, case_id="SR-1")
    with collector.channel() as ch:
        receipt = upload_bundle(ch, b.path, bundle_id=b.bundle_id, target=UploadTarget(key=key, agent_id=agent_id))
    assert receipt.bundle_id == b.bundle_id and receipt.sha256 == b.sha256 and receipt.agent_id == agent_id
    stored = collector.store.get_bundle(b.bundle_id)
    assert stored.hostname == "web-1" and stored.case_id == "SR-1" and stored.size == b.size


def _cut_upload(c: RunningCollector, key: SigningKey, agent_id: str, path: Path, bundle_id: str, upto: int) -> None:
    """Send the header and the first ``upto`` bytes, then cancel the call mid-stream."""
    sent = threading.Event()
    release = threading.Event()
    data = path.read_bytes()

    def gen() -> Iterator[collector_pb2.UploadChunk]:
        yield collector_pb2.UploadChunk(header=_header(key, agent_id, path, bundle_id))
        for i in range(0, upto, 64 * 1024):
            yield collector_pb2.UploadChunk(data=data[i : min(i + 64 * 1024, upto)])
        sent.set()
        release.wait(10)  # hold the stream open, as a stalled connection would

    part = c.data_dir / "staging" / f"{bundle_id}.part"
    with c.channel() as ch:
        fut = collector_pb2_grpc.IngestStub(ch).Upload.future(gen(), timeout=30)
        assert sent.wait(10)
        # Let the collector write what was sent, then drop the call like a lost connection.
        for _ in range(400):
            if part.exists() and part.stat().st_size >= upto:
                break
            threading.Event().wait(0.025)
        fut.cancel()
        release.set()
        with pytest.raises(grpc.FutureCancelledError):
            fut.result()
    # The collector records the partial's durable offset as the cut stream's handler
    # ends, a moment after the client gave up: wait for it (GetUploadState reads it).
    size, sha = path.stat().st_size, file_sha256(path)
    for _ in range(200):
        if c.server.blobs.durable_offset(bundle_id, size, sha) > 0:
            break
        threading.Event().wait(0.025)


def test_cut_upload_resumes_and_is_byte_identical(collector: RunningCollector, tmp_path: Path) -> None:
    key, agent_id = _enrolled(collector)
    b = small_bundle(tmp_path / "out", key, agent_id=agent_id, payload=os.urandom(3 * 1024 * 1024))
    _cut_upload(collector, key, agent_id, b.path, b.bundle_id, upto=b.size // 2)
    # The collector keeps what arrived; the agent resumes from its committed offset.
    with collector.channel() as ch:
        stub = collector_pb2_grpc.IngestStub(ch)
        proof = make_proof(key, agent_id=agent_id, bundle_id=b.bundle_id, sha256=b.sha256, size=b.size)
        state = None
        for _ in range(100):
            try:
                state = stub.GetUploadState(
                    collector_pb2.UploadStateRequest(bundle_id=b.bundle_id, size=b.size, sha256=b.sha256, proof=proof),
                    timeout=10,
                )
                break
            except grpc.RpcError as err:  # the cut stream may still be closing
                assert err.code() == grpc.StatusCode.ABORTED
                threading.Event().wait(0.05)
        assert state is not None and not state.complete
        assert 0 < state.committed_offset <= b.size // 2
        receipt = upload_bundle(ch, b.path, bundle_id=b.bundle_id, target=UploadTarget(key=key, agent_id=agent_id))
    stored = collector.store.get_bundle(b.bundle_id)
    with collector.server.blobs.open_blob(stored.blob_key) as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == b.sha256 == receipt.sha256


def test_reupload_returns_same_receipt_and_other_bytes_are_refused(collector: RunningCollector, tmp_path: Path) -> None:
    key, agent_id = _enrolled(collector)
    b = small_bundle(tmp_path / "a", key, agent_id=agent_id)
    target = UploadTarget(key=key, agent_id=agent_id)
    with collector.channel() as ch:
        first = upload_bundle(ch, b.path, bundle_id=b.bundle_id, target=target)
        # Straight through Upload as well as through GetUploadState.
        again = _raw_upload(
            collector,
            [
                collector_pb2.UploadChunk(header=_header(key, agent_id, b.path, b.bundle_id)),
                collector_pb2.UploadChunk(data=b.path.read_bytes()),
            ],
        )
        assert again == first
        assert upload_bundle(ch, b.path, bundle_id=b.bundle_id, target=target) == first
        other = small_bundle(tmp_path / "b", key, agent_id=agent_id, bundle_id=b.bundle_id, hostname="other")
        with pytest.raises(UploadError, match="ALREADY_EXISTS"):
            upload_bundle(ch, other.path, bundle_id=b.bundle_id, target=target)


def test_case_token_upload_binds_identity_to_case(collector: RunningCollector, tmp_path: Path) -> None:
    token, _ = collector.store.create_token("case", case_id="SR-77", label="customer")
    key = SigningKey.generate()
    b = small_bundle(tmp_path / "o", key, case_id="SR-77")
    with collector.channel() as ch:
        receipt = upload_bundle(ch, b.path, bundle_id=b.bundle_id, target=UploadTarget(key=key, case_token=token))
    agent = collector.store.get_agent(receipt.agent_id)
    assert agent.case_id == "SR-77" and agent.fingerprint == key.fingerprint
    # A bundle for another case is refused with this token.
    wrong = small_bundle(tmp_path / "w", key, case_id="SR-99")
    with collector.channel() as ch, pytest.raises(UploadError, match="case"):
        upload_bundle(ch, wrong.path, bundle_id=wrong.bundle_id, target=UploadTarget(key=key, case_token=token))


def _rebuild(path: Path, out: Path, edit: dict[str, bytes]) -> Path:
    """Copy a bundle, replacing member contents but keeping the signed manifest."""
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes())
    buf = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(raw)) as src, tarfile.open(fileobj=buf, mode="w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()  # type: ignore[union-attr]
            name = m.name.split("/", 1)[1]
            if name in edit:
                data = edit[name]
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    out.write_bytes(zstandard.ZstdCompressor().compress(buf.getvalue()))
    return out


def test_tampered_bundles_are_rejected_and_nothing_is_stored(collector: RunningCollector, tmp_path: Path) -> None:
    key, agent_id = _enrolled(collector)
    target = UploadTarget(key=key, agent_id=agent_id)
    good = small_bundle(tmp_path / "g", key, agent_id=agent_id, payload=b"A" * 5000)
    flipped = _rebuild(good.path, tmp_path / "flipped.tar.zst", {"logs/payload.bin": b"B" + b"A" * 4999})
    truncated = tmp_path / "truncated.tar.zst"
    truncated.write_bytes(good.path.read_bytes()[: good.size // 2])
    other_key = SigningKey.generate()
    foreign = small_bundle(tmp_path / "f", other_key, agent_id=agent_id)  # signed by someone else
    with collector.channel() as ch:
        for bad, bid, what in [
            (flipped, good.bundle_id, "member logs/payload.bin: sha256 mismatch"),
            (truncated, good.bundle_id, "bundle rejected"),
            (foreign.path, foreign.bundle_id, "key"),
        ]:
            with pytest.raises(UploadError, match="INVALID_ARGUMENT") as info:
                upload_bundle(ch, bad, bundle_id=bid, target=target)
            assert what in str(info.value)
        # The server keeps serving, nothing half-written is visible, the good one still goes in.
        assert collector.store.list_bundles()[0] == []
        receipt = upload_bundle(ch, good.path, bundle_id=good.bundle_id, target=target)
        assert receipt.sha256 == good.sha256


def test_bad_requests_get_clear_statuses(collector: RunningCollector, tmp_path: Path) -> None:
    key, agent_id = _enrolled(collector)
    b = small_bundle(tmp_path / "o", key, agent_id=agent_id, payload=os.urandom(3 * 1024 * 1024))

    def status(chunks: list[collector_pb2.UploadChunk]) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as info:
            _raw_upload(collector, chunks)
        return info.value.code(), info.value.details() or ""

    hdr = _header(key, agent_id, b.path, b.bundle_id)
    code, msg = status([collector_pb2.UploadChunk(data=b"x")])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "first message must be the header" in msg
    bad = collector_pb2.UploadHeader()
    bad.CopyFrom(hdr)
    bad.bundle_id = "../../etc"
    code, msg = status([collector_pb2.UploadChunk(header=bad)])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "bundle_id" in msg
    code, msg = status(
        [collector_pb2.UploadChunk(header=hdr), collector_pb2.UploadChunk(data=b.path.read_bytes()[: 1024 * 1024 + 1])]
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "exceeds" in msg
    code, msg = status([collector_pb2.UploadChunk(header=hdr), collector_pb2.UploadChunk(data=os.urandom(1500 * 1024))])
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    forged = collector_pb2.UploadHeader()
    forged.CopyFrom(hdr)
    forged.proof.signature = SigningKey.generate().sign(b"x")
    code, msg = status([collector_pb2.UploadChunk(header=forged)])
    assert code == grpc.StatusCode.UNAUTHENTICATED and agent_id in msg
    stranger = collector_pb2.UploadHeader()
    stranger.CopyFrom(hdr)
    stranger.proof.agent_id = "ag_0000000000000000"
    code, msg = status([collector_pb2.UploadChunk(header=stranger)])
    assert code == grpc.StatusCode.UNAUTHENTICATED and "unknown agent" in msg
    too_big = collector_pb2.UploadHeader()
    too_big.CopyFrom(hdr)
    too_big.size = 1 << 50
    code, msg = status([collector_pb2.UploadChunk(header=too_big)])
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    # After all of that the collector still serves a proper upload.
    with collector.channel() as ch:
        assert (
            upload_bundle(ch, b.path, bundle_id=b.bundle_id, target=UploadTarget(key=key, agent_id=agent_id)).size
            == b.size
        )


def test_enrollment_tokens(collector: RunningCollector) -> None:
    key = SigningKey.generate()
    token = collector.enroll_token(uses=1)
    with collector.channel() as ch:
        enroll(ch, token=token, key=key, hostname="h", agent_version="t")
        with pytest.raises(EnrollmentError, match="UNAUTHENTICATED"):
            enroll(ch, token=token, key=SigningKey.generate(), hostname="h", agent_version="t")
        with pytest.raises(EnrollmentError, match="UNAUTHENTICATED"):
            enroll(ch, token="cfe_not-a-token", key=key, hostname="h", agent_version="t")
        expired = collector.expired_token("enroll", max_uses=1)
        with pytest.raises(EnrollmentError, match="expired"):
            enroll(ch, token=expired, key=SigningKey.generate(), hostname="h", agent_version="t")


def test_abandoned_partials_are_swept_at_start(tmp_path: Path) -> None:
    from collector.server import ServerConfig
    from collector.storage import BlobStore
    from tests.collector.conftest import _run_server

    data = tmp_path / "collector"
    blobs = BlobStore(data)
    with blobs.open_upload("a" * 32, 10, "b" * 64) as staged:
        staged.append(b"12345")
    assert blobs.part_path("a" * 32).exists()
    gen = _run_server(ServerConfig(address="127.0.0.1:0", data_dir=data, stale_upload_age=dt.timedelta(0)))
    running = next(gen)
    try:
        for _ in range(200):
            if not blobs.part_path("a" * 32).exists():
                break
            threading.Event().wait(0.025)
        assert not blobs.part_path("a" * 32).exists()
        assert running.store.list_bundles()[0] == []
    finally:
        gen.close()


# --- verification while the bytes arrive ---------------------------------------------


@pytest.fixture(params=["after-receipt", "while-receiving"])
def verifying_collector(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningCollector]:
    """A collector that verifies every bundle after its last byte, or every one as it arrives."""
    from collector.server import ServerConfig
    from collector.services.ingest import IngestLimits
    from tests.collector.conftest import _run_server

    big = 1 << 40 if request.param == "after-receipt" else 0
    # Small sync steps, so the fsync thread runs alongside the stream in every test here.
    limits = IngestLimits(stream_verify_min_bytes=big, stream_verify_workers=2, sync_every_bytes=128 * 1024)
    yield from _run_server(ServerConfig(address="127.0.0.1:0", data_dir=tmp_path / "collector", limits=limits))


def _no_verifier_left(c: RunningCollector) -> bool:
    ingest = c.server._ingest
    for _ in range(200):
        if ingest is None or ingest.verifier.following == 0:
            return True
        threading.Event().wait(0.025)
    return False


def test_every_tampering_is_caught_either_way(verifying_collector: RunningCollector, tmp_path: Path) -> None:
    c = verifying_collector
    key, agent_id = _enrolled(c)
    target = UploadTarget(key=key, agent_id=agent_id)
    good = small_bundle(tmp_path / "g", key, agent_id=agent_id, payload=os.urandom(600 * 1024))
    member = good.path.read_bytes()
    flipped = _rebuild(good.path, tmp_path / "flipped.tar.zst", {"logs/payload.bin": os.urandom(600 * 1024)})
    truncated = tmp_path / "truncated.tar.zst"
    truncated.write_bytes(member[: good.size // 2])
    garbage = tmp_path / "garbage.tar.zst"
    garbage.write_bytes(os.urandom(good.size))  # fails at its first byte, long before its last
    with c.channel() as ch:
        for bad, what in [
            (flipped, "member logs/payload.bin: sha256 mismatch"),
            (truncated, "truncated"),
            (garbage, "no zstd frame at byte 0"),
        ]:
            with pytest.raises(UploadError, match="INVALID_ARGUMENT") as info:
                upload_bundle(ch, bad, bundle_id=good.bundle_id, target=target)
            assert what in str(info.value), str(info.value)
            assert not (c.data_dir / "staging" / f"{good.bundle_id}.part").exists()
        assert c.store.list_bundles()[0] == []
        receipt = upload_bundle(ch, good.path, bundle_id=good.bundle_id, target=target)
    assert receipt.sha256 == good.sha256
    assert _no_verifier_left(c)
    streaming = c.server.config.limits.stream_verify_min_bytes == 0
    assert c.server._ingest is not None and c.server._ingest.verifier.started_followers == streaming


def test_bytes_that_hash_to_another_sha256_are_refused_either_way(
    verifying_collector: RunningCollector, tmp_path: Path
) -> None:
    """A header whose sha256 is not that of the bytes sent (a whole, validly signed bundle):
    refused DATA_LOSS naming both digests, whether verified while arriving or after;
    nothing stored, no partial left, and the right header then lands."""
    c = verifying_collector
    key, agent_id = _enrolled(c)
    b = small_bundle(tmp_path / "out", key, agent_id=agent_id, payload=os.urandom(700 * 1024))
    other = "ab" * 32
    header = _header(key, agent_id, b.path, b.bundle_id)
    header.sha256 = other
    header.proof.CopyFrom(make_proof(key, agent_id=agent_id, bundle_id=b.bundle_id, sha256=other, size=b.size))
    data = b.path.read_bytes()
    chunks = [collector_pb2.UploadChunk(header=header)]
    chunks += [collector_pb2.UploadChunk(data=data[i : i + 64 * 1024]) for i in range(0, len(data), 64 * 1024)]
    with pytest.raises(grpc.RpcError) as info:
        _raw_upload(c, chunks)
    assert info.value.code() == grpc.StatusCode.DATA_LOSS
    assert f"hash to {b.sha256[:16]}" in str(info.value.details()) and other[:16] in str(info.value.details())
    assert not (c.data_dir / "staging" / f"{b.bundle_id}.part").exists()
    assert not (c.data_dir / "staging" / f"{b.bundle_id}.json").exists()
    assert c.store.list_bundles()[0] == []
    assert _no_verifier_left(c)
    streaming = c.server.config.limits.stream_verify_min_bytes == 0
    assert c.server._ingest is not None and c.server._ingest.verifier.started_followers == streaming
    with c.channel() as ch:
        receipt = upload_bundle(ch, b.path, bundle_id=b.bundle_id, target=UploadTarget(key=key, agent_id=agent_id))
    assert receipt.sha256 == b.sha256 == c.store.get_bundle(b.bundle_id).sha256


def test_cut_and_resumed_upload_is_verified_from_the_first_byte(
    verifying_collector: RunningCollector, tmp_path: Path
) -> None:
    c = verifying_collector
    key, agent_id = _enrolled(c)
    b = small_bundle(tmp_path / "out", key, agent_id=agent_id, payload=os.urandom(2 * 1024 * 1024))
    _cut_upload(c, key, agent_id, b.path, b.bundle_id, upto=b.size // 3)
    assert _no_verifier_left(c)  # the cut stream's verifier gave up with it
    with c.channel() as ch:
        for _ in range(100):
            try:
                receipt = upload_bundle(
                    ch, b.path, bundle_id=b.bundle_id, target=UploadTarget(key=key, agent_id=agent_id)
                )
                break
            except UploadError as err:  # the cut stream may still be closing
                assert "ABORTED" in str(err)
                threading.Event().wait(0.05)
    stored = c.store.get_bundle(b.bundle_id)
    assert stored.sha256 == b.sha256 == receipt.sha256
    with c.server.blobs.open_blob(stored.blob_key) as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == b.sha256


def test_more_uploads_than_verifier_threads_all_land(verifying_collector: RunningCollector, tmp_path: Path) -> None:
    c = verifying_collector
    key, agent_id = _enrolled(c)
    target = UploadTarget(key=key, agent_id=agent_id)
    made = [small_bundle(tmp_path / f"b{i}", key, agent_id=agent_id, payload=os.urandom(300 * 1024)) for i in range(6)]
    receipts: dict[str, str] = {}
    errors: list[BaseException] = []

    def send(b: object) -> None:
        try:
            with c.channel() as ch:
                r = upload_bundle(ch, b.path, bundle_id=b.bundle_id, target=target)  # type: ignore[attr-defined]
            receipts[r.bundle_id] = r.sha256
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(b,)) for b in made]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert receipts == {b.bundle_id: b.sha256 for b in made}
    assert {r.bundle_id for r in c.store.list_bundles()[0]} == set(receipts)
    assert _no_verifier_left(c)


@settings(max_examples=60, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=40),
    reads=st.lists(st.integers(min_value=1, max_value=5000), min_size=1, max_size=50),
    already=st.integers(min_value=0, max_value=3),
)
def test_staged_tail_reads_exactly_the_published_bytes(chunks: list[bytes], reads: list[int], already: int) -> None:
    """Whether a read is served from the held chunks or from the file, in whatever
    sizes, the verifier sees the staged bytes in order, once, and then end of file."""
    import tempfile

    from collector.services.verifier import StagedTail

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.part"
        resumed = b"".join(chunks[:already])  # on disk before this stream, never held
        path.write_bytes(resumed)
        tail = StagedTail(path, len(resumed))
        tail._HELD_BYTES = 4000  # type: ignore[misc]  # small, so lagging reads fall back to the file
        offset = len(resumed)
        with path.open("ab") as fh:
            for chunk in chunks[already:]:
                fh.write(chunk)
                fh.flush()
                offset += len(chunk)
                tail.publish(offset, chunk)
        tail.end()
        got = bytearray()
        sizes = iter(reads * 1000)
        while data := tail.read(next(sizes)):
            got += data
        tail.close()
    assert bytes(got) == b"".join(chunks)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to tell a .part descriptor apart")
def test_a_failed_fsync_fails_the_upload_and_the_next_one_lands(
    verifying_collector: RunningCollector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = verifying_collector
    key, agent_id = _enrolled(c)
    target = UploadTarget(key=key, agent_id=agent_id)
    b = small_bundle(tmp_path / "out", key, agent_id=agent_id, payload=os.urandom(1024 * 1024))
    real, seen = os.fsync, [0]

    def fsync(fd: int) -> None:  # a disk error on the staged file, once, while the stream goes on
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".part"):
            seen[0] += 1
            if seen[0] == 2:  # the first is the one that opens the partial
                raise OSError(5, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with c.channel() as ch:
        stub = collector_pb2_grpc.IngestStub(ch)
        chunks = [collector_pb2.UploadChunk(header=_header(key, agent_id, b.path, b.bundle_id))]
        data = b.path.read_bytes()
        chunks += [collector_pb2.UploadChunk(data=data[i : i + 64 * 1024]) for i in range(0, len(data), 64 * 1024)]
        with pytest.raises(grpc.RpcError) as info:
            stub.Upload(iter(chunks), timeout=30)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "could not store the upload durably" in str(info.value.details())
        assert not (c.data_dir / "staging" / f"{b.bundle_id}.part").exists()
        assert c.store.list_bundles()[0] == []
        receipt = upload_bundle(ch, b.path, bundle_id=b.bundle_id, target=target)
    assert receipt.sha256 == b.sha256
    assert _no_verifier_left(c)


# ---------------------------------------------------------------- case-bound identities


def _case_upload(c: RunningCollector, tmp: Path, case: str, **token_kw: object) -> tuple[SigningKey, str, str, str]:
    token, rec = c.store.create_token("case", case_id=case, label="customer", **token_kw)  # type: ignore[arg-type]
    key = SigningKey.generate()
    b = small_bundle(tmp / "first", key, case_id=case)
    with c.channel() as ch:
        receipt = upload_bundle(ch, b.path, bundle_id=b.bundle_id, target=UploadTarget(key=key, case_token=token))
    return key, receipt.agent_id, token, rec.id


def _piece(data: bytes, i: int, upto: int) -> collector_pb2.UploadChunk:
    return collector_pb2.UploadChunk(data=data[i : min(i + 256 * 1024, upto)])


def test_case_identity_cannot_upload_to_another_case_without_its_token(
    sqlite_collector: RunningCollector, tmp_path: Path
) -> None:
    """A case token's identity never uploads on its key alone: naming its agent id is not
    enough, a bundle goes only to the case of the token presented (another case's token
    binds the same machine to that case too, for that case's bundles only), and a revoked
    token ends it."""
    c = sqlite_collector
    key, agent_id, token, token_id = _case_upload(c, tmp_path, "SR-1")
    assert c.store.get_agent(agent_id).case_id == "SR-1"
    other = small_bundle(tmp_path / "other", key, case_id="SR-OTHER-CUSTOMER")
    with c.channel() as ch:
        with pytest.raises(UploadError, match=r"UNAUTHENTICATED.*bound to case"):
            upload_bundle(ch, other.path, bundle_id=other.bundle_id, target=UploadTarget(key=key, agent_id=agent_id))
        with pytest.raises(UploadError, match="is not the token's case"):
            upload_bundle(
                ch, other.path, bundle_id=other.bundle_id,
                target=UploadTarget(key=key, agent_id=agent_id, case_token=token),
            )
        other_token, _ = c.store.create_token("case", case_id="SR-OTHER-CUSTOMER")
        upload_bundle(
            ch, other.path, bundle_id=other.bundle_id,
            target=UploadTarget(key=key, agent_id=agent_id, case_token=other_token),
        )
        assert c.store.cases_of(agent_id) == ("SR-1", "SR-OTHER-CUSTOMER")
        # With its own token and agent id, a bundle of its own case still lands.
        own = small_bundle(tmp_path / "own", key, case_id="SR-1")
        mine = UploadTarget(key=key, agent_id=agent_id, case_token=token)
        upload_bundle(ch, own.path, bundle_id=own.bundle_id, target=mine)
        c.store.revoke_token(token_id)
        again = small_bundle(tmp_path / "again", key, case_id="SR-1")
        with pytest.raises(UploadError, match="revoked"):
            upload_bundle(
                ch,
                again.path,
                bundle_id=again.bundle_id,
                target=UploadTarget(key=key, agent_id=agent_id, case_token=token),
            )
    assert [b.bundle_id for b in c.store.list_bundles(case_id="SR-OTHER-CUSTOMER")[0]] == [other.bundle_id]


def test_case_token_max_uses_is_enforced(sqlite_collector: RunningCollector, tmp_path: Path) -> None:
    """`--uses 1` lets one bundle in; a second one is refused before its bytes are taken."""
    c = sqlite_collector
    token, rec = c.store.create_token("case", case_id="SR-5", max_uses=1, ttl=dt.timedelta(hours=1))
    key = SigningKey.generate()
    first = small_bundle(tmp_path / "0", key, case_id="SR-5")
    second = small_bundle(tmp_path / "1", key, case_id="SR-5")
    target = UploadTarget(key=key, case_token=token)
    with c.channel() as ch:
        receipt = upload_bundle(ch, first.path, bundle_id=first.bundle_id, target=target)
        assert c.store.get_token(rec.id).uses == 1
        with pytest.raises(UploadError, match="used up"):
            upload_bundle(ch, second.path, bundle_id=second.bundle_id, target=target)
        # A replay of the stored bundle (its receipt was lost, say) still gets the receipt, free.
        assert upload_bundle(ch, first.path, bundle_id=first.bundle_id, target=target) == receipt
    assert c.store.get_token(rec.id).uses == 1


def test_resumed_case_upload_counts_one_use(sqlite_collector: RunningCollector, tmp_path: Path) -> None:
    c = sqlite_collector
    token, rec = c.store.create_token("case", case_id="SR-6", max_uses=1)
    key = SigningKey.generate()
    b = small_bundle(tmp_path / "b", key, case_id="SR-6", payload=os.urandom(2 * 1024 * 1024))
    data = b.path.read_bytes()
    half = len(data) // 2
    header = collector_pb2.UploadHeader(
        bundle_id=b.bundle_id,
        size=b.size,
        sha256=b.sha256,
        proof=make_proof(key, agent_id="", bundle_id=b.bundle_id, sha256=b.sha256, size=b.size),
    )
    with c.channel() as ch:
        with pytest.raises(grpc.RpcError) as info:  # the stream ends half-way
            collector_pb2_grpc.IngestStub(ch).Upload(
                iter(
                    [collector_pb2.UploadChunk(header=header)]
                    + [_piece(data, i, half) for i in range(0, half, 256 * 1024)]
                ),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=30,
            )
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert c.store.get_token(rec.id).uses == 0
        receipt = upload_bundle(ch, b.path, bundle_id=b.bundle_id, target=UploadTarget(key=key, case_token=token))
    assert receipt.case_id == "SR-6"
    assert c.store.get_token(rec.id).uses == 1


def test_enroll_with_bad_hostname_does_not_burn_the_token(sqlite_collector: RunningCollector) -> None:
    """Bad input loses nothing: the hostname is checked before the one-use token is consumed."""
    c = sqlite_collector
    token = c.enroll_token(uses=1)
    key = SigningKey.generate()
    with c.channel() as ch:
        stub = collector_pb2_grpc.EnrollStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Enroll(collector_pb2.EnrollRequest(token=token, public_key=key.public.raw, hostname=""))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "hostname" in (info.value.details() or "")
        resp = stub.Enroll(collector_pb2.EnrollRequest(token=token, public_key=key.public.raw, hostname="ok-host"))
    assert resp.agent_id.startswith("ag_")


def test_enroll_of_a_case_bound_key_does_not_burn_the_token(sqlite_collector: RunningCollector, tmp_path: Path) -> None:
    c = sqlite_collector
    key, _agent_id, _token, _ = _case_upload(c, tmp_path, "SR-8")
    token = c.enroll_token(uses=1)
    with c.channel() as ch:
        with pytest.raises(EnrollmentError, match="ALREADY_EXISTS"):
            enroll(ch, token=token, key=key, hostname="h", agent_version="t")
        enroll(ch, token=token, key=SigningKey.generate(), hostname="h", agent_version="t")


# ---------------------------------------------------------------- concurrent streams of one bundle


def test_other_identity_cannot_wipe_a_partial_upload(sqlite_collector: RunningCollector, tmp_path: Path) -> None:
    """A staged partial is resumed only for its own size/sha256 and agent: another agent
    naming the same bundle id with other bytes is refused and the partial stays."""
    c = sqlite_collector
    key_a, agent_a = _enrolled(c, "host-a")
    key_b, agent_b = _enrolled(c, "host-b")
    b = small_bundle(tmp_path / "a", key_a, agent_id=agent_a, payload=os.urandom(2 * 1024 * 1024))
    data = b.path.read_bytes()
    half = len(data) // 2
    header = collector_pb2.UploadHeader(
        bundle_id=b.bundle_id,
        size=b.size,
        sha256=b.sha256,
        proof=make_proof(key_a, agent_id=agent_a, bundle_id=b.bundle_id, sha256=b.sha256, size=b.size),
    )
    with c.channel() as ch:
        stub = collector_pb2_grpc.IngestStub(ch)
        with pytest.raises(grpc.RpcError) as info:  # truncated upload: stream ends at half
            stub.Upload(
                iter(
                    [collector_pb2.UploadChunk(header=header)]
                    + [_piece(data, i, half) for i in range(0, half, 256 * 1024)]
                ),
                timeout=30,
            )
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert c.server.blobs.staged_offset(b.bundle_id, b.size, b.sha256) == half
        for size, sha in ((10, "f" * 64), (b.size, b.sha256)):  # other bytes, or the same bytes
            hb = collector_pb2.UploadHeader(
                bundle_id=b.bundle_id,
                size=size,
                sha256=sha,
                proof=make_proof(key_b, agent_id=agent_b, bundle_id=b.bundle_id, sha256=sha, size=size),
            )
            with pytest.raises(grpc.RpcError) as info:
                stub.Upload(iter([collector_pb2.UploadChunk(header=hb)]), timeout=30)
            assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS, info.value.details()
            assert "staged" in (info.value.details() or "")
        assert c.server.blobs.staged_offset(b.bundle_id, b.size, b.sha256) == half, "agent A's partial was wiped"
        # Agent A itself resumes from where it was.
        receipt = upload_bundle(ch, b.path, bundle_id=b.bundle_id, target=UploadTarget(key=key_a, agent_id=agent_a))
    assert receipt.sha256 == b.sha256 and receipt.agent_id == agent_a


def test_concurrent_uploads_of_one_bundle_all_finish(sqlite_collector: RunningCollector, tmp_path: Path) -> None:
    """A newer stream of the same upload takes over; the older one is told ABORTED (not
    left waiting for a status that never comes), and another agent cannot take over."""
    c = sqlite_collector
    key, agent_id = _enrolled(c)
    key_b, agent_b = _enrolled(c, "host-b")
    b = small_bundle(tmp_path / "big", key, agent_id=agent_id, payload=os.urandom(3 * 1024 * 1024))
    data = b.path.read_bytes()
    header = collector_pb2.UploadHeader(
        bundle_id=b.bundle_id,
        size=b.size,
        sha256=b.sha256,
        proof=make_proof(key, agent_id=agent_id, bundle_id=b.bundle_id, sha256=b.sha256, size=b.size),
    )
    sent_half = threading.Event()
    go_on = threading.Event()
    step = 256 * 1024

    def slow() -> Iterator[collector_pb2.UploadChunk]:
        yield collector_pb2.UploadChunk(header=header)
        for i in range(0, len(data), step):
            if i >= len(data) // 2 and not sent_half.is_set():
                sent_half.set()
                go_on.wait(30)  # a live but slow stream (not a dead one)
            yield collector_pb2.UploadChunk(data=data[i : i + step])

    with c.channel() as ch_a, c.channel() as ch_b:
        first = collector_pb2_grpc.IngestStub(ch_a).Upload.future(slow())  # no deadline
        try:
            assert sent_half.wait(30)
            threading.Event().wait(0.5)
            # Another agent naming the same id while the stream is live is refused.
            hb = collector_pb2.UploadHeader(
                bundle_id=b.bundle_id,
                size=b.size,
                sha256=b.sha256,
                proof=make_proof(key_b, agent_id=agent_b, bundle_id=b.bundle_id, sha256=b.sha256, size=b.size),
            )
            with pytest.raises(grpc.RpcError) as info:
                collector_pb2_grpc.IngestStub(ch_b).Upload(iter([collector_pb2.UploadChunk(header=hb)]), timeout=30)
            assert info.value.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.ALREADY_EXISTS)
            target = UploadTarget(key=key, agent_id=agent_id)
            receipt = upload_bundle(ch_b, b.path, bundle_id=b.bundle_id, target=target)
            assert receipt.sha256 == b.sha256
            go_on.set()
            with pytest.raises(grpc.RpcError) as info:
                first.result(timeout=30)
            assert info.value.code() == grpc.StatusCode.ABORTED, info.value.details()
            assert "took over" in (info.value.details() or "")
        except grpc.FutureTimeoutError:
            pytest.fail("the first (taken-over) uploader got no answer within 30 s")
        finally:
            go_on.set()
            first.cancel()


def test_a_control_character_in_a_signed_name_is_refused_before_anything_is_stored(
    collector: RunningCollector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hostname holding U+0000 (PostgreSQL text refuses NUL) is named in the refusal;
    before, on PostgreSQL the blob was published and then the row failed: INTERNAL.
    Our agent refuses to make such a bundle; a hostile one signs it anyway."""
    key, agent_id = _enrolled(collector)
    monkeypatch.setattr(BundleMeta, "__post_init__", lambda self: None)  # the hostile agent's writer
    b = small_bundle(tmp_path / "n", key, agent_id=agent_id, hostname="web\x001")
    monkeypatch.undo()
    with collector.channel() as ch, pytest.raises(UploadError) as info:
        upload_bundle(ch, b.path, bundle_id=b.bundle_id, target=UploadTarget(key=key, agent_id=agent_id))
    assert "INTERNAL" not in str(info.value)
    assert "'hostname' holds control character U+0000 at index 3" in str(info.value)
    with pytest.raises(NotFound):
        collector.store.get_bundle(b.bundle_id)


# ---------------------------------------------------------------- hostile uploaders (issue 15)


def _limited(tmp_path: Path, **limits: object) -> Iterator[RunningCollector]:
    from collector.server import ServerConfig
    from collector.services.ingest import IngestLimits
    from tests.collector.conftest import _run_server

    yield from _run_server(
        ServerConfig(address="127.0.0.1:0", data_dir=tmp_path / "collector", limits=IngestLimits(**limits))  # type: ignore[arg-type]
    )


def _count(c: RunningCollector, table: str) -> int:
    from sqlalchemy import func, select
    from sqlalchemy import table as sql_table

    with c.store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(sql_table(table))).scalar_one())


def _status(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value.code(), info.value.details() or ""


def test_decompression_bomb_is_refused_naming_the_member_and_bounded(
    sqlite_collector: RunningCollector, tmp_path: Path
) -> None:
    """A 240 KB upload holding a 7 GiB zero member, signed by an enrolled key: before, the
    collector decompressed all 7 GiB (in the executor every database call shares) before
    refusing an extra member; now its tar header is over the bound and ends it there."""
    c = sqlite_collector
    key, agent_id = _enrolled(c)
    good = small_bundle(tmp_path / "g", key, agent_id=agent_id)
    bomb = tmp_path / "bomb.tar.zst"
    bomb.write_bytes(zero_bomb(good.path.read_bytes()))
    target = UploadTarget(key=key, agent_id=agent_id)
    with c.channel() as ch:
        with pytest.raises(UploadError, match="INVALID_ARGUMENT") as info:
            upload_bundle(ch, bomb, bundle_id=good.bundle_id, target=target)
        assert "member bomb.bin is 7,516,192,768 bytes by its tar header" in str(info.value)
        assert "refused before reading it" in str(info.value)
        verifier = c.server._ingest.verifier  # type: ignore[union-attr]
        assert verifier.decompressed_bytes < 1 << 20, verifier.decompressed_bytes
        assert c.store.list_bundles()[0] == []
        assert not (c.data_dir / "staging" / f"{good.bundle_id}.part").exists()
        assert upload_bundle(ch, good.path, bundle_id=good.bundle_id, target=target).sha256 == good.sha256


def test_bombs_within_the_bound_cost_at_most_the_bound(tmp_path: Path) -> None:
    """Zeros sized to stay under the bound get that much work and no more, then the refusal
    names the member; and the collector's ratio setting is the one applied."""
    c = next(gen := _limited(tmp_path, max_compression_ratio=50, ratio_floor_bytes=2 << 20))
    try:
        key, agent_id = _enrolled(c)
        good = small_bundle(tmp_path / "g", key, agent_id=agent_id)
        bomb = tmp_path / "bomb.tar.zst"
        bomb.write_bytes(zero_bomb(good.path.read_bytes(), zeros=(2 << 20) - 64 * 1024))
        with c.channel() as ch, pytest.raises(UploadError, match="INVALID_ARGUMENT") as info:
            upload_bundle(ch, bomb, bundle_id=good.bundle_id, target=UploadTarget(key=key, agent_id=agent_id))
        assert "member bomb.bin: in the archive, not in the manifest" in str(info.value)
        assert c.server._ingest.verifier.decompressed_bytes <= 2 << 20  # type: ignore[union-attr]
    finally:
        gen.close()


def test_used_up_case_token_writes_nothing(sqlite_collector: RunningCollector, tmp_path: Path) -> None:
    """A used-up case token made an agent row (with a host name of the caller's choosing)
    on every refused call; now refusal comes before any write."""
    c = sqlite_collector
    key, agent_id, token, _ = _case_upload(c, tmp_path, "SR-20", max_uses=1)
    first = c.store.list_bundles()[0][0]
    agents, audit = _count(c, "agents"), _count(c, "audit_log")
    b = small_bundle(tmp_path / "next", key, case_id="SR-20")
    meta = (("authorization", f"Bearer {token}"),)
    with c.channel() as ch:
        stub = collector_pb2_grpc.IngestStub(ch)
        for i in range(20):
            other = SigningKey.generate()
            proof = make_proof(other, agent_id="", bundle_id=b.bundle_id, sha256=b.sha256, size=b.size)
            proof.hostname = f"chosen-{i}"
            request = collector_pb2.UploadStateRequest(bundle_id=b.bundle_id, size=b.size, sha256=b.sha256, proof=proof)
            header = collector_pb2.UploadHeader(bundle_id=b.bundle_id, size=b.size, sha256=b.sha256, proof=proof)
            if i % 2:
                code, msg = _status(functools.partial(stub.GetUploadState, request, metadata=meta, timeout=10))
            else:
                chunks = [collector_pb2.UploadChunk(header=header)]
                code, msg = _status(functools.partial(stub.Upload, iter(chunks), metadata=meta, timeout=10))
            assert code == grpc.StatusCode.UNAUTHENTICATED and "used up (1/1 uploads)" in msg, msg
        with pytest.raises(UploadError, match="used up"):
            upload_bundle(ch, b.path, bundle_id=b.bundle_id, target=UploadTarget(key=key, case_token=token))
        assert (_count(c, "agents"), _count(c, "audit_log")) == (agents, audit)
        assert not list((c.data_dir / "staging").glob("*.part"))
        # The identity that used it still gets its receipt again.
        proof = make_proof(key, agent_id="", bundle_id=first.bundle_id, sha256=first.sha256, size=first.size)
        state = collector_pb2_grpc.IngestStub(ch).GetUploadState(
            collector_pb2.UploadStateRequest(
                bundle_id=first.bundle_id, size=first.size, sha256=first.sha256, proof=proof
            ),
            metadata=meta,
            timeout=10,
        )
    assert state.complete and state.receipt.agent_id == agent_id


def test_refused_uploads_use_up_a_case_token(tmp_path: Path) -> None:
    """Bad bundles under a case token are counted; at the limit the token takes no more
    uploads (not even good ones) and makes no new identity."""
    c = next(gen := _limited(tmp_path, max_refused_per_case_token=3))
    try:
        token, rec = c.store.create_token("case", case_id="SR-30")
        with c.channel() as ch:
            for i in range(3):
                key = SigningKey.generate()
                bad = small_bundle(tmp_path / f"bad{i}", key, case_id="SR-30", payload=b"A" * 5000)
                flipped = _rebuild(bad.path, tmp_path / f"f{i}.tar.zst", {"logs/payload.bin": b"B" * 5000})
                with pytest.raises(UploadError, match="INVALID_ARGUMENT"):
                    upload_bundle(ch, flipped, bundle_id=bad.bundle_id, target=UploadTarget(key=key, case_token=token))
            assert c.store.refused_uploads(rec.id) == 3
            agents = _count(c, "agents")
            key = SigningKey.generate()
            good = small_bundle(tmp_path / "good", key, case_id="SR-30")
            with pytest.raises(UploadError, match=r"UNAUTHENTICATED.*3 uploads refused"):
                upload_bundle(ch, good.path, bundle_id=good.bundle_id, target=UploadTarget(key=key, case_token=token))
        assert _count(c, "agents") == agents
        assert c.store.list_bundles()[0] == []
    finally:
        gen.close()


def test_upload_state_answers_only_the_uploader(collector: RunningCollector, tmp_path: Path) -> None:
    """Another case's token that knows a bundle's id, sha256 and size learned its receipt
    (agent, host, case, key). Now it gets what an unknown bundle gets, from GetUploadState
    and from Upload, and so does an enrolled agent; the uploader still gets its receipt."""
    c = collector
    key_a, agent_a, token_a, _ = _case_upload(c, tmp_path / "a", "SR-A")
    stored = c.store.list_bundles()[0][0]
    token_b, _ = c.store.create_token("case", case_id="SR-B")
    key_b = SigningKey.generate()
    key_e, agent_e = _enrolled(c, "other-host")
    unknown = new_bundle_id()

    def ask(key: SigningKey, agent_id: str, token: str | None, bundle_id: str, sha: str) -> object:
        proof = make_proof(key, agent_id=agent_id, bundle_id=bundle_id, sha256=sha, size=stored.size)
        meta = (("authorization", f"Bearer {token}"),) if token else ()
        stub = collector_pb2_grpc.IngestStub(ch)
        state = stub.GetUploadState(
            collector_pb2.UploadStateRequest(bundle_id=bundle_id, size=stored.size, sha256=sha, proof=proof),
            metadata=meta,
            timeout=10,
        )
        header = collector_pb2.UploadHeader(bundle_id=bundle_id, size=stored.size, sha256=sha, proof=proof)
        code, msg = _status(
            lambda: stub.Upload(iter([collector_pb2.UploadChunk(header=header)]), metadata=meta, timeout=10)
        )
        return state, code, msg.replace(bundle_id, "<id>")

    with c.channel() as ch:
        for asker in ((key_b, "", token_b), (key_e, agent_e, None)):
            for sha in (stored.sha256, "e" * 64):
                assert ask(*asker, stored.bundle_id, sha) == ask(*asker, unknown, sha)
                state = ask(*asker, stored.bundle_id, sha)[0]
                assert not state.complete and state.committed_offset == 0  # type: ignore[attr-defined]
                assert not state.HasField("receipt")  # type: ignore[attr-defined]
        proof = make_proof(key_a, agent_id=agent_a, bundle_id=stored.bundle_id, sha256=stored.sha256, size=stored.size)
        mine = collector_pb2_grpc.IngestStub(ch).GetUploadState(
            collector_pb2.UploadStateRequest(
                bundle_id=stored.bundle_id, size=stored.size, sha256=stored.sha256, proof=proof
            ),
            metadata=(("authorization", f"Bearer {token_a}"),),
            timeout=10,
        )
    assert mine.complete and mine.receipt.case_id == "SR-A"  # type: ignore[attr-defined]


def test_upload_state_does_not_tell_how_far_anothers_upload_got(
    sqlite_collector: RunningCollector, tmp_path: Path
) -> None:
    c = sqlite_collector
    key_a, agent_a = _enrolled(c, "host-a")
    key_b, agent_b = _enrolled(c, "host-b")
    b = small_bundle(tmp_path / "a", key_a, agent_id=agent_a, payload=os.urandom(2 * 1024 * 1024))
    _cut_upload(c, key_a, agent_a, b.path, b.bundle_id, upto=b.size // 2)
    with c.channel() as ch:
        stub = collector_pb2_grpc.IngestStub(ch)

        def offset(key: SigningKey, agent_id: str) -> int:
            proof = make_proof(key, agent_id=agent_id, bundle_id=b.bundle_id, sha256=b.sha256, size=b.size)
            req = collector_pb2.UploadStateRequest(bundle_id=b.bundle_id, size=b.size, sha256=b.sha256, proof=proof)
            for _ in range(100):
                try:
                    return int(stub.GetUploadState(req, timeout=10).committed_offset)
                except grpc.RpcError as err:  # the cut stream may still be closing
                    assert err.code() == grpc.StatusCode.ABORTED
                    threading.Event().wait(0.05)
            raise AssertionError("the cut stream never closed")

        assert offset(key_a, agent_a) > 0
        assert offset(key_b, agent_b) == 0


def test_one_identity_runs_a_bounded_number_of_uploads(tmp_path: Path) -> None:
    """An identity holding its uploads open cannot open more (RESOURCE_EXHAUSTED, which the
    agent retries); others are not held up, and the slots come back when streams end."""
    c = next(gen := _limited(tmp_path, max_uploads_per_identity=2))
    release = threading.Event()
    try:
        key, agent_id = _enrolled(c)
        made = [small_bundle(tmp_path / f"b{i}", key, agent_id=agent_id, payload=os.urandom(300_000)) for i in range(3)]

        def held(b: Any) -> Iterator[collector_pb2.UploadChunk]:
            yield collector_pb2.UploadChunk(header=_header(key, agent_id, b.path, b.bundle_id))
            yield collector_pb2.UploadChunk(data=b.path.read_bytes()[:1000])
            release.wait(30)

        with c.channel() as ch:
            stub = collector_pb2_grpc.IngestStub(ch)
            calls = [stub.Upload.future(held(b), timeout=60) for b in made[:2]]
            ingest = c.server._ingest
            for _ in range(400):
                if ingest is not None and ingest._slots.in_flight_count() == 2:  # type: ignore[attr-defined]
                    break
                threading.Event().wait(0.025)
            third = [collector_pb2.UploadChunk(header=_header(key, agent_id, made[2].path, made[2].bundle_id))]
            code, msg = _status(lambda: stub.Upload(iter(third), timeout=10))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "already has 2 uploads in progress" in msg, msg
            key_b, agent_b = _enrolled(c, "host-b")
            other = small_bundle(tmp_path / "other", key_b, agent_id=agent_b)
            upload_bundle(ch, other.path, bundle_id=other.bundle_id, target=UploadTarget(key=key_b, agent_id=agent_b))
            release.set()
            for call in calls:
                with pytest.raises(grpc.RpcError):
                    call.result(timeout=30)
            receipt = upload_bundle(
                ch, made[2].path, bundle_id=made[2].bundle_id, target=UploadTarget(key=key, agent_id=agent_id)
            )
        assert receipt.sha256 == made[2].sha256
    finally:
        release.set()
        gen.close()


def test_streams_without_a_header_are_closed_by_the_collector(tmp_path: Path) -> None:
    """Streams that never sent a header were never timed out (10,000 of them doubled the
    collector's memory); now each ends within the header timeout, and past a cap more are
    refused at once. A stream that goes quiet after its header ends too."""
    c = next(gen := _limited(tmp_path, header_timeout_s=2.0, max_headerless_streams=6, idle_timeout_s=1.0))
    release = threading.Event()
    try:

        def silent() -> Iterator[collector_pb2.UploadChunk]:
            release.wait(60)  # sends nothing until the test ends
            return
            yield  # a generator

        with c.channel() as ch:
            stub = collector_pb2_grpc.IngestStub(ch)
            calls = [stub.Upload.future(silent(), timeout=30) for _ in range(6)]
            ingest = c.server._ingest
            assert ingest is not None
            for _ in range(400):
                if ingest.headerless == 6:
                    break
                threading.Event().wait(0.01)
            assert ingest.headerless == 6
            code, msg = _status(lambda: stub.Upload(silent(), timeout=10))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "waiting for their header" in msg, msg
            for call in calls:  # each ends by itself, long before the client's own 30 s deadline
                with pytest.raises(grpc.RpcError) as info:
                    call.result(timeout=30)
                assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert "no header within 2 s" in (info.value.details() or "")
            assert ingest.headerless == 0
            # After the header, a stream that sends nothing more ends too.
            key, agent_id = _enrolled(c)
            b = small_bundle(tmp_path / "b", key, agent_id=agent_id)

            def quiet() -> Iterator[collector_pb2.UploadChunk]:
                yield collector_pb2.UploadChunk(header=_header(key, agent_id, b.path, b.bundle_id))
                release.wait(60)

            code, msg = _status(lambda: stub.Upload(quiet(), timeout=30))
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "no data for 1 s at byte 0" in msg, msg
    finally:
        release.set()
        gen.close()


def test_verifier_process_ends_with_a_killed_collector(tmp_path: Path) -> None:
    """Uploads are verified in a worker process; a collector killed outright (SIGKILL,
    the OOM killer) must not leave it behind."""
    import json
    import subprocess
    import sys

    from agent.transport import open_channel, parse_address

    binary = str(Path(sys.executable).parent / "casefile-collector")
    data = ["--data-dir", str(tmp_path / "collector")]
    token = subprocess.run(
        [binary, "token", "create", "--kind", "enroll", "-q", *data], check=True, capture_output=True, text=True
    ).stdout.strip()
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(
        [binary, "serve", "--address", "127.0.0.1:0", *data, "--ready-file", str(ready)], stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(600):
            if ready.exists() or proc.poll() is not None:
                break
            threading.Event().wait(0.05)
        info = json.loads(ready.read_text())
        key = SigningKey.generate()
        with open_channel(parse_address(f"127.0.0.1:{info['port']}"), ca_fingerprint=info["fingerprint"]) as ch:
            agent_id = enroll(ch, token=token, key=key, hostname="h", agent_version="t").agent_id
            b = small_bundle(tmp_path / "b", key, agent_id=agent_id)
            upload_bundle(ch, b.path, bundle_id=b.bundle_id, target=UploadTarget(key=key, agent_id=agent_id))
        workers = _worker_processes(proc.pid)
        assert workers, "the upload was not verified in a worker process"
        _kill_and_check_workers_end(proc, workers)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _worker_processes(pid: int) -> list[Any]:
    """The collector's spawned worker processes (verifier, analysis)."""
    import psutil

    return [p for p in psutil.Process(pid).children(recursive=True) if "spawn_main" in " ".join(p.cmdline())]


def _kill_and_check_workers_end(proc: Any, workers: list[Any]) -> None:
    import signal

    import psutil

    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    _, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive, f"verifier processes outlived the collector: {[p.pid for p in alive]}"


def test_serve_starts_the_verifier_before_the_first_upload(tmp_path: Path) -> None:
    """`serve` starts its verifier process with the server (the first upload after a start
    would otherwise wait ~1 s for an interpreter to import), and a collector killed while
    that process may still be starting does not leave it behind."""
    import subprocess
    import sys


    binary = str(Path(sys.executable).parent / "casefile-collector")
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(
        [binary, "serve", "--address", "127.0.0.1:0", "--data-dir", str(tmp_path / "c"), "--ready-file", str(ready)],
        stderr=subprocess.DEVNULL,
    )
    try:
        workers: list[Any] = []
        for _ in range(400):
            if ready.exists():
                workers = _worker_processes(proc.pid)
            if workers or proc.poll() is not None:
                break
            threading.Event().wait(0.05)
        assert workers, "no verifier process was started with the server"
        _kill_and_check_workers_end(proc, workers)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
