"""What the agent accepts from the collector as an id, and shows of its text."""

from __future__ import annotations

import json
import secrets
import unicodedata
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from agent.daemon.history import History, shown
from agent.untrusted import REQUEST_ID_MAX, clean_text, is_request_id, request_id_problem, terminal_json

# Never on a terminal: C0, DEL, C1, bidi embeddings/overrides/isolates/marks, surrogates.
FORBIDDEN = {
    *range(0x00, 0x20),
    *range(0x7F, 0xA0),
    0x061C,
    0x200E,
    0x200F,
    *range(0x202A, 0x202F),
    *range(0x2066, 0x206A),
    *range(0xD800, 0xE000),
}
HOSTILE_IDS = [
    "",
    ".",
    "..",
    "../..",
    "/etc",
    "/",
    "a/b",
    "a\\b",
    "-rf",
    "_x",
    "abc\x00def",
    "\x1b[2J",
    "x" * (REQUEST_ID_MAX + 1),
    "é",
    "a b",
    "a\n",
]


def test_the_collectors_ids_are_request_ids() -> None:
    assert is_request_id(secrets.token_hex(16))
    assert is_request_id("req-1") and is_request_id("r_1") and is_request_id("x" * REQUEST_ID_MAX)


def test_hostile_ids_are_refused_with_a_reason() -> None:
    for bad in HOSTILE_IDS:
        assert not is_request_id(bad), bad
        problem = request_id_problem(bad)
        assert problem and problem.startswith("request id"), bad
        assert "\x00" not in problem and "\x1b" not in problem and len(problem) < 300


@given(st.text())
@example("..")
@example("/tmp/canary")
@example("a\x00")
@example("abc\n")  # re's $ would let a trailing newline through
def test_an_accepted_id_names_one_entry_inside_its_folder(value: str) -> None:
    if not is_request_id(value):
        assert request_id_problem(value) is not None
        return
    assert request_id_problem(value) is None
    assert 1 <= len(value) <= REQUEST_ID_MAX and value.isascii()
    root = Path("/nonexistent/work")
    joined = root / value
    assert joined.parent == root and joined.name == value and value not in (".", "..")


@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", fullmatch=True))
def test_every_id_of_the_pattern_is_accepted(value: str) -> None:
    assert is_request_id(value)


@given(st.text(), st.integers(min_value=1, max_value=600))
@example("\x1b]0;pwned\x07\u202eevil\u2066", 80)
@example("line one\r\nline two\x85three", 80)
def test_clean_text_leaves_nothing_a_terminal_acts_on(value: str, limit: int) -> None:
    out = clean_text(value, limit)
    assert not {ord(c) for c in out} & FORBIDDEN
    assert len(out) <= limit
    assert clean_text(out, limit) == out  # idempotent: cleaning twice changes nothing
    assert out == out.strip()


@given(st.text(st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Zl", "Zp", "Zs"))))
def test_clean_text_keeps_ordinary_text(value: str) -> None:
    # Letters, digits, symbols and marks of any script stay as they are.
    assert clean_text(value, 10_000) == value


def test_clean_text_examples() -> None:
    assert clean_text("eng \x1b[31malice\x1b[0m") == "eng [31malice[0m"
    assert clean_text("SR-1\nslow\tdisk") == "SR-1 slow disk"
    assert clean_text("\u202etxt.exe\u202c") == "txt.exe"
    assert clean_text("Müller 日本") == "Müller 日本"
    assert clean_text("x" * 10, 5) == "xxxx…"


@given(st.recursive(st.text() | st.integers(), lambda c: st.lists(c) | st.dictionaries(st.text(), c), max_leaves=8))
def test_terminal_json_is_the_same_value_and_safe(value: object) -> None:
    line = terminal_json(value)
    assert json.loads(line) == value
    assert not {ord(c) for c in line} & FORBIDDEN


def test_history_display_is_cleaned_even_for_a_file_written_by_hand(tmp_path: Path) -> None:
    h = History(tmp_path / "history.jsonl")
    h.path.write_text(json.dumps({"requested_by": "\x1b[2J\u202eroot", "reason": "a\u0085b", "scopes": ["f\x07"]}))
    (entry,) = h.entries()
    assert shown(entry["requested_by"]) == "[2Jroot"
    assert shown(entry["reason"]) == "a b"
    assert shown(entry["scopes"]) == "f"
    assert all(unicodedata.category(c)[0] != "C" for c in terminal_json(entry) if c != "\\")
