"""A verified bundle, and streaming its members once ``verify_bundle`` accepted it.

The file is read again, so it may have been swapped since. Here the manifest is known
before the first byte, so every check happens at a member's header, before its data:
a member of the top folder the manifest does not list, or one whose size differs from
the manifest, stops the read at once, and the decompressed total is bounded by the
manifest's declared sizes (plus tar headers), not by what the file claims.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

import zstandard

from agent.bundle.manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest, MemberInfo
from agent.bundle.source import (
    CHUNK,
    DEFAULT_MAX_TOTAL,
    TAR_BUFSIZE,
    Bound,
    BoundedTarInfo,
    TarSource,
    fail,
    show,
)
from agent.errors import BundleError, VerificationError
from agent.keys import PublicKey

__all__ = ["MemberStream", "VerifiedBundle", "iter_members"]

# Per member: a tar header, a pax header with its data (paths are ≤ 1 KiB), padding.
_HEADER_ALLOWANCE = 4 << 10
# End-of-archive blocks, the record padding tar(1) writes, and tarfile's read-ahead.
_TRAILER_ALLOWANCE = 1 << 20


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle that passed every check. ``members`` excludes MANIFEST.json/.sig."""

    manifest: Manifest
    manifest_bytes: bytes
    public_key: PublicKey
    top: str
    members: tuple[MemberInfo, ...]
    kept: dict[str, bytes]
    key_pinned: bool

    @property
    def bundle_id(self) -> str:
        return self.manifest.bundle_id

    @property
    def fingerprint(self) -> str:
        return self.public_key.fingerprint


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

    def read(self, size: int = CHUNK) -> bytes:
        data = self._fh.read(size if size > 0 else CHUNK)
        self._digest.update(data)
        self._size += len(data)
        return data

    def _finish(self) -> None:
        while self.read(CHUNK):
            pass
        if self._size != self._expected.size or self._digest.hexdigest() != self._expected.sha256:
            raise fail(
                "hash-mismatch",
                f"member {self.path}: changed since verification (sha256 or size differs from the manifest)",
                self.path,
            )


def _declared_bound(verified: VerifiedBundle, max_total_bytes: int) -> Bound:
    members = len(verified.members) + 2  # and MANIFEST.json, MANIFEST.sig
    declared = sum(m.size for m in verified.members) + len(verified.manifest_bytes) + 64
    limit = declared + members * _HEADER_ALLOWANCE + _TRAILER_ALLOWANCE
    if limit >= max_total_bytes:
        return Bound(max_total_bytes, "the most any bundle may hold")
    return Bound(limit, f"what the verified manifest declares ({declared:,} bytes in {members} members)")


def iter_members(
    source: str | os.PathLike[str],
    verified: VerifiedBundle,
    predicate: Callable[[str], bool],
    *,
    max_total_bytes: int = DEFAULT_MAX_TOTAL,
) -> Iterator[MemberStream]:
    """Stream the members of a bundle that ``verify_bundle`` already accepted.

    Only members the verified manifest lists (and ``predicate`` accepts) are yielded,
    each one hashed while it streams and compared with the manifest when the caller
    moves on. A listed member of another size, or an unlisted one in the bundle's top
    folder, raises at its header (reason="size-mismatch" / "extra-member"), a changed
    member reason="hash-mismatch", one no longer there reason="missing-member"; the
    decompressed total stays within what the manifest declares (and ``max_total_bytes``).
    """
    expected = {m.path: m for m in verified.members}
    label = os.fspath(source)
    prefix = verified.top + "/"
    seen: set[str] = set()
    try:
        with open(label, "rb") as fh:
            tar_source = TarSource(fh, _declared_bound(verified, max_total_bytes))
            with tarfile.open(fileobj=tar_source, mode="r|", bufsize=TAR_BUFSIZE, tarinfo=BoundedTarInfo) as tar:
                while (info := tar.next()) is not None:
                    if not info.isreg() or not info.name.startswith(prefix):
                        continue  # not this bundle's any more: its members show up missing below
                    rel = info.name[len(prefix) :]
                    member = expected.get(rel)
                    if member is None:
                        if rel in (MANIFEST_NAME, SIGNATURE_NAME):
                            continue
                        raise fail(
                            "extra-member", f"member {show(rel)}: not in the verified manifest (the file changed)", rel
                        )
                    if info.size != member.size:
                        raise fail(
                            "size-mismatch",
                            f"member {rel}: {info.size:,} bytes, the verified manifest says "
                            f"{member.size:,} (the file changed)",
                            rel,
                        )
                    if not predicate(rel):
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
            raise fail("missing-member", f"member {missing[0]}: gone since verification (the file changed)", missing[0])
    except VerificationError as exc:
        exc.path = exc.path or label
        raise
    except (tarfile.TarError, zstandard.ZstdError, EOFError, ValueError, OverflowError) as exc:
        error = fail("corrupt", f"corrupt archive on re-read: {exc}")
        error.path = label
        raise error from None
    except OSError as exc:
        raise BundleError(f"cannot read bundle {label}: {exc.strerror or exc}", path=label) from None
