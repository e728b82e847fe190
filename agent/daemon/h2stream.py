"""One gRPC bidirectional stream over HTTP/2, without grpcio: the daemon's Channel.

Why not grpcio here: the resident daemon holds exactly one long-lived stream
(``Channel.Connect``), and grpcio's core library costs it ~15 MiB of resident memory
for that, more than the rest of the process together (measured in
``benchmarks/bench_agent_idle.py``). This module speaks the same protocol with ``h2``
(python-hyper's HTTP/2 state machine, pure Python) over the standard library's asyncio
and ssl. Everything else that talks to the collector — enrollment, uploads, the CLI —
still uses grpcio; uploads run in the collection child, not here.

What it implements of gRPC over HTTP/2 (grpc/doc/PROTOCOL-HTTP2.md), client side:

- TLS 1.2+ with ALPN ``h2``. A pinned collector: its certificate is fetched and compared
  with the pin, then trusted as the only anchor (name ``casefile-collector``, validity
  period), and the certificate the stream's own handshake presented must hash to the pin
  too — checked before any HTTP/2 byte is sent. Unpinned: the system trust store and the
  host name.
- One POST to ``path`` with ``content-type: application/grpc`` and ``te: trailers``.
- Messages framed as 1 flag byte + 4-byte big-endian length + payload. No compression is
  offered, so a compressed message is a protocol error; a message over ``max_message``
  bytes (gRPC's 4 MiB default) ends the stream with RESOURCE_EXHAUSTED.
- The status comes from the trailers (``grpc-status``, percent-encoded ``grpc-message``)
  or from a trailers-only response; without ``grpc-status``, the HTTP status is mapped
  as the spec says. RST_STREAM and GOAWAY end the stream with the code the spec gives;
  the caller reconnects.
- Keepalive: a PING every ``keepalive_s``; no ACK within ``keepalive_timeout_s`` ends the
  stream with UNAVAILABLE. (The collector permits a ping every 20 s or slower.)
- Flow control: received bytes are acknowledged at once while fewer than 16 messages
  wait to be read, then only as they are read, so a collector cannot make the agent
  buffer more than 16 messages (of at most ``max_message`` bytes each) ahead of its
  reader; sends wait for window. Server push is switched off.
- Frames are handed to h2 one at a time, and none after a GOAWAY: h2 refuses every
  frame that follows a GOAWAY and would drop the messages that came with it.

The framing and the status codes are in ``agent.daemon.grpc_wire``; this module runs
the connection and the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import Sequence
from typing import Any, Final

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

from agent.daemon.grpc_wire import (
    HTTP_STATUS,
    MAX_MESSAGE,
    STATUS_NAMES,
    Deframer,
    Frames,
    RpcError,
    frame,
    status_from,
)
from agent.daemon.pinned_tls import forget_context, tls_context
from agent.transport.connect import CollectorAddress, check_pin

__all__ = ["MAX_MESSAGE", "STATUS_NAMES", "BidiStream", "Deframer", "RpcError", "frame"]

_MAX_QUEUED: Final = 16  # messages read ahead before received data waits for the reader

# RST_STREAM error code → gRPC status (PROTOCOL-HTTP2.md, "Errors").
_RESET_STATUS: Final = {
    ErrorCodes.REFUSED_STREAM: "UNAVAILABLE",
    ErrorCodes.CANCEL: "CANCELLED",
    ErrorCodes.ENHANCE_YOUR_CALM: "RESOURCE_EXHAUSTED",
    ErrorCodes.INADEQUATE_SECURITY: "PERMISSION_DENIED",
}


class _Ended:
    """Queued after the last message: the stream's final status (None = OK)."""

    __slots__ = ("error",)

    def __init__(self, error: RpcError | None) -> None:
        self.error = error


class BidiStream:
    """A client's bidirectional-streaming call. Open with ``BidiStream.open``.

    ``write`` sends one serialized message, ``read`` returns the next one, ``None`` once
    the collector ended the call with OK, and raises ``RpcError`` for any other end.
    ``close`` cancels the call (RST_STREAM CANCEL) if it is still open and closes the
    connection. One event loop; one writer at a time.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        keepalive_s: float,
        keepalive_timeout_s: float,
        max_message: int,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        codes = h2.settings.SettingCodes
        self._conn.local_settings = h2.settings.Settings(
            client=True, initial_values={codes.ENABLE_PUSH: 0, codes.MAX_HEADER_LIST_SIZE: 65536}
        )
        self._frames = Frames()
        self._sid = 0  # 0 until the call is started: then nothing HTTP/2 was sent
        self._deframer = Deframer(max_message)
        self._messages: asyncio.Queue[bytes | _Ended] = asyncio.Queue()
        self._ended: _Ended | None = None  # set once; reads drain the queue before they see it
        self._unacked = 0
        self._changed = asyncio.Event()  # window opened, settings changed, or the stream ended
        self._ping_acked = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._keepalive_s = keepalive_s
        self._keepalive_timeout_s = keepalive_timeout_s
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def open(
        cls,
        address: CollectorAddress,
        path: str,
        *,
        pin: str | None,
        user_agent: str,
        connect_timeout_s: float = 20.0,
        keepalive_s: float = 30.0,
        keepalive_timeout_s: float = 10.0,
        max_message: int = MAX_MESSAGE,
    ) -> BidiStream:
        ctx, server_name = await tls_context(address, pin)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(address.host, address.port, ssl=ctx, server_hostname=server_name),
                connect_timeout_s,
            )
        except TimeoutError:
            late = f"no TLS connection to {address.target} within {connect_timeout_s:g} s"
            raise RpcError("UNAVAILABLE", late) from None
        except (OSError, ssl.SSLError) as exc:
            if isinstance(exc, ssl.SSLCertVerificationError) and pin:
                forget_context(address, pin)  # the next attempt fetches what it serves now
            raise RpcError("UNAVAILABLE", f"cannot connect to {address.target}: {exc}") from None
        stream = cls(
            reader, writer, keepalive_s=keepalive_s, keepalive_timeout_s=keepalive_timeout_s, max_message=max_message
        )
        try:
            tls = writer.get_extra_info("ssl_object")
            alpn = tls.selected_alpn_protocol() if tls is not None else None
            if alpn != "h2":
                raise RpcError("UNAVAILABLE", f"{address.target} did not agree to HTTP/2 (ALPN {alpn!r})")
            if pin:
                der = tls.getpeercert(binary_form=True) or b""
                check_pin(address, der, pin)
            stream._start(address.target, path, user_agent)
        except BaseException:
            await stream.close()
            raise
        return stream

    def _start(self, authority: str, path: str, user_agent: str) -> None:
        self._conn.initiate_connection()
        self._sid = self._conn.get_next_available_stream_id()
        self._conn.send_headers(
            self._sid,
            [
                (":method", "POST"),
                (":scheme", "https"),
                (":path", path),
                (":authority", authority),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                ("user-agent", user_agent),
            ],
        )
        self._flush()
        self._tasks = [asyncio.create_task(self._receive()), asyncio.create_task(self._keepalive())]

    # -- the caller's side ---------------------------------------------------------

    async def write(self, payload: bytes) -> None:
        async with self._send_lock:
            data = memoryview(frame(payload))
            while data:
                self._raise_if_ended()
                room = min(self._conn.local_flow_control_window(self._sid), self._conn.max_outbound_frame_size)
                if room <= 0:
                    self._changed.clear()
                    await self._changed.wait()
                    continue
                try:
                    self._conn.send_data(self._sid, bytes(data[:room]))
                except h2.exceptions.H2Error as exc:
                    self._abandon(RpcError("INTERNAL", f"cannot send on the call: {exc}"))
                    continue
                data = data[room:]
                self._flush()
            try:
                await self._writer.drain()
            except (OSError, ssl.SSLError) as exc:
                self._end(RpcError("UNAVAILABLE", f"connection to the collector lost while sending: {exc}"))
                self._raise_if_ended()

    def _raise_if_ended(self) -> None:
        if self._ended is not None:
            raise self._ended.error or RpcError("INTERNAL", "the collector already ended the call with OK")

    async def read(self) -> bytes | None:
        item = await self._messages.get()
        if isinstance(item, bytes):
            self._acknowledge()
            return item
        self._messages.put_nowait(item)  # every later read sees the end too
        if item.error is not None:
            raise item.error
        return None

    async def end_writes(self) -> None:
        """Half-close: END_STREAM on this side; the collector's messages can still be read."""
        async with self._send_lock:
            self._raise_if_ended()
            try:
                self._conn.end_stream(self._sid)
            except h2.exceptions.H2Error as exc:
                self._abandon(RpcError("INTERNAL", f"cannot end the call's sending side: {exc}"))
                self._raise_if_ended()
            self._flush()

    def cancel(self) -> None:
        """End the call from this side: RST_STREAM CANCEL; reads then raise CANCELLED."""
        if self._ended is None and self._sid:
            self._abandon(RpcError("CANCELLED", "cancelled by the agent"))

    async def close(self) -> None:
        if self._sid:
            self.cancel()
            with contextlib.suppress(h2.exceptions.H2Error, OSError, RuntimeError):
                self._conn.close_connection()
                self._flush()
        else:  # refused before the call began (ALPN, pin): the peer gets no HTTP/2 at all
            self._end(RpcError("CANCELLED", "closed before the call began"))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            await asyncio.wait_for(self._writer.drain(), 1)
        # Not a TLS close_notify exchange: grpc's server answers it only when it drops the
        # connection itself, seconds later. The GOAWAY above already said goodbye.
        self._writer.transport.abort()
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            await asyncio.wait_for(self._writer.wait_closed(), 1)

    # -- the connection's side -----------------------------------------------------

    def _flush(self) -> None:
        out = self._conn.data_to_send()
        if out and not self._writer.is_closing():
            self._writer.write(out)

    def _acknowledge(self) -> None:
        if self._unacked and self._ended is None:
            with contextlib.suppress(h2.exceptions.H2Error):
                self._conn.acknowledge_received_data(self._unacked, self._sid)
                self._flush()
        self._unacked = 0

    def _end(self, error: RpcError | None) -> None:
        if self._ended is None:
            self._ended = _Ended(error)
            self._messages.put_nowait(self._ended)
            self._changed.set()

    async def _receive(self) -> None:
        try:
            while self._ended is None:
                data = await self._reader.read(65536)
                if not data:
                    self._end(RpcError("UNAVAILABLE", "the collector closed the connection"))
                    break
                for chunk in self._frames.feed(data, self._conn.max_inbound_frame_size):
                    try:
                        events = self._conn.receive_data(chunk)
                    except h2.exceptions.ProtocolError as exc:
                        self._end(RpcError("INTERNAL", f"HTTP/2 protocol error from the collector: {exc}"))
                        break
                    for event in events:
                        self._on(event)
                    if self._ended is not None:
                        break  # after a GOAWAY or the call's end, later frames are not read
                self._flush()  # settings and ping ACKs, window updates
        except RpcError as exc:  # a bad message header: the call cannot go on
            self._abandon(exc)
        except (OSError, ssl.SSLError) as exc:
            self._end(RpcError("UNAVAILABLE", f"connection to the collector lost: {exc}"))
        except Exception as exc:  # anything else h2 or a header raises: end the call, never hang it
            self._abandon(RpcError("INTERNAL", f"unreadable response from the collector: {exc!r}"))
        if self._ended is not None and self._ended.error is not None:
            self._writer.close()  # nothing more will be read: let the collector see it now

    def _abandon(self, error: RpcError) -> None:
        """End the call for a reason of this side's own: reset it and keep the reason."""
        with contextlib.suppress(h2.exceptions.H2Error, OSError, RuntimeError):
            self._conn.reset_stream(self._sid, ErrorCodes.CANCEL)
            self._flush()
        self._end(error)

    def _on(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.PingAckReceived):
            self._ping_acked.set()
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self._changed.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            extra = f" ({event.additional_data[:200].decode('utf-8', 'replace')})" if event.additional_data else ""
            code = event.error_code.name if isinstance(event.error_code, ErrorCodes) else str(event.error_code)
            self._end(RpcError("UNAVAILABLE", f"the collector is closing the connection: GOAWAY {code}{extra}"))
        elif getattr(event, "stream_id", self._sid) != self._sid:
            return  # not our call (the collector starts none)
        elif isinstance(event, h2.events.ResponseReceived):
            self._on_headers(dict(_text_headers(event.headers)), ended=event.stream_ended is not None)
        elif isinstance(event, h2.events.DataReceived):
            self._unacked += event.flow_controlled_length
            for message in self._deframer.feed(event.data or b""):
                self._messages.put_nowait(message)
            if self._messages.qsize() < _MAX_QUEUED:
                self._acknowledge()
        elif isinstance(event, h2.events.TrailersReceived):
            self._on_trailers(dict(_text_headers(event.headers)))
        elif isinstance(event, h2.events.StreamEnded):
            self._end(RpcError("INTERNAL", "the collector ended the call without a grpc-status"))
        elif isinstance(event, h2.events.StreamReset):
            reset = event.error_code
            name = reset.name if isinstance(reset, ErrorCodes) else str(reset)
            status = _RESET_STATUS.get(reset, "INTERNAL") if isinstance(reset, ErrorCodes) else "INTERNAL"
            self._end(RpcError(status, f"the collector reset the call (RST_STREAM {name})"))

    def _on_headers(self, headers: dict[str, str], *, ended: bool) -> None:
        if "grpc-status" in headers:  # trailers-only: the call ends before any message
            self._on_trailers(headers)
            return
        status = headers.get(":status", "")
        if status != "200":
            code = HTTP_STATUS.get(status, "UNKNOWN")
            self._abandon(RpcError(code, f"the collector answered HTTP {status or '(no status)'}"))
        elif not _is_grpc(headers.get("content-type", "")):
            kind = headers.get("content-type", "(none)")
            self._abandon(RpcError("UNKNOWN", f"the collector answered content-type {kind}, not gRPC"))
        elif ended:
            self._end(RpcError("INTERNAL", "the collector ended the call without a grpc-status"))

    def _on_trailers(self, headers: dict[str, str]) -> None:
        error = status_from(headers)
        if error is None and self._deframer.pending:
            error = RpcError("INTERNAL", f"the call ended inside a message ({self._deframer.pending} bytes of it came)")
        self._end(error)

    async def _keepalive(self) -> None:
        while self._ended is None:
            await asyncio.sleep(self._keepalive_s)
            if self._ended is not None:
                return
            self._ping_acked.clear()
            try:
                self._conn.ping(os.urandom(8))
                self._flush()
            except (h2.exceptions.H2Error, OSError, RuntimeError):
                return
            try:
                await asyncio.wait_for(self._ping_acked.wait(), self._keepalive_timeout_s)
            except TimeoutError:
                self._end(
                    RpcError("UNAVAILABLE", f"keepalive: a ping went unanswered for {self._keepalive_timeout_s:g} s")
                )
                self._writer.close()
                return


def _text_headers(headers: Sequence[tuple[Any, Any]] | None) -> list[tuple[str, str]]:
    """Names lower-cased; bytes decoded as UTF-8, a bad byte replaced, never raised."""
    return [(_text(name).lower(), _text(value)) for name, value in headers or []]


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _is_grpc(content_type: str) -> bool:
    """``application/grpc``, ``application/grpc+proto`` or with parameters; not grpc-web."""
    return content_type == "application/grpc" or content_type.startswith(("application/grpc+", "application/grpc;"))
