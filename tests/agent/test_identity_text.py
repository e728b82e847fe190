"""Properties of the identity-text check and of its display escaping, over any text."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.identity_text import (
    BIDI_CONTROLS,
    MAX_IDENTITY_CHARS,
    check_identity_text,
    display,
    identity_problem,
)

DANGEROUS = [chr(c) for c in (*range(0x20), *range(0x7F, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A))]

hostnames = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9.\-_]{0,60}[A-Za-z0-9])?", fullmatch=True)
any_text = st.text(max_size=300)


def _unsafe(ch: str) -> bool:
    return ch in DANGEROUS or ch in BIDI_CONTROLS or not ch.isprintable()


@given(any_text)
def test_accepted_text_is_bounded_and_printable(text: str) -> None:
    if identity_problem(text) is None:
        assert 1 <= len(text) <= MAX_IDENTITY_CHARS
        assert not any(_unsafe(ch) for ch in text)
        assert text == text.strip(" ")
        assert check_identity_text("hostname", text) == text


@given(st.text(max_size=200), st.sampled_from(DANGEROUS), st.integers(min_value=0))
def test_any_dangerous_character_is_refused_and_named(text: str, bad: str, where: int) -> None:
    i = where % (len(text) + 1)
    spliced = f"w{text[:i]}{bad}{text[i:]}w"
    problem = identity_problem(spliced)
    assert problem is not None
    with pytest.raises(ValueError, match=r"^hostname ") as refused:
        check_identity_text("hostname", spliced)
    # The refusal never carries the raw character it refuses.
    assert not any(_unsafe(ch) for ch in str(refused.value))


@given(hostnames)
def test_ordinary_host_names_pass(name: str) -> None:
    assert identity_problem(name) is None


@given(any_text)
def test_display_leaves_no_dangerous_character_and_keeps_safe_text(text: str) -> None:
    shown = display(text)
    assert not any(_unsafe(ch) for ch in shown)
    if not any(_unsafe(ch) for ch in text):
        assert shown == text


@given(st.text(min_size=MAX_IDENTITY_CHARS + 1, max_size=MAX_IDENTITY_CHARS + 50))
def test_too_long_is_refused(text: str) -> None:
    assert identity_problem(text) is not None


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("web\x1b[2J", "web\\x1b[2J"),
        ("a\x9b31m", "a\\x9b31m"),
        ("invoice\u202egnp.exe", "invoice\\u202egnp.exe"),
        ("C:\\Users\\x", "C:\\Users\\x"),
        ("ok-host", "ok-host"),
    ],
)
def test_display_examples(text: str, shown: str) -> None:
    assert display(text) == shown
