"""The blob backends: staged, resumable uploads committed into a content-addressed store.

Every test runs against the folder backend and against S3 (a moto server started on
127.0.0.1 for the session). The S3 cases are marked ``s3``: they skip with the reason
when boto3/moto are missing, and fail instead when ``CASEFILE_REQUIRE_S3=1`` (CI).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import collector
from collector.storage import BlobStore, Conflict, NotFound, S3BlobStore, S3Location, StagedUpload, StoreError
from collector.storage.errors import StagedByOther

# The checkout that holds the package under test, for the child process.
REPO = Path(collector.__file__).resolve().parents[1]


MakeStore = Callable[..., BlobStore]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (any free port) for the whole session."""
    try:
        import boto3  # noqa: F401
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        reason = f"S3 tests need boto3 and moto[server] (pip install -e '.[dev]'): {exc}"
        if os.environ.get("CASEFILE_REQUIRE_S3") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> S3Location:
    """A fresh bucket; credentials and endpoint through the standard AWS environment."""
    import boto3

    for name, value in {
        "AWS_ACCESS_KEY_ID": "casefile-test",
        "AWS_SECRET_ACCESS_KEY": "casefile-test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    bucket = f"casefile-test-{secrets.token_hex(6)}"
    boto3.session.Session().client("s3").create_bucket(Bucket=bucket)
    return S3Location(bucket=bucket, prefix="tenant-a/blobs-test")


@pytest.fixture(params=["folder", pytest.param("s3", marks=pytest.mark.s3)])
def blob_backend(request: pytest.FixtureRequest) -> MakeStore:
    """Makes a store on a staging root: ``blob_backend(root, sync_every=...)``."""
    if request.param == "folder":
        return BlobStore
    location: S3Location = request.getfixturevalue("s3_bucket")

    def make(root: Path, **kw: Any) -> BlobStore:
        return S3BlobStore.connect(root, location, **kw)

    return make


def is_folder(store: BlobStore) -> bool:
    return type(store) is BlobStore


def blob(n: int = 300_000) -> tuple[bytes, str]:
    data = secrets.token_bytes(n)
    return data, hashlib.sha256(data).hexdigest()


def send(upload: StagedUpload, data: bytes, piece: int = 64 * 1024) -> None:
    for i in range(0, len(data), piece):
        upload.append(data[i : i + piece])


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_upload_in_pieces_resume_and_commit(tmp_path: Path, blob_backend: MakeStore) -> None:
    store = blob_backend(tmp_path)
    data, sha = blob()
    bid = secrets.token_hex(16)
    with store.open_upload(bid, len(data), sha) as up:
        assert up.offset == 0
        send(up, data[:100_000])
        up.sync()
        assert up.durable_offset == 100_000
    assert store.durable_offset(bid, len(data), sha) == 100_000
    assert store.staged_offset(bid, len(data), sha) == 100_000
    with store.open_upload(bid, len(data), sha) as up:
        assert up.offset == 100_000
        send(up, data[100_000:])
        assert up.complete and up.sha256_hex() == sha
        assert up.path.read_bytes() == data
        key = up.commit()
    assert key == sha and store.exists(sha)
    path = store.blob_path(sha)
    if is_folder(store):
        assert path == tmp_path / "blobs" / sha[:2] / sha[2:4] / sha
    else:
        assert isinstance(store, S3BlobStore)
        assert store.location.key_for(sha) == f"tenant-a/blobs-test/blobs/{sha[:2]}/{sha}"
    assert path.read_bytes() == data
    with store.open_blob(sha) as fh:
        assert fh.read(1000) == data[:1000]
        assert fh.read() == data[1000:]
    assert mode(path) == 0o600 and mode(path.parent) == 0o700 and mode(tmp_path) == 0o700
    assert list((tmp_path / "staging").iterdir()) == []


CRASHING_WRITER = """
import sys
from pathlib import Path
from collector.storage import BlobStore
root, bid, size, sha, part = sys.argv[1:6]
data = Path(part).read_bytes()
up = BlobStore(Path(root)).open_upload(bid, int(size), sha)
up.append(data[:50_000])
up.sync()
up.append(data[50_000:120_000])  # written, never synced
import os
os._exit(9)  # die holding the lock, with no close() and no sync
"""


def test_crash_without_sync_truncates_to_the_durable_offset(tmp_path: Path, blob_backend: MakeStore) -> None:
    store = blob_backend(tmp_path / "store")
    data, sha = blob()
    bid = secrets.token_hex(16)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [str(tmp_path / "store"), bid, str(len(data)), sha, str(source)]
    done = subprocess.run([sys.executable, "-c", CRASHING_WRITER, *args], env=env, check=False)
    assert done.returncode == 9
    assert store.part_path(bid).stat().st_size == 120_000
    assert store.durable_offset(bid, len(data), sha) == 50_000
    with store.open_upload(bid, len(data), sha) as again:
        assert again.offset == 50_000
        assert again.path.stat().st_size == 50_000
        send(again, data[50_000:])
        assert again.complete
        again.commit()
    assert store.blob_path(sha).read_bytes() == data


def test_close_records_what_was_received(tmp_path: Path, blob_backend: MakeStore) -> None:
    store = blob_backend(tmp_path)
    data, sha = blob()
    bid = secrets.token_hex(16)
    with store.open_upload(bid, len(data), sha) as up:
        send(up, data[:77_777])
    with store.open_upload(bid, len(data), sha) as up:
        assert up.offset == 77_777


def test_sync_every_n_bytes(tmp_path: Path, blob_backend: MakeStore) -> None:
    store = blob_backend(tmp_path, sync_every=100_000)
    data, sha = blob()
    bid = secrets.token_hex(16)
    with store.open_upload(bid, len(data), sha) as up:
        send(up, data[:150_000], piece=50_000)
        assert up.durable_offset == 100_000
        sidecar = json.loads(store.sidecar_path(bid).read_text())
        assert sidecar == {"size": len(data), "sha256": sha, "offset": 100_000}


def test_other_size_or_hash_starts_over(tmp_path: Path, blob_backend: MakeStore) -> None:
    store = blob_backend(tmp_path)
    data, sha = blob()
    other, other_sha = blob(len(data))
    bid = secrets.token_hex(16)
    with store.open_upload(bid, len(data), sha) as up:
        send(up, data[:100_000])
    with store.open_upload(bid, len(other), other_sha) as up:
        assert up.offset == 0 and up.path.stat().st_size == 0
        send(up, other)
        assert up.complete
    assert store.durable_offset(bid, len(data), sha) == 0
    store.sidecar_path(bid).write_text("{not json")
    with store.open_upload(bid, len(other), other_sha) as up:
        assert up.offset == 0


def test_an_owned_partial_is_resumed_only_by_its_owner_for_its_bytes(tmp_path: Path, blob_backend: MakeStore) -> None:
    store = blob_backend(tmp_path)
    data, sha = blob()
    other, other_sha = blob(len(data))
    bid = secrets.token_hex(16)
    with store.open_upload(bid, len(data), sha, owner="ag_a") as up:
        send(up, data[:100_000])
    with pytest.raises(StagedByOther):
        store.open_upload(bid, len(other), other_sha, owner="ag_a")
    with pytest.raises(StagedByOther):
        store.open_upload(bid, len(data), sha, owner="ag_b")
    assert store.durable_offset(bid, len(data), sha) == 100_000
    with store.open_upload(bid, len(data), sha, owner="ag_a") as up:
        assert up.offset == 100_000


def test_refuses_overflow_bad_hash_and_short_commit(tmp_path: Path, blob_backend: MakeStore) -> None:
    store = blob_backend(tmp_path)
    data, sha = blob(1000)
    with store.open_upload(secrets.token_hex(16), len(data), sha) as up:
        with pytest.raises(ValueError, match="exceed the declared size"):
            up.append(data + b"x")
        up.append(data[:10])
        with pytest.raises(ValueError, match="holds 10 of 1000"):
            up.commit()
    wrong = hashlib.sha256(b"wrong").hexdigest()
    with store.open_upload(secrets.token_hex(16), len(data), wrong) as up:
        up.append(data)
        assert not up.complete
        with pytest.raises(ValueError, match="sha256"):
            up.commit()
        up.abort()
        assert not up.path.exists()


def test_existing_blob_drops_the_partial(tmp_path: Path, blob_backend: MakeStore) -> None:
    store = blob_backend(tmp_path)
    data, sha = blob()
    for _ in range(2):
        bid = secrets.token_hex(16)
        with store.open_upload(bid, len(data), sha) as up:
            send(up, data)
            assert up.commit() == sha
        assert not store.part_path(bid).exists()
    assert store.blob_path(sha).read_bytes() == data


@pytest.mark.parametrize(
    "bad", ["../../etc/passwd", "A" * 32, "0" * 31, "0" * 33, "", "0" * 31 + "/"]
)
def test_bad_bundle_ids_are_rejected(tmp_path: Path, blob_backend: MakeStore, bad: str) -> None:
    store = blob_backend(tmp_path)
    _, sha = blob(10)
    with pytest.raises(ValueError, match="bundle id"):
        store.open_upload(bad, 10, sha)


def test_bad_blob_keys_are_rejected(tmp_path: Path, blob_backend: MakeStore) -> None:
    store = blob_backend(tmp_path)
    with pytest.raises(ValueError, match="blob key"):
        store.open_blob("../x")
    with pytest.raises(NotFound):
        store.open_blob("0" * 64)
    assert not store.exists("0" * 64)


def test_concurrent_open_conflicts(tmp_path: Path, blob_backend: MakeStore) -> None:
    store = blob_backend(tmp_path)
    data, sha = blob(10)
    bid = secrets.token_hex(16)
    with store.open_upload(bid, len(data), sha):
        with pytest.raises(Conflict, match="already in progress"):
            store.open_upload(bid, len(data), sha)
        # A second store on the same folder (as another process would be) meets the flock.
        with pytest.raises(Conflict, match="already in progress"):
            blob_backend(tmp_path).open_upload(bid, len(data), sha)
    with store.open_upload(bid, len(data), sha) as up:
        assert up.offset == 0


def test_stale_uploads(tmp_path: Path, blob_backend: MakeStore) -> None:
    store = blob_backend(tmp_path)
    data, sha = blob(100)
    old, busy = secrets.token_hex(16), secrets.token_hex(16)
    with store.open_upload(old, len(data), sha) as up:
        up.append(data[:50])
    past = 1_000_000_000
    os.utime(store.part_path(old), (past, past))
    held = store.open_upload(busy, len(data), sha)
    os.utime(store.part_path(busy), (past, past))
    try:
        assert store.stale_uploads(timedelta(days=1)) == sorted([old, busy])
        assert store.stale_uploads(timedelta(days=1), remove=True) == [old]
        assert not store.part_path(old).exists() and not store.sidecar_path(old).exists()
        assert store.part_path(busy).exists()
    finally:
        held.close()


def _fsync_of_parts(monkeypatch: pytest.MonkeyPatch, behaviour: Any) -> None:
    """Replace fsync for ``.part`` files only (the sidecar and folders keep the real one):
    a failing disk or a slow one is what this machine cannot produce on demand."""
    real = os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".part"):
            behaviour(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to tell a .part descriptor apart")
def test_a_failed_fsync_is_never_recorded_or_committed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = BlobStore(tmp_path)
    data, sha = blob()
    bid = secrets.token_hex(16)
    up = store.open_upload(bid, len(data), sha)
    send(up, data[:100_000])
    up.sync()
    failures = [OSError(5, "Input/output error")]

    def fail_once(fd: int) -> None:
        if failures:
            raise failures.pop()

    _fsync_of_parts(monkeypatch, fail_once)
    send(up, data[100_000:])
    with pytest.raises(OSError, match="Input/output"):
        up.sync()
    # The kernel reports a lost write once: the next fsync "succeeds", and must not count.
    with pytest.raises(StoreError, match="earlier fsync failed"):
        up.sync()
    with pytest.raises(StoreError, match="not committing"):
        up.commit()
    up.close()
    assert json.loads(store.sidecar_path(bid).read_text())["offset"] == 100_000
    assert store.staged_offset(bid, len(data), sha) == 100_000
    assert not store.exists(sha)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to tell a .part descriptor apart")
def test_close_waits_for_a_sync_running_in_another_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = BlobStore(tmp_path)
    data, sha = blob()
    bid = secrets.token_hex(16)
    up = store.open_upload(bid, len(data), sha)
    send(up, data[:200_000])
    in_fsync = threading.Event()

    def slow(fd: int) -> None:
        in_fsync.set()
        time.sleep(0.3)

    _fsync_of_parts(monkeypatch, slow)
    syncer = threading.Thread(target=up.sync)
    syncer.start()
    assert in_fsync.wait(5)
    send(up, data[200_000:250_000], piece=50_000)  # appends go on during the sync
    up.close()  # must not give up the descriptor or the bundle lock mid-sync
    syncer.join(5)
    recorded = json.loads(store.sidecar_path(bid).read_text())["offset"]
    assert recorded == 250_000 == store.part_path(bid).stat().st_size
    with store.open_upload(bid, len(data), sha) as again:  # the lock was released, once
        assert again.offset == 250_000
