"""The pieces of the bundle format shared by the writer and the reader.

A bundle is ``<top>/…`` members in a zstd-compressed tar, closed by
``<top>/MANIFEST.json`` and ``<top>/MANIFEST.sig``. This module owns the rules
both sides must agree on: the file name, which member paths are allowed, and the
shape of ``MANIFEST.json`` (built here for the writer, checked here for the reader).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

from agent.errors import BundleError, VerificationError
from agent.keys import PublicKey, fingerprint_of

__all__ = [
    "BUNDLE_SUFFIX",
    "FORMAT",
    "KINDS",
    "MANIFEST_NAME",
    "RESERVED_NAMES",
    "SIGNATURE_NAME",
    "BundleKind",
    "BundleMeta",
    "MemberInfo",
    "PathSet",
    "bundle_file_name",
    "encode_manifest",
    "format_time",
    "is_bundle_id",
    "member_path_problem",
    "new_bundle_id",
    "parse_manifest",
]

# /2: facts.json keeps the .proto's field names and writes integers as numbers (/1 had
# protobuf's canonical camelCase and 64-bit integers as strings). Both are read.
FORMAT = "casefile-bundle/2"
READABLE_FORMATS = frozenset({"casefile-bundle/1", FORMAT})
BUNDLE_SUFFIX = ".tar.zst"
MANIFEST_NAME = "MANIFEST.json"
SIGNATURE_NAME = "MANIFEST.sig"
RESERVED_NAMES = frozenset({MANIFEST_NAME, SIGNATURE_NAME})

# "triggered": sealed by the agent when a trigger of its policy fired (agent.daemon.capture).
BundleKind = Literal["one-shot", "live", "scheduled", "triggered"]
KINDS: tuple[BundleKind, ...] = ("one-shot", "live", "scheduled", "triggered")

_BUNDLE_ID = re.compile(r"[0-9a-f]{32}")


def is_bundle_id(value: object) -> bool:
    """A bundle id: 32 lowercase hex digits (``new_bundle_id``)."""
    return isinstance(value, str) and _BUNDLE_ID.fullmatch(value) is not None
_SHA256 = re.compile(r"[0-9a-f]{64}")
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]")
# Control characters break `sha256sum -c` lines and terminals; backslash is a
# separator on Windows, where an on-site technician may extract the bundle.
_BAD_PATH_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")
_RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z")
_NAME_PART_MAX = 64
_PATH_MAX = 1024
_COMPONENT_MAX = 255


class MemberInfo(NamedTuple):
    """One member as listed in the manifest: path relative to the top folder."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True, kw_only=True)
class BundleMeta:
    """Who made a bundle, when and why: everything the file name and manifest header need."""

    bundle_id: str
    hostname: str
    created_at: datetime
    # Plain str so callers holding a kind from a CLI option or a request need no
    # cast; __post_init__ enforces the BundleKind values.
    kind: str = "one-shot"
    case_id: str | None = None
    agent_id: str = ""
    agent_version: str = ""
    request_id: str | None = None

    def __post_init__(self) -> None:
        if not is_bundle_id(self.bundle_id):
            raise BundleError(f"bundle id must be 32 lowercase hex digits, got {self.bundle_id!r}")
        if self.kind not in KINDS:
            raise BundleError(f"bundle kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.created_at.tzinfo is None or self.created_at.utcoffset() is None:
            raise BundleError("bundle created_at must be timezone-aware")
        for field in ("hostname", "case_id", "agent_id", "agent_version", "request_id"):
            value = getattr(self, field)
            if value is None:
                continue
            if len(value) > _ONE_LINE_MAX:
                raise BundleError(f"bundle {field} is {len(value):,} characters long (at most {_ONE_LINE_MAX:,})")
            bad = _CONTROL.search(value)
            if bad:
                raise BundleError(f"bundle {field} {value!r} holds control character U+{ord(bad.group()):04X}")


def new_bundle_id() -> str:
    """A fresh random 128-bit bundle id as 32 lowercase hex digits."""
    return secrets.token_hex(16)


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` suffix and millisecond precision."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _name_part(text: str, fallback: str) -> str:
    cleaned = _UNSAFE_NAME_CHARS.sub("_", text)[:_NAME_PART_MAX].strip(".")
    return cleaned or fallback


def bundle_file_name(meta: BundleMeta) -> str:
    """``casefile-<host>-<case|adhoc>-<yyyymmddThhmmssZ>-<id8>.tar.zst``."""
    stamp = meta.created_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    host = _name_part(meta.hostname, "unknown-host")
    case = _name_part(meta.case_id, "case") if meta.case_id else "adhoc"
    return f"casefile-{host}-{case}-{stamp}-{meta.bundle_id[:8]}{BUNDLE_SUFFIX}"


def member_path_problem(path: str) -> str | None:
    """Why ``path`` (relative to the top folder) is not a safe member path, or None."""
    if not path:
        return "empty path"
    if path.startswith("/"):
        return "absolute path"
    if _BAD_PATH_CHARS.search(path):
        return "control character or backslash in path"
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        return "path is not valid UTF-8"
    if len(encoded) > _PATH_MAX:
        return f"path longer than {_PATH_MAX} bytes"
    for part in path.split("/"):
        if part in ("", ".", ".."):
            return f"path component {part!r} not allowed"
        if len(part.encode("utf-8")) > _COMPONENT_MAX:
            return f"path component longer than {_COMPONENT_MAX} bytes"
    return None


class PathSet:
    """The member paths of one bundle, refusing any that would clash on extraction.

    Besides exact duplicates this refuses names equal up to case (they overwrite
    each other on Windows and macOS) and a file that is also used as a folder.
    """

    def __init__(self) -> None:
        self._files: set[str] = set()
        self._dirs: set[str] = set()

    def check(self, path: str) -> tuple[str, str] | None:
        """``(reason, message)`` if ``path`` would clash with a recorded path, else None."""
        key = path.casefold()
        if key in self._files:
            return "duplicate-member", "appears twice (names equal up to case count as the same)"
        if key in self._dirs:
            return "unsafe-path", "is both a file and a folder"
        if any(prefix in self._files for prefix in _prefixes(key)):
            return "unsafe-path", "lies under a path that is a file"
        return None

    def add(self, path: str) -> tuple[str, str] | None:
        """Record ``path`` unless it clashes; return the clash as ``check`` does."""
        clash = self.check(path)
        if clash is None:
            key = path.casefold()
            self._files.add(key)
            self._dirs.update(_prefixes(key))
        return clash


def _prefixes(key: str) -> list[str]:
    parts = key.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def encode_manifest(manifest: Mapping[str, Any]) -> bytes:
    """The exact bytes that get signed: sorted keys, indent 1, ASCII-safe, final newline."""
    try:
        text = json.dumps(manifest, sort_keys=True, indent=1, ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise BundleError(f"manifest is not plain JSON: {exc}") from None
    return (text + "\n").encode("utf-8")


def _bad(message: str) -> VerificationError:
    return VerificationError(
        f"MANIFEST.json: {message}", reason="bad-manifest", member=MANIFEST_NAME
    )


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


# Names and ids stored and shown one per line (and in PostgreSQL text, which refuses NUL).
_ONE_LINE_FIELDS = ("agent_id", "case_id", "request_id", "hostname", "agent_version", "kind")
_ONE_LINE_MAX = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def parse_manifest(data: bytes) -> tuple[dict[str, Any], PublicKey, tuple[MemberInfo, ...]]:
    """Parse and check ``MANIFEST.json``; return it, its public key and its member list.

    Raises VerificationError(reason="bad-manifest") naming the first problem.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        manifest = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise _bad(f"not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise _bad("top level is not a JSON object")
    for field, types in _FIELD_TYPES.items():
        if field not in manifest:
            raise _bad(f"required field {field!r} missing")
        if not isinstance(manifest[field], types):
            raise _bad(f"field {field!r} has the wrong type ({type(manifest[field]).__name__})")
    for field in _ONE_LINE_FIELDS:
        value = manifest[field]
        if isinstance(value, str):
            if len(value) > _ONE_LINE_MAX:
                raise _bad(f"field {field!r} is {len(value):,} characters long (at most {_ONE_LINE_MAX:,})")
            bad = _CONTROL.search(value)
            if bad:
                raise _bad(f"field {field!r} holds control character U+{ord(bad.group()):04X} at index {bad.start()}")
    if manifest["format"] not in READABLE_FORMATS:
        raise _bad(f"unknown format {manifest['format']!r} (expected {FORMAT!r})")
    if not is_bundle_id(manifest["bundle_id"]):
        raise _bad(f"bundle_id {manifest['bundle_id']!r} is not 32 lowercase hex digits")
    if manifest["kind"] not in KINDS:
        raise _bad(f"kind {manifest['kind']!r} is not one of {', '.join(KINDS)}")
    if not _RFC3339_UTC.fullmatch(manifest["created_at"]):
        raise _bad(f"created_at {manifest['created_at']!r} is not RFC 3339 UTC")
    if not all(isinstance(entry, dict) for entry in manifest["collectors"]):
        raise _bad("collectors must be a list of objects")
    return manifest, _parse_key(manifest["key"]), _parse_members(manifest["members"])


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
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise _bad(f"members[{index}] ({path}): sha256 is not 64 lowercase hex digits")
        clash = paths.add(path)
        if clash is not None:
            raise _bad(f"members[{index}] ({path}) {clash[1]}")
        members.append(MemberInfo(path, size, digest))
    return tuple(members)
