"""Agent labels: what enroll accepts (on the agent and again on the collector)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.labels import MAX_LABELS, MAX_VALUE_CHARS, parse_label, parse_labels


def test_good_labels_parse() -> None:
    assert parse_labels(["role=web", "site=paris", "k8s.zone=eu-west-1a", "note=a=b"]) == {
        "role": "web",
        "site": "paris",
        "k8s.zone": "eu-west-1a",
        "note": "a=b",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("role", "is not key=value"),
        ("=web", "label key ''"),
        ("Role=web", "label key 'Role'"),
        ("-x=web", "label key '-x'"),
        ("role=", "is empty"),
        ("role= web", "starts or ends with a space"),
        ("role=web\x1b[31m", "control or format character U+001B"),
        ("role=web\u202ebew", "U+202E"),
        ("role=" + "x" * (MAX_VALUE_CHARS + 1), f"at most {MAX_VALUE_CHARS}"),
        ("k" * 64 + "=v", "1-63"),
    ],
)
def test_bad_labels_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_label(text)
    assert message in str(info.value)


def test_a_key_twice_and_too_many_labels_are_refused() -> None:
    with pytest.raises(ValueError, match="given twice"):
        parse_labels(["role=web", "role=db"])
    with pytest.raises(ValueError, match=f"at most {MAX_LABELS}"):
        parse_labels([f"k{i}=v" for i in range(MAX_LABELS + 1)])


@given(st.lists(st.text(max_size=80), max_size=20))
def test_any_input_parses_to_bounded_printable_labels_or_a_value_error(texts: list[str]) -> None:
    try:
        labels = parse_labels(texts)
    except ValueError:
        return
    assert len(labels) <= MAX_LABELS
    for key, value in labels.items():
        assert 1 <= len(key) <= 63 and key.isascii() and key == key.lower()
        assert 1 <= len(value) <= MAX_VALUE_CHARS and value.isprintable()
