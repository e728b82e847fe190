"""BundleView over real bundles: untrusted log members are bounded and tolerated; tampering is caught."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.analysis import BundleView, parse_log_line
from agent.analysis.view import MAX_LINE_BYTES
from agent.bundle.reader import iter_members, verify_bundle
from agent.errors import VerificationError
from agent.keys import SigningKey
from tests.fixtures.analysis.crafted import healthy_snapshot, jsonl, write_bundle


def test_bad_lines_are_counted_not_raised(tmp_path: Path) -> None:
    good = jsonl([{"ts": "2026-11-22T10:00:00Z", "src": "syslog", "sev": "err", "msg": "disk on fire", "n": 1}])
    raw = (
        good
        + b"not json\n"
        + b"[1, 2]\n"
        + b'{"src": "x"}\n'  # no msg
        + b"\n"
        + b'{"ts": "garbage", "src": "x", "sev": "bogus", "msg": "untimed", "n": "7"}\n'
        + b"x" * (MAX_LINE_BYTES + 10)
        + b"\n"
        + good.rstrip(b"\n")  # last line without newline
    )
    view = BundleView.from_file(write_bundle(tmp_path, SigningKey.generate(), healthy_snapshot(), {"syslog": raw}))
    records = list(view.iter_logs())
    assert [r.msg for r in records] == ["disk on fire", "untimed", "disk on fire"]
    assert records[1].ts is None and records[1].sev is None and records[1].n is None
    assert view.bad_lines == 4
    assert view.log_scan.bad_lines == 4 + 4  # log_scan made one more full pass


def test_member_changed_after_verification_is_caught(tmp_path: Path) -> None:
    key = SigningKey.generate()
    path = write_bundle(tmp_path / "a", key, healthy_snapshot(), {"kernel": [{"src": "k", "msg": "one"}]})
    other = write_bundle(tmp_path / "b", key, healthy_snapshot(), {"kernel": [{"src": "k", "msg": "two"}]})
    verified = verify_bundle(path)
    shutil.copyfile(other, path)  # swapped between verification and the streaming read
    with pytest.raises(VerificationError) as err:
        for stream in iter_members(path, verified, lambda p: p.startswith("logs/")):
            stream.read()
    assert err.value.reason == "missing-member"  # the other bundle's top folder differs


def test_member_content_changed_after_verification_is_caught(tmp_path: Path) -> None:
    import datetime as dt

    from agent.bundle import BundleMeta, BundleWriter, new_bundle_id

    key = SigningKey.generate()
    bid = new_bundle_id()
    meta = BundleMeta(bundle_id=bid, hostname="h", case_id=None, kind="one-shot", agent_id="",
                      agent_version="t", created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), request_id=None)
    paths = []
    for i, msg in enumerate((b"one", b"two")):
        (tmp_path / str(i)).mkdir()
        with BundleWriter(tmp_path / str(i), key=key, meta=meta) as w:
            w.add_bytes("logs/k.jsonl", b'{"src":"k","msg":"' + msg + b'"}\n')
            paths.append(w.finish(spec={}, collectors=[], truncated=[], redaction=None).path)
    verified = verify_bundle(paths[0])
    shutil.copyfile(paths[1], paths[0])  # same top folder and names, other bytes
    with pytest.raises(VerificationError) as err:
        for stream in iter_members(paths[0], verified, lambda p: p.startswith("logs/")):
            stream.read()
    assert err.value.reason == "hash-mismatch"


def test_wrong_key_refused(tmp_path: Path) -> None:
    path = write_bundle(tmp_path, SigningKey.generate(), healthy_snapshot())
    with pytest.raises(VerificationError) as err:
        BundleView.from_file(path, expected_key=SigningKey.generate().public)
    assert err.value.reason == "wrong-key"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_parse_log_line_never_raises(data: bytes) -> None:
    rec = parse_log_line(data)
    assert rec is None or (isinstance(rec.msg, str) and isinstance(rec.src, str))


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["ts", "src", "sev", "msg", "n", "extra"]),
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    )
)
def test_parse_log_line_on_random_objects(obj: dict[str, object]) -> None:
    import json

    rec = parse_log_line(json.dumps(obj))
    if rec is not None:
        assert rec.sev is None or rec.sev in {"emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"}
        assert rec.n is None or isinstance(rec.n, int)
