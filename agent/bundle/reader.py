"""Verify a bundle in one streaming pass, without extracting anything to disk.

The archive is untrusted input. It is read once, front to back: members are hashed
as they stream past, and only the manifest and the members the caller asks to
``keep`` are held in memory (both capped). The first problem raises
``VerificationError`` with a one-line message naming the member, a machine-readable
``reason`` and the ``member`` at fault (its path inside the top folder, or the raw
entry name when that path is itself the problem; None for the archive as a whole):

    corrupt            not zstd, bad zstd data, bad tar headers, data after the archive
    truncated          the file ends early (inside a zstd frame or a tar member)
    too-large          decompressed total, manifest or a kept member over its cap
    too-many-members   more members than allowed
    unsafe-member      not a regular file (link, device, fifo, folder, sparse), or setuid
    unsafe-path        absolute, ``..``, backslash, control chars, outside the top folder
    duplicate-member   the same path twice (equal up to case counts as the same)
    missing-manifest   no MANIFEST.json or no MANIFEST.sig
    trailing-member    a member after MANIFEST.json other than MANIFEST.sig, or after it
    bad-manifest       MANIFEST.json unreadable or a required field wrong
    bad-signature      MANIFEST.sig is not a valid signature by the manifest's key
    wrong-key          signed by a valid key, but not the one expected
    missing-member     listed in the manifest, absent from the archive
    extra-member       in the archive, not listed in the manifest
    size-mismatch      a member's size differs from the manifest
    hash-mismatch      a member's SHA-256 differs from the manifest
"""

from __future__ import annotations

import functools
import hashlib
import os
import tarfile
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import IO, Any, cast

import zstandard

from agent.bundle.manifest import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    MemberInfo,
    PathSet,
    member_path_problem,
    parse_manifest,
)
from agent.errors import BundleError, VerificationError
from agent.keys import PublicKey

__all__ = [
    "DEFAULT_MAX_MANIFEST",
    "DEFAULT_MAX_MEMBERS",
    "DEFAULT_MAX_MEMBER_KEEP",
    "DEFAULT_MAX_TOTAL",
    "MemberStream",
    "VerifiedBundle",
    "iter_members",
    "verify_bundle",
]

DEFAULT_MAX_TOTAL = 8 << 30
DEFAULT_MAX_MEMBERS = 100_000
DEFAULT_MAX_MANIFEST = 16 << 20
DEFAULT_MAX_MEMBER_KEEP = 64 << 20
# zstd -19 uses an 8 MiB window; refusing bigger ones caps the decoder's memory.
MAX_WINDOW = 16 << 20
_CHUNK = 256 << 10
_TAR_BUFSIZE = 64 << 10
_TAIL_KEEP = 4 * _TAR_BUFSIZE
_TRAILER_MIN = 2 * tarfile.BLOCKSIZE
_TRAILER_MAX = 1 << 20
_SIGNATURE_SIZE = 64
_ZSTD_MAGIC = 0xFD2FB528


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle that passed every check. ``members`` excludes MANIFEST.json/.sig."""

    manifest: dict[str, Any]
    manifest_bytes: bytes
    public_key: PublicKey
    top: str
    members: tuple[MemberInfo, ...]
    kept: dict[str, bytes]
    key_pinned: bool

    @property
    def bundle_id(self) -> str:
        return str(self.manifest["bundle_id"])

    @property
    def fingerprint(self) -> str:
        return self.public_key.fingerprint


def _fail(reason: str, message: str, member: str | None = None) -> VerificationError:
    return VerificationError(message, reason=reason, member=member)


def _show(name: str) -> str:
    return name if name.isprintable() else repr(name)


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
            raise _fail("corrupt", "not a bundle: the file is empty")
        if self._state != "magic" or self._buf or self._skip or not self.frames:
            raise _fail(
                "truncated", f"truncated: the file ends inside a zstd frame (at byte {self.seen})"
            )

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
                raise _fail("corrupt", f"not a zstd-compressed bundle (no zstd frame at byte {at})")
        elif self._state == "skip-size":
            self._skip_then(value, "magic")
        elif self._state == "fhd":
            if value & 0x08:
                raise _fail("corrupt", f"corrupt zstd frame header at byte {at}")
            single = bool(value & 0x20)
            self._checksum = bool(value & 0x04)
            dict_id = (0, 1, 2, 4)[value & 0x03]
            content_size = (1 if single else 0, 2, 4, 8)[value >> 6]
            self._skip_then((0 if single else 1) + dict_id + content_size, "block")
        else:
            block_type, size = (value >> 1) & 0x03, value >> 3
            if block_type == 3 or size > 128 << 10:
                raise _fail("corrupt", f"corrupt zstd block header at byte {at}")
            then = "checksum" if value & 1 else "block"
            self._skip_then(1 if block_type == 1 else size, then)


class _CompressedSource:
    """The bundle file as the zstd decoder reads it, checked frame by frame."""

    def __init__(self, fh: IO[bytes], checker: _FrameChecker) -> None:
        self._fh = fh
        self._checker = checker

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size if size > 0 else _CHUNK)
        self._checker.feed(data)
        return data


class _TarSource:
    """The decompressed tar stream as tarfile reads it: counted, capped, tail kept."""

    def __init__(self, fh: IO[bytes], max_total: int) -> None:
        self._checker = _FrameChecker()
        decoder = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
        self._reader = decoder.stream_reader(
            cast(IO[bytes], _CompressedSource(fh, self._checker)),
            read_size=_CHUNK,
            read_across_frames=True,
        )
        self._max_total = max_total
        self.delivered = 0
        self.tail = bytearray()
        self.done = False

    def read(self, size: int = -1) -> bytes:
        if self.done:
            return b""
        data: bytes = self._reader.read(size if size > 0 else _CHUNK)
        if not data:
            self._checker.finish()
            self.done = True
            return b""
        self.delivered += len(data)
        if self.delivered > self._max_total:
            raise _fail("too-large", f"more than {self._max_total} bytes once decompressed")
        self.tail += data
        if len(self.tail) > _TAIL_KEEP:
            del self.tail[:-_TAIL_KEEP]
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


_KINDS = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.DIRTYPE: "a directory entry",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a fifo",
}


class _Scan:
    """State of the single pass over the archive."""

    def __init__(self, keep: Collection[str], max_keep: int, max_members: int, max_manifest: int):
        self.keep = frozenset(keep)
        self.max_keep = max_keep
        self.max_members = max_members
        self.max_manifest = max_manifest
        self.top: str | None = None
        self.paths = PathSet()
        self.members: dict[str, MemberInfo] = {}
        self.kept: dict[str, bytes] = {}
        self.manifest: bytes | None = None
        self.signature: bytes | None = None
        self.count = 0
        self.current: str | None = None

    def entry(self, tar: tarfile.TarFile, info: tarfile.TarInfo) -> None:
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or info.sparse is not None:
            label = self._label(info.name)
            kind = _KINDS.get(info.type, f"of tar type {info.type!r}")
            kind = "a sparse file" if info.sparse is not None else kind
            raise _fail(
                "unsafe-member", f"member {_show(label)} is {kind}, not a regular file", label
            )
        rel = self._relative(info.name)
        shown = _show(rel)
        self.count += 1
        if self.count > self.max_members:
            raise _fail("too-many-members", f"more than {self.max_members} members", rel)
        if info.mode & 0o7000:
            # Content is signed, headers are not: a setuid bit added later would
            # survive `tar -xp` as root.
            raise _fail("unsafe-member", f"member {shown} has mode {info.mode:o}", rel)
        if self.signature is not None:
            raise _fail("trailing-member", f"member {shown} after MANIFEST.sig", rel)
        if self.manifest is not None and rel != SIGNATURE_NAME:
            raise _fail("trailing-member", f"member {shown} after MANIFEST.json", rel)
        clash = self.paths.add(rel)
        if clash is not None:
            raise _fail(clash[0], f"member {shown} {clash[1]}", rel)
        cap = {MANIFEST_NAME: self.max_manifest, SIGNATURE_NAME: _SIGNATURE_SIZE}.get(rel)
        if cap is None and rel in self.keep:
            cap = self.max_keep
        if rel == SIGNATURE_NAME and info.size != _SIGNATURE_SIZE:
            raise _fail("bad-signature", f"MANIFEST.sig is {info.size} bytes, not 64", rel)
        if cap is not None and info.size > cap:
            raise _fail("too-large", f"member {shown} is {info.size} bytes, over {cap}", rel)
        self.current = rel
        digest, data = _read_member(tar, info, keep=cap is not None)
        self.current = None
        if rel == MANIFEST_NAME:
            self.manifest = data
        elif rel == SIGNATURE_NAME:
            self.signature = data
        else:
            self.members[rel] = MemberInfo(rel, info.size, digest)
            if data is not None:
                self.kept[rel] = data

    def _label(self, name: str) -> str:
        """How to name an entry in an error before its path has been checked."""
        top, sep, rel = name.partition("/")
        safe_top = top not in ("", ".", "..") and top == (self.top or top)
        return rel if sep and rel and safe_top else name

    def _relative(self, name: str) -> str:
        top, sep, rel = name.partition("/")
        if name.startswith("/"):
            raise _fail("unsafe-path", f"member {_show(name)}: absolute path", name)
        problem = member_path_problem(top) or member_path_problem(rel)
        if not sep:
            problem = "not inside a top folder"
        if problem is not None:
            raise _fail("unsafe-path", f"member {_show(name)}: {problem}", name)
        if self.top is None:
            self.top = top
        elif top != self.top:
            raise _fail(
                "unsafe-path",
                f"member {_show(name)} is outside the top folder {self.top}",
                name,
            )
        return rel


def _read_member(
    tar: tarfile.TarFile, info: tarfile.TarInfo, *, keep: bool
) -> tuple[str, bytes | None]:
    fh = tar.extractfile(info)
    if fh is None:  # only for non-regular members, which were refused before
        raise _fail("unsafe-member", f"member {_show(info.name)} has no data", info.name)
    digest = hashlib.sha256()
    parts: list[bytes] | None = [] if keep else None
    with fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            if parts is not None:
                parts.append(chunk)
    return digest.hexdigest(), b"".join(parts) if parts is not None else None


def _check_trailer(tar: tarfile.TarFile, source: _TarSource) -> None:
    """After the last member only zeros may follow: the end-of-archive blocks and padding."""
    end = tar.offset
    pending = source.delivered - end
    if pending > len(source.tail):
        raise _fail("corrupt", f"corrupt archive: bad tar header or data at offset {end}")
    trailer = len(source.tail) - pending
    size = pending
    nonzero = bytes(source.tail[trailer:]).count(0) != pending
    while not nonzero and size <= _TRAILER_MAX and (chunk := source.read(_TAR_BUFSIZE)):
        size += len(chunk)
        nonzero = chunk.count(0) != len(chunk)
    if nonzero and size < tarfile.BLOCKSIZE:
        raise _fail("truncated", f"truncated: the archive ends inside a tar header (offset {end})")
    if nonzero or size > _TRAILER_MAX:
        raise _fail("corrupt", f"corrupt archive: bad tar header or data at offset {end}")
    if size < _TRAILER_MIN:
        raise _fail("truncated", f"truncated: the archive has no end marker (offset {end})")


def verify_bundle(
    source: str | os.PathLike[str] | IO[bytes],
    *,
    expected_key: PublicKey | None = None,
    expected_fingerprint: str | None = None,
    keep: Collection[str] = (),
    max_member_keep: int = DEFAULT_MAX_MEMBER_KEEP,
    max_total_bytes: int = DEFAULT_MAX_TOTAL,
    max_members: int = DEFAULT_MAX_MEMBERS,
    max_manifest_bytes: int = DEFAULT_MAX_MANIFEST,
) -> VerifiedBundle:
    """Check a bundle file (path or binary file object); return what it holds.

    ``keep`` names members (relative to the top folder) whose bytes to return in
    ``kept``. Raises VerificationError on the first problem, BundleError if the
    file cannot be read at all.
    """
    run = functools.partial(
        _verify,
        expected_key=expected_key,
        expected_fingerprint=expected_fingerprint,
        scan=_Scan(keep, max_member_keep, max_members, max_manifest_bytes),
        max_total=max_total_bytes,
    )
    label: str | None = None
    try:
        if isinstance(source, str | os.PathLike):
            label = os.fspath(source)
            with open(label, "rb") as fh:
                return run(fh)
        return run(source)
    except VerificationError as exc:
        exc.path = exc.path or label
        raise
    except OSError as exc:
        where = f" {label}" if label else ""
        raise BundleError(f"cannot read bundle{where}: {exc.strerror or exc}", path=label) from None


def _verify(
    fh: IO[bytes],
    *,
    expected_key: PublicKey | None,
    expected_fingerprint: str | None,
    scan: _Scan,
    max_total: int,
) -> VerifiedBundle:
    source = _TarSource(fh, max_total)
    try:
        with tarfile.open(fileobj=source, mode="r|", bufsize=_TAR_BUFSIZE) as tar:
            while (info := tar.next()) is not None:
                scan.entry(tar, info)
            _check_trailer(tar, source)
    except VerificationError as exc:
        # Raised below tarfile (zstd framing, size cap): name the member being read.
        exc.member = exc.member or scan.current
        raise
    except tarfile.ReadError as exc:
        text = str(exc)
        reason = "truncated" if "unexpected end" in text or "truncated" in text else "corrupt"
        raise _fail(reason, f"{reason} archive: {exc}", scan.current) from None
    except (tarfile.TarError, zstandard.ZstdError, EOFError, ValueError, OverflowError) as exc:
        raise _fail("corrupt", f"corrupt archive: {exc}", scan.current) from None
    return _check_manifest(scan, expected_key, expected_fingerprint)


def _check_manifest(
    scan: _Scan, expected_key: PublicKey | None, expected_fingerprint: str | None
) -> VerifiedBundle:
    if scan.manifest is None:
        raise _fail("missing-manifest", "no MANIFEST.json in the bundle", MANIFEST_NAME)
    if scan.signature is None:
        raise _fail("missing-manifest", "no MANIFEST.sig after MANIFEST.json", SIGNATURE_NAME)
    manifest, key, listed = parse_manifest(scan.manifest)
    if not key.verify(scan.signature, scan.manifest):
        raise _fail(
            "bad-signature",
            f"MANIFEST.sig is not a valid signature of MANIFEST.json by key {key.fingerprint}",
            SIGNATURE_NAME,
        )
    wanted = expected_key.fingerprint if expected_key is not None else None
    for expected in (wanted, expected_fingerprint):
        if expected is not None and key.fingerprint != _normal_fingerprint(expected):
            raise _fail(
                "wrong-key",
                f"MANIFEST.json: signed by key {key.fingerprint}, expected {expected}",
                MANIFEST_NAME,
            )
    for member in listed:
        actual = scan.members.get(member.path)
        if actual is None:
            raise _fail(
                "missing-member",
                f"member {member.path}: in the manifest, not in the archive",
                member.path,
            )
        if actual.size != member.size:
            raise _fail(
                "size-mismatch",
                f"member {member.path}: size mismatch (manifest "
                f"{member.size}, actual {actual.size})",
                member.path,
            )
        if actual.sha256 != member.sha256:
            raise _fail(
                "hash-mismatch",
                f"member {member.path}: sha256 mismatch (manifest "
                f"{member.sha256[:12]}…, actual {actual.sha256[:12]}…)",
                member.path,
            )
    listed_paths = {member.path for member in listed}
    for path in scan.members:
        if path not in listed_paths:
            raise _fail(
                "extra-member", f"member {_show(path)}: in the archive, not in the manifest", path
            )
    assert scan.top is not None  # a manifest member was seen, so the top folder is known
    return VerifiedBundle(
        manifest=manifest,
        manifest_bytes=scan.manifest,
        public_key=key,
        top=scan.top,
        members=tuple(scan.members.values()),
        kept=scan.kept,
        key_pinned=wanted is not None or expected_fingerprint is not None,
    )


def _normal_fingerprint(text: str) -> str:
    text = text.strip().lower()
    return text if text.startswith("sha256:") else "sha256:" + text


# --- streaming members of an already verified bundle ------------------------------------


class MemberStream:
    """One member's bytes as ``iter_members`` streams them, hashed as they pass.

    Read it with ``read(size)``; whatever is left unread is drained (and hashed)
    before the next member, so the hash check covers the whole member either way.
    """

    def __init__(self, path: str, fh: IO[bytes], expected: MemberInfo) -> None:
        self.path = path
        self._fh = fh
        self._expected = expected
        self._digest = hashlib.sha256()
        self._size = 0

    def read(self, size: int = _CHUNK) -> bytes:
        data = self._fh.read(size if size > 0 else _CHUNK)
        self._digest.update(data)
        self._size += len(data)
        return data

    def _finish(self) -> None:
        while self.read(_CHUNK):
            pass
        if self._size != self._expected.size or self._digest.hexdigest() != self._expected.sha256:
            raise _fail(
                "hash-mismatch",
                f"member {self.path}: changed since verification (sha256 or size differs from the manifest)",
                self.path,
            )


def iter_members(
    source: str | os.PathLike[str],
    verified: VerifiedBundle,
    predicate: Callable[[str], bool],
    *,
    max_total_bytes: int = DEFAULT_MAX_TOTAL,
) -> Iterator[MemberStream]:
    """Stream the members of a bundle that ``verify_bundle`` already accepted.

    The file is read again, so it may have been swapped since: only members the
    verified manifest lists (and ``predicate`` accepts) are yielded, each one is
    hashed while it streams and compared with the manifest when the caller moves
    on, and the decompressed total stays under ``max_total_bytes``. A difference
    raises VerificationError(reason="hash-mismatch"), a member no longer there
    reason="missing-member", each naming the member.
    """
    expected = {m.path: m for m in verified.members}
    label = os.fspath(source)
    prefix = verified.top + "/"
    seen: set[str] = set()
    try:
        with open(label, "rb") as fh:
            tar_source = _TarSource(fh, max_total_bytes)
            with tarfile.open(fileobj=tar_source, mode="r|", bufsize=_TAR_BUFSIZE) as tar:
                while (info := tar.next()) is not None:
                    if not info.isreg() or not info.name.startswith(prefix):
                        continue
                    rel = info.name[len(prefix) :]
                    member = expected.get(rel)
                    if member is None or not predicate(rel):
                        continue
                    data = tar.extractfile(info)
                    if data is None:
                        continue
                    seen.add(rel)
                    with data:
                        stream = MemberStream(rel, data, member)
                        yield stream
                        stream._finish()
        missing = sorted(p for p in expected if predicate(p) and p not in seen)
        if missing:
            raise _fail(
                "missing-member", f"member {missing[0]}: gone since verification (the file changed)", missing[0]
            )
    except VerificationError as exc:
        exc.path = exc.path or label
        raise
    except (tarfile.TarError, zstandard.ZstdError, EOFError, ValueError, OverflowError) as exc:
        error = _fail("corrupt", f"corrupt archive on re-read: {exc}")
        error.path = label
        raise error from None
    except OSError as exc:
        raise BundleError(f"cannot read bundle {label}: {exc.strerror or exc}", path=label) from None
