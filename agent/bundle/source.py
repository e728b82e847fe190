"""The compressed bundle as the tar reader sees it: zstd framing checked, bytes bounded.

A bundle may decompress to far more than it weighs: 240 KB of zstd RLE blocks hold
7 GiB of zeros. MANIFEST.json, which says how big every member is, comes last, so
until then the bound on decompressed bytes comes from what is known up front:

    bound = min(max_total, max(ratio_floor, max_ratio * compressed size))

Why these defaults: a bundle's logs are JSON lines, which zstd level 3 shrinks 5-20
times, and 115 times for one message repeated with only its timestamp changing (the
worst measured); 1000 leaves room for odd members, while a sender gets at most that
much decompression work for each byte it uploads. Whatever its ratio, a bundle of up
to ``ratio_floor`` bytes decompressed passes, so small bundles never meet the ratio.
The tar reader checks each member's declared size against the bound at its header,
before reading it (``reader._Scan``); ``TarSource`` enforces it byte by byte as well,
for whatever headers do not declare (extended headers, padding, the trailer).
"""

from __future__ import annotations

import collections
import io
import os
import stat
import tarfile
from dataclasses import dataclass
from typing import IO, Any, cast

import zstandard

from agent.errors import VerificationError

__all__ = [
    "CHUNK",
    "DEFAULT_MAX_RATIO",
    "DEFAULT_MAX_TOTAL",
    "DEFAULT_RATIO_FLOOR",
    "MAX_WINDOW",
    "TAR_BUFSIZE",
    "Bound",
    "BoundedTarInfo",
    "ReadMeter",
    "TarSource",
    "compressed_size_of",
    "decompressed_bound",
    "fail",
    "show",
]

DEFAULT_MAX_TOTAL = 8 << 30
DEFAULT_MAX_RATIO = 1000
DEFAULT_RATIO_FLOOR = 64 << 20
# zstd -19 uses an 8 MiB window; refusing bigger ones caps the decoder's memory.
MAX_WINDOW = 16 << 20
# pax and GNU long-name headers are read whole into memory by tarfile: a path is at
# most 1 KiB (manifest rules), so 64 KiB is plenty and a 7 GiB "header" is refused.
MAX_EXTENDED_HEADER = 64 << 10
CHUNK = 256 << 10
TAR_BUFSIZE = 64 << 10
_TAIL_KEEP = 4 * TAR_BUFSIZE
_ZSTD_MAGIC = 0xFD2FB528


def fail(reason: str, message: str, member: str | None = None) -> VerificationError:
    return VerificationError(message, reason=reason, member=member)


def show(name: str) -> str:
    return name if name.isprintable() else repr(name)


@dataclass
class ReadMeter:
    """What reading a bundle cost: compressed bytes read, decompressed bytes produced.

    Pass one to ``verify_bundle`` to learn it, also when verification fails (the
    collector adds them up, so an operator can see what refused uploads cost).
    """

    compressed: int = 0
    decompressed: int = 0


@dataclass(frozen=True)
class Bound:
    """The most decompressed bytes one read may produce, and why that many."""

    limit: int
    why: str

    def describe(self) -> str:
        return f"{self.limit:,} bytes decompressed, {self.why}"


def decompressed_bound(compressed: int | None, *, max_total: int, max_ratio: int | None, ratio_floor: int) -> Bound:
    """The bound for a bundle of ``compressed`` bytes (None: unknown, then ``max_total``)."""
    if compressed is not None and max_ratio:
        by_ratio = max(ratio_floor, max_ratio * compressed)
        if by_ratio < max_total:
            why = f"the most for a bundle of {compressed:,} bytes (ratio {max_ratio}, at least {ratio_floor:,})"
            return Bound(by_ratio, why)
    return Bound(max_total, "the most any bundle may hold")


def compressed_size_of(fh: Any) -> int | None:
    """Bytes left to read in ``fh``, if it is a regular file or a seekable stream."""
    try:
        info = os.fstat(fh.fileno())
        if stat.S_ISREG(info.st_mode):
            return max(0, info.st_size - int(fh.tell()))
    except (AttributeError, OSError, io.UnsupportedOperation, ValueError):
        pass
    try:
        if not fh.seekable():
            return None
        here = fh.tell()
        end = fh.seek(0, os.SEEK_END)
        fh.seek(here)
        return max(0, int(end) - int(here))
    except (AttributeError, OSError, io.UnsupportedOperation, ValueError):
        return None


class BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses an oversized pax or GNU long-name header before tarfile
    reads it whole into memory."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        extended = (
            tarfile.XHDTYPE,
            tarfile.XGLTYPE,
            tarfile.SOLARIS_XHDTYPE,
            tarfile.GNUTYPE_LONGNAME,
            tarfile.GNUTYPE_LONGLINK,
        )
        if self.type in extended and self.size > MAX_EXTENDED_HEADER:
            raise fail(
                "too-large",
                f"an extended tar header at offset {self.offset} declares {self.size:,} bytes "
                f"(at most {MAX_EXTENDED_HEADER:,})",
            )
        return cast(tarfile.TarInfo, super()._proc_member(tarfile_))  # type: ignore[misc]


class _FrameChecker:
    """Walks the zstd frame structure of the compressed bytes as they pass.

    ``zstandard``'s stream reader ends quietly when its input stops inside a frame,
    so a truncated bundle would otherwise look like a shorter valid stream.
    """

    def __init__(self) -> None:
        self.seen = 0
        self.frames = 0
        self._state = "magic"
        self._need = 4
        self._buf = bytearray()
        self._skip = 0
        self._then = "magic"
        self._checksum = False

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        i = 0
        while i < len(view):
            if self._skip:
                step = min(self._skip, len(view) - i)
                self._skip -= step
                i += step
                if not self._skip:
                    self._enter(self._then)
                continue
            take = min(self._need - len(self._buf), len(view) - i)
            self._buf += view[i : i + take]
            i += take
            if len(self._buf) == self._need:
                field = bytes(self._buf)
                self._buf.clear()
                self._parse(field, self.seen + i - len(field))
        self.seen += len(view)

    def finish(self) -> None:
        if self.seen == 0:
            raise fail("corrupt", "not a bundle: the file is empty")
        if self._state != "magic" or self._buf or self._skip or not self.frames:
            raise fail("truncated", f"truncated: the file ends inside a zstd frame (at byte {self.seen})")

    def _enter(self, state: str) -> None:
        if state == "checksum":
            self._skip_then(4, "end") if self._checksum else self._enter("end")
            return
        if state == "end":
            self.frames += 1
            state = "magic"
        self._state = state
        self._need = {"magic": 4, "skip-size": 4, "fhd": 1, "block": 3}[state]

    def _skip_then(self, count: int, then: str) -> None:
        if count:
            self._skip, self._then = count, then
        else:
            self._enter(then)

    def _parse(self, field: bytes, at: int) -> None:
        value = int.from_bytes(field, "little")
        if self._state == "magic":
            if value == _ZSTD_MAGIC:
                self._enter("fhd")
            elif value & 0xFFFFFFF0 == 0x184D2A50:
                self._enter("skip-size")
            else:
                raise fail("corrupt", f"not a zstd-compressed bundle (no zstd frame at byte {at})")
        elif self._state == "skip-size":
            self._skip_then(value, "magic")
        elif self._state == "fhd":
            if value & 0x08:
                raise fail("corrupt", f"corrupt zstd frame header at byte {at}")
            single = bool(value & 0x20)
            self._checksum = bool(value & 0x04)
            dict_id = (0, 1, 2, 4)[value & 0x03]
            content_size = (1 if single else 0, 2, 4, 8)[value >> 6]
            self._skip_then((0 if single else 1) + dict_id + content_size, "block")
        else:
            block_type, size = (value >> 1) & 0x03, value >> 3
            if block_type == 3 or size > 128 << 10:
                raise fail("corrupt", f"corrupt zstd block header at byte {at}")
            then = "checksum" if value & 1 else "block"
            self._skip_then(1 if block_type == 1 else size, then)


class _CompressedSource:
    """The bundle file as the zstd decoder reads it, checked frame by frame."""

    def __init__(self, fh: IO[bytes], checker: _FrameChecker) -> None:
        self._fh = fh
        self._checker = checker

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size if size > 0 else CHUNK)
        self._checker.feed(data)
        return data


class TarSource:
    """The decompressed tar stream as tarfile reads it: counted, bounded, tail kept."""

    def __init__(self, fh: IO[bytes], bound: Bound, meter: ReadMeter | None = None) -> None:
        self._checker = _FrameChecker()
        decoder = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
        self._reader = decoder.stream_reader(
            cast(IO[bytes], _CompressedSource(fh, self._checker)),
            read_size=CHUNK,
            read_across_frames=True,
        )
        self.bound = bound
        self._meter = meter if meter is not None else ReadMeter()
        self.delivered = 0
        # The last chunks delivered, at least _TAIL_KEEP bytes of them, kept as they are:
        # copying every chunk into one buffer cost a memmove per read, under the GIL.
        self._recent: collections.deque[bytes] = collections.deque()
        self._recent_bytes = 0
        self.done = False

    def tail(self) -> bytes:
        """The last bytes delivered (at least the last 256 KiB, when there were that many)."""
        return b"".join(self._recent)

    def read(self, size: int = -1) -> bytes:
        if self.done:
            return b""
        # Never decompress past the bound, even inside one read: ask for at most one byte more.
        want = min(size if size > 0 else CHUNK, self.bound.limit - self.delivered + 1)
        data: bytes = self._reader.read(want)
        self._meter.compressed = self._checker.seen
        if not data:
            self._checker.finish()
            self.done = True
            return b""
        self.delivered += len(data)
        self._meter.decompressed = self.delivered
        if self.delivered > self.bound.limit:
            raise fail("too-large", f"more than {self.bound.describe()}")
        self._recent.append(data)
        self._recent_bytes += len(data)
        while self._recent_bytes - len(self._recent[0]) >= _TAIL_KEEP:
            self._recent_bytes -= len(self._recent.popleft())
        return data

    # tarfile's type asks for a whole file object; a read-only stream needs none of these.
    def write(self, b: bytes, /) -> int:
        raise OSError("read-only")

    def tell(self) -> int:
        return self.delivered

    def seek(self, pos: int, /) -> int:
        raise OSError("not seekable")

    def close(self) -> None:
        pass
