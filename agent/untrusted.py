"""Checks for strings that come from the other side of a connection.

The agent trusts the collector it pinned to *ask*, never to name things on its disk or
to write on its owner's terminal: a collector holding the pinned key may be stolen or
compromised. An id from the wire must match a strict pattern before any use (a path, a
log line, the history), and free text shown to a person (who asked, why, a host name)
loses the characters that can rewrite what the person sees: C0 and C1 controls (ANSI
escape sequences start with ESC, U+001B, or CSI, U+009B) and the bidirectional
overrides, embeddings, isolates and marks that reorder a line ("Trojan Source",
CVE-2021-42574). The collector applies the same cleaning when it stores a live request.

Kept free of imports beyond the standard library's ``re`` and ``json``: the resident
daemon uses it.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["REQUEST_ID_MAX", "clean_text", "describe_id", "is_request_id", "request_id_problem", "terminal_json"]

REQUEST_ID_MAX = 64
# The collector makes 32 lowercase hex digits; letters, digits, '_' and '-' leave room for
# another collector version while no value can be '.', '..', absolute, or hold a separator.
_REQUEST_ID = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_-]{{0,{REQUEST_ID_MAX - 1}}}")

# Line breaks and tabs become one space (a reason may span lines; a table cell may not).
_SPACE = re.compile(r"[\t\n\v\f\r\x85\u2028\u2029]+")
# C0, DEL, C1; the bidi embeddings/overrides U+202A-U+202E and isolates U+2066-U+2069;
# the marks U+200E/U+200F/U+061C; lone surrogates (a JSON file can hold them as escapes,
# and a terminal cannot print them).
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def is_request_id(value: object) -> bool:
    """A live request id: 1-64 of ``[A-Za-z0-9_-]``, not starting with ``-`` or ``_``."""
    return isinstance(value, str) and _REQUEST_ID.fullmatch(value) is not None


def describe_id(value: str, limit: int = 80) -> str:
    """A bad id as it may be logged and recorded: escaped (``repr``) and cut."""
    shown = ascii(value[:limit])
    return shown + (f"...[{len(value) - limit} more chars]" if len(value) > limit else "")


def request_id_problem(value: str) -> str | None:
    """Why ``value`` is not a request id (for the error answered to the collector), or None."""
    if is_request_id(value):
        return None
    if not value:
        return "request id is empty"
    if len(value) > REQUEST_ID_MAX:
        return f"request id is {len(value):,} characters long (at most {REQUEST_ID_MAX})"
    return (
        f"request id {describe_id(value)} is not 1-{REQUEST_ID_MAX} letters, digits, '_' or '-' "
        "(starting with a letter or digit)"
    )


def clean_text(value: str, limit: int = 500) -> str:
    """``value`` safe to show a person: no control or bidi character, one line, at most
    ``limit`` characters (then cut with '…')."""
    text = _UNSAFE.sub("", _SPACE.sub(" ", value)).strip()
    if len(text) > limit:
        text = text[: max(0, limit - 1)] + "…"
    return text


def terminal_json(value: Any) -> str:
    """``value`` as one line of JSON that is safe on a terminal: readable non-ASCII text
    stays, every control, bidi or surrogate character is a ``\\uXXXX`` escape (the same
    value to a JSON reader)."""
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
