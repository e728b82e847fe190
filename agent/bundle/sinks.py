"""The two file objects a ``BundleWriter`` writes through: the member handed out by
``open_member``, and the sink under the compressor that hashes and counts the bundle."""

from __future__ import annotations

import hashlib
import io
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["HashingSink", "MemberWriter"]


class MemberWriter(io.RawIOBase):
    """The writable file handed out by ``BundleWriter.open_member``."""

    def __init__(self, spool: IO[bytes]) -> None:
        super().__init__()
        self._spool = spool
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: ReadableBuffer) -> int:
        if self.closed:
            raise ValueError("write to a closed bundle member")
        count = memoryview(b).nbytes
        self._spool.write(b)
        self.size += count
        return count


class HashingSink:
    """What the compressor writes into: the partial file, hashed and counted on the way."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.raw.write(data)
        self.sha.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self.raw.flush()
