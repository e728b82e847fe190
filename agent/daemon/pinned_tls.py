"""The TLS context of the daemon's Channel connection to its pinned collector."""

from __future__ import annotations

import asyncio
import ssl

from agent.transport.connect import PINNED_TARGET_NAME, CollectorAddress, check_pin, fetch_certificate

__all__ = ["forget_context", "tls_context"]

# Pinned collector → the context trusting exactly its certificate, built once per process.
# Fetching the certificate is a TLS handshake of its own: building the context for every
# attempt doubled the handshakes the collector served when its agents reconnect, all at
# once after a restart (benchmarks/bench_storm.py). A certificate that matches the pin is
# the one cached, and every connection checks the pin again (``open``); a collector that
# changed its certificate fails the cached context's verification, and the next attempt
# fetches the new one, which says why the pin no longer matches.
_PINNED: dict[tuple[str, str], tuple[ssl.SSLContext, str]] = {}


async def tls_context(address: CollectorAddress, pin: str | None) -> tuple[ssl.SSLContext, str]:
    cached = _PINNED.get((address.target, pin)) if pin else None
    if cached is not None:
        return cached
    if pin:
        pem = await asyncio.to_thread(fetch_certificate, address)
        check_pin(address, pem, pin)
        ctx = ssl.create_default_context(cadata=pem.decode("ascii"))
        name = PINNED_TARGET_NAME
    else:
        ctx = ssl.create_default_context()
        name = address.host
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2"])
    if pin:
        _PINNED[(address.target, pin)] = (ctx, name)
    return ctx, name


def forget_context(address: CollectorAddress, pin: str) -> None:
    """Drop the cached context (its certificate failed verification)."""
    _PINNED.pop((address.target, pin), None)
