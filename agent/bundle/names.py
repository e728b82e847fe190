"""The names of a bundle: its ids, its file name, its member paths and who made it.

Both sides of the format agree on these: the writer names the file and its members
with them, the reader and the collector check what they receive against them. Every
check is a whole-string match (``fullmatch``): a trailing newline is never accepted.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, TypeGuard

from agent.errors import BundleError

__all__ = [
    "BUNDLE_SUFFIX",
    "KINDS",
    "MANIFEST_NAME",
    "ONE_LINE_MAX",
    "RESERVED_NAMES",
    "SIGNATURE_NAME",
    "BundleKind",
    "BundleMeta",
    "PathSet",
    "bundle_file_name",
    "control_character",
    "format_time",
    "is_bundle_id",
    "is_sha256",
    "member_path_problem",
    "new_bundle_id",
]

BUNDLE_SUFFIX = ".tar.zst"
MANIFEST_NAME = "MANIFEST.json"
SIGNATURE_NAME = "MANIFEST.sig"
RESERVED_NAMES = frozenset({MANIFEST_NAME, SIGNATURE_NAME})

# "triggered": sealed by the agent when a trigger of its policy fired (agent.daemon.capture).
BundleKind = Literal["one-shot", "live", "scheduled", "triggered"]
KINDS: tuple[BundleKind, ...] = ("one-shot", "live", "scheduled", "triggered")

_BUNDLE_ID = re.compile(r"[0-9a-f]{32}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]")
# Control characters break `sha256sum -c` lines and terminals; backslash is a
# separator on Windows, where an on-site technician may extract the bundle.
_BAD_PATH_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")
_NAME_PART_MAX = 64
_PATH_MAX = 1024
_COMPONENT_MAX = 255
# Names and ids stored and shown one per line (and in PostgreSQL text, which refuses NUL).
ONE_LINE_MAX = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def is_bundle_id(value: object) -> TypeGuard[str]:
    """A bundle id: 32 lowercase hex digits (``new_bundle_id``)."""
    return isinstance(value, str) and _BUNDLE_ID.fullmatch(value) is not None


def is_sha256(value: object) -> TypeGuard[str]:
    """A SHA-256 digest as written everywhere in Casefile: 64 lowercase hex digits."""
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None


def control_character(value: str) -> re.Match[str] | None:
    """The first control character in a one-line name or id, or None."""
    return _CONTROL.search(value)


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
            if len(value) > ONE_LINE_MAX:
                raise BundleError(f"bundle {field} is {len(value):,} characters long (at most {ONE_LINE_MAX:,})")
            bad = control_character(value)
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
