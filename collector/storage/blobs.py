"""The blob store: a content-addressed folder, and resumable upload staging.

Layout under ``root``::

    blobs/<sha[:2]>/<sha[2:4]>/<sha>     committed bundles, named by SHA-256
    staging/<bundle_id>.part             bytes received so far
    staging/<bundle_id>.json             sidecar: size, sha256, durable offset, owner agent

The sidecar's offset only ever names bytes that were fsync'd before it was
written, so after a crash the ``.part`` may hold more than the sidecar says
but never less; resuming truncates back to the recorded offset. A blob becomes
visible only by ``os.replace`` of a complete, verified, fsync'd file.

One upload per bundle id at a time: an in-process lock per id plus ``flock``
on the ``.part`` (for other processes on the same folder).

``BlobBackend`` is what the services rely on. Staging is always this local folder
(the ingest service verifies the bundle from ``StagedUpload.path``, which
``collector.storage.staging`` holds); backends differ
only in where ``commit`` publishes the verified file (``_publish``) and where reads
come from — ``S3BlobStore`` in ``collector.storage.s3`` is the other one.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from agent.bundle.names import is_bundle_id, is_sha256
from collector.storage.errors import Conflict, InvalidArgument, NotFound, StagedByOther
from collector.storage.staging import StagedUpload, fsync_dir, makedirs

__all__ = ["DEFAULT_SYNC_EVERY", "BlobBackend", "BlobStore", "StagedUpload"]

DEFAULT_SYNC_EVERY = 8 * 1024 * 1024


def _check_bundle_id(bundle_id: str) -> None:
    # Paths are built from this: only the exact id shape may pass.
    if not is_bundle_id(bundle_id):
        raise InvalidArgument(f"bundle id {bundle_id!r} is not 32 lowercase hex digits")


def _check_key(key: str) -> None:
    if not is_sha256(key):
        raise InvalidArgument(f"blob key {key!r} is not a lowercase SHA-256 hex digest")


@runtime_checkable
class BlobBackend(Protocol):
    """Where bundle files live, named by SHA-256, with resumable upload staging."""

    def open_upload(self, bundle_id: str, size: int, sha256: str, *, owner: str = "") -> StagedUpload:
        """Start or resume staging; raises Conflict while another upload holds the id,
        StagedByOther if a partial of other bytes or another owner is staged under it."""
        ...

    def durable_offset(self, bundle_id: str, size: int, sha256: str, *, owner: str = "") -> int: ...

    def staged_offset(self, bundle_id: str, size: int, sha256: str, *, owner: str = "") -> int: ...

    def exists(self, key: str) -> bool: ...

    def open_blob(self, key: str) -> BinaryIO:
        """A stream of the committed blob's bytes; raises NotFound."""
        ...

    def blob_path(self, key: str) -> Path:
        """A local file holding the blob's bytes (a remote backend fetches a cached copy)."""
        ...

    def stale_uploads(self, older_than: timedelta, *, remove: bool = False) -> list[str]: ...

    def describe(self) -> str:
        """Where blobs go, for logs (no credentials)."""
        ...


class BlobStore:
    """Bundle files on local disk, named by their SHA-256."""

    def __init__(self, root: Path, *, sync_every: int = DEFAULT_SYNC_EVERY) -> None:
        self.root = Path(root)
        self._blobs = self.root / "blobs"
        self._staging = self.root / "staging"
        self._sync_every = sync_every
        self._guard = threading.Lock()
        self._active: dict[str, threading.Lock] = {}
        for path in (self.root, self._blobs, self._staging):
            makedirs(path)
            os.chmod(path, 0o700)

    def blob_path(self, key: str) -> Path:
        _check_key(key)
        return self._blobs / key[:2] / key[2:4] / key

    def part_path(self, bundle_id: str) -> Path:
        _check_bundle_id(bundle_id)
        return self._staging / f"{bundle_id}.part"

    def sidecar_path(self, bundle_id: str) -> Path:
        _check_bundle_id(bundle_id)
        return self._staging / f"{bundle_id}.json"

    @property
    def staging_dir(self) -> Path:
        """The owner-only folder of partial files (on the blobs' disk for a local store)."""
        return self._staging

    def publish_file(self, path: Path, key: str, size: int) -> str:
        """Store the complete, fsync'd file ``path`` (in ``staging_dir``) as the blob ``key``
        (its sha256, which the caller computed); ``path`` is gone afterwards."""
        _check_key(key)
        self._publish(path, key, size)
        return key

    def describe(self) -> str:
        return f"folder {self._blobs}"

    def _publish(self, part: Path, key: str, size: int) -> None:
        """Make the verified, fsync'd ``part`` the blob ``key``; ``part`` is gone afterwards."""
        dest = self.blob_path(key)
        makedirs(dest.parent)
        if dest.exists() and dest.stat().st_size == size:
            # Same name means same content: blobs only appear here complete.
            part.unlink()
        else:
            os.chmod(part, 0o600)
            os.replace(part, dest)
            fsync_dir(dest.parent)

    def exists(self, key: str) -> bool:
        return self.blob_path(key).is_file()

    def open_blob(self, key: str) -> BinaryIO:
        try:
            return self.blob_path(key).open("rb")
        except FileNotFoundError:
            raise NotFound(f"blob {key} not found", what="blob", key=key) from None

    def _read_sidecar(self, bundle_id: str) -> dict[str, object] | None:
        try:
            loaded = json.loads(self.sidecar_path(bundle_id).read_bytes())
        except (OSError, ValueError):
            return None
        return loaded if isinstance(loaded, dict) else None

    def durable_offset(self, bundle_id: str, size: int, sha256: str, *, owner: str = "") -> int:
        """Bytes durably staged for this exact upload, without taking its lock.

        With an ``owner``, a partial staged by another uploader counts as nothing: how
        far someone else's upload got is not theirs to learn.
        """
        meta = self._read_sidecar(bundle_id)
        if meta is None or meta.get("size") != size or meta.get("sha256") != sha256:
            return 0
        if owner and (meta.get("owner") or owner) != owner:
            return 0
        offset = meta.get("offset")
        return offset if isinstance(offset, int) and 0 <= offset <= size else 0

    # The name the ingest service asks for: bytes a resuming client may skip.
    staged_offset = durable_offset

    def _acquire(self, bundle_id: str) -> None:
        with self._guard:
            lock = self._active.setdefault(bundle_id, threading.Lock())
        if not lock.acquire(blocking=False):
            raise Conflict(f"upload of bundle {bundle_id} already in progress", key=bundle_id)

    def _release(self, bundle_id: str) -> None:
        with self._guard:
            lock = self._active.pop(bundle_id, None)
        if lock is not None:
            lock.release()

    def _open_locked_part(self, bundle_id: str) -> int:
        """Open and flock the .part, making sure the lock is on the file at that path."""
        path = self.part_path(bundle_id)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise Conflict(f"upload of bundle {bundle_id} already in progress", key=bundle_id) from None
            # The holder we waited on may have committed or aborted, moving or
            # unlinking the inode we locked; then lock the file now at the path.
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)

    def open_upload(self, bundle_id: str, size: int, sha256: str, *, owner: str = "") -> StagedUpload:
        """Start or resume staging ``bundle_id``; raises Conflict if already being written.

        With an ``owner`` (the uploading agent, as ingest passes it) a partial holding
        bytes is only resumed for the same size, sha256 and owner: anything else raises
        StagedByOther and leaves the partial as it is, so nobody can wipe another's
        upload half-way. Without one, other bytes start over from 0.
        """
        _check_bundle_id(bundle_id)
        _check_key(sha256)
        if size < 0:
            raise InvalidArgument(f"upload {bundle_id}: size must be >= 0, got {size}")
        self._acquire(bundle_id)
        try:
            fd = self._open_locked_part(bundle_id)
        except BaseException:
            self._release(bundle_id)
            raise
        try:
            if owner:
                self._check_claim(bundle_id, size, sha256, owner)
        except BaseException:
            os.close(fd)
            self._release(bundle_id)
            raise
        upload = StagedUpload(self, bundle_id, size, sha256, fd, self._sync_every, owner)
        try:
            upload._resume(self.durable_offset(bundle_id, size, sha256))
        except BaseException:
            upload.close()
            raise
        return upload

    def _check_claim(self, bundle_id: str, size: int, sha256: str, owner: str) -> None:
        meta = self._read_sidecar(bundle_id)
        staged = meta.get("offset") if meta is not None else None
        if meta is None or not isinstance(staged, int) or staged <= 0:
            return  # nothing staged worth keeping
        if meta.get("size") != size or meta.get("sha256") != sha256:
            raise StagedByOther(
                f"upload {bundle_id}: a partial of {meta.get('offset')} bytes is staged for other "
                f"bytes (size {meta.get('size')}, sha256 {str(meta.get('sha256'))[:16]}…)",
                key=bundle_id,
            )
        held_by = meta.get("owner") or ""
        if held_by and held_by != owner:
            raise StagedByOther(f"upload {bundle_id}: the staged partial belongs to another uploader", key=bundle_id)

    def stale_uploads(self, older_than: timedelta, *, remove: bool = False) -> list[str]:
        """Bundle ids of partials untouched for ``older_than``; removes them if asked.

        Partials being written right now are skipped (their lock is held).
        """
        cutoff = time.time() - older_than.total_seconds()
        stale: list[str] = []
        for part in sorted(self._staging.glob("*.part")):
            bundle_id = part.stem
            if not is_bundle_id(bundle_id):
                continue
            try:
                if part.stat().st_mtime >= cutoff:
                    continue
            except FileNotFoundError:
                continue
            if not remove:
                stale.append(bundle_id)
                continue
            try:
                self._acquire(bundle_id)
            except Conflict:
                continue
            try:
                fd = self._open_locked_part(bundle_id)
            except Conflict:
                self._release(bundle_id)
                continue
            try:
                self.part_path(bundle_id).unlink(missing_ok=True)
                self.sidecar_path(bundle_id).unlink(missing_ok=True)
                stale.append(bundle_id)
            finally:
                os.close(fd)
                self._release(bundle_id)
        return stale
