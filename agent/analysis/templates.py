"""Group log messages by template: the variable parts masked so that repeats group.

One compiled alternation does all masking in a single ``re.sub`` pass with a constant
replacement (no Python callback per match): uuids, IPv4/IPv6 addresses (with ports),
hex numbers and long hex ids, paths containing digits, quoted strings of digits, and
plain numbers all become ``<*>``.
"""

from __future__ import annotations

import re

__all__ = ["MASK", "MAX_TEMPLATE_CHARS", "TemplateCache", "template_of"]

MASK = "<*>"
# Long messages are cut before masking: the head names the event, the tail is payload.
MAX_TEMPLATE_CHARS = 240

_MASK_RE = re.compile(
    r"""
      [0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}   # uuid
    | (?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?(?![\w.])                            # ipv4[:port]
    | (?<![\w:])(?:[0-9a-fA-F]{0,4}:){2,7}[0-9a-fA-F]{0,4}(?:%\w+)?(?![\w:])          # ipv6 / times
    | \b0[xX][0-9a-fA-F]+\b                                                            # 0x hex
    | \b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b                    # hex ids
    | (?:/[\w.@+-]*)*/[\w.@+-]*\d[\w.@+-]*(?:/[\w.@+-]*)*                              # path with digits
    | (?<![A-Za-z_])\d+(?:[.,]\d+)*                                                    # numbers
    """,
    re.VERBOSE,
)
_DIGITS = b"0123456789"
_CACHE_MAX = 50_000


class TemplateCache:
    """Memoises ``template_of`` keyed by the message without its digits.

    Python's regex engine costs ~20 µs per line for this pattern; most log lines
    differ from an earlier one only in digits, and deleting digits from the bytes is ~50 times cheaper.
    Two messages equal up to digits share one template, which is the grouping
    wanted anyway. Bounded: cleared when full (an adversarial log only costs speed).
    """

    def __init__(self, max_entries: int = _CACHE_MAX) -> None:
        self._cache: dict[bytes, str] = {}
        self._max = max_entries

    def __call__(self, message: str) -> str:
        head = message[:MAX_TEMPLATE_CHARS]
        # bytes.translate with a delete set runs in C; str.translate calls back per character.
        key = head.encode("utf-8", "surrogatepass").translate(None, _DIGITS)
        found = self._cache.get(key)
        if found is None:
            if len(self._cache) >= self._max:
                self._cache.clear()
            found = self._cache[key] = template_of(head)
        return found


def template_of(message: str) -> str:
    """The message with its variable parts masked, whitespace collapsed."""
    text = _MASK_RE.sub(MASK, message[:MAX_TEMPLATE_CHARS])
    return " ".join(text.split())
