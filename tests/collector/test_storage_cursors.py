"""Page tokens come from the network: decoding must fail only with ValueError."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.storage.cursors import (
    decode_bundle_cursor,
    decode_host_cursor,
    encode_bundle_cursor,
    encode_host_cursor,
)

_B64ISH = st.text(alphabet="ABCDEFabcdef0123456789-_=+/ \n.:é", max_size=80)


def _try(decode: object, text: str) -> None:
    try:
        decode(text)  # type: ignore[operator]
    except ValueError as exc:
        assert str(exc) == "invalid page token"


@given(st.one_of(st.text(max_size=300), _B64ISH))
def test_arbitrary_strings_raise_only_value_error(text: str) -> None:
    _try(decode_bundle_cursor, text)
    _try(decode_host_cursor, text)


@given(st.binary(max_size=120))
def test_arbitrary_payloads_raise_only_value_error(payload: bytes) -> None:
    text = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
    _try(decode_bundle_cursor, text)
    _try(decode_host_cursor, text)


@given(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(alphabet="0123456789abcdef", min_size=32, max_size=32),
)
def test_bundle_cursor_round_trips(micros: int, bundle_id: str) -> None:
    assert decode_bundle_cursor(encode_bundle_cursor(micros, bundle_id)) == (micros, bundle_id)


@given(st.text(min_size=1, max_size=255))
def test_host_cursor_round_trips(hostname: str) -> None:
    assert decode_host_cursor(encode_host_cursor(hostname)) == hostname


def test_out_of_range_time_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid page token"):
        decode_bundle_cursor(encode_bundle_cursor(2**63, "0" * 32))
