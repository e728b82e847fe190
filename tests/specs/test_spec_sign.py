"""Signed specs: real Ed25519 keys; each refusal carries its reason."""

from __future__ import annotations

import base64
import datetime as dt
import json
from importlib import resources

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.keys import SigningKey
from agent.specs import SpecError, SpecRefused, sign_spec, verify_spec

TEXT = (resources.files("agent.specs") / "builtin" / "postgresql.yaml").read_text("utf-8")
DAY = dt.timedelta(days=1)


@pytest.fixture(scope="module")
def support() -> SigningKey:
    return SigningKey.generate()


def test_a_signed_spec_verifies_for_a_trusted_signer(support: SigningKey) -> None:
    data = sign_spec(TEXT, support, valid_for=30 * DAY)
    signed = verify_spec(data, {support.fingerprint})
    assert signed.spec.name == "postgresql" and signed.signer == support.fingerprint
    assert signed.yaml_text == TEXT and signed.envelope == data
    assert signed.expires_at - signed.signed_at == 30 * DAY
    # The collector's check: intact and current, whoever signed it.
    assert verify_spec(data, None).signer == support.fingerprint


def _refused(data: bytes, trusted: set[str], **kw: object) -> SpecRefused:
    with pytest.raises(SpecRefused) as info:
        verify_spec(data, trusted, **kw)  # type: ignore[arg-type]
    return info.value


def test_plain_yaml_is_refused_as_unsigned(support: SigningKey) -> None:
    refused = _refused(TEXT.encode(), {support.fingerprint})
    assert refused.reason == "unsigned" and "casefile-collector spec sign" in str(refused)


def test_a_stripped_signature_is_unsigned(support: SigningKey) -> None:
    env = json.loads(sign_spec(TEXT, support, valid_for=DAY))
    env["signature"] = ""
    assert _refused(json.dumps(env).encode(), {support.fingerprint}).reason == "unsigned"


def test_another_signer_is_refused(support: SigningKey) -> None:
    other = SigningKey.generate()
    refused = _refused(sign_spec(TEXT, other, valid_for=DAY), {support.fingerprint})
    assert refused.reason == "untrusted-signer" and other.fingerprint in str(refused)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.replace("FATAL:", "FATAX:"),  # the YAML inside the manifest
        lambda m: m.replace('"version": 1', '"version": 2'),
        lambda m: m.replace('"expires_at": "', '"expires_at": "9'),
    ],
)
def test_any_edit_of_the_signed_manifest_is_tampering(support: SigningKey, edit: object) -> None:
    env = json.loads(sign_spec(TEXT, support, valid_for=DAY))
    changed = edit(env["signed"])  # type: ignore[operator]
    assert changed != env["signed"]
    env["signed"] = changed
    assert _refused(json.dumps(env).encode(), {support.fingerprint}).reason == "tampered"


def test_a_swapped_key_does_not_pass_for_the_trusted_one(support: SigningKey) -> None:
    # An attacker re-signs with their key but keeps the trusted fingerprint in the key block.
    attacker = SigningKey.generate()
    env = json.loads(sign_spec(TEXT, attacker, valid_for=DAY))
    manifest = json.loads(env["signed"])
    manifest["key"]["fingerprint"] = support.fingerprint
    signed = json.dumps(manifest, sort_keys=True, indent=1) + "\n"
    env["signed"] = signed
    env["signature"] = base64.b64encode(attacker.sign(signed.encode())).decode()
    refused = _refused(json.dumps(env).encode(), {support.fingerprint})
    assert refused.reason == "tampered"


def test_an_expired_signature_is_refused(support: SigningKey) -> None:
    old = dt.datetime.now(dt.UTC) - 10 * DAY
    data = sign_spec(TEXT, support, valid_for=DAY, now=old)
    refused = _refused(data, {support.fingerprint})
    assert refused.reason == "expired" and "expired at" in str(refused)


def test_a_bad_spec_is_never_signed(support: SigningKey) -> None:
    with pytest.raises(SpecError, match="unknown key"):
        sign_spec(TEXT + "\nshell: true\n", support, valid_for=DAY)
    with pytest.raises(SpecError, match="at most 400 days"):
        sign_spec(TEXT, support, valid_for=1000 * DAY)


@pytest.mark.parametrize(
    "junk",
    [
        b"{",
        b'{"format": "casefile-spec-signed/1", "signed": "[]", "signature": "AAAA"}',
        b'{"format": "x"}',
        b"{" + b" " * 300_000 + b"}",
    ],
)
def test_malformed_envelopes_are_refused(support: SigningKey, junk: bytes) -> None:
    assert _refused(junk, {support.fingerprint}).reason == "malformed"


def test_the_signed_bytes_are_encoded_as_bundle_manifests_are(support: SigningKey) -> None:
    from agent.bundle.manifest import encode_manifest
    from agent.specs.envelope import encode_signed

    manifest = json.loads(json.loads(sign_spec(TEXT, support, valid_for=DAY))["signed"])
    assert encode_signed(manifest) == encode_manifest(manifest)


_SIGNER = SigningKey.generate()
_SIGNED = sign_spec(TEXT, _SIGNER, valid_for=DAY)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=len(_SIGNED) - 1), st.integers(min_value=0, max_value=255))
def test_any_changed_byte_is_refused_or_changes_nothing_signed(index: int, value: int) -> None:
    data = bytearray(_SIGNED)
    data[index] = value
    try:
        signed = verify_spec(bytes(data), {_SIGNER.fingerprint})
    except SpecRefused as exc:
        assert exc.reason in ("unsigned", "tampered", "malformed", "untrusted-signer", "expired")
        return
    # Accepted: the byte was outside what is signed (JSON layout, an escape of the same
    # character), so what runs is exactly what was signed.
    assert signed.yaml_text == TEXT and signed.signer == _SIGNER.fingerprint


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["format", "signed", "signature", "x"]), st.text(max_size=60) | st.integers()))
def test_hostile_envelopes_are_refused_with_a_reason(envelope: dict[str, object]) -> None:
    with pytest.raises(SpecRefused) as info:
        verify_spec(json.dumps(envelope).encode(), {_SIGNER.fingerprint})
    assert info.value.reason in ("unsigned", "tampered", "malformed")
