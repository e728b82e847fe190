"""``MANIFEST.json``: the one typed ``Manifest``, written and read here only.

A bundle is ``<top>/…`` members in a zstd-compressed tar, closed by
``<top>/MANIFEST.json`` and ``<top>/MANIFEST.sig``. The writer builds a ``Manifest``
and signs ``encode_manifest(manifest)``; the reader checks those bytes with
``parse_manifest``, which returns the same type with every header field validated,
so nothing downstream re-defaults or re-checks them. The names, ids and member paths
both sides agree on live in ``agent.bundle.names`` (re-exported here).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any, NamedTuple, cast

from agent.bundle.names import (
    BUNDLE_SUFFIX,
    KINDS,
    MANIFEST_NAME,
    ONE_LINE_MAX,
    RESERVED_NAMES,
    SIGNATURE_NAME,
    BundleKind,
    BundleMeta,
    PathSet,
    bundle_file_name,
    control_character,
    format_time,
    is_bundle_id,
    is_sha256,
    member_path_problem,
    new_bundle_id,
)
from agent.errors import BundleError, VerificationError
from agent.keys import PublicKey, fingerprint_of

__all__ = [
    "BUNDLE_SUFFIX",
    "FORMAT",
    "HEADER_FIELDS",
    "KINDS",
    "MANIFEST_NAME",
    "READABLE_FORMATS",
    "RESERVED_NAMES",
    "SIGNATURE_NAME",
    "BundleKind",
    "BundleMeta",
    "Manifest",
    "MemberInfo",
    "PathSet",
    "bundle_file_name",
    "encode_manifest",
    "format_time",
    "is_bundle_id",
    "is_sha256",
    "member_path_problem",
    "new_bundle_id",
    "parse_manifest",
]

# /2: facts.json keeps the .proto's field names and writes integers as numbers (/1 had
# protobuf's canonical camelCase and 64-bit integers as strings). Both are read.
FORMAT = "casefile-bundle/2"
READABLE_FORMATS = frozenset({"casefile-bundle/1", FORMAT})

_RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z")


class MemberInfo(NamedTuple):
    """One member as listed in the manifest: path relative to the top folder."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True, kw_only=True, eq=False)
class Manifest:
    """A bundle's signed manifest: the header typed, anything else in ``extra``.

    ``extra`` holds the fields a caller added beside the header (``consent``,
    ``analysis_error``, …); ``document()`` is the JSON object that is signed. Two
    manifests are equal when their documents are.
    """

    bundle_id: str
    key: PublicKey
    hostname: str
    created_at: str  # RFC 3339 UTC, as signed; ``created`` is the moment
    kind: BundleKind = "one-shot"
    format: str = FORMAT
    agent_id: str = ""
    case_id: str | None = None
    request_id: str | None = None
    agent_version: str = ""
    spec: Mapping[str, Any] = field(default_factory=dict)
    collectors: tuple[Mapping[str, Any], ...] = ()
    truncated: tuple[Any, ...] = ()
    redaction: Mapping[str, Any] | None = None
    members: tuple[MemberInfo, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clash = sorted(set(self.extra) & set(HEADER_FIELDS))
        if clash:
            raise BundleError(f"extra manifest keys would overwrite {', '.join(clash)}")

    @property
    def created(self) -> datetime:
        """``created_at`` as a timezone-aware moment."""
        return datetime.fromisoformat(self.created_at.replace("Z", "+00:00"))

    def document(self) -> dict[str, Any]:
        """The JSON object that is signed (a fresh copy)."""
        doc: dict[str, Any] = {
            "format": self.format,
            "bundle_id": self.bundle_id,
            "agent_id": self.agent_id,
            "key": {"algorithm": "ed25519", "public_key": self.key.b64, "fingerprint": self.key.fingerprint},
            "case_id": self.case_id,
            "kind": self.kind,
            "request_id": self.request_id,
            "hostname": self.hostname,
            "created_at": self.created_at,
            "agent_version": self.agent_version,
            "spec": dict(self.spec),
            "collectors": [dict(entry) for entry in self.collectors],
            "truncated": list(self.truncated),
            "redaction": dict(self.redaction) if self.redaction is not None else None,
            "members": [m._asdict() for m in self.members],
        }
        doc.update(self.extra)
        return doc

    @cached_property
    def _document(self) -> dict[str, Any]:
        return self.document()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Manifest):
            return self._document == other._document
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # holds mutable JSON values


# The header: every one required, of these JSON types.
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "format": (str,),
    "bundle_id": (str,),
    "agent_id": (str,),
    "key": (dict,),
    "case_id": (str, type(None)),
    "kind": (str,),
    "request_id": (str, type(None)),
    "hostname": (str,),
    "created_at": (str,),
    "agent_version": (str,),
    "spec": (dict,),
    "collectors": (list,),
    "truncated": (list,),
    "redaction": (dict, type(None)),
    "members": (list,),
}
HEADER_FIELDS = frozenset(_FIELD_TYPES)
_ONE_LINE_FIELDS = ("agent_id", "case_id", "request_id", "hostname", "agent_version", "kind")


def encode_manifest(manifest: Manifest) -> bytes:
    """The exact bytes that get signed: sorted keys, indent 1, ASCII-safe, final newline."""
    return encode_document(manifest.document())


def encode_document(document: Mapping[str, Any]) -> bytes:
    """A signed JSON document's bytes (a bundle's manifest, a collection spec's envelope)."""
    try:
        text = json.dumps(document, sort_keys=True, indent=1, ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise BundleError(f"manifest is not plain JSON: {exc}") from None
    return (text + "\n").encode("utf-8")


def _bad(message: str) -> VerificationError:
    return VerificationError(f"MANIFEST.json: {message}", reason="bad-manifest", member=MANIFEST_NAME)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers that disagree on which duplicate wins would read different
    # manifests from the same signed bytes; refuse the ambiguity outright.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _bad(f"duplicate key {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise _bad(f"non-standard JSON constant {name}")


def parse_manifest(data: bytes) -> Manifest:
    """Parse and check ``MANIFEST.json`` (its key and member list included).

    Raises VerificationError(reason="bad-manifest") naming the first problem.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        doc = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise _bad(f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise _bad("top level is not a JSON object")
    for name, types in _FIELD_TYPES.items():
        if name not in doc:
            raise _bad(f"required field {name!r} missing")
        if not isinstance(doc[name], types):
            raise _bad(f"field {name!r} has the wrong type ({type(doc[name]).__name__})")
    for name in _ONE_LINE_FIELDS:
        value = doc[name]
        if isinstance(value, str):
            if len(value) > ONE_LINE_MAX:
                raise _bad(f"field {name!r} is {len(value):,} characters long (at most {ONE_LINE_MAX:,})")
            bad = control_character(value)
            if bad:
                raise _bad(f"field {name!r} holds control character U+{ord(bad.group()):04X} at index {bad.start()}")
    if doc["format"] not in READABLE_FORMATS:
        raise _bad(f"unknown format {doc['format']!r} (expected {FORMAT!r})")
    if not is_bundle_id(doc["bundle_id"]):
        raise _bad(f"bundle_id {doc['bundle_id']!r} is not 32 lowercase hex digits")
    if doc["kind"] not in KINDS:
        raise _bad(f"kind {doc['kind']!r} is not one of {', '.join(KINDS)}")
    if not _RFC3339_UTC.fullmatch(doc["created_at"]) or not _is_moment(doc["created_at"]):
        raise _bad(f"created_at {doc['created_at']!r} is not RFC 3339 UTC")
    if not all(isinstance(entry, dict) for entry in doc["collectors"]):
        raise _bad("collectors must be a list of objects")
    return Manifest(
        format=doc["format"],
        bundle_id=doc["bundle_id"],
        agent_id=doc["agent_id"],
        key=_parse_key(doc["key"]),
        case_id=doc["case_id"],
        kind=cast(BundleKind, doc["kind"]),
        request_id=doc["request_id"],
        hostname=doc["hostname"],
        created_at=doc["created_at"],
        agent_version=doc["agent_version"],
        spec=doc["spec"],
        collectors=tuple(doc["collectors"]),
        truncated=tuple(doc["truncated"]),
        redaction=doc["redaction"],
        members=_parse_members(doc["members"]),
        extra={name: value for name, value in doc.items() if name not in HEADER_FIELDS},
    )


def _is_moment(text: str) -> bool:
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:  # 2026-13-01: the right shape, no such day
        return False
    return True


def _parse_key(key: dict[str, Any]) -> PublicKey:
    if key.get("algorithm") != "ed25519":
        raise _bad(f"key algorithm {key.get('algorithm')!r} is not 'ed25519'")
    encoded = key.get("public_key")
    if not isinstance(encoded, str):
        raise _bad("key.public_key missing or not a string")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise _bad("key.public_key is not base64") from None
    if len(raw) != 32:
        raise _bad(f"key.public_key is {len(raw)} bytes, an Ed25519 key is 32")
    if key.get("fingerprint") != fingerprint_of(raw):
        raise _bad("key.fingerprint does not match key.public_key")
    return PublicKey(raw)


def _parse_members(entries: list[Any]) -> tuple[MemberInfo, ...]:
    members: list[MemberInfo] = []
    paths = PathSet()
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise _bad(f"members[{index}] is not an object")
        path, size, digest = entry.get("path"), entry.get("size"), entry.get("sha256")
        if not isinstance(path, str) or member_path_problem(path) or path in RESERVED_NAMES:
            raise _bad(f"members[{index}].path {path!r} is not a safe member path")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _bad(f"members[{index}] ({path}): size {size!r} is not a non-negative integer")
        if not is_sha256(digest):
            raise _bad(f"members[{index}] ({path}): sha256 is not 64 lowercase hex digits")
        clash = paths.add(path)
        if clash is not None:
            raise _bad(f"members[{index}] ({path}) {clash[1]}")
        members.append(MemberInfo(path, size, digest))
    return tuple(members)
