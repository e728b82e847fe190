"""Opening a gRPC channel to a collector: TLS by default, pinned or CA-verified.

Three ways to trust a collector:
- ``ca_fingerprint`` (``sha256:<hex>`` of the certificate's DER): the collector's
  self-signed certificate is fetched, compared with the pin, and then used as the only
  trust anchor. The collector prints this fingerprint on its first start.
- ``ca_pem``: a CA bundle (or the collector's certificate file) verified the usual way.
- neither: the system's trust store, for a collector with a public certificate.
Plaintext only when ``insecure`` is asked for explicitly, and only to a loopback address.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
import socket
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.errors import TransportError

if TYPE_CHECKING:
    import grpc

__all__ = [
    "PINNED_TARGET_NAME",
    "CollectorAddress",
    "certificate_fingerprint",
    "check_pin",
    "fetch_certificate",
    "is_loopback",
    "open_channel",
    "parse_address",
]

# Every collector certificate Casefile makes carries this DNS name; a pinned channel
# checks the name against it, so the agent may dial the collector by any address.
PINNED_TARGET_NAME = "casefile-collector"

# Why these options: keepalive pings detect a dead NAT mapping on long uploads;
# the receive limit stays at gRPC's 4 MiB default because bundles travel in chunks.
_CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
]


@dataclass(frozen=True)
class CollectorAddress:
    host: str
    port: int

    @property
    def target(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str, *, listen: bool = False) -> CollectorAddress:
    """Parse ``HOST:PORT`` or ``[V6]:PORT``; port 0 (any free port) only for ``listen``."""
    host, sep, port = text.strip().rpartition(":")
    lowest = 0 if listen else 1
    if not sep or not host or not port.isdigit():
        raise TransportError(f"collector address must be HOST:PORT, got {text!r}")
    if not lowest <= int(port) < 65536:
        raise TransportError(f"port {int(port)} in {text!r} is out of range: a port is {lowest} to 65535")
    return CollectorAddress(host.strip("[]"), int(port))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# The first certificate of a PEM file (a chain's leaf), as cryptography's loader takes it.
_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN (?:X509 )?CERTIFICATE-----(.*?)-----END (?:X509 )?CERTIFICATE-----", re.DOTALL
)


def certificate_fingerprint(cert_pem_or_der: bytes) -> str:
    """``sha256:<hex>`` of the certificate's DER encoding, given PEM or DER.

    PEM is decoded here rather than parsed with ``cryptography.x509``: the resident
    daemon checks the pin on every connect, and x509 would add ~1 MiB to it for what is
    a base64 decode. The certificate itself is checked by the TLS handshake.
    """
    der = cert_pem_or_der
    if cert_pem_or_der.lstrip().startswith(b"-----BEGIN"):
        match = _PEM_CERTIFICATE.search(cert_pem_or_der)
        if match is None:
            raise ValueError("no certificate in the PEM data")
        try:
            der = base64.b64decode(b"".join(match.group(1).split()), validate=True)
        except binascii.Error as exc:
            raise ValueError(f"the PEM certificate is not valid base64: {exc}") from None
    return "sha256:" + hashlib.sha256(der).hexdigest()


def check_pin(address: CollectorAddress, cert_pem_or_der: bytes, pin: str) -> None:
    """Raise TransportError (code PIN_MISMATCH) unless the certificate hashes to ``pin``."""
    actual = certificate_fingerprint(cert_pem_or_der)
    if actual.lower() != pin.strip().lower():
        raise TransportError(
            f"collector {address.target} certificate fingerprint {actual} does not match the pinned {pin}",
            peer=address.target,
            code="PIN_MISMATCH",
        )


def fetch_certificate(address: CollectorAddress, timeout: float = 10.0) -> bytes:
    """The PEM certificate the collector presents, fetched without trusting it yet.

    Only ever used together with a pin: the caller compares its fingerprint first.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])  # gRPC servers require ALPN h2
    try:
        with (
            socket.create_connection((address.host, address.port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=PINNED_TARGET_NAME) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except OSError as exc:
        raise TransportError(
            f"cannot reach collector {address.target} for its certificate: {exc}",
            peer=address.target,
        ) from None
    if not der:
        raise TransportError("collector presented no certificate", peer=address.target)
    return ssl.DER_cert_to_PEM_cert(der).encode("ascii")


def open_channel(
    address: CollectorAddress,
    *,
    ca_fingerprint: str | None = None,
    ca_pem: bytes | None = None,
    insecure: bool = False,
) -> grpc.Channel:
    """A synchronous gRPC channel to the collector, trusted as described in the module doc."""
    import grpc  # here, not at the top: the resident daemon uses this module's helpers without grpc

    options = list(_CHANNEL_OPTIONS)
    if insecure:
        if not is_loopback(address.host):
            raise TransportError(
                f"refusing plaintext to {address.target}: --insecure is allowed only on loopback",
                peer=address.target,
            )
        return grpc.insecure_channel(address.target, options=options)
    if ca_fingerprint:
        pem = fetch_certificate(address)
        check_pin(address, pem, ca_fingerprint)
        options.append(("grpc.ssl_target_name_override", PINNED_TARGET_NAME))
        creds = grpc.ssl_channel_credentials(root_certificates=pem)
    else:
        creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    return grpc.secure_channel(address.target, creds, options=options)
