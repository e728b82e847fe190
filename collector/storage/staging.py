"""A partial upload being received into the blob store's staging folder.

``staging/<bundle_id>.part`` holds the bytes received so far and
``staging/<bundle_id>.json`` (the sidecar) the size, sha256, durable offset and owner
agent. The sidecar's offset only ever names bytes fsync'd before it was written, so
after a crash the ``.part`` may hold more but never less; resuming truncates back to
it. ``collector.storage.blobs.BlobStore`` opens these and publishes committed ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from collector.storage.errors import InvalidArgument, StoreError

if TYPE_CHECKING:
    from collector.storage.blobs import BlobStore

__all__ = ["StagedUpload", "drop_cached", "fsync_dir", "makedirs"]

_HASH_READ = 1024 * 1024


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def drop_cached(fd: int, start: int, end: int) -> None:
    """Let the kernel drop the page cache of bytes ``start``..``end``, already fsync'd.

    Called at each durable step of a large upload, for the step before: keeping
    every received byte cached grows the page cache by each upload's size, crowding out
    the database's pages, and makes every upload write into fresh pages where it could
    reuse the ones just dropped (1.8x large ingest's speed on a VM where fresh pages are
    slow to touch; no difference once they are not: benchmarks/README.md). The last two
    steps stay cached, and so does a bundle smaller than a step: what a verifier behind
    the stream, the commit, the S3 upload and the analysis read next. Advice only: where
    it is missing (macOS, Windows) or refused, nothing changes.
    """
    if end > start and hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_DONTNEED)


class StagedUpload:
    """A partial upload being received. Use as a context manager; ``close`` unlocks.

    ``offset`` counts bytes held (written); ``durable_offset`` those fsync'd and
    recorded in the sidecar, which is what a resuming client is told.
    """

    def __init__(
        self,
        store: BlobStore,
        bundle_id: str,
        size: int,
        sha256: str,
        fd: int,
        sync_every: int,
        owner: str = "",
    ) -> None:
        self.bundle_id = bundle_id
        self.size = size
        self.sha256 = sha256
        self.owner = owner
        self._store = store
        self._fd: int | None = fd
        self._sync_every = sync_every
        self._hasher = hashlib.sha256()
        self.offset = 0
        self.durable_offset = 0
        self._dropped_to = 0  # bytes before this were dropped from the page cache
        self._state = "open"  # open | committed | aborted | closed
        # ``sync`` may run in a worker thread while the owner goes on appending; commit,
        # abort and close take the same lock, so none of them runs during a sync.
        self._sync_lock = threading.Lock()
        self._sync_error: OSError | None = None

    @property
    def path(self) -> Path:
        return self._store.part_path(self.bundle_id)

    @property
    def _sidecar(self) -> Path:
        return self._store.sidecar_path(self.bundle_id)

    def _require_open(self) -> int:
        if self._state != "open" or self._fd is None:
            raise StoreError(f"upload {self.bundle_id} is {self._state}")
        return self._fd

    def _resume(self, recorded: int) -> None:
        """Keep the durable prefix (at most ``recorded`` bytes) and hash it again."""
        fd = self._require_open()
        keep = min(recorded, os.fstat(fd).st_size, self.size)
        os.ftruncate(fd, keep)
        pos = 0
        while pos < keep:
            chunk = os.pread(fd, min(_HASH_READ, keep - pos), pos)
            if not chunk:
                break
            self._hasher.update(chunk)
            pos += len(chunk)
        os.ftruncate(fd, pos)
        self.offset = self.durable_offset = pos
        # Always rewrite: a sidecar left by another (size, sha256) must not survive.
        os.fsync(fd)
        self._write_sidecar(pos)

    def append(self, data: bytes, *, autosync: bool = True) -> None:
        """Add bytes at ``offset``; syncs on its own every ``sync_every`` bytes unless
        ``autosync`` is off (the caller then calls ``sync``, possibly from a thread)."""
        fd = self._require_open()
        if self.offset + len(data) > self.size:
            raise InvalidArgument(
                f"upload {self.bundle_id}: {self.offset + len(data)} bytes would exceed the declared size {self.size}"
            )
        view = memoryview(data)
        pos = self.offset
        while view:
            # pwrite at an explicit offset: a failed write leaves no hidden file
            # position, and the next append starts at the last whole chunk.
            written = os.pwrite(fd, view, pos)
            view = view[written:]
            pos += written
        self._hasher.update(data)
        self.offset = pos
        if autosync and self.offset - self.durable_offset >= self._sync_every:
            self.sync()

    def sync(self) -> None:
        """Make everything held durable and record it in the sidecar.

        Safe to call from another thread while ``append`` goes on: it records only
        the offset reached before its fsync, never bytes written after it. After a
        failed fsync nothing is recorded again (the kernel reports a lost write once):
        every later ``sync`` and ``commit`` raises, and the partial must be aborted.
        """
        with self._sync_lock:
            self._sync_locked()

    def _sync_locked(self) -> None:
        fd = self._require_open()
        if self._sync_error is not None:
            raise StoreError(
                f"upload {self.bundle_id}: an earlier fsync failed ({self._sync_error}); "
                "the staged bytes cannot be trusted"
            )
        target = self.offset
        try:
            os.fsync(fd)
        except OSError as exc:
            self._sync_error = exc
            raise
        if target > self.durable_offset:
            self._write_sidecar(target)
            # One step behind: the bytes this step made durable stay cached for a verifier
            # a little behind the stream (or verifying after the last byte), those of the
            # step before go.
            drop_cached(fd, self._dropped_to, self.durable_offset)
            self._dropped_to = max(self._dropped_to, self.durable_offset)
            self.durable_offset = target  # only once the sidecar says so

    def _write_sidecar(self, offset: int) -> None:
        meta: dict[str, object] = {"size": self.size, "sha256": self.sha256, "offset": offset}
        if self.owner:
            meta["owner"] = self.owner  # the uploading agent: only it may resume this partial
        body = json.dumps(meta).encode()
        tmp = self._sidecar.with_suffix(".json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self._sidecar)
        fsync_dir(self._sidecar.parent)

    def sha256_hex(self) -> str:
        return self._hasher.hexdigest()

    @property
    def complete(self) -> bool:
        return self.offset == self.size and self.sha256_hex() == self.sha256

    def commit(self) -> str:
        """Move the verified bytes into the content-addressed store; returns the key."""
        with self._sync_lock:
            fd = self._require_open()
            if self._sync_error is not None:
                raise StoreError(
                    f"upload {self.bundle_id}: an earlier fsync failed ({self._sync_error}); not committing"
                )
            if self.offset != self.size:
                raise InvalidArgument(f"upload {self.bundle_id}: holds {self.offset} of {self.size} bytes")
            if self.sha256_hex() != self.sha256:
                raise InvalidArgument(
                    f"upload {self.bundle_id}: sha256 is {self.sha256_hex()}, the header said {self.sha256}"
                )
            os.fsync(fd)
            self._store._publish(self.path, self.sha256, self.size)
            fsync_dir(self.path.parent)
            self._sidecar.unlink(missing_ok=True)
            self._state = "committed"
            return self.sha256

    def abort(self) -> None:
        """Throw the partial away (the client will start from zero)."""
        with self._sync_lock:
            self._require_open()
            self.path.unlink(missing_ok=True)
            self._sidecar.unlink(missing_ok=True)
            self._state = "aborted"

    def close(self) -> None:
        """Record what is held (if still open) and release the locks. Idempotent.

        Waits for a sync running in another thread: the descriptor, the flock and the
        bundle's lock are never given up while something still writes for this upload.
        """
        with self._sync_lock:
            if self._fd is None:
                return
            try:
                if self._state == "open" and self.offset != self.durable_offset and self._sync_error is None:
                    self._sync_locked()
            finally:
                fd, self._fd = self._fd, None
                os.close(fd)  # drops the flock
                if self._state == "open":
                    self._state = "closed"
                self._store._release(self.bundle_id)

    def __enter__(self) -> StagedUpload:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
