"""The doorbell's frames and proof (agent.transport.doorbell): bytes from the network, so
properties over any input, not only what our own agent sends."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.transport.doorbell import (
    HEADER,
    MAX_PAYLOAD,
    NONCE,
    PARKED,
    PROOF,
    REFUSED,
    RING,
    SIGNATURE_BYTES,
    DoorbellError,
    FrameReader,
    frame,
    parse_proof,
    proof,
)

KINDS = st.sampled_from([NONCE, PROOF, PARKED, REFUSED, RING])
FRAMES = st.lists(st.tuples(KINDS, st.binary(max_size=MAX_PAYLOAD)), max_size=8)


@given(FRAMES, st.data())
def test_frames_cut_anywhere_come_out_whole_and_in_order(frames: list[tuple[int, bytes]], data: st.DataObject) -> None:
    wire = b"".join(frame(k, p) for k, p in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    reader, got, at = FrameReader(), [], 0
    for cut in [*cuts, len(wire)]:
        got += reader.feed(wire[at:cut])
        at = cut
    assert got == frames


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=700), max_size=6))
def test_any_bytes_give_frames_or_a_doorbell_error_and_stay_bounded(chunks: list[bytes]) -> None:
    reader = FrameReader()
    try:
        for chunk in chunks:
            for kind, payload in reader.feed(chunk):
                assert kind in (NONCE, PROOF, PARKED, REFUSED, RING)
                assert len(payload) <= MAX_PAYLOAD
            assert len(reader._buf) < HEADER.size + MAX_PAYLOAD  # never more than one frame held
    except DoorbellError as exc:
        assert str(exc)


def test_oversized_and_unknown_frames_are_refused_with_where() -> None:
    with pytest.raises(DoorbellError, match="frame type 9 at byte 0"):
        FrameReader().feed(HEADER.pack(9, 0))
    with pytest.raises(DoorbellError, match="513 bytes"):
        FrameReader().feed(HEADER.pack(RING, MAX_PAYLOAD + 1))
    with pytest.raises(DoorbellError):
        frame(RING, b"x" * (MAX_PAYLOAD + 1))


@given(st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True), st.binary(min_size=64, max_size=64))
def test_a_proof_reads_back_as_written(agent_id: str, signature: bytes) -> None:
    assert parse_proof(proof(agent_id, signature)) == (agent_id, signature)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_any_proof_bytes_parse_or_say_what_is_wrong(payload: bytes) -> None:
    try:
        agent_id, signature = parse_proof(payload)
    except DoorbellError as exc:
        assert str(exc)
    else:
        assert 0 < len(agent_id) <= 64 and agent_id.isascii() and agent_id.isprintable()
        assert len(signature) == SIGNATURE_BYTES


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"", "empty"),
        (bytes([0]) + b"x" * 64, "0 bytes"),
        (bytes([65]) + b"a" * 65 + b"s" * 64, "65 bytes"),
        (bytes([3]) + b"ag_" + b"s" * 63, "needs 68"),
        (bytes([4]) + b"ag\n1" + b"s" * 64, "outside"),
        (bytes([4]) + "agé".encode() + b"s" * 64, "outside"),
    ],
)
def test_bad_proofs_are_named(payload: bytes, why: str) -> None:
    with pytest.raises(DoorbellError, match=why):
        parse_proof(payload)
