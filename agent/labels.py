"""Agent labels: ``key=value`` pairs set at enroll that select agents for hunts.

``casefile agent enroll … --label role=web --label site=paris`` sends them in the
EnrollRequest; the collector checks them again (it trusts no agent) and stores them per
agent. A key is a short lowercase name (``role``, ``site``, ``k8s.zone``) so that two
spellings of one key cannot select different agents; a value is printable text (the
identity check of :mod:`agent.identity_text`: no controls, no bidi overrides), because
it is printed in an engineer's terminal. Both are bounded, and so is their number.
"""

from __future__ import annotations

import re

from agent.identity_text import identity_problem

__all__ = ["MAX_LABELS", "MAX_VALUE_CHARS", "parse_label", "parse_labels"]

MAX_LABELS = 16
MAX_VALUE_CHARS = 128
_KEY_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")


def parse_label(text: str) -> tuple[str, str]:
    """``"role=web"`` → ``("role", "web")``; ValueError saying what is wrong."""
    key, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"label {text[:40]!r} is not key=value")
    if not _KEY_RE.fullmatch(key):
        raise ValueError(f"label key {key[:40]!r} must be 1-63 of a-z 0-9 _ . - starting with a letter or digit")
    problem = identity_problem(value, max_chars=MAX_VALUE_CHARS)
    if problem is not None:
        raise ValueError(f"label {key}: value {value[:40]!r} {problem}")
    return key, value


def parse_labels(texts: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Several labels; a key given twice or more than :data:`MAX_LABELS` are refused."""
    if len(texts) > MAX_LABELS:
        raise ValueError(f"{len(texts)} labels given; at most {MAX_LABELS} are allowed")
    out: dict[str, str] = {}
    for text in texts:
        key, value = parse_label(text)
        if key in out:
            raise ValueError(f"label key {key!r} given twice")
        out[key] = value
    return out
