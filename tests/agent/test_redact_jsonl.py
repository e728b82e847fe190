"""The log path: JSON-lines members are redacted in decoded form, whatever the quoting or
escaping, stay valid JSON, and the leak gate agrees with the redactor on every input."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.redact import LeakError, LeakGate, Redactor, get_profile
from tests.agent.test_redact_families import FAMILIES
from tests.agent.test_redact_secrets import SECRETS, WORDS

QUOTES = st.sampled_from(["", '"', "'"])


def _escape(s: str, mask: list[bool], slash: bool) -> str:
    """``s`` as a JSON string literal, with the characters ``mask`` picks written \\uXXXX."""
    out = ['"']
    for i, ch in enumerate(s):
        if mask[i % len(mask)] if mask else False:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else json.dumps(ch)[1:-1])
        elif ch == "/" and slash:
            out.append("\\/")
        else:
            out.append(json.dumps(ch, ensure_ascii=False)[1:-1])
    out.append('"')
    return "".join(out)


def _record_line(fields: dict[str, str], mask: list[bool], slash: bool) -> bytes:
    body = ",".join(f"{_escape(k, [], False)}:{_escape(v, mask, slash)}" for k, v in fields.items())
    return ("{" + body + "}\n").encode("utf-8", "surrogatepass")


def _redact(data: bytes, artifact: str = "logs/app.jsonl") -> tuple[bytes, Redactor]:
    r = Redactor(get_profile("standard"))
    out = io.BytesIO()
    r.redact_stream(io.BytesIO(data), out, artifact)
    return out.getvalue(), r


def _gate(artifact: str, data: bytes) -> dict[str, object]:
    gate = LeakGate(None)
    gate.scan_bytes(artifact, data)
    return gate.check(allow_leaks=False)


@given(
    kind=st.sampled_from(sorted(SECRETS)),
    data=st.data(),
    words=st.lists(WORDS, min_size=0, max_size=12),
    quote=QUOTES,
    mask=st.lists(st.booleans(), min_size=0, max_size=7),
    slash=st.booleans(),
    nested=st.booleans(),
)
@settings(max_examples=400, deadline=None)
def test_a_secret_anywhere_in_a_record_never_survives(
    kind: str, data: st.DataObject, words: list[str], quote: str, mask: list[bool], slash: bool, nested: bool
) -> None:
    embedded, value = data.draw(SECRETS[kind])
    if quote and kind == "kv":
        key, _, val = embedded.partition("=") if "=" in embedded else embedded.partition(":")
        embedded = f"{key}={quote}{val.strip()}{quote}"
    elif quote and " " not in embedded:
        embedded = f"{quote}{embedded}{quote}"
    if nested:  # a JSON document logged inside the message: escaped twice on disk
        embedded = json.dumps({"event": "login", "detail": embedded})
    at = data.draw(st.integers(0, len(words)))
    msg = " ".join([*words[:at], embedded, *words[at:]])
    line = _record_line({"ts": "2026-11-23T10:00:01.000000Z", "src": "app", "msg": msg, "unit": "app.service"},
                        mask, slash)
    out, _ = _redact(line)
    record = json.loads(out)  # still one valid JSON object
    assert value not in record["msg"], (kind, msg, record["msg"])
    assert value.encode() not in out
    assert "[REDACTED:" in record["msg"]
    assert set(record) == {"ts", "src", "msg", "unit"} and record["unit"] == "app.service"
    assert _gate("logs/app.jsonl", out)["result"] == "pass"  # the gate agrees: nothing left
    with pytest.raises(LeakError):  # and on the raw record it sees what the redactor saw
        _gate("logs/app.jsonl", line)


@given(
    key=st.sampled_from(["password", "db_password", "apiToken", "client_secret", "private_key", "X-Api-Key"]),
    value=st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF), min_size=1, max_size=24),
    mask=st.lists(st.booleans(), min_size=0, max_size=5),
)
@settings(max_examples=200, deadline=None)
def test_a_field_whose_key_names_a_secret_goes_whole(key: str, value: str, mask: list[bool]) -> None:
    line = _record_line({"msg": "x", key: value}, mask, False)
    out, _ = _redact(line)
    record = json.loads(out)
    if "[REDACTED" in value:
        return  # a value already holding a marker was redacted before
    assert record[key] in ("[REDACTED:kv-secret]", "[REDACTED:high-entropy-secret]"), record
    assert _gate("logs/app.jsonl", out)["result"] == "pass"


@given(words=st.lists(WORDS, min_size=1, max_size=30), mask=st.lists(st.booleans(), max_size=5))
@settings(max_examples=200, deadline=None)
def test_plain_records_are_copied_byte_for_byte(words: list[str], mask: list[bool]) -> None:
    line = _record_line({"ts": "2026-11-23T10:00:01.000000Z", "msg": " ".join(words)}, mask, True)
    out, r = _redact(line * 3)
    assert out == line * 3
    assert r.hits() == {}


PIECES = st.one_of(
    WORDS,
    st.sampled_from(sorted(SECRETS)).flatmap(lambda k: SECRETS[k]).map(lambda p: p[0]),
    st.sampled_from(["=", ": ", '"', "'", "Bearer", "Authorization:", "cookie=", "sig=", "[REDACTED:kv-secret]",
                     "-----BEGIN RSA PRIVATE KEY-----", "-----END RSA PRIVATE KEY-----", "\n", "://", "@", ";"]),
    st.text(max_size=12),
)


@given(pieces=st.lists(PIECES, max_size=14), seps=st.lists(st.sampled_from(["", " ", "\t", "="]), min_size=1))
@settings(max_examples=500, deadline=None)
def test_redaction_is_idempotent(pieces: list[str], seps: list[str]) -> None:
    # The gate's premise: a redacted text matches no rule again.
    text = "".join(p + seps[i % len(seps)] for i, p in enumerate(pieces))
    r = Redactor(get_profile("standard"))
    once = r.redact_text(text, "a")
    assert r.redact_text(once, "b") == once
    assert "b" not in r.hits()


def test_text_and_json_forms_give_the_same_line() -> None:
    lines = [
        'login token="tok3nV4lue9876543" user=bob',
        'body {"password":"hunter2hunter2"} done',
        'cookie="a=1; sessionid=s3ss10nS3cr3tValue"',
        "key material -----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx\n-----END RSA PRIVATE KEY-----",
    ]
    text = "".join(x.replace("\n", " ") + "\n" for x in lines[:3]).encode()
    jl = b"".join(_record_line({"msg": x}, [], False) for x in lines)
    t_out, _ = _redact(text, "files/a.log")
    j_out, _ = _redact(jl)
    msgs = [json.loads(x)["msg"] for x in j_out.splitlines()]
    assert msgs[:3] == t_out.decode().splitlines()
    assert "MIIEowIBAAKCAQEAx" not in msgs[3] and "[REDACTED:private-key]" in msgs[3]


def test_a_line_that_is_not_json_is_redacted_as_text() -> None:
    out, _ = _redact(b'{"msg": "cut here password=abc123\n')
    assert out == b'{"msg": "cut here password=[REDACTED:kv-secret]\n'


def test_json_document_member_is_walked_and_stays_json() -> None:
    doc = {"settings": {"db_password": "x1", "note": "token=\"abc123def\"", "list": ["ghp_" + "a" * 36]}}
    out, _ = _redact(json.dumps(doc, indent=2).encode() + b"\n", "pgsql/facts.json")
    got = json.loads(out)
    assert got["settings"]["db_password"] == "[REDACTED:kv-secret]"
    assert got["settings"]["note"] == 'token="[REDACTED:kv-secret]"'
    assert got["settings"]["list"] == ["ghp_…[REDACTED:github-token]"]
    assert _gate("pgsql/facts.json", out)["result"] == "pass"


@given(
    kind=st.sampled_from(sorted(FAMILIES)),
    data=st.data(),
    words=st.lists(WORDS, min_size=0, max_size=12),
    mask=st.lists(st.booleans(), min_size=0, max_size=7),
    slash=st.booleans(),
)
@settings(max_examples=1500, deadline=None)
def test_a_secret_of_every_family_anywhere_in_a_record_never_survives(
    kind: str, data: st.DataObject, words: list[str], mask: list[bool], slash: bool
) -> None:
    """Every family of docs/redaction.md (the bare vendor tokens included) in a record's
    message, any character possibly written as a \\u escape or a \\/."""
    embedded, secret = data.draw(FAMILIES[kind])
    at = data.draw(st.integers(0, len(words)))
    msg = " ".join([*words[:at], embedded, *words[at:]])
    line = _record_line({"ts": "2026-11-23T10:00:01.000000Z", "src": "app", "msg": msg}, mask, slash)
    out, _ = _redact(line)
    record = json.loads(out)
    assert secret not in record["msg"], (kind, msg, record["msg"])
    assert "[REDACTED:" in record["msg"]
    assert _gate("logs/app.jsonl", out)["result"] == "pass"
