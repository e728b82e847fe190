"""Opaque page tokens for keyset pagination.

A cursor is the sort key of the last row of a page, tagged with what it pages
over and encoded as unpadded urlsafe base64. Clients must treat it as opaque;
the tag keeps a bundle cursor from being replayed against the host listing.
Cursors arrive from the network, so decoding accepts exactly what encoding
produces and raises ``InvalidArgument`` (a ``ValueError``) for anything else.
"""

from __future__ import annotations

import base64
import binascii
import re

from collector.storage.errors import InvalidArgument

__all__ = [
    "MAX_PAGE_SIZE",
    "clamp_page_size",
    "decode_bundle_cursor",
    "decode_case_cursor",
    "decode_host_cursor",
    "encode_bundle_cursor",
    "encode_case_cursor",
    "encode_host_cursor",
]

MAX_PAGE_SIZE = 1000
_MAX_CURSOR_CHARS = 1024
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]+")
_BUNDLE_RE = re.compile(r"b1:(0|-?[1-9][0-9]{0,18}):([0-9a-f]{32})")
_INT64 = (-(2**63), 2**63 - 1)


def clamp_page_size(page_size: int) -> int:
    return max(1, min(MAX_PAGE_SIZE, page_size))


def _encode(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode("utf-8")).rstrip(b"=").decode("ascii")


def _decode(cursor: str) -> str:
    invalid = InvalidArgument("invalid page token")
    if len(cursor) > _MAX_CURSOR_CHARS or not _B64URL_RE.fullmatch(cursor):
        raise invalid
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        return raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise invalid from None


def encode_bundle_cursor(created_at_micros: int, bundle_id: str) -> str:
    return _encode(f"b1:{created_at_micros}:{bundle_id}")


def _time_and_key(pattern: re.Pattern[str], cursor: str) -> tuple[int, str]:
    """``(microseconds, key)`` of a token ``pattern`` matches whole; refused otherwise."""
    match = pattern.fullmatch(_decode(cursor))
    if match is None:
        raise InvalidArgument("invalid page token")
    micros = int(match.group(1))
    if not _INT64[0] <= micros <= _INT64[1]:
        raise InvalidArgument("invalid page token")
    return micros, match.group(2)


def decode_bundle_cursor(cursor: str) -> tuple[int, str]:
    """``(created_at_micros, bundle_id)`` of the last row of the previous page."""
    return _time_and_key(_BUNDLE_RE, cursor)


def encode_host_cursor(hostname: str) -> str:
    return _encode("h1:" + hostname)


def decode_host_cursor(cursor: str) -> str:
    text = _decode(cursor)
    if not text.startswith("h1:") or len(text) == 3:
        raise InvalidArgument("invalid page token")
    return text[3:]


_CASE_RE = re.compile(r"c1:(0|-?[1-9][0-9]{0,18}):(.+)", re.DOTALL)


def encode_case_cursor(last_micros: int, case_id: str) -> str:
    return _encode(f"c1:{last_micros}:{case_id}")


def decode_case_cursor(cursor: str) -> tuple[int, str]:
    """``(newest bundle's created_at, case_id)`` of the last case of the previous page."""
    return _time_and_key(_CASE_RE, cursor)
