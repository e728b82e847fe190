"""The agent's side of parking: hold a doorbell instead of an idle Channel stream.

The collector's ``ChannelAccepted`` names a doorbell port and an idle time. Once the
stream has carried nothing for that long and no request is being answered, the service
(``agent.daemon.service``) opens a :class:`Doorbell`: TLS to the same host and pinned
certificate, the collector's nonce signed with the agent's key
(``channel_proof.doorbell_message``), PARKED. Only then does it end its stream, so the
agent is reachable one way or the other throughout. A ring (or the doorbell closing: the
collector restarted, the connection died) sends it back to its Channel; it closes the
doorbell once the new stream is accepted. The wire format is ``agent.transport.doorbell``.

TCP keepalive (the kernel's, every 60 s once idle) keeps NAT mappings open and finds a
collector gone without a word; nothing here wakes up while parked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time

from agent.daemon.pinned_tls import forget_context, tls_context
from agent.errors import TransportError
from agent.keys import SigningKey
from agent.transport.channel_proof import NONCE_BYTES, doorbell_message
from agent.transport.connect import CollectorAddress, check_pin
from agent.transport.doorbell import (
    NONCE,
    PARKED,
    PROOF,
    REFUSED,
    RING,
    DoorbellError,
    FrameReader,
    frame,
    keep_alive,
    proof,
)
from agent.untrusted import clean_text

__all__ = ["Doorbell", "DoorbellRefused", "Parking"]

log = logging.getLogger("casefile.agent.daemon")

class DoorbellRefused(TransportError):
    """The collector answered REFUSED (or closed before PARKED): stay on the Channel."""


class Doorbell:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        self._reader = reader
        self._writer = writer
        self._frames = FrameReader()
        self._pending: list[tuple[int, bytes]] = []
        self.peer = peer

    @classmethod
    async def park(
        cls, address: CollectorAddress, port: int, pin: str | None, key: SigningKey, agent_id: str, timeout_s: float
    ) -> Doorbell:
        """Connect, prove the key, and return once the collector says PARKED."""
        target = f"{address.host}:{port}"
        ctx, name = await tls_context(address, pin)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(address.host, port, ssl=ctx, server_hostname=name), timeout_s
            )
        except TimeoutError:
            raise DoorbellRefused(f"no TLS connection to the doorbell {target} within {timeout_s:g} s") from None
        except (OSError, ssl.SSLError) as exc:
            if isinstance(exc, ssl.SSLCertVerificationError) and pin:
                forget_context(address, pin)
            raise DoorbellRefused(f"cannot connect to the doorbell {target}: {exc}") from None
        bell = cls(reader, writer, target)
        try:
            keep_alive(writer.get_extra_info("socket"))
            if pin:  # the cached context trusts the pinned certificate; this one is checked again
                der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True) or b""
                check_pin(address, der, pin)
            async with asyncio.timeout(timeout_s):
                kind, nonce = await bell._next()
                if kind != NONCE or len(nonce) != NONCE_BYTES:
                    raise DoorbellRefused(f"doorbell {target} sent frame {kind} ({len(nonce)} bytes), not a nonce")
                writer.write(frame(PROOF, proof(agent_id, key.sign(doorbell_message(nonce, agent_id)))))
                await writer.drain()
                kind, payload = await bell._next()
            if kind == REFUSED:
                # The collector's words reach the customer's log: cleaned, as its other text is.
                why = clean_text(payload.decode("utf-8", "replace"), 400)
                raise DoorbellRefused(f"doorbell {target} refused: {why}")
            if kind != PARKED:
                raise DoorbellRefused(f"doorbell {target} answered frame {kind}, not PARKED")
        except TimeoutError:
            await bell.close()
            raise DoorbellRefused(f"doorbell {target}: no answer within {timeout_s:g} s") from None
        except BaseException:
            await bell.close()
            raise
        return bell

    async def _next(self) -> tuple[int, bytes]:
        while not self._pending:
            try:
                data = await self._reader.read(1024)
            except (OSError, ssl.SSLError) as exc:
                raise DoorbellRefused(f"doorbell {self.peer} lost: {exc}") from None
            if not data:
                raise DoorbellRefused(f"doorbell {self.peer} closed by the collector")
            try:
                self._pending.extend(self._frames.feed(data))
            except DoorbellError as exc:
                raise DoorbellRefused(f"doorbell {self.peer}: {exc}") from None
        return self._pending.pop(0)

    async def wait(self) -> str:
        """Until the collector rings (``"ring"``) or the doorbell ends (``"closed: why"``)."""
        try:
            while True:
                kind, _payload = await self._next()
                if kind == RING:
                    return "ring"
                if kind == REFUSED:
                    return "closed: refused after parking"
        except DoorbellRefused as exc:
            return f"closed: {exc}"

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            await asyncio.wait_for(self._writer.wait_closed(), 2)


class Parking:
    """The service's parking state: the doorbell held (instead of an idle stream, or while
    the stream it rang for is being opened), when the stream last carried something, and
    the requests being answered (their progress goes up the stream, so no parking then)."""

    def __init__(self, address: CollectorAddress, pin: str | None, key: SigningKey, agent_id: str, timeout_s: float):
        self._address = address
        self._pin = pin
        self._key = key
        self._agent_id = agent_id
        self._timeout_s = timeout_s
        self.bell: Doorbell | None = None
        self.answering = 0
        self._active = 0.0

    def touch(self) -> None:
        """The stream carried something: the idle time starts again."""
        self._active = time.monotonic()

    async def when_idle(self, port: int, after_s: float) -> Doorbell:
        """Once the stream has been idle ``after_s`` with no request being answered: the
        doorbell, parked. A refusal or failure is logged and tried again after as long."""
        while True:
            await asyncio.sleep(max(0.05, self._active + after_s - time.monotonic()))
            if self.answering:  # its progress goes up the stream: idle from its end on
                self.touch()
                continue
            if time.monotonic() - self._active < after_s:
                continue
            try:
                return await Doorbell.park(self._address, port, self._pin, self._key, self._agent_id, self._timeout_s)
            except (TransportError, OSError) as exc:
                log.info("not parked, staying on the channel: %s", exc)
                self.touch()

    async def wait(self, stop: asyncio.Event) -> bool:
        """Parked: True on a ring (or no doorbell: a request came while the stream closed);
        False when the doorbell ended (it is then closed) or the service stops."""
        bell = self.bell
        if bell is None:
            return True
        log.info("parked on the doorbell %s", bell.peer)
        waiting = asyncio.create_task(bell.wait())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({waiting, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not waiting.done():  # stopping
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
        elif waiting.result() == "ring":
            log.info("rung by the collector: opening the channel")
            return True
        else:
            log.info("doorbell ended (%s); back to the channel", waiting.result())
        await self.unpark()
        return False

    async def unpark(self) -> None:
        bell, self.bell = self.bell, None
        if bell is not None:
            await bell.close()
