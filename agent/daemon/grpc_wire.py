"""gRPC's wire format over HTTP/2, as ``agent.daemon.h2stream`` speaks it: message
framing (1 flag byte, 4-byte big-endian length, payload), cutting received bytes into
HTTP/2 frames and gRPC messages (the collector's bytes are untrusted), and the status
codes a call ends with (grpc/doc/PROTOCOL-HTTP2.md, statuscodes.md).
"""

from __future__ import annotations

from typing import Final
from urllib.parse import unquote

__all__ = [
    "HTTP_STATUS",
    "MAX_MESSAGE",
    "STATUS_NAMES",
    "Deframer",
    "Frames",
    "RpcError",
    "frame",
    "status_from",
]

MAX_MESSAGE: Final = 4 * 1024 * 1024  # gRPC's default receive limit
_HEADER: Final = 5

# grpc-status values (grpc/doc/statuscodes.md), by number.
STATUS_NAMES: Final = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)  # fmt: skip

# HTTP status without grpc-status → gRPC status (grpc/doc/http-grpc-status-mapping.md).
HTTP_STATUS: Final = {
    "400": "INTERNAL", "401": "UNAUTHENTICATED", "403": "PERMISSION_DENIED", "404": "UNIMPLEMENTED",
    "429": "UNAVAILABLE", "502": "UNAVAILABLE", "503": "UNAVAILABLE", "504": "UNAVAILABLE",
}  # fmt: skip




class RpcError(Exception):
    """The stream ended with a gRPC status other than OK, or could not carry on."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details


def frame(payload: bytes) -> bytes:
    """One gRPC message on the wire: uncompressed flag, length, payload."""
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


class Deframer:
    """Cuts the response body into gRPC messages; the collector's bytes are untrusted.

    ``feed`` returns every message completed by ``data`` and keeps the rest. A bad
    header raises ``RpcError`` naming the byte offset in the body where it starts.
    """

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._buf = bytearray()
        self._max = max_message
        self._offset = 0  # body offset of self._buf[0]

    @property
    def pending(self) -> int:
        """Bytes of a message that has not arrived whole yet."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while len(self._buf) >= _HEADER:
            flag = self._buf[0]
            length = int.from_bytes(self._buf[1:_HEADER], "big")
            where = f"message header at byte {self._offset} of the response"
            if flag == 1:
                raise RpcError("INTERNAL", f"{where}: compressed, but the agent offered no compression")
            if flag != 0:
                raise RpcError("INTERNAL", f"{where}: flag byte {flag:#04x} is neither 0 nor 1")
            if length > self._max:
                raise RpcError("RESOURCE_EXHAUSTED", f"{where}: {length:,} bytes exceeds the {self._max:,} byte limit")
            end = _HEADER + length
            if len(self._buf) < end:
                break
            out.append(bytes(self._buf[_HEADER:end]))
            del self._buf[:end]
            self._offset += end
        return out


def status_from(headers: dict[str, str]) -> RpcError | None:
    """None for OK; else the error the trailers carry."""
    raw = headers.get("grpc-status", "")
    message = unquote(headers.get("grpc-message", ""), errors="replace")
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 3):
        return RpcError("UNKNOWN", f"the collector sent grpc-status {raw[:20]!r}, not a status code")
    number = int(raw)
    if number == 0:
        return None
    code = STATUS_NAMES[number] if number < len(STATUS_NAMES) else "UNKNOWN"
    return RpcError(code, message or f"grpc-status {number}")


class Frames:
    """Cuts the received bytes at HTTP/2 frame boundaries (9-byte header, 24-bit length)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes, max_frame: int) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while len(self._buf) >= 9:
            length = int.from_bytes(self._buf[:3], "big")
            if length > max_frame:  # h2 refuses it from the header alone: no need to buffer it
                out.append(bytes(self._buf))
                self._buf.clear()
                break
            if len(self._buf) < 9 + length:
                break
            out.append(bytes(self._buf[: 9 + length]))
            del self._buf[: 9 + length]
        return out
