"""The one typed ``Manifest``: the writer encodes it, ``parse_manifest`` returns it with
every header field checked, and one ``is_sha256`` (a whole-string match) serves the
bundle reader, the blob store, the metadata store and the upload header check."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.bundle import BundleMeta, BundleWriter, new_bundle_id, verify_bundle
from agent.bundle.manifest import HEADER_FIELDS, Manifest, encode_manifest, parse_manifest
from agent.bundle.names import is_bundle_id, is_sha256
from agent.errors import BundleError, VerificationError
from agent.keys import SigningKey
from collector.edge import Rejected
from collector.services.upload_limits import IngestLimits, check_header_fields

HEX = "0123456789abcdef"


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SigningKey]:
    tmp = tmp_path_factory.mktemp("manifest")
    key = SigningKey.generate()
    meta = BundleMeta(
        bundle_id=new_bundle_id(), hostname="web-1", created_at=datetime(2026, 12, 7, 5, 0, 1, 234567, tzinfo=UTC),
        kind="live", case_id="SR-7", agent_id="ag_1", agent_version="9.9", request_id="req-1",
    )  # fmt: skip
    with BundleWriter(tmp, key=key, meta=meta) as w:
        w.add_bytes("facts.pb", b"\x00facts")
        w.add_bytes("logs/a.jsonl", b'{"m": 1}\n')
        done = w.finish(spec={"only": ["host"]}, collectors=[{"name": "host", "status": "ok"}],
                        extra={"consent": {"confirmed": "yes-flag"}})  # fmt: skip
    return done.path, key


def test_the_reader_returns_the_typed_header(written: tuple[Path, SigningKey]) -> None:
    path, key = written
    m = verify_bundle(path, expected_key=key.public).manifest
    assert isinstance(m, Manifest)
    assert (m.kind, m.case_id, m.agent_id, m.request_id, m.hostname, m.agent_version) == (
        "live", "SR-7", "ag_1", "req-1", "web-1", "9.9"
    )
    assert m.created_at == "2026-12-07T05:00:01.234Z"
    assert m.created == datetime(2026, 12, 7, 5, 0, 1, 234000, tzinfo=UTC)
    assert m.key == key.public
    assert [x.path for x in m.members] == ["facts.pb", "logs/a.jsonl"]
    assert m.collectors == ({"name": "host", "status": "ok"},)
    assert m.extra == {"consent": {"confirmed": "yes-flag"}}
    assert m.document()["consent"] == {"confirmed": "yes-flag"}  # the signed document
    with pytest.raises(TypeError):
        m["consent"]  # type: ignore[index]  # typed attributes only, not a mapping
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.kind = "one-shot"  # type: ignore[misc]


def test_encoding_a_parsed_manifest_gives_the_signed_bytes(written: tuple[Path, SigningKey]) -> None:
    vb = verify_bundle(written[0])
    assert encode_manifest(vb.manifest) == vb.manifest_bytes
    assert parse_manifest(vb.manifest_bytes) == vb.manifest


def test_extra_fields_may_not_overwrite_the_header(written: tuple[Path, SigningKey]) -> None:
    m = verify_bundle(written[0]).manifest
    for name in sorted(HEADER_FIELDS):
        with pytest.raises(BundleError, match=f"would overwrite {name}"):
            dataclasses.replace(m, extra={name: "x"})


@pytest.mark.parametrize("created_at", ["2026-13-01T00:00:00Z", "2026-02-30T00:00:00.5Z", "2026-01-01T24:00:00Z"])
def test_a_created_at_of_no_such_moment_is_refused(written: tuple[Path, SigningKey], created_at: str) -> None:
    doc = json.loads(verify_bundle(written[0]).manifest_bytes)
    doc["created_at"] = created_at
    with pytest.raises(VerificationError, match="is not RFC 3339 UTC") as caught:
        parse_manifest(json.dumps(doc).encode())
    assert caught.value.reason == "bad-manifest"


@given(st.text(alphabet=HEX, min_size=64, max_size=64), st.sampled_from(["\n", "\r\n", " ", "\x00", "0"]))
def test_a_sha256_is_exactly_64_lowercase_hex_digits(digest: str, tail: str) -> None:
    assert is_sha256(digest)
    assert not is_sha256(digest + tail)
    assert not is_sha256(digest.upper()) or digest == digest.upper()
    assert not is_sha256(digest[:-1])


@given(st.text(alphabet=HEX, min_size=32, max_size=32))
def test_a_bundle_id_with_a_trailing_newline_is_not_one(bundle_id: str) -> None:
    assert is_bundle_id(bundle_id) and not is_bundle_id(bundle_id + "\n")


def test_the_upload_header_refuses_a_sha256_with_a_trailing_newline() -> None:
    digest = "ab" * 32
    check_header_fields(new_bundle_id(), 10, digest, IngestLimits())  # the shape itself passes
    with pytest.raises(Rejected) as caught:
        check_header_fields(new_bundle_id(), 10, digest + "\n", IngestLimits())
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "sha256 must be 64 lowercase hex characters" in str(caught.value)
