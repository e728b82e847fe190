"""Regular expressions from a spec, refused when they could run away, and run with a time limit.

Python's ``re`` has no time limit, and a pattern such as ``(a+)+$`` takes exponential time
on a line of a few dozen characters. A spec's patterns (analysis counts, extra
redaction) are therefore parsed and refused when they hold what backtracking blows up on:
a repeat inside a repeat, an alternation inside a repeat, backreferences and lookarounds.
That is not enough on its own (``a+a+0`` is still cubic on a line of ``a``), so every
match runs through the ``regex`` engine with a timeout per call
(:data:`MATCH_TIMEOUT_S`) on a line cut at :data:`MAX_MATCH_CHARS`: a call that runs out
answers None, and the caller decides (a count skips the line and says so; redaction
replaces the whole line).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

# Python 3.11+: the parser re itself uses (sre_parse is its deprecated alias).
from re import _constants as sre_constants  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

import regex

from agent.specs.yamlsafe import SpecError

__all__ = ["MATCH_TIMEOUT_S", "MAX_MATCH_CHARS", "MAX_PATTERN_CHARS", "SpecPattern", "compile_pattern"]

MAX_PATTERN_CHARS = 300
MAX_MATCH_CHARS = 4096
MATCH_TIMEOUT_S = 0.05


@dataclass(frozen=True, eq=False)
class SpecPattern:
    """A checked pattern; every call is bounded by :data:`MATCH_TIMEOUT_S`."""

    pattern: str
    compiled: object  # a regex.Pattern (the package ships no type hints)

    def search(self, text: str) -> bool | None:
        """Whether ``text`` (cut at MAX_MATCH_CHARS) matches; None when the time ran out."""
        try:
            return self.compiled.search(text[:MAX_MATCH_CHARS], timeout=MATCH_TIMEOUT_S) is not None  # type: ignore[attr-defined]
        except TimeoutError:
            return None

    def subn(self, replacement: str, line: str) -> tuple[str, int] | None:
        """``line`` with the matches replaced and how many; None when the time ran out."""
        try:
            text, n = self.compiled.subn(lambda _m: replacement, line, timeout=MATCH_TIMEOUT_S)  # type: ignore[attr-defined]
        except TimeoutError:
            return None
        return str(text), int(n)


_REPEATS = {sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT, getattr(sre_constants, "POSSESSIVE_REPEAT", None)}
_REFUSED = {
    sre_constants.GROUPREF: "backreferences",
    sre_constants.GROUPREF_EXISTS: "conditional groups",
    sre_constants.ASSERT: "lookarounds",
    sre_constants.ASSERT_NOT: "lookarounds",
}


def _problem(items: Any, inside_repeat: bool) -> str | None:
    for op, arg in items:
        if op in _REFUSED:
            return f"{_REFUSED[op]} are not allowed"
        if op in _REPEATS:
            _lo, hi, sub = arg
            if inside_repeat and hi > 1:
                return "a repeat inside a repeat (such as (a+)+) can take exponential time"
            found = _problem(sub, inside_repeat or hi > 1)
            if found:
                return found
        elif op is sre_constants.SUBPATTERN:
            found = _problem(arg[-1], inside_repeat)
            if found:
                return found
        elif op is sre_constants.BRANCH:
            if inside_repeat:
                return "an alternation inside a repeat (such as (a|ab)*) can take exponential time"
            for branch in arg[1]:
                found = _problem(branch, inside_repeat)
                if found:
                    return found
        elif op is getattr(sre_constants, "ATOMIC_GROUP", None):
            found = _problem(arg, inside_repeat)
            if found:
                return found
    return None


def compile_pattern(text: object, where: str, *, ignore_case: bool = False) -> SpecPattern:
    """``text`` compiled, or SpecError naming ``where`` and why it is refused."""
    if not isinstance(text, str) or not text:
        raise SpecError(f"{where}: a pattern must be a non-empty string")
    if len(text) > MAX_PATTERN_CHARS:
        raise SpecError(f"{where}: pattern is {len(text)} characters; at most {MAX_PATTERN_CHARS}")
    flags = re.IGNORECASE if ignore_case else 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # "possible nested set": ambiguous, refused
            parsed = sre_parse.parse(text, flags)
            re.compile(text, flags)
            compiled = regex.compile(text, regex.V0 | (regex.IGNORECASE if ignore_case else 0))
    except (re.error, regex.error, OverflowError, RecursionError, Warning) as exc:
        raise SpecError(f"{where}: pattern {text[:60]!r} is not a valid regular expression: {exc}") from None
    problem = _problem(parsed, False)
    if problem:
        raise SpecError(f"{where}: pattern {text[:60]!r} refused: {problem}")
    if compiled.search("") is not None:
        raise SpecError(f"{where}: pattern {text[:60]!r} matches the empty text (it would match every line)")
    return SpecPattern(text, compiled)
