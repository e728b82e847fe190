"""Bundles sealed for the support organisation: ``casefile collect --encrypt-to age1…``.

The signed bundle is encrypted whole with the age format (https://age-encryption.org/v1)
to one X25519 recipient, the public half the collector prints with
``casefile-collector recipient``. Only the holder of the matching identity (the
collector, in its data folder) can open it; the signature inside is checked after
opening, exactly as for a plain bundle. The file travels as ``<bundle>.tar.zst.age``
with the bundle's full id in its name (``…-<32 hex>.tar.zst.age``), so it can still be
uploaded later: the collector needs the id before the first byte.

``read_age_header`` is the one reader of the unencrypted age header, for the agent
(``casefile verify`` says what such a file is) and the collector (which opens it
before verifying). age hides who a file is for: the header names only each
recipient stanza's kind (``X25519``), never the recipient.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.bundle.manifest import BUNDLE_SUFFIX
from agent.errors import SealedBundleError

if TYPE_CHECKING:
    from agent.oneshot import Collected

__all__ = [
    "AGE_MAGIC",
    "SEALED_SUFFIX",
    "AgeHeader",
    "SealedBundleError",
    "check_recipient",
    "read_age_header",
    "refuse_sealed",
    "seal_bundle",
    "sealed_bundle_id",
    "sealed_description",
    "sealed_upload_id",
    "sniff",
]

AGE_MAGIC = b"age-encryption.org/v1\n"
SEALED_SUFFIX = BUNDLE_SUFFIX + ".age"
# A header is a few lines per recipient; one far larger is not a header we wrote.
MAX_HEADER_BYTES = 64 * 1024
_ARG = re.compile(rb"[\x21-\x7e]+")
_B64_LINE = 64
_ID_IN_NAME = re.compile(r"-([0-9a-f]{32})" + re.escape(SEALED_SUFFIX) + r"$")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class AgeHeader:
    """The unencrypted part of an age file: one kind per recipient stanza (``X25519``)."""

    stanzas: tuple[str, ...]
    length: int  # bytes up to and including the MAC line; the payload follows

    @property
    def recipient_kinds(self) -> tuple[str, ...]:
        """The stanzas for recipients, without the random "grease" ones rage adds."""
        return tuple(k for k in self.stanzas if not k.endswith("-grease"))


def _b64_ok(text: bytes) -> bool:
    """age's base64: standard alphabet, no padding, canonical."""
    if b"=" in text:
        return False
    try:
        base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def read_age_header(data: bytes) -> AgeHeader | None:
    """The age header at the start of ``data``; None when ``data`` is not an age file.

    Raises ValueError when ``data`` starts as an age file but its header is cut short
    or malformed (a truncated or damaged file, not some other kind of file).
    """
    if not data.startswith(AGE_MAGIC):
        return None
    pos = len(AGE_MAGIC)
    stanzas: list[str] = []
    while True:
        end = data.find(b"\n", pos, pos + MAX_HEADER_BYTES)
        if end < 0:
            raise ValueError(f"age header cut short or over {MAX_HEADER_BYTES} bytes at byte {pos}")
        line = data[pos:end]
        pos = end + 1
        if line.startswith(b"--- "):
            if not stanzas:
                raise ValueError("age header names no recipient")
            if not _b64_ok(line[4:]) or len(line) != 4 + 43:
                raise ValueError("age header: the MAC line is malformed")
            return AgeHeader(stanzas=tuple(stanzas), length=pos)
        if not line.startswith(b"-> "):
            raise ValueError(f"age header: unexpected line at byte {pos - len(line) - 1}")
        args = line[3:].split(b" ")
        if not args or not all(_ARG.fullmatch(a) for a in args):
            raise ValueError(f"age header: malformed recipient stanza at byte {pos - len(line) - 1}")
        stanzas.append(args[0].decode("ascii"))
        # The stanza body: base64 lines of 64 characters, ended by a shorter one.
        while True:
            end = data.find(b"\n", pos, pos + _B64_LINE + 1)
            if end < 0:
                raise ValueError(f"age header cut short in a stanza body at byte {pos}")
            body = data[pos:end]
            pos = end + 1
            if not _b64_ok(body):
                raise ValueError(f"age header: stanza body is not base64 at byte {pos - len(body) - 1}")
            if len(body) < _B64_LINE:
                break
        if pos > MAX_HEADER_BYTES:
            raise ValueError(f"age header over {MAX_HEADER_BYTES} bytes")


def sniff(path: Path) -> AgeHeader | None:
    """``read_age_header`` of the file at ``path`` (reads at most the header's bound)."""
    with path.open("rb") as fh:
        head = fh.read(MAX_HEADER_BYTES + len(AGE_MAGIC))
    return read_age_header(head)


def sealed_description(path: Path, header: AgeHeader) -> str:
    kinds = ", ".join(sorted(set(header.recipient_kinds)))
    n = len(header.recipient_kinds)
    return (
        f"{path} is an age-encrypted Casefile bundle ({n} {kinds} recipient{'s' if n != 1 else ''}; "
        "age does not show which): only the holder of the recipient's identity can open it. "
        "Support opens and verifies it on upload or with `casefile-collector import`."
    )


def sealed_bundle_id(path: Path) -> str | None:
    """The bundle id in a sealed file's name (``…-<32 hex>.tar.zst.age``), or None."""
    m = _ID_IN_NAME.search(path.name)
    return m.group(1) if m else None


def _sniffed(path: Path) -> AgeHeader | None:
    try:
        return sniff(path)
    except ValueError as exc:
        raise SealedBundleError(
            f"{path} starts as a sealed (age-encrypted) bundle but is damaged or cut short: {exc}"
        ) from None
    except OSError:
        return None  # the reader that follows says what is wrong with the path


def refuse_sealed(path: Path, as_json: bool = False) -> None:
    """Raise SealedBundleError (exit 5) saying what ``path`` is when it is sealed; with
    ``as_json`` the same is printed as one JSON document first."""
    header = _sniffed(path)
    if header is None:
        return
    text = sealed_description(path, header)
    if as_json:
        import json

        doc = {
            "ok": False,
            "bundle": str(path),
            "sealed": True,
            "format": "age",
            "recipient_kinds": list(header.recipient_kinds),
            "bundle_id": sealed_bundle_id(path),
            "error": text,
        }
        print(json.dumps(doc, indent=1))
    raise SealedBundleError(text)


def sealed_upload_id(path: Path) -> str | None:
    """The bundle id to upload a sealed ``path`` under, or None when ``path`` is not sealed."""
    if _sniffed(path) is None:
        return None
    bundle_id = sealed_bundle_id(path)
    if bundle_id is None:
        raise SealedBundleError(
            f"{path} is a sealed bundle whose name no longer ends in -<bundle id>{SEALED_SUFFIX} as "
            "`casefile collect --encrypt-to` wrote it: restore that name to upload it, or hand it to support "
            "(casefile-collector import opens it)"
        )
    return bundle_id


def check_recipient(text: str) -> Any:
    """The pyrage X25519 recipient for ``age1…``; ValueError saying what is wrong."""
    import pyrage

    text = text.strip()
    if not text.startswith("age1"):
        raise ValueError(f"{text[:20]!r} is not an age X25519 recipient (age1…): ask support for theirs")
    try:
        return pyrage.x25519.Recipient.from_str(text)
    except pyrage.RecipientError as exc:
        raise ValueError(f"{text[:20]}…: not a valid age X25519 recipient ({exc})") from None


def _hash(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def _publish(partial: Path, sealed: Path) -> None:
    """``partial`` appears whole as ``sealed``, never over an existing file."""
    try:
        os.link(partial, sealed)
    except FileExistsError:
        raise
    except OSError:  # filesystems without hard links (FAT on a USB stick, some shares)
        if sealed.exists():
            raise FileExistsError(f"{sealed} already exists") from None
        os.rename(partial, sealed)
        return
    partial.unlink()


def seal_bundle(collected: Collected, recipient: str) -> Collected:
    """Encrypt the bundle of ``collected`` (a ``Collected``) to ``recipient``; the plain file is removed.

    Returns the same ``Collected`` with its bundle's path, size and sha256 those of the
    ``.age`` file, which is written under a temporary name and appears whole.
    """
    import pyrage

    rcpt = check_recipient(recipient)
    bundle = collected.bundle
    plain: Path = bundle.path
    name = plain.name[: -len(BUNDLE_SUFFIX)]
    name = name.rsplit("-", 1)[0] if name.endswith(bundle.bundle_id[:8]) else name
    sealed = plain.with_name(f"{name}-{bundle.bundle_id}{SEALED_SUFFIX}")
    partial = sealed.with_name(f".{sealed.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out, plain.open("rb") as src:
            pyrage.encrypt_io(src, out, [rcpt])
            out.flush()
            os.fsync(out.fileno())
        _publish(partial, sealed)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    plain.unlink()
    size, sha256 = _hash(sealed)
    return dataclasses.replace(collected, bundle=dataclasses.replace(bundle, path=sealed, size=size, sha256=sha256))
