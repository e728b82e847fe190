"""Bundle blobs in S3-compatible object storage (AWS S3, MinIO, Ceph RGW).

Uploads are staged exactly as in the folder backend — on local disk in the data dir,
resumable, fsync'd — because the ingest service verifies the bundle from a local file
before anything becomes visible. ``commit`` then uploads the verified file to
``<prefix>/blobs/<sha[:2]>/<sha>`` (boto3's managed transfer, multipart above
``MULTIPART_THRESHOLD``) and removes the local partial. An S3 object appears only when
its upload completes, so a crash mid-transfer leaves nothing visible, and the staged
partial stays for the client to resume and commit again.

``open_blob`` streams ``get_object``; ``blob_path`` (analysis wants a seekable file)
fetches a verified copy into a small local cache.

Configuration: ``s3://bucket/prefix`` plus an endpoint (``--s3-endpoint`` or
``AWS_ENDPOINT_URL``); credentials and region come from boto3's standard chain
(environment, shared config, instance role). boto3 is the ``s3`` extra and is imported
only when an S3 store is opened.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlparse

from collector.storage.blobs import DEFAULT_SYNC_EVERY, BlobStore, _check_key
from collector.storage.errors import InvalidArgument, NotFound, StoreError

__all__ = ["MULTIPART_THRESHOLD", "S3BlobStore", "S3Location", "open_blob_backend", "parse_blob_url"]

MULTIPART_THRESHOLD = 64 * 1024 * 1024
_PART_SIZE = 16 * 1024 * 1024
_CACHE_KEEP = 8
_READ = 1024 * 1024


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # without leading or trailing "/", may be empty

    def key_for(self, sha: str) -> str:
        _check_key(sha)
        head = f"{self.prefix}/" if self.prefix else ""
        return f"{head}blobs/{sha[:2]}/{sha}"

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")


def parse_blob_url(url: str) -> S3Location | None:
    """``None`` for the local folder (empty, ``file:`` or ``folder:``), else the S3 location."""
    if not url or url in ("file:", "folder:"):
        return None
    parsed = urlparse(url)
    if parsed.scheme != "s3":
        raise InvalidArgument(
            f"unsupported blob URL {url!r}: use s3://bucket/prefix, or leave it unset for the data dir"
        )
    if not parsed.netloc:
        raise InvalidArgument(f"blob URL {url!r} names no bucket: use s3://bucket/prefix")
    if parsed.query or parsed.fragment or parsed.params:
        raise InvalidArgument(f"blob URL {url!r}: query strings are not supported; put options in flags or env")
    return S3Location(bucket=parsed.netloc, prefix=parsed.path.strip("/"))


class _BodyReader(io.RawIOBase):
    """A botocore StreamingBody as a raw stream, so callers get an ordinary BinaryIO."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._body.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


def _not_found(exc: Exception) -> bool:
    response = getattr(exc, "response", None)
    code = str((response or {}).get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


class S3BlobStore(BlobStore):
    """Committed blobs in a bucket; staging in ``root/staging`` as for ``BlobStore``."""

    def __init__(
        self,
        root: Path,
        location: S3Location,
        client: Any,
        *,
        sync_every: int = DEFAULT_SYNC_EVERY,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        part_size: int = _PART_SIZE,
    ) -> None:
        super().__init__(root, sync_every=sync_every)
        self.location = location
        self._client = client
        self._cache = self.root / "s3-cache"
        self._cache.mkdir(mode=0o700, exist_ok=True)
        from boto3.s3.transfer import TransferConfig

        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold, multipart_chunksize=part_size, max_concurrency=4
        )

    @classmethod
    def connect(
        cls,
        root: Path,
        location: S3Location,
        *,
        endpoint_url: str | None = None,
        sync_every: int = DEFAULT_SYNC_EVERY,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        part_size: int = _PART_SIZE,
    ) -> S3BlobStore:
        """Open with boto3's credential chain; fails early if the bucket is not reachable."""
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:
            raise StoreError(
                f"blob URL {location} needs boto3: install casefile[s3] ({exc})"
            ) from None
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}),
        )
        try:
            client.head_bucket(Bucket=location.bucket)
        except Exception as exc:
            raise StoreError(f"bucket {location.bucket} is not reachable at {endpoint_url or 'AWS'}: {exc}") from None
        return cls(
            root, location, client, sync_every=sync_every, multipart_threshold=multipart_threshold, part_size=part_size
        )

    def describe(self) -> str:
        return str(self.location)

    def _publish(self, part: Path, key: str, size: int) -> None:
        object_key = self.location.key_for(key)
        if not self._has_object(object_key, size):
            try:
                self._client.upload_file(
                    str(part),
                    self.location.bucket,
                    object_key,
                    ExtraArgs={"Metadata": {"sha256": key}},
                    Config=self._transfer,
                )
            except Exception as exc:
                # The partial stays staged: the client's next attempt commits it again.
                raise StoreError(f"uploading blob {key} to {self.location}: {exc}") from exc
        part.unlink()

    def _has_object(self, object_key: str, size: int | None = None) -> bool:
        try:
            head = self._client.head_object(Bucket=self.location.bucket, Key=object_key)
        except Exception as exc:
            if _not_found(exc):
                return False
            raise StoreError(f"looking up {object_key} in {self.location}: {exc}") from exc
        return size is None or int(head.get("ContentLength", -1)) == size

    def exists(self, key: str) -> bool:
        return self._has_object(self.location.key_for(key))

    def open_blob(self, key: str) -> BinaryIO:
        object_key = self.location.key_for(key)
        try:
            response = self._client.get_object(Bucket=self.location.bucket, Key=object_key)
        except Exception as exc:
            if _not_found(exc):
                raise NotFound(f"blob {key} not found in {self.location}", what="blob", key=key) from None
            raise StoreError(f"reading blob {key} from {self.location}: {exc}") from exc
        return io.BufferedReader(_BodyReader(response["Body"]), buffer_size=_READ)

    def blob_path(self, key: str) -> Path:
        """A verified local copy (content-addressed, so a cached file never goes stale)."""
        _check_key(key)
        cached = self._cache / key
        if cached.is_file():
            os.utime(cached)
            return cached
        tmp = self._cache / f".{key}.{os.getpid()}.{id(self)}.tmp"
        digest = hashlib.sha256()
        try:
            with self.open_blob(key) as src, open(tmp, "wb") as dst:
                while chunk := src.read(_READ):
                    digest.update(chunk)
                    dst.write(chunk)
            if digest.hexdigest() != key:
                raise StoreError(f"blob {key} in {self.location} hashes to {digest.hexdigest()}")
            os.chmod(tmp, 0o600)
            os.replace(tmp, cached)
        finally:
            tmp.unlink(missing_ok=True)
        self._trim_cache()
        return cached

    def _trim_cache(self) -> None:
        entries = []
        for path in self._cache.iterdir():
            if path.name.startswith("."):
                continue
            try:
                entries.append((path.stat().st_mtime, path))
            except FileNotFoundError:
                continue
        entries.sort(reverse=True)
        for _, path in entries[_CACHE_KEEP:]:
            path.unlink(missing_ok=True)


def open_blob_backend(
    data_dir: Path, blob_url: str | None = None, *, s3_endpoint: str | None = None
) -> BlobStore:
    """The folder store in ``data_dir``, or S3 for an ``s3://`` URL (staging in ``data_dir``)."""
    location = parse_blob_url(blob_url or "")
    if location is None:
        return BlobStore(data_dir)
    return S3BlobStore.connect(data_dir, location, endpoint_url=s3_endpoint)
