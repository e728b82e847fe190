"""Ed25519 signing keys: the agent's identity.

The private key lives in a PKCS#8 PEM file readable by its owner only (0600);
it is created on first use or at enrollment. A key's fingerprint is
``sha256:<hex>`` of the raw 32-byte public key, the form used in manifests,
receipts and on the command line.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.errors import KeyStoreError

__all__ = [
    "PublicKey",
    "SigningKey",
    "fingerprint_of",
    "load_or_create_key",
    "load_public_key",
]

_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw


def fingerprint_of(raw_public_key: bytes) -> str:
    """The ``sha256:<hex>`` fingerprint of a raw 32-byte Ed25519 public key."""
    return "sha256:" + hashlib.sha256(raw_public_key).hexdigest()


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key that can check signatures."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise KeyStoreError(f"an Ed25519 public key is 32 bytes, got {len(self.raw)}")

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.raw)

    @property
    def b64(self) -> str:
        return base64.b64encode(self.raw).decode("ascii")

    def pem(self) -> bytes:
        return Ed25519PublicKey.from_public_bytes(self.raw).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def verify(self, signature: bytes, data: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except (InvalidSignature, ValueError):
            return False
        return True


class SigningKey:
    """An Ed25519 private key. Never logged, never serialised outside its key file."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public = PublicKey(private.public_key().public_bytes(_RAW, _RAW_PUB))

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @property
    def fingerprint(self) -> str:
        return self.public.fingerprint

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)

    def save(self, path: Path) -> None:
        """Write the key as PKCS#8 PEM, mode 0600, atomically; never over an existing key."""
        pem = self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
                fh.flush()
                os.fsync(fh.fileno())
            os.link(tmp, path)  # fails if a key appeared meanwhile: never replace a key
        except FileExistsError:
            raise KeyStoreError(f"refusing to overwrite existing key {path}", path=str(path)) from None
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        try:
            st = path.stat()
        except FileNotFoundError:
            raise KeyStoreError(f"no key at {path}", path=str(path)) from None
        if os.name == "posix" and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyStoreError(
                f"key {path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}); "
                f"run: chmod 600 {path}",
                path=str(path),
            )
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError, OSError) as exc:
            raise KeyStoreError(f"cannot read key {path}: {exc}", path=str(path)) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyStoreError(f"key {path} is not an Ed25519 key", path=str(path))
        return cls(key)


def load_or_create_key(path: Path) -> SigningKey:
    """Load the key at ``path``, creating it (0600) on first use."""
    if not path.exists():
        # Another process may create it first; then load theirs.
        with contextlib.suppress(KeyStoreError):
            SigningKey.generate().save(path)
    return SigningKey.load(path)


def load_public_key(text: str | bytes) -> PublicKey:
    """Parse a public key given as PEM (SubjectPublicKeyInfo), base64 raw, or hex raw."""
    data = text.encode() if isinstance(text, str) else text
    stripped = data.strip()
    if stripped.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(stripped)
        except ValueError as exc:
            raise KeyStoreError(f"not a PEM public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyStoreError("the PEM public key is not Ed25519")
        return PublicKey(key.public_bytes(_RAW, _RAW_PUB))
    for decode in (bytes.fromhex, base64.b64decode):
        try:
            raw = decode(stripped.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            continue
        if len(raw) == 32:
            return PublicKey(raw)
    raise KeyStoreError("not an Ed25519 public key (expected PEM, base64 or hex of 32 bytes)")
