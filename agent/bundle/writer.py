"""Write a bundle as a stream: members go into the compressed tar as they are produced.

Memory stays bounded whatever the member sizes: ``add_file`` copies from the
source in chunks, ``open_member`` spools to an anonymous temporary file beside the
bundle once a member passes 1 MiB (tar needs a member's size before its data), and
the zstd compressor works on a fixed window (the file objects involved are in
``agent.bundle.sinks``).

The bundle is written to ``.<name>.partial`` in the output folder, fsynced, and only
then linked to its final name, so a reader never sees half a bundle under the real
name. Bundles are created mode 0600: they may hold customer data, and whoever sends
them on can loosen that on purpose.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, cast

import zstandard

from agent.bundle.manifest import (
    BUNDLE_SUFFIX,
    FORMAT,
    MANIFEST_NAME,
    RESERVED_NAMES,
    SIGNATURE_NAME,
    BundleKind,
    BundleMeta,
    Manifest,
    MemberInfo,
    PathSet,
    bundle_file_name,
    encode_manifest,
    format_time,
    member_path_problem,
)
from agent.bundle.sinks import HashingSink, MemberWriter
from agent.errors import BundleError
from agent.keys import SigningKey

if TYPE_CHECKING:
    pass

__all__ = ["BundleWriter", "MemberWriter", "WrittenBundle"]

ZSTD_LEVEL = 3
SPOOL_MAX = 1 << 20
_CHUNK = 1 << 20
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE


@dataclass(frozen=True)
class WrittenBundle:
    """A finished bundle on disk. ``sha256`` and ``size`` are of the whole file."""

    path: Path
    bundle_id: str
    size: int
    sha256: str
    fingerprint: str
    manifest: Manifest  # as signed: ``manifest_bytes`` is ``encode_manifest(manifest)``
    manifest_bytes: bytes


class BundleWriter:
    """Write one bundle. Not thread-safe: members are appended one at a time.

    Use as a context manager; leaving the block without ``finish()`` (or with an
    exception) removes the partial file. A failed ``add_*`` that raised before any
    byte reached the archive (bad path, unreadable source, exception inside an
    ``open_member`` block) leaves the writer usable; a failure while writing the
    archive itself marks it broken and every later call raises ``BundleError``.
    """

    def __init__(self, out_dir: Path | str, *, key: SigningKey, meta: BundleMeta) -> None:
        self.meta = meta
        self.name = bundle_file_name(meta)
        self.top = self.name[: -len(BUNDLE_SUFFIX)]
        self._dir = Path(out_dir)
        self.path = self._dir / self.name
        self._partial = self._dir / f".{self.name}.partial"
        self._key = key
        self._mtime = int(meta.created_at.timestamp())
        self._members: list[MemberInfo] = []
        self._paths = PathSet()
        self._shrunk: list[dict[str, Any]] = []
        self._state = "open"  # open | member | broken | finished | aborted
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        try:
            fd = os.open(self._partial, flags, 0o600)
        except OSError as exc:
            raise BundleError(
                f"cannot create bundle in {self._dir}: {exc.strerror or exc}", path=str(self.path)
            ) from None
        self._raw = os.fdopen(fd, "wb")
        self._sink = HashingSink(self._raw)
        compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
        # The sink has the one method the compressor calls; its stub asks for a whole file.
        self._zstd = compressor.stream_writer(cast(IO[bytes], self._sink), closefd=False)
        self._offset = 0

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state != "finished":
            self.abort()

    @property
    def members(self) -> tuple[MemberInfo, ...]:
        return tuple(self._members)

    def add_bytes(self, path: str, data: bytes) -> MemberInfo:
        """Add a member whose content is already in memory."""
        self._claim(path)
        return self._emit(path, len(data), (data,))

    def add_file(self, path: str, source: Path | str) -> MemberInfo:
        """Add a member copied from the regular file ``source``.

        Files up to 1 MiB are read whole first: /proc and /sys report sizes (0,
        4096) that are not what a read returns. Larger ones stream straight into
        the archive; one that grows meanwhile is cut at the size it had when
        opened, one that shrinks (a log truncated by rotation) is padded with NUL
        bytes so the archive stays whole, and the manifest's ``truncated`` says so.
        """
        self._claim(path)
        try:
            fh = open(source, "rb")  # noqa: SIM115 - opened apart from `with` to map its errors
        except OSError as exc:
            raise self._source_error(path, source, exc) from None
        with fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                # A device or pipe may never end; command output goes through open_member.
                raise BundleError(
                    f"{source} is not a regular file (member {path})", path=str(source)
                )
            if st.st_size > SPOOL_MAX:
                return self._emit(path, st.st_size, self._exact_chunks(path, fh, st.st_size))
            with self.open_member(path) as out:
                try:
                    shutil.copyfileobj(fh, out, _CHUNK)
                except OSError as exc:
                    raise self._source_error(path, source, exc) from None
            return self._members[-1]

    def _source_error(self, path: str, source: Path | str, exc: OSError) -> BundleError:
        detail = exc.strerror or str(exc)
        return BundleError(f"cannot read {source} for member {path}: {detail}", path=str(source))

    @contextlib.contextmanager
    def open_member(self, path: str) -> Iterator[MemberWriter]:
        """Yield a writable file; its content becomes member ``path`` when the block ends.

        An exception inside the block drops the member and leaves the writer usable.
        """
        self._claim(path)
        self._state = "member"
        spool_dir = str(self._dir)
        with (
            tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX, mode="w+b", dir=spool_dir) as spool,
            MemberWriter(spool) as sink,
        ):
            try:
                yield sink
            except BaseException:
                self._state = "open"
                raise
            self._state = "open"
            spool.seek(0)
            self._emit(path, sink.size, iter(lambda: spool.read(_CHUNK), b""))

    def finish(
        self,
        *,
        spec: Mapping[str, Any] | None = None,
        collectors: Sequence[Mapping[str, Any]] = (),
        truncated: Sequence[Any] = (),
        redaction: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> WrittenBundle:
        """Write the signed manifest, seal the file and move it to its final name."""
        self._check_state()
        manifest = self._manifest(spec, collectors, truncated, redaction, extra or {})
        manifest_bytes = encode_manifest(manifest)
        signature = self._key.sign(manifest_bytes)
        self._emit(MANIFEST_NAME, len(manifest_bytes), (manifest_bytes,), listed=False)
        self._emit(SIGNATURE_NAME, len(signature), (signature,), listed=False)
        self._state = "broken"
        try:
            # Two zero blocks end a tar; padding to a whole record is what tar(1) writes.
            end = self._offset + 2 * _BLOCK
            self._zstd.write(b"\0" * (2 * _BLOCK + (-end) % _RECORD))
            self._zstd.flush(zstandard.FLUSH_FRAME)
            self._raw.flush()
            os.fsync(self._raw.fileno())
            self._raw.close()
            self._publish()
        except BundleError:
            self.abort()
            raise
        except OSError as exc:
            self.abort()
            raise BundleError(
                f"cannot write bundle {self.path}: {exc.strerror or exc}", path=str(self.path)
            ) from None
        self._state = "finished"
        return WrittenBundle(
            path=self.path,
            bundle_id=self.meta.bundle_id,
            size=self._sink.size,
            sha256=self._sink.sha.hexdigest(),
            fingerprint=self._key.fingerprint,
            manifest=manifest,
            manifest_bytes=manifest_bytes,
        )

    def abort(self) -> None:
        """Drop the bundle: close and remove the partial file. Safe to call twice."""
        if self._state in ("finished", "aborted"):
            return
        self._state = "aborted"
        with contextlib.suppress(Exception):
            self._zstd.close()  # type: ignore[no-untyped-call]
        with contextlib.suppress(OSError):
            self._raw.close()
        with contextlib.suppress(OSError):
            self._partial.unlink()

    # -- internals ---------------------------------------------------------------

    def _check_state(self) -> None:
        if self._state == "open":
            return
        problem = {
            "member": "another member is still open",
            "broken": "an earlier write failed",
            "finished": "it is already finished",
            "aborted": "it was aborted",
        }[self._state]
        raise BundleError(f"cannot add to bundle {self.name}: {problem}", path=str(self.path))

    def _claim(self, path: str) -> None:
        self._check_state()
        problem = member_path_problem(path)
        if problem is None and path.casefold() in {n.casefold() for n in RESERVED_NAMES}:
            problem = "name reserved for the manifest"
        if problem is None:
            clash = self._paths.check(path)
            problem = clash[1] if clash else None
        if problem is not None:
            raise BundleError(f"member {path!r}: {problem}", path=str(self.path))

    def _exact_chunks(self, path: str, fh: IO[bytes], size: int) -> Iterator[bytes]:
        left = size
        while left:
            chunk = fh.read(min(_CHUNK, left))
            if not chunk:
                self._shrunk.append(
                    {"member": path, "reason": "source-shrank", "size": size, "read": size - left}
                )
                while left:
                    pad = min(_CHUNK, left)
                    left -= pad
                    yield b"\0" * pad
                return
            left -= len(chunk)
            yield chunk

    def _emit(
        self, path: str, size: int, chunks: Iterable[bytes], *, listed: bool = True
    ) -> MemberInfo:
        info = tarfile.TarInfo(f"{self.top}/{path}")
        info.size = size
        info.mtime = self._mtime
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.type = tarfile.REGTYPE
        header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")
        digest = hashlib.sha256()
        written = 0
        # Once the header is out, a failure leaves a member the archive cannot finish.
        self._state = "broken"
        try:
            self._zstd.write(header)
            for chunk in chunks:
                digest.update(chunk)
                written += len(chunk)
                self._zstd.write(chunk)
            if written != size:
                raise BundleError(f"member {path}: expected {size} bytes, got {written}")
            self._zstd.write(b"\0" * ((-size) % _BLOCK))
        except OSError as exc:
            raise BundleError(
                f"failed while adding member {path} to {self._partial}: {exc.strerror or exc}",
                path=str(self.path),
            ) from None
        self._offset += len(header) + size + (-size) % _BLOCK
        self._state = "open"
        member = MemberInfo(path, size, digest.hexdigest())
        if listed:
            self._paths.add(path)
            self._members.append(member)
        return member

    def _manifest(
        self,
        spec: Mapping[str, Any] | None,
        collectors: Sequence[Mapping[str, Any]],
        truncated: Sequence[Any],
        redaction: Mapping[str, Any] | None,
        extra: Mapping[str, Any],
    ) -> Manifest:
        meta = self.meta
        return Manifest(
            format=FORMAT,
            bundle_id=meta.bundle_id,
            agent_id=meta.agent_id,
            key=self._key.public,
            case_id=meta.case_id,
            kind=cast(BundleKind, meta.kind),  # BundleMeta checked it
            request_id=meta.request_id,
            hostname=meta.hostname,
            created_at=format_time(meta.created_at),
            agent_version=meta.agent_version,
            spec=dict(spec or {}),
            collectors=tuple(dict(entry) for entry in collectors),
            truncated=(*truncated, *self._shrunk),
            redaction=dict(redaction) if redaction is not None else None,
            members=tuple(self._members),
            extra=dict(extra),
        )

    def _publish(self) -> None:
        # link() refuses an existing name where rename() would silently replace it.
        try:
            os.link(self._partial, self.path)
        except FileExistsError:
            raise BundleError(f"bundle {self.path} already exists", path=str(self.path)) from None
        except OSError:
            # Filesystems without hard links (FAT, some network shares).
            if self.path.exists():
                raise BundleError(
                    f"bundle {self.path} already exists", path=str(self.path)
                ) from None
            os.rename(self._partial, self.path)
        else:
            self._partial.unlink()
        # The bundle is complete under its name now; a failed folder fsync only
        # weakens durability across a power cut, so it must not fail the write.
        if hasattr(os, "O_DIRECTORY"):
            with contextlib.suppress(OSError):
                dir_fd = os.open(self._dir, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
