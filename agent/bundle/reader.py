"""Verify a bundle in one streaming pass, without extracting anything to disk.

The archive is untrusted input. It is read once, front to back: members are hashed
as they stream past, and only the manifest and the members the caller asks to
``keep`` are held in memory (both capped). The first problem raises
``VerificationError`` with a one-line message naming the member, a machine-readable
``reason`` and the ``member`` at fault (its path inside the top folder, or the raw
entry name when that path is itself the problem; None for the archive as a whole):

    corrupt            not zstd, bad zstd data, bad tar headers, data after the archive
    truncated          the file ends early (inside a zstd frame or a tar member)
    too-large          decompressed total, manifest, a kept member or an extended
                       header over its cap (see ``agent.bundle.source`` for the bound
                       on decompressed bytes, checked at each member's header)
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
from collections.abc import Callable, Collection
from typing import IO

import zstandard

from agent.bundle.manifest import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    MemberInfo,
    PathSet,
    member_path_problem,
    parse_manifest,
)
from agent.bundle.members import MemberStream, VerifiedBundle, iter_members
from agent.bundle.source import (
    CHUNK,
    DEFAULT_MAX_RATIO,
    DEFAULT_MAX_TOTAL,
    DEFAULT_RATIO_FLOOR,
    TAR_BUFSIZE,
    Bound,
    BoundedTarInfo,
    ReadMeter,
    TarSource,
    compressed_size_of,
    decompressed_bound,
    fail,
    show,
)
from agent.errors import BundleError, VerificationError
from agent.keys import PublicKey

__all__ = [
    "DEFAULT_MAX_MANIFEST",
    "DEFAULT_MAX_MEMBERS",
    "DEFAULT_MAX_MEMBER_KEEP",
    "DEFAULT_MAX_RATIO",
    "DEFAULT_MAX_TOTAL",
    "DEFAULT_RATIO_FLOOR",
    "MemberStream",
    "ReadMeter",
    "VerifiedBundle",
    "iter_members",
    "verify_bundle",
]

DEFAULT_MAX_MEMBERS = 100_000
DEFAULT_MAX_MANIFEST = 16 << 20
DEFAULT_MAX_MEMBER_KEEP = 64 << 20
_TRAILER_MIN = 2 * tarfile.BLOCKSIZE
_TRAILER_MAX = 1 << 20
_SIGNATURE_SIZE = 64


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

    def entry(self, tar: tarfile.TarFile, info: tarfile.TarInfo, bound: Bound) -> None:
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or info.sparse is not None:
            label = self._label(info.name)
            kind = _KINDS.get(info.type, f"of tar type {info.type!r}")
            kind = "a sparse file" if info.sparse is not None else kind
            raise fail(
                "unsafe-member", f"member {show(label)} is {kind}, not a regular file", label
            )
        rel = self._relative(info.name)
        shown = show(rel)
        self.count += 1
        if self.count > self.max_members:
            raise fail("too-many-members", f"more than {self.max_members} members", rel)
        if info.mode & 0o7000:
            # Content is signed, headers are not: a setuid bit added later would
            # survive `tar -xp` as root.
            raise fail("unsafe-member", f"member {shown} has mode {info.mode:o}", rel)
        if self.signature is not None:
            raise fail("trailing-member", f"member {shown} after MANIFEST.sig", rel)
        if self.manifest is not None and rel != SIGNATURE_NAME:
            raise fail("trailing-member", f"member {shown} after MANIFEST.json", rel)
        clash = self.paths.add(rel)
        if clash is not None:
            raise fail(clash[0], f"member {shown} {clash[1]}", rel)
        cap = {MANIFEST_NAME: self.max_manifest, SIGNATURE_NAME: _SIGNATURE_SIZE}.get(rel)
        if cap is None and rel in self.keep:
            cap = self.max_keep
        if rel == SIGNATURE_NAME and info.size != _SIGNATURE_SIZE:
            raise fail("bad-signature", f"MANIFEST.sig is {info.size} bytes, not 64", rel)
        if cap is not None and info.size > cap:
            raise fail("too-large", f"member {shown} is {info.size} bytes, over {cap}", rel)
        if info.offset_data + info.size > bound.limit:
            # Checked at the header, before a byte of the member is decompressed.
            raise fail(
                "too-large",
                f"member {shown} is {info.size:,} bytes by its tar header, which takes the "
                f"archive past {bound.describe()}; refused before reading it",
                rel,
            )
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
            raise fail("unsafe-path", f"member {show(name)}: absolute path", name)
        problem = member_path_problem(top) or member_path_problem(rel)
        if not sep:
            problem = "not inside a top folder"
        if problem is not None:
            raise fail("unsafe-path", f"member {show(name)}: {problem}", name)
        if self.top is None:
            self.top = top
        elif top != self.top:
            raise fail(
                "unsafe-path",
                f"member {show(name)} is outside the top folder {self.top}",
                name,
            )
        return rel


def _read_member(
    tar: tarfile.TarFile, info: tarfile.TarInfo, *, keep: bool
) -> tuple[str, bytes | None]:
    fh = tar.extractfile(info)
    if fh is None:  # only for non-regular members, which were refused before
        raise fail("unsafe-member", f"member {show(info.name)} has no data", info.name)
    digest = hashlib.sha256()
    parts: list[bytes] | None = [] if keep else None
    with fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            if parts is not None:
                parts.append(chunk)
    return digest.hexdigest(), b"".join(parts) if parts is not None else None


def _check_trailer(tar: tarfile.TarFile, source: TarSource) -> None:
    """After the last member only zeros may follow: the end-of-archive blocks and padding."""
    end = tar.offset
    pending = source.delivered - end
    tail = source.tail()
    if pending > len(tail):
        raise fail("corrupt", f"corrupt archive: bad tar header or data at offset {end}")
    size = pending
    nonzero = tail[len(tail) - pending :].count(0) != pending
    while not nonzero and size <= _TRAILER_MAX and (chunk := source.read(TAR_BUFSIZE)):
        size += len(chunk)
        nonzero = chunk.count(0) != len(chunk)
    if nonzero and size < tarfile.BLOCKSIZE:
        raise fail("truncated", f"truncated: the archive ends inside a tar header (offset {end})")
    if nonzero or size > _TRAILER_MAX:
        raise fail("corrupt", f"corrupt archive: bad tar header or data at offset {end}")
    if size < _TRAILER_MIN:
        raise fail("truncated", f"truncated: the archive has no end marker (offset {end})")


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
    max_ratio: int | None = DEFAULT_MAX_RATIO,
    ratio_floor: int = DEFAULT_RATIO_FLOOR,
    compressed_size: int | None = None,
    meter: ReadMeter | None = None,
) -> VerifiedBundle:
    """Check a bundle file (path or binary file object); return what it holds.

    ``keep`` names members (relative to the top folder) whose bytes to return in
    ``kept``. Decompressed bytes are bounded by ``max_total_bytes`` and by
    ``max_ratio`` times the compressed size (at least ``ratio_floor``; see
    ``agent.bundle.source``); the compressed size is ``compressed_size`` or, for a file
    or seekable stream, what is left of it. ``meter``, if given, learns what the read
    cost. Raises VerificationError on the first problem, BundleError if the file cannot
    be read at all.
    """
    run = functools.partial(
        _verify,
        expected_key=expected_key,
        expected_fingerprint=expected_fingerprint,
        scan=_Scan(keep, max_member_keep, max_members, max_manifest_bytes),
        limits=functools.partial(
            decompressed_bound, max_total=max_total_bytes, max_ratio=max_ratio, ratio_floor=ratio_floor
        ),
        compressed_size=compressed_size,
        meter=meter,
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
    limits: Callable[[int | None], Bound],
    compressed_size: int | None,
    meter: ReadMeter | None,
) -> VerifiedBundle:
    size = compressed_size if compressed_size is not None else compressed_size_of(fh)
    source = TarSource(fh, limits(size), meter)
    try:
        with tarfile.open(fileobj=source, mode="r|", bufsize=TAR_BUFSIZE, tarinfo=BoundedTarInfo) as tar:
            while (info := tar.next()) is not None:
                scan.entry(tar, info, source.bound)
            _check_trailer(tar, source)
    except VerificationError as exc:
        # Raised below tarfile (zstd framing, size cap): name the member being read.
        exc.member = exc.member or scan.current
        raise
    except tarfile.ReadError as exc:
        text = str(exc)
        reason = "truncated" if "unexpected end" in text or "truncated" in text else "corrupt"
        raise fail(reason, f"{reason} archive: {exc}", scan.current) from None
    except (tarfile.TarError, zstandard.ZstdError, EOFError, ValueError, OverflowError) as exc:
        raise fail("corrupt", f"corrupt archive: {exc}", scan.current) from None
    return _check_manifest(scan, expected_key, expected_fingerprint)


def _check_manifest(
    scan: _Scan, expected_key: PublicKey | None, expected_fingerprint: str | None
) -> VerifiedBundle:
    if scan.manifest is None:
        raise fail("missing-manifest", "no MANIFEST.json in the bundle", MANIFEST_NAME)
    if scan.signature is None:
        raise fail("missing-manifest", "no MANIFEST.sig after MANIFEST.json", SIGNATURE_NAME)
    manifest = parse_manifest(scan.manifest)
    key, listed = manifest.key, manifest.members
    if not key.verify(scan.signature, scan.manifest):
        raise fail(
            "bad-signature",
            f"MANIFEST.sig is not a valid signature of MANIFEST.json by key {key.fingerprint}",
            SIGNATURE_NAME,
        )
    wanted = expected_key.fingerprint if expected_key is not None else None
    for expected in (wanted, expected_fingerprint):
        if expected is not None and key.fingerprint != _normal_fingerprint(expected):
            raise fail(
                "wrong-key",
                f"MANIFEST.json: signed by key {key.fingerprint}, expected {expected}",
                MANIFEST_NAME,
            )
    for member in listed:
        actual = scan.members.get(member.path)
        if actual is None:
            raise fail(
                "missing-member",
                f"member {member.path}: in the manifest, not in the archive",
                member.path,
            )
        if actual.size != member.size:
            raise fail(
                "size-mismatch",
                f"member {member.path}: size mismatch (manifest "
                f"{member.size}, actual {actual.size})",
                member.path,
            )
        if actual.sha256 != member.sha256:
            raise fail(
                "hash-mismatch",
                f"member {member.path}: sha256 mismatch (manifest "
                f"{member.sha256[:12]}…, actual {actual.sha256[:12]}…)",
                member.path,
            )
    listed_paths = {member.path for member in listed}
    for path in scan.members:
        if path not in listed_paths:
            raise fail(
                "extra-member", f"member {show(path)}: in the archive, not in the manifest", path
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
