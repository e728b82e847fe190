"""Regular expressions from a spec, refused when they could run away.

Python's ``re`` has no time limit, and a pattern such as ``(a+)+$`` takes exponential time
on a line of a few dozen characters. A spec's patterns (analysis counts, extra
redaction) are therefore parsed and refused when they hold what backtracking blows up on:
a repeat inside a repeat, an alternation inside a repeat, backreferences and lookarounds.
What stays is linear or close to it per line, and lines are cut at
:data:`MAX_MATCH_CHARS` before matching, so one line costs a bounded time.
"""

from __future__ import annotations

import re

# Python 3.11+: the parser re itself uses (sre_parse is its deprecated alias).
from re import _constants as sre_constants  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

from agent.specs.yamlsafe import SpecError

__all__ = ["MAX_MATCH_CHARS", "MAX_PATTERN_CHARS", "compile_pattern"]

MAX_PATTERN_CHARS = 300
MAX_MATCH_CHARS = 4096

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


def compile_pattern(text: object, where: str, *, ignore_case: bool = False) -> re.Pattern[str]:
    """``text`` compiled, or SpecError naming ``where`` and why it is refused."""
    if not isinstance(text, str) or not text:
        raise SpecError(f"{where}: a pattern must be a non-empty string")
    if len(text) > MAX_PATTERN_CHARS:
        raise SpecError(f"{where}: pattern is {len(text)} characters; at most {MAX_PATTERN_CHARS}")
    flags = re.IGNORECASE if ignore_case else 0
    try:
        parsed = sre_parse.parse(text, flags)
        compiled = re.compile(text, flags)
    except (re.error, OverflowError, RecursionError) as exc:
        raise SpecError(f"{where}: pattern {text[:60]!r} is not a valid regular expression: {exc}") from None
    problem = _problem(parsed, False)
    if problem:
        raise SpecError(f"{where}: pattern {text[:60]!r} refused: {problem}")
    if compiled.search("") is not None:
        raise SpecError(f"{where}: pattern {text[:60]!r} matches the empty text (it would match every line)")
    return compiled
