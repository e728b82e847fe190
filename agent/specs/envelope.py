"""Signed specs: the YAML, who signed it, until when, and an Ed25519 signature.

The signature is the bundles' own: an Ed25519 signature over a canonical JSON manifest
(as ``agent.bundle.manifest.encode_manifest`` writes one: sorted keys, indent 1, ASCII,
final newline; not imported, so the resident daemon can verify a spec without loading
the bundle package — a test keeps the two byte-equal) whose ``key``
block names the signer (``algorithm``, ``public_key``, ``fingerprint``). A signed spec is
one JSON file (``<name>.spec.json``)::

    {"format": "casefile-spec-signed/1",
     "signed": "<the manifest JSON, as text>",
     "signature": "<base64 of the 64-byte signature over the manifest's bytes>"}

and the manifest holds ``name``, ``version``, ``spec`` (the YAML text), ``spec_sha256``,
``signed_at``, ``expires_at`` and ``key``. Keeping the signed bytes as text means nothing
is re-encoded before verifying. :func:`verify_spec` refuses, each with its reason
(``SpecRefused.reason``): ``unsigned`` (plain YAML, or no signature), ``tampered`` (the
signature or the hash does not match), ``expired``, ``untrusted-signer`` (a key not in
the trusted set), ``malformed`` (anything else about the envelope or the spec).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

from agent.keys import PublicKey, SigningKey, fingerprint_of
from agent.specs.model import Spec
from agent.specs.parse import parse_spec
from agent.specs.yamlsafe import MAX_SPEC_BYTES, SpecError

__all__ = [
    "ENVELOPE_FORMAT",
    "MANIFEST_FORMAT",
    "RefusalReason",
    "SignedSpec",
    "SpecRefused",
    "sign_spec",
    "verify_spec",
]

ENVELOPE_FORMAT = "casefile-spec-signed/1"
MANIFEST_FORMAT = "casefile-spec/1"
MAX_ENVELOPE_BYTES = 4 * MAX_SPEC_BYTES
MAX_VALIDITY = dt.timedelta(days=400)
RefusalReason = Literal["unsigned", "tampered", "expired", "untrusted-signer", "malformed"]


class SpecRefused(SpecError):
    """A signed spec that may not run; ``reason`` is one of :data:`RefusalReason`."""

    def __init__(self, reason: RefusalReason, message: str) -> None:
        super().__init__(f"spec refused ({reason}): {message}")
        self.reason: RefusalReason = reason


@dataclass(frozen=True)
class SignedSpec:
    """A verified spec with who signed it and when it stops being good."""

    spec: Spec
    yaml_text: str
    signer: str  # the signer's key fingerprint, sha256:<hex>
    signed_at: dt.datetime
    expires_at: dt.datetime
    envelope: bytes  # the file as received: what the collector stores and sends on

    @property
    def spec_sha256(self) -> str:
        return hashlib.sha256(self.yaml_text.encode("utf-8")).hexdigest()


def encode_signed(manifest: dict[str, Any]) -> bytes:
    """The exact bytes that get signed (``encode_manifest``'s encoding)."""
    return (json.dumps(manifest, sort_keys=True, indent=1, ensure_ascii=True, allow_nan=False) + "\n").encode("utf-8")


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sign_spec(yaml_text: str, key: SigningKey, *, valid_for: dt.timedelta, now: dt.datetime | None = None) -> bytes:
    """The signed envelope of ``yaml_text`` (parsed first: a bad spec is never signed)."""
    spec = parse_spec(yaml_text)
    if not dt.timedelta(0) < valid_for <= MAX_VALIDITY:
        raise SpecError(f"a signature is valid for more than 0 and at most {MAX_VALIDITY.days} days")
    now = now or dt.datetime.now(dt.UTC)
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": spec.name,
        "version": spec.version,
        "spec": yaml_text,
        "spec_sha256": hashlib.sha256(yaml_text.encode("utf-8")).hexdigest(),
        "signed_at": _iso(now),
        "expires_at": _iso(now + valid_for),
        "key": {"algorithm": "ed25519", "public_key": key.public.b64, "fingerprint": key.fingerprint},
    }
    signed = encode_signed(manifest)
    envelope = {
        "format": ENVELOPE_FORMAT,
        "signed": signed.decode("ascii"),
        "signature": base64.b64encode(key.sign(signed)).decode("ascii"),
    }
    return (json.dumps(envelope, indent=1, sort_keys=True) + "\n").encode("ascii")


def _json(data: bytes | str, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise SpecRefused("malformed", f"{what} is not JSON: {str(exc)[:120]}") from None
    if not isinstance(obj, dict):
        raise SpecRefused("malformed", f"{what} is not a JSON object")
    return obj


def _time(value: object, field: str) -> dt.datetime:
    if not isinstance(value, str):
        raise SpecRefused("malformed", f"{field} is missing")
    try:
        moment = dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise SpecRefused("malformed", f"{field} {value[:40]!r} is not YYYY-MM-DDTHH:MM:SSZ") from None
    return moment


def verify_spec(
    data: bytes, trusted: Collection[str] | None, *, now: dt.datetime | None = None, where: str = "spec"
) -> SignedSpec:
    """The spec in the envelope ``data`` if it is intact, current and signed by a key
    whose fingerprint is in ``trusted``; SpecRefused with the reason otherwise.

    ``trusted`` None checks all but the signer (the collector stores any intact spec;
    which signers run is each agent's policy)."""
    try:
        return _verify(data, trusted, now or dt.datetime.now(dt.UTC))
    except SpecRefused as exc:
        raise SpecRefused(exc.reason, f"{where}: {str(exc).split(': ', 1)[1]}") from None


def _verify(data: bytes, trusted: Collection[str] | None, now: dt.datetime) -> SignedSpec:
    if len(data) > MAX_ENVELOPE_BYTES:
        raise SpecRefused("malformed", f"{len(data):,} bytes; a signed spec is at most {MAX_ENVELOPE_BYTES:,}")
    if not data.lstrip().startswith(b"{"):
        raise SpecRefused("unsigned", "this is not a signed spec (sign it with `casefile-collector spec sign`)")
    envelope = _json(data, "the envelope")
    if envelope.get("format") != ENVELOPE_FORMAT:
        raise SpecRefused("malformed", f"format {str(envelope.get('format'))[:40]!r} is not {ENVELOPE_FORMAT!r}")
    signed, signature = envelope.get("signed"), envelope.get("signature")
    if not isinstance(signed, str) or not signed:
        raise SpecRefused("unsigned", "the envelope holds no signed manifest")
    if not isinstance(signature, str) or not signature:
        raise SpecRefused("unsigned", "the envelope holds no signature")
    manifest = _json(signed, "the signed manifest")
    key = manifest.get("key")
    if not isinstance(key, dict) or key.get("algorithm") != "ed25519" or not isinstance(key.get("public_key"), str):
        raise SpecRefused("malformed", "the manifest names no ed25519 key")
    try:
        raw_key = base64.b64decode(key["public_key"], validate=True)
        raw_sig = base64.b64decode(signature, validate=True)
    except binascii.Error:
        raise SpecRefused("malformed", "the key or the signature is not base64") from None
    if len(raw_key) != 32:
        raise SpecRefused("malformed", f"the key is {len(raw_key)} bytes; an Ed25519 key is 32")
    public = PublicKey(raw_key)
    if not public.verify(raw_sig, signed.encode("utf-8")):
        raise SpecRefused("tampered", "the signature does not match the signed manifest")
    fingerprint = fingerprint_of(raw_key)
    if key.get("fingerprint") != fingerprint:
        raise SpecRefused("tampered", "the key's fingerprint does not match its key")
    if trusted is not None and fingerprint not in trusted:
        raise SpecRefused("untrusted-signer", f"signer {fingerprint} is not a trusted spec signer here")
    text = manifest.get("spec")
    if not isinstance(text, str) or manifest.get("spec_sha256") != hashlib.sha256(text.encode("utf-8")).hexdigest():
        raise SpecRefused("tampered", "the spec text does not match its recorded hash")
    signed_at, expires_at = (
        _time(manifest.get("signed_at"), "signed_at"),
        _time(manifest.get("expires_at"), "expires_at"),
    )
    if now >= expires_at:
        raise SpecRefused("expired", f"the signature expired at {_iso(expires_at)}")
    if signed_at > now + dt.timedelta(minutes=5):
        raise SpecRefused("malformed", f"signed_at {_iso(signed_at)} is in the future")
    try:
        spec = parse_spec(text)
    except SpecError as exc:
        raise SpecRefused("malformed", str(exc)) from None
    if (spec.name, spec.version) != (manifest.get("name"), manifest.get("version")):
        raise SpecRefused("tampered", "the manifest's name or version differs from the spec's")
    return SignedSpec(spec, text, fingerprint, signed_at, expires_at, bytes(data))
