"""S3 blobs through a real collector: ingest → query → download → analysis, and S3 edge cases.

The moto server and bucket fixtures come from the blob suite (one server per session).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.keys import SigningKey
from agent.transport import UploadTarget, enroll, upload_bundle
from collector.server import ServerConfig
from collector.storage import InvalidArgument, NotFound, S3BlobStore, S3Location, StoreError, parse_blob_url
from protos import collector_pb2, collector_pb2_grpc
from tests.collector.conftest import RunningCollector, _run_server, small_bundle
from tests.collector.test_storage_blobs import s3_bucket, s3_endpoint  # noqa: F401  (fixtures)

pytestmark = pytest.mark.s3


@pytest.fixture
def s3_collector(tmp_path: Path, s3_bucket: S3Location) -> Iterator[RunningCollector]:  # noqa: F811
    # Endpoint and credentials from the standard AWS environment, as an operator would.
    url = f"s3://{s3_bucket.bucket}/{s3_bucket.prefix}"
    yield from _run_server(ServerConfig(address="127.0.0.1:0", data_dir=tmp_path / "collector", blob_url=url))


def _client() -> Any:
    # Imported here so that without boto3 these tests skip (the fixtures say why) instead of erroring.
    import boto3

    return boto3.session.Session().client("s3")


def _objects(location: S3Location) -> dict[str, int]:
    listed = _client().list_objects_v2(Bucket=location.bucket)
    return {o["Key"]: o["Size"] for o in listed.get("Contents", [])}


def test_ingest_query_download_on_s3(
    s3_collector: RunningCollector, s3_bucket: S3Location, tmp_path: Path  # noqa: F811
) -> None:
    c = s3_collector
    key = SigningKey.generate()
    with c.channel() as ch:
        agent_id = enroll(ch, token=c.enroll_token(), key=key, hostname="web-1", agent_version="t").agent_id
        b = small_bundle(tmp_path / "b", key, agent_id=agent_id, payload=secrets.token_bytes(600_000))
        receipt = upload_bundle(ch, b.path, bundle_id=b.bundle_id, target=UploadTarget(key=key, agent_id=agent_id))
        assert receipt.sha256 == b.sha256
        # The blob is in the bucket under the content-addressed key; nothing stays staged.
        assert _objects(s3_bucket) == {s3_bucket.key_for(b.sha256): b.size}
        assert list((c.data_dir / "staging").iterdir()) == []
        assert not any((c.data_dir / "blobs").rglob("*.tar.zst")) and not any((c.data_dir / "blobs").rglob(b.sha256))

        md = (("authorization", f"Bearer {c.engineer_token('engineer')}"),)
        q = collector_pb2_grpc.QueryStub(ch)
        listed = q.ListBundles(collector_pb2.ListBundlesRequest(hostname="web-1"), metadata=md)
        assert [s.bundle_id for s in listed.bundles] == [b.bundle_id]
        chunks = list(q.DownloadBundle(collector_pb2.GetBundleRequest(bundle_id=b.bundle_id), metadata=md))
        body = b"".join(x.data for x in chunks[1:])
        assert body == b.path.read_bytes() and chunks[0].header.sha256 == hashlib.sha256(body).hexdigest()
        # Analysis reads a verified local copy fetched from the bucket.
        findings = q.GetFindings(collector_pb2.GetBundleRequest(bundle_id=b.bundle_id), metadata=md)
        assert findings.json.startswith("{") or findings.json.startswith("[")
        # Idempotent: the same bundle again gives the same receipt and no second object.
        again = upload_bundle(ch, b.path, bundle_id=b.bundle_id, target=UploadTarget(key=key, agent_id=agent_id))
        assert again == receipt and len(_objects(s3_bucket)) == 1


def _store(tmp_path: Path, location: S3Location, **kw: object) -> S3BlobStore:
    return S3BlobStore.connect(tmp_path, location, **kw)  # type: ignore[arg-type]


def test_large_blob_goes_up_in_parts(tmp_path: Path, s3_bucket: S3Location) -> None:  # noqa: F811
    part = 5 * 1024 * 1024  # S3's smallest part
    store = _store(tmp_path, s3_bucket, multipart_threshold=part, part_size=part)
    data = secrets.token_bytes(2 * part + 12345)
    sha = hashlib.sha256(data).hexdigest()
    with store.open_upload(secrets.token_hex(16), len(data), sha) as up:
        up.append(data)
        up.commit()
    head = _client().head_object(Bucket=s3_bucket.bucket, Key=s3_bucket.key_for(sha))
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3")  # a multipart ETag names its part count
    assert head["Metadata"] == {"sha256": sha}
    with store.open_blob(sha) as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == sha


def test_missing_and_tampered_objects(tmp_path: Path, s3_bucket: S3Location) -> None:  # noqa: F811
    store = _store(tmp_path, s3_bucket)
    sha = hashlib.sha256(b"original").hexdigest()
    with pytest.raises(NotFound):
        store.open_blob(sha)
    with pytest.raises(NotFound):
        store.blob_path(sha)
    # Someone with bucket access swapped the bytes: the local copy is refused, not cached.
    _client().put_object(Bucket=s3_bucket.bucket, Key=s3_bucket.key_for(sha), Body=b"tampered")
    with pytest.raises(StoreError, match="hashes to"):
        store.blob_path(sha)
    assert list((tmp_path / "s3-cache").iterdir()) == []


def test_unreachable_bucket_fails_at_start(
    tmp_path: Path, s3_bucket: S3Location, s3_endpoint: str  # noqa: F811
) -> None:
    with pytest.raises(StoreError, match="not reachable"):
        S3BlobStore.connect(tmp_path, S3Location("no-such-bucket-casefile", ""), endpoint_url=s3_endpoint)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("", None),
        ("s3://bkt", S3Location("bkt", "")),
        ("s3://bkt/a/b/", S3Location("bkt", "a/b")),
    ],
)
def test_blob_urls(url: str, expected: S3Location | None) -> None:
    assert parse_blob_url(url) == expected


@pytest.mark.parametrize("url", ["http://x/y", "s3:///prefix", "s3://b/p?x=1", "/srv/blobs"])
def test_bad_blob_urls(url: str) -> None:
    with pytest.raises(InvalidArgument, match="blob URL"):
        parse_blob_url(url)
