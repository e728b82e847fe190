"""Names that identify a machine or a token (host names, labels) and came from elsewhere.

A host name is chosen by whoever controls the enrolling machine, then stored by the
collector and printed in an engineer's terminal. Two things go wrong with raw text:
escape sequences (ESC, the C1 CSI) rewrite the engineer's screen, and bidirectional
overrides (U+202A..U+202E, U+2066..U+2069) make one name read as another; a NUL also
cannot be stored in PostgreSQL ``text`` at all. So such a name is checked where it
enters (:func:`check_identity_text`: refused, with what and where), and anything
stored is shown through :func:`display`, which escapes what the check would refuse,
for rows written before the check existed or by a path that does not check.

"Printable" is Python's :meth:`str.isprintable`: it refuses every character of the
Unicode categories Cc (C0 and C1 controls, DEL), Cf (format: the bidi controls, zero
width joiners, the soft hyphen), Cs, Co, Cn (surrogates, private use, unassigned), Zl,
Zp, and every space but U+0020. The explicit sets below restate the ones that matter
most so that the rule does not rest on a reading of the Unicode tables alone.
"""

from __future__ import annotations

__all__ = ["BIDI_CONTROLS", "MAX_IDENTITY_CHARS", "check_identity_text", "display", "identity_problem"]

MAX_IDENTITY_CHARS = 255
"""Longest host name or label, in characters (DNS allows 253; the schema holds 255)."""

BIDI_CONTROLS = frozenset(
    chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C)
)
"""Embeddings, overrides and isolates (U+202A..U+202E, U+2066..U+2069) and the marks."""


def _refused(ch: str) -> bool:
    o = ord(ch)
    return o < 0x20 or 0x7F <= o <= 0x9F or ch in BIDI_CONTROLS or not ch.isprintable()


def identity_problem(text: str, *, max_chars: int = MAX_IDENTITY_CHARS) -> str | None:
    """Why ``text`` cannot name an identity, or None when it can."""
    if not text:
        return "is empty"
    if len(text) > max_chars:
        return f"is {len(text)} characters long (at most {max_chars})"
    if text != text.strip(" "):
        return "starts or ends with a space"
    for i, ch in enumerate(text):
        if _refused(ch):
            return f"has a control or format character U+{ord(ch):04X} at position {i}"
    return None


def check_identity_text(what: str, text: str, *, max_chars: int = MAX_IDENTITY_CHARS) -> str:
    """``text`` unchanged if it can name an identity; else ValueError naming ``what``.

    The message never echoes the text raw: it shows it through :func:`display`, cut.
    """
    problem = identity_problem(text, max_chars=max_chars)
    if problem is not None:
        shown = display(text[:80]) + ("…" if len(text) > 80 else "")
        raise ValueError(f"{what} {problem}" + (f": {shown}" if text else ""))
    return text


def display(text: str) -> str:
    """``text`` safe for a terminal: every refused character as ``\\xNN``/``\\uNNNN``.

    Backslashes are left as they are (Windows paths stay readable), so a literal
    ``\\x1b`` typed by a sender looks like an escaped ESC: harmless, the terminal
    receives no control character either way.
    """
    if not any(_refused(ch) for ch in text):
        return text
    return "".join(_escaped(ch) if _refused(ch) else ch for ch in text)


def _escaped(ch: str) -> str:
    o = ord(ch)
    return f"\\x{o:02x}" if o <= 0xFF else f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}"
