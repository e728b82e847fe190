"""The collector's TLS identity: a self-signed ECDSA P-256 certificate made on first start.

gRPC's TLS stack rejects Ed25519 certificates (NO_COMMON_SIGNATURE_ALGORITHMS), so the
TLS key is ECDSA P-256; Ed25519 stays the bundle and channel signing key. Agents pin the
certificate by the ``sha256:<hex>`` fingerprint of its DER encoding, printed at start.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.transport.connect import PINNED_TARGET_NAME, certificate_fingerprint

__all__ = ["TlsMaterial", "ensure_self_signed", "load_tls_files"]


@dataclass(frozen=True)
class TlsMaterial:
    cert_pem: bytes
    key_pem: bytes
    fingerprint: str
    cert_path: Path | None = None


def load_tls_files(cert_file: Path, key_file: Path) -> TlsMaterial:
    cert_pem = cert_file.read_bytes()
    return TlsMaterial(cert_pem, key_file.read_bytes(), certificate_fingerprint(cert_pem), cert_file)


def ensure_self_signed(directory: Path) -> TlsMaterial:
    """Load ``collector.crt``/``collector.key`` from ``directory``, creating them on first use."""
    cert_path, key_path = directory / "collector.crt", directory / "collector.key"
    if cert_path.exists() and key_path.exists():
        return load_tls_files(cert_path, key_path)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    hostname = socket.gethostname()
    # The pinned name is always present so agents connecting by any address can check
    # the certificate against the pin (see agent.transport.connect).
    names: list[x509.GeneralName] = [
        x509.DNSName(PINNED_TARGET_NAME),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    if hostname and hostname not in {PINNED_TARGET_NAME, "localhost"}:
        names.append(x509.DNSName(hostname))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, PINNED_TARGET_NAME)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        # Self-signed and used as its own trust anchor by the agents that pin it.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_pem)
    cert_path.write_bytes(cert_pem)
    return TlsMaterial(cert_pem, key_pem, certificate_fingerprint(cert_pem), cert_path)
