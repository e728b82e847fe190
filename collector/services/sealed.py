"""The collector's side of sealed bundles: its age identity, and opening what was sealed to it.

``casefile collect --encrypt-to age1…`` writes a bundle encrypted to the recipient
``casefile-collector recipient`` prints. Its private half (the identity) lives in
``<data dir>/recipient/age-identity.txt``: the folder owner-only (0700), the file
owner-only (0600), made on first use, never logged or printed.

An upload or an import that starts with the age header is opened here first, into a
private file beside the staged bytes; then the very same verification runs on what
came out. What cannot be opened is refused as a verification failure (nothing is
stored): sealed to another recipient, tampered with, or cut short.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import VerificationError
from agent.sealed import sniff
from collector.services.bundle_record import stored_by
from collector.storage import BlobStore, BundleRecord, Store
from collector.upload_auth import UploadIdentity

__all__ = ["CollectorRecipient", "Opened", "commit_staged", "discard", "open_sealed", "opens", "resent"]

IDENTITY_DIR = "recipient"
IDENTITY_FILE = "age-identity.txt"
_CHUNK = 1 << 20


class CollectorRecipient:
    """The collector's age identity in ``data_dir`` (created by ``recipient(create=True)``)."""

    def __init__(self, data_dir: Path) -> None:
        self.folder = data_dir / IDENTITY_DIR
        self.path = self.folder / IDENTITY_FILE
        self._lock = threading.Lock()
        self._identity: Any = None

    def _load(self, create: bool) -> Any:
        import pyrage

        with self._lock:
            if self._identity is not None:
                return self._identity
            try:
                text = self.path.read_text("ascii")
            except FileNotFoundError:
                if not create:
                    return None
                text = self._create()
            lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
            if len(lines) != 1:
                raise ValueError(f"{self.path}: expected one AGE-SECRET-KEY-1… line")
            try:
                self._identity = pyrage.x25519.Identity.from_str(lines[0])
            except pyrage.IdentityError:
                raise ValueError(f"{self.path}: not an age X25519 identity") from None
            return self._identity

    def _create(self) -> str:
        import pyrage

        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.folder, 0o700)
        identity = pyrage.x25519.Identity.generate()
        text = f"# casefile collector: the identity that opens sealed bundles; public: {identity.to_public()}\n"
        text += f"{identity}\n"
        partial = self.folder / f".{IDENTITY_FILE}.partial"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(partial, self.path)  # a concurrent first use keeps the one made first
        except FileExistsError:
            text = self.path.read_text("ascii")
        finally:
            partial.unlink()
        return text

    def recipient(self, create: bool = True) -> str | None:
        """``age1…``, the public half, to give customers; None when there is none yet and not ``create``."""
        identity = self._load(create)
        return None if identity is None else str(identity.to_public())

    def identity(self) -> Any:
        return self._load(False)


@dataclass
class Opened:
    """The bundle that was inside a sealed file, in a private file beside it."""

    path: Path
    size: int
    sha256: str

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)

    def publish(self, blobs: BlobStore) -> str:
        """Store the opened bundle as its blob (content-addressed by its sha256); returns the key."""
        return blobs.publish_file(self.path, self.sha256, self.size)


def _refuse(label: str, detail: str, reason: str) -> VerificationError:
    return VerificationError(f"bundle {label}: sealed (age), {detail}; nothing stored", reason=reason)


def _open(sealed: Path, keys: CollectorRecipient | None, label: str, into: Path) -> Opened | None:
    import pyrage

    try:
        header = sniff(sealed)
    except ValueError as exc:
        raise _refuse(label, f"but its header is damaged or cut short ({exc})", "sealed-damaged") from None
    if header is None:
        return None
    identity = keys.identity() if keys is not None else None
    if identity is None:
        raise _refuse(label, "but this collector has no recipient identity (casefile-collector recipient)",
                      "sealed-no-identity")  # fmt: skip
    if "X25519" not in header.recipient_kinds:
        raise _refuse(label, f"to recipients of kind {', '.join(header.recipient_kinds) or 'none'}, not X25519",
                      "sealed-other-recipient")  # fmt: skip
    fd, name = tempfile.mkstemp(prefix=".sealed-", suffix=".opened", dir=into)  # 0600
    out = Path(name)
    ok = False
    try:
        with os.fdopen(fd, "wb") as dst, sealed.open("rb") as src:
            try:
                pyrage.decrypt_io(src, dst, [identity])
            except pyrage.DecryptError as exc:
                if "no matching keys" in str(exc).lower():
                    raise _refuse(label, "encrypted to another recipient: this collector's identity does not "
                                  "open it", "sealed-other-recipient") from None  # fmt: skip
                raise _refuse(label, f"but it does not open: tampered with or cut short ({exc})",
                              "sealed-damaged") from None  # fmt: skip
            except OSError as exc:
                if exc.errno is not None:  # the disk, not the payload (pyrage's payload errors carry none)
                    raise
                raise _refuse(label, f"but its payload does not open: tampered with or cut short ({exc})",
                              "sealed-damaged") from None  # fmt: skip
            dst.flush()
            os.fsync(dst.fileno())
        ok = True
    finally:
        if not ok:
            out.unlink(missing_ok=True)
    h = hashlib.sha256()
    size = 0
    with out.open("rb") as fh:
        while block := fh.read(_CHUNK):
            h.update(block)
            size += len(block)
    return Opened(out, size, h.hexdigest())


async def open_sealed(
    sealed: Path, keys: CollectorRecipient | None, label: str, blobs: BlobStore
) -> Opened | None:
    """The bundle inside ``sealed`` if it is an age file (None if it is not one), opened
    into ``blobs``' staging folder.

    Raises VerificationError when it is sealed but cannot be opened here; the opened
    file is the caller's to ``discard`` (or ``publish``)."""
    return await asyncio.to_thread(_open, sealed, keys, label, blobs.staging_dir)


def opens(keys: CollectorRecipient | None, file_name: str | None = None) -> bool:
    """Whether an upload (named ``file_name``, when known) may be a file sealed to this
    collector: then other bytes under a stored id may still be the stored bundle sealed,
    which only opening it tells (an exact resend of a sealed file, say)."""
    if file_name is not None and not file_name.endswith(".age"):
        return False
    return keys is not None and keys.identity() is not None


async def resent(
    store: Store, staged: Any, opened: Opened | None, sha256: str, identity: UploadIdentity
) -> BundleRecord | None:
    """The stored bundle if this upload is it again (what ``opened`` holds, or the staged
    bytes of ``sha256`` when not sealed); then the staged and opened files are dropped.

    A sealed file is new bytes at every encryption, and even an exact resend never
    hashes like the bundle stored from it: only what it opens to can be compared.
    Other bytes under the id are refused (``Rejected``, ALREADY_EXISTS) as for any upload."""
    again = await stored_by(store, staged.bundle_id, opened.sha256 if opened else sha256, identity)
    if again is not None:
        discard(opened)
        await asyncio.to_thread(staged.abort)
    return again


def commit_staged(staged: Any, opened: Opened | None, blobs: BlobStore) -> tuple[str, int, str]:
    """Commit an upload: (blob key, size, sha256) of what is stored. A sealed upload
    stores the bundle that was inside it and drops the sealed bytes."""
    if opened is None:
        return staged.commit(), staged.size, staged.sha256
    try:
        key = opened.publish(blobs)
    except BaseException:
        opened.discard()  # the sealed bytes stay staged: the agent's next attempt opens them again
        raise
    staged.abort()
    return key, opened.size, opened.sha256


def discard(opened: Opened | None) -> None:
    if opened is not None:
        with contextlib.suppress(OSError):
            opened.discard()
