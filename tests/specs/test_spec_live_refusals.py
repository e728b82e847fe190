"""The agent's side of a live request that names a spec (``agent.daemon.live_spec``): every
refusal with its reason, before anything runs, and the collection child's own check."""

from __future__ import annotations

import datetime as dt
import json
from importlib import resources

import pytest

from agent.collect import CollectionSpec
from agent.daemon.execute import start_spec_collection
from agent.daemon.live_spec import check_live_spec
from agent.keys import SigningKey
from agent.specs import SpecRefused, sign_spec

TEXT = (resources.files("agent.specs") / "builtin" / "postgresql.yaml").read_text("utf-8")
SCOPES = ("facts", "spec:postgresql@1")
DAY = dt.timedelta(days=1)


@pytest.fixture(scope="module")
def support() -> SigningKey:
    return SigningKey.generate()


def _tampered(envelope: bytes) -> bytes:
    doc = json.loads(envelope)
    doc["signed"] = doc["signed"].replace("FATAL:", "FATAX:")
    return json.dumps(doc).encode()


def test_an_allowed_spec_passes_with_its_record(support: SigningKey) -> None:
    envelope = sign_spec(TEXT, support, valid_for=DAY)
    check = check_live_spec(SCOPES, envelope, (support.fingerprint,), ("postgresql",))
    assert check is not None and check.denial is None
    assert check.record is not None and check.record["signer"] == support.fingerprint
    assert check_live_spec(("facts",), envelope, (), ()) is None  # no spec named: not a spec request


def test_every_refusal_says_why(support: SigningKey) -> None:
    good = sign_spec(TEXT, support, valid_for=DAY)
    expired = sign_spec(TEXT, support, valid_for=DAY, now=dt.datetime.now(dt.UTC) - 3 * DAY)
    signers, listed = (support.fingerprint,), ("postgresql",)
    cases = {
        "no envelope": (SCOPES, b"", signers, listed, "carries no signed spec"),
        "unsigned": (SCOPES, TEXT.encode(), signers, listed, "spec refused (unsigned)"),
        "tampered": (SCOPES, _tampered(good), signers, listed, "spec refused (tampered)"),
        "expired": (SCOPES, expired, signers, listed, "spec refused (expired)"),
        "wrong signer": (SCOPES, good, (SigningKey.generate().fingerprint,), listed, "(untrusted-signer)"),
        "nobody trusted": (SCOPES, good, (), listed, "(untrusted-signer)"),
        "not listed": (SCOPES, good, signers, ("rabbitmq",), "not in live_specs"),
        "another spec named": (("spec:rabbitmq@2",), good, signers, listed, "not the rabbitmq@2 named"),
    }
    for name, (scopes, envelope, trusted, live, said) in cases.items():
        check = check_live_spec(scopes, envelope, trusted, live)
        assert check is not None and check.denial is not None, name
        assert said in check.denial, (name, check.denial)


def test_the_collection_child_verifies_the_bytes_again(support: SigningKey) -> None:
    good = sign_spec(TEXT, support, valid_for=DAY)
    with pytest.raises(SpecRefused, match="tampered"):
        start_spec_collection(CollectionSpec(only=("host",)), _tampered(good), (support.fingerprint,))
    with pytest.raises(SpecRefused, match="untrusted-signer"):
        start_spec_collection(CollectionSpec(only=("host",)), good, (SigningKey.generate().fingerprint,))
