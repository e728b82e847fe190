"""The leak gate, called directly on crafted artifacts and on the redactor's own output."""

from __future__ import annotations

import base64
import io
import json
import os

import pytest

from agent.redact import Harvested, LeakError, LeakGate, Redactor, get_profile
from agent.redact.pipeline import MAX_LINE


def test_secret_pattern_fails_closed_naming_artifact_and_rule() -> None:
    gate = LeakGate(None)
    gate.scan_stream("logs/app.jsonl", io.BytesIO(b"ok\nkey ghp_" + b"a1" * 18 + b" there\n"))
    gate.scan_bytes("facts.json", b'{"x": "AKIA' + b"ABCDEFGHIJKLMNOP" + b'"}')
    with pytest.raises(LeakError) as err:
        gate.check(allow_leaks=False)
    assert "logs/app.jsonl (github-token" in str(err.value)
    assert "facts.json (aws-access-key" in str(err.value)
    assert ("logs/app.jsonl", "github-token", 1) in err.value.leaks
    entry = gate.check(allow_leaks=True)
    assert entry["result"] == "leaks-allowed" and len(entry["leaks"]) == 2  # type: ignore[arg-type]


def test_markers_and_shapes_left_by_redaction_pass() -> None:
    gate = LeakGate(Harvested(hostnames=("web7",), ips=("10.1.2.3",), macs=("02:fc:00:00:00:01",)))
    clean = (
        b"AKIA\xe2\x80\xa6[REDACTED:aws-access-key] postgres://u:[REDACTED:url-credentials]@db/x\n"
        b"-----BEGIN RSA PRIVATE KEY-----\n[REDACTED:private-key]\n-----END RSA PRIVATE KEY-----\n"
        b"host-0123456789ab web77 10.1.2.33 110.1.2.3 Authorization: Bearer [REDACTED:auth-header]\n"
    )
    gate.scan_stream("x", io.BytesIO(clean))
    assert gate.check(allow_leaks=False)["result"] == "pass"


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        (b"name WEB7.local", "harvested-host"),
        # The dashed form is a harvested literal of kind host: the redactor tokenises it.
        (b"peer ip-10-1-2-3.ec2.internal", "harvested-host"),
        (b"mac 02-FC-00-00-00-01", "harvested-mac"),
        (b"addr=10.1.2.3:22", "harvested-ip"),
    ],
)
def test_harvested_values_in_any_case_or_form(text: bytes, rule: str) -> None:
    gate = LeakGate(Harvested(hostnames=("web7",), ips=("10.1.2.3",), macs=("02:fc:00:00:00:01",)))
    gate.scan_stream("files/a.log", io.BytesIO(text))
    with pytest.raises(LeakError, match=f"files/a.log \\({rule}"):
        gate.check(allow_leaks=False)


def test_a_value_across_block_boundary_is_found_once() -> None:
    data = b"x" * ((1 << 20) - 10) + b" ghp_" + b"Z" * 36 + b"\n"
    gate = LeakGate(None)
    assert gate.scan_stream("big", io.BytesIO(data)) == 1


def test_random_base64_attachment_never_fails_by_chance() -> None:
    # The 27 MB attachment of the issue failed on "gcp-api-key": the gate's own pattern
    # had no boundaries, the redactor's had. Now the gate re-runs the redactor's rules, so
    # whatever matches is redacted first. 4 MiB of base64 from os.urandom is ~5.6M
    # positions; any vendor prefix of 4 letters occurs ~1.3 times in it on average
    # (64^-4 per position), so the unbounded shapes that failed 27 MB do turn up here
    # (asserted below), while the run stays under a second. Wrapped at 76 like base64(1)
    # and as one 2 MiB line (cut by the redactor's line bound, read whole by the gate).
    blob = base64.b64encode(os.urandom(3 << 20))
    wrapped = b"\n".join(blob[i : i + 76] for i in range(0, len(blob), 76)) + b"\n"
    prefixes = sum(wrapped.count(p) for p in (b"AIza", b"AKIA", b"ASIA", b"ghp_", b"eyJ"))
    assert prefixes >= 1  # the shapes are there; the statistics of the issue are met
    for name, data in (("files/blob.b64", wrapped), ("files/one-line.b64", blob[: 2 * MAX_LINE] + b"\n")):
        r = Redactor(get_profile("standard"))
        out = io.BytesIO()
        r.redact_stream(io.BytesIO(data), out, name)
        gate = LeakGate(None)
        gate.scan_stream(name, io.BytesIO(out.getvalue()))
        assert gate.check(allow_leaks=False)["result"] == "pass"


def test_gate_reads_json_lines_decoded() -> None:
    # A token hidden by a JSON escape is found; the same token redacted passes.
    raw = json.dumps({"msg": "key ghp_" + "a1" * 18}, ensure_ascii=True).replace("g", "\\u0067") + "\n"
    gate = LeakGate(None)
    gate.scan_bytes("logs/app.jsonl", raw.encode())
    with pytest.raises(LeakError, match=r"logs/app.jsonl \(github-token"):
        gate.check(allow_leaks=False)
    out = io.BytesIO()
    Redactor(get_profile("standard")).redact_stream(io.BytesIO(raw.encode()), out, "logs/app.jsonl")
    gate = LeakGate(None)
    gate.scan_bytes("logs/app.jsonl", out.getvalue())
    assert gate.check(allow_leaks=False)["result"] == "pass"
    assert json.loads(out.getvalue())["msg"] == "key ghp_…[REDACTED:github-token]"


def test_the_net_redacts_instead_of_refusing() -> None:
    line = b"upload ok sig=Zq81LmW0cPzT4rYv9xKd9a sessionid=42 auth=pam\n"
    r = Redactor(get_profile("standard"))
    out = io.BytesIO()
    r.redact_stream(io.BytesIO(line), out, "files/a.log")
    assert out.getvalue() == b"upload ok sig=[REDACTED:high-entropy-secret] sessionid=42 auth=pam\n"
    gate = LeakGate(None)
    gate.scan_bytes("files/a.log", out.getvalue())
    assert gate.check(allow_leaks=False)["result"] == "pass"
    gate.scan_bytes("files/raw.log", line)  # unredacted, the same rule is the gate's verdict
    with pytest.raises(LeakError, match="high-entropy-secret"):
        gate.check(allow_leaks=False)


def test_a_secret_cut_by_the_redactors_line_bound_is_caught() -> None:
    # One line longer than MAX_LINE with no newline: the redactor cuts it at MAX_LINE
    # (its memory bound), so a token straddling the cut survives it. The gate reads lines
    # four times longer, sees the token whole and refuses the bundle.
    token = b"ghp_" + b"Q" * 36
    prefix = (b"x," * (MAX_LINE // 2))[: MAX_LINE - 21] + b","
    data = prefix + token + b"," + b"y," * 1000 + b"\n"
    out = io.BytesIO()
    Redactor(get_profile("standard")).redact_stream(io.BytesIO(data), out, "files/min.js")
    assert token in out.getvalue()
    gate = LeakGate(None)
    gate.scan_bytes("files/min.js", out.getvalue())
    with pytest.raises(LeakError, match=r"files/min.js \(github-token: 1"):
        gate.check(allow_leaks=False)


@pytest.mark.parametrize(
    "line",
    [
        b"Processed session termination for sessionid: 0x14ede63a5a70002\n",  # ZooKeeper, in loghub
        b"released handle sid=0X7F3A9C21B04E55D1 ok\n",
    ],
)
def test_a_number_written_in_hex_is_not_a_secret(line: bytes) -> None:
    r = Redactor(get_profile("standard"))
    out = io.BytesIO()
    r.redact_stream(io.BytesIO(line), out, "files/a.log")
    assert out.getvalue() == line and r.totals() == {}
