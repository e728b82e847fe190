"""The leak gate, called directly on crafted artifacts."""

from __future__ import annotations

import io

import pytest

from agent.redact import Harvested, LeakError, LeakGate


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
        (b"peer ip-10-1-2-3.ec2.internal", "harvested-ip-dashed"),
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
