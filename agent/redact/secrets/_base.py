"""The rule type every secret family is written in, and the replacements they share."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["CheckedRule", "SecretRule", "keep_lead", "marker", "value_group"]


def marker(rule: str) -> str:
    return f"[REDACTED:{rule}]"


@dataclass(frozen=True)
class SecretRule:
    """One rule: hints (any must occur), a regex and how a match is replaced."""

    name: str
    hints: tuple[str, ...]
    pattern: re.Pattern[str]
    replace: Callable[[re.Match[str]], str]
    fold: bool = False  # hints are lower-case and tested on the lower-cased line

    def wanted(self, line: str, lower: str) -> bool:
        text = lower if self.fold else line
        for h in self.hints:  # noqa: SIM110 - any() over a generator costs twice this per line
            if h in text:
                return True
        return False

    def apply(self, line: str) -> tuple[str, int]:
        """The line with this rule's matches replaced, and how many matched."""
        return self.pattern.subn(self.replace, line)


@dataclass(frozen=True)
class CheckedRule(SecretRule):
    """A rule whose matches must also pass ``check`` (a decoding, a checksum): base64
    under ``"auth"`` that does not decode to ``user:password`` stays."""

    check: Callable[[re.Match[str]], bool] = lambda m: True

    def apply(self, line: str) -> tuple[str, int]:
        n = 0

        def repl(m: re.Match[str]) -> str:
            nonlocal n
            if not self.check(m):
                return m.group(0)
            n += 1
            return self.replace(m)

        out = self.pattern.sub(repl, line)
        return (out, n) if n else (line, 0)


def keep_lead(rule: str, lead: int) -> Callable[[re.Match[str]], str]:
    """Keep a token's public prefix (``npm_…``) so an engineer still sees what it was."""

    def repl(m: re.Match[str]) -> str:
        return m.group(0)[:lead] + "…" + marker(rule)

    return repl


def value_group(rule: str, group: str = "val") -> Callable[[re.Match[str]], str]:
    """Replace only the named group, keeping key, separator and the quotes around it
    (plain or JSON-escaped any number of times, ``\\"``) so the line keeps its shape."""

    def repl(m: re.Match[str]) -> str:
        start, end = m.span(group)
        base = m.start(0)
        whole = m.group(0)
        value = m.group(group)
        keep = len(value) - len(value.lstrip("\\")) + 1  # backslashes, then the quote they escape
        if not (len(value) >= 2 * keep and value[keep - 1 : keep] in ("\"", "'") and value.endswith(value[:keep])):
            keep = 0
        return whole[: start - base + keep] + marker(rule) + whole[end - base - keep :]

    return repl
