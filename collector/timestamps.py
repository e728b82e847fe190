"""Stored times (integer microseconds since the epoch, UTC) as protobuf Timestamps."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

__all__ = ["timestamp_us"]


def timestamp_us(micros: int) -> Timestamp:
    t = Timestamp()
    t.FromMicroseconds(micros)
    return t
