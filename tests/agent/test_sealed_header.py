"""The age header reader (agent.sealed.read_age_header) on untrusted bytes, and on real
age files made by pyrage: it tells an age file from anything else, parses what age
writes, and refuses a header cut short instead of calling it "not age"."""

from __future__ import annotations

import pyrage
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.sealed import AGE_MAGIC, AgeHeader, read_age_header

_IDENTITY = pyrage.x25519.Identity.generate()
_SEALED = pyrage.encrypt(b"casefile bundle bytes " * 50, [_IDENTITY.to_public()])


def _outcome(data: bytes) -> AgeHeader | str | None:
    try:
        return read_age_header(data)
    except ValueError as exc:
        return f"refused: {exc}"


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_are_not_age_or_refused_never_a_crash(data: bytes) -> None:
    got = _outcome(data)
    if not data.startswith(AGE_MAGIC):
        assert got is None
    elif isinstance(got, AgeHeader):
        assert 0 < got.length <= len(data) and got.stanzas


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
def test_bytes_after_the_magic_parse_or_are_refused(rest: bytes) -> None:
    got = _outcome(AGE_MAGIC + rest)
    assert got is not None  # it starts as age: never taken for another kind of file
    if isinstance(got, AgeHeader):
        assert rest.count(b"\n") >= 2 and b"--- " in rest


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=3), st.binary(max_size=200))
def test_real_age_files_parse_whatever_the_payload(messages: list[bytes], tail: bytes) -> None:
    for message in messages:
        sealed = pyrage.encrypt(message, [_IDENTITY.to_public()])
        header = read_age_header(sealed + tail)
        assert header is not None and header.recipient_kinds == ("X25519",)
        assert sealed[header.length - 1 : header.length] == b"\n"
        assert sealed[: header.length].rstrip(b"\n").rsplit(b"\n", 1)[-1].startswith(b"--- ")


def test_every_cut_of_a_real_header_is_refused() -> None:
    header = read_age_header(_SEALED)
    assert header is not None
    for cut in range(len(AGE_MAGIC), header.length - 1):
        with pytest.raises(ValueError):
            read_age_header(_SEALED[:cut])


def test_two_recipients_are_two_stanzas() -> None:
    other = pyrage.x25519.Identity.generate()
    sealed = pyrage.encrypt(b"x", [_IDENTITY.to_public(), other.to_public()])
    header = read_age_header(sealed)
    assert header is not None and header.recipient_kinds == ("X25519", "X25519")
    assert pyrage.decrypt(sealed[:], [other]) == b"x"
