"""Certificate pins: the fingerprint is of the DER bytes, however the certificate is given."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.transport import certificate_fingerprint


def _cert(name: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def test_fingerprint_is_the_same_from_pem_der_and_a_chain() -> None:
    leaf, other = _cert("leaf"), _cert("intermediate")
    der = leaf.public_bytes(serialization.Encoding.DER)
    pem = leaf.public_bytes(serialization.Encoding.PEM)
    expected = "sha256:" + hashlib.sha256(der).hexdigest()
    assert certificate_fingerprint(der) == expected
    assert certificate_fingerprint(pem) == expected
    assert certificate_fingerprint(pem.replace(b"\n", b"\r\n")) == expected
    # A chain file names its leaf first; what cryptography's PEM loader takes too.
    chain = pem + other.public_bytes(serialization.Encoding.PEM)
    assert certificate_fingerprint(chain) == expected
    assert x509.load_pem_x509_certificate(chain).public_bytes(serialization.Encoding.DER) == der


def test_pem_without_a_certificate_is_refused() -> None:
    with pytest.raises(ValueError, match="no certificate"):
        certificate_fingerprint(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ValueError, match="not valid base64"):
        certificate_fingerprint(b"-----BEGIN CERTIFICATE-----\n%%%%\n-----END CERTIFICATE-----\n")
