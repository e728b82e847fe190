"""Bounded, printable text for what we store and echo: audit fields and status messages.

Anything a caller sends can end up in the audit log or in an error message. Both are
cut to a bounded length (with a marker saying how much was cut), and control
characters, NUL included (PostgreSQL ``text`` cannot hold it), are written as escapes.
"""

from __future__ import annotations

import re

__all__ = ["CONTROL_RE", "MAX_TEXT", "clip", "printable"]

MAX_TEXT = 500
"""The longest audit field or status message we keep, in characters (before the marker)."""

CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def printable(text: str) -> str:
    """``text`` with every control character (NUL, newline, ESC, DEL…) as a ``\\xNN`` escape."""
    return CONTROL_RE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def clip(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` cut to ``limit`` characters, with a marker naming how many were cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[cut {len(text) - limit} chars]"
