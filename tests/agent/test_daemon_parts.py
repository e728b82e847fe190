"""The daemon's local parts: policy file, history ledger, bounded spool."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.daemon import DEFAULT_POLICY, History, Policy, PolicyError, Spool, load_policy
from agent.daemon.policy import PROFILE_NAMES, collectors_for
from agent.redact import PROFILES


def test_default_policy_is_written_on_first_run(tmp_path: Path) -> None:
    policy = load_policy(tmp_path)
    assert policy == DEFAULT_POLICY and policy.allowed_scopes == ("facts",)
    path = tmp_path / "policy.json"
    assert json.loads(path.read_text())["rate_limit_per_hour"] == 12
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_policy(tmp_path) == policy  # read back, not rewritten


def test_policy_rules_name_what_is_denied() -> None:
    p = Policy(allowed_scopes=("facts", "logs"), max_logs_window_s=3600, rate_limit_per_hour=2)
    assert p.denial(("facts",), 0, 0) is None
    assert p.denial(("fragmentation",), 0, 0) == "scope 'fragmentation' is not allowed (allowed: facts, logs)"
    assert p.denial(("logs",), 7200, 0) == "logs window 7200 s exceeds max_logs_window_s 3600"
    assert p.denial(("facts",), 0, 2) == "rate limit of 2 requests per hour reached"
    assert collectors_for(("logs",)) == ("host", "logs")


def test_bad_policy_file_names_field_and_file(tmp_path: Path) -> None:
    (tmp_path / "policy.json").write_text(json.dumps({"allowed_scopes": ["everything"]}))
    with pytest.raises(PolicyError, match=r"policy\.json: allowed_scopes"):
        load_policy(tmp_path)
    (tmp_path / "policy.json").write_text(json.dumps({"rate_limit_per_hour": -1}))
    with pytest.raises(PolicyError, match="rate_limit_per_hour must be an integer >= 0"):
        load_policy(tmp_path)
    (tmp_path / "policy.json").write_text(json.dumps({"bogus": 1}))
    with pytest.raises(PolicyError, match="unknown field"):
        load_policy(tmp_path)


@given(st.dictionaries(st.sampled_from([*Policy.__dataclass_fields__, "x"]), st.none() | st.integers() | st.text()))
def test_policy_parser_accepts_or_refuses_cleanly(data: dict[str, object]) -> None:
    # Any content either parses into a valid Policy or raises PolicyError, nothing else.
    with contextlib.suppress(PolicyError):
        Policy.from_dict(data, "fuzz")


def test_history_is_private_and_is_the_at_most_once_ledger(tmp_path: Path) -> None:
    h = History(tmp_path / "history.jsonl")
    h.append("accepted", request_id="r1", requested_by="alice", scopes=["facts"])
    h.append("done", request_id="r1", bundle_id="b" * 32)
    with (tmp_path / "history.jsonl").open("a") as fh:
        fh.write('{"torn')  # a power cut mid-line
    assert stat.S_IMODE((tmp_path / "history.jsonl").stat().st_mode) == 0o600
    assert h.seen("r1") and not h.seen("r2")
    assert [e["outcome"] for e in h.entries()] == ["accepted", "done"]
    assert h.accepted_since(dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)) == 1
    with pytest.raises(ValueError, match="outcome"):
        h.append("maybe")


def _bundle(tmp: Path, name: str, size: int) -> Path:
    p = tmp / name
    p.write_bytes(os.urandom(size))
    return p


def test_spool_drops_oldest_at_its_bound(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=2500, max_bundles=2)
    a, dropped = spool.add(_bundle(tmp_path, "a.tar.zst", 1000), bundle_id="a", request_id="ra", sha256="x")
    assert dropped == []
    spool.add(_bundle(tmp_path, "b.tar.zst", 1000), bundle_id="b", request_id="rb", sha256="x")
    _, dropped = spool.add(_bundle(tmp_path, "c.tar.zst", 1000), bundle_id="c", request_id="rc", sha256="x")
    assert [d.bundle_id for d in dropped] == ["a"]  # count bound
    assert [p.bundle_id for p in spool.pending()] == ["b", "c"]
    spool.max_bundles = 10
    _, dropped = spool.add(_bundle(tmp_path, "d.tar.zst", 1000), bundle_id="d", request_id="rd", sha256="x")
    assert [d.bundle_id for d in dropped] == ["b"]  # byte bound
    _, dropped = spool.add(_bundle(tmp_path, "e.tar.zst", 4000), bundle_id="e", request_id="re", sha256="x")
    assert {d.bundle_id for d in dropped} == {"c", "d", "e"}  # larger than the bound on its own
    assert spool.pending() == [] and not a.path.exists()


def test_policy_knows_the_redaction_profiles_without_importing_them() -> None:
    assert tuple(PROFILES) == PROFILE_NAMES
    assert Policy.from_dict({"profile": "private"}, "t").profile == "private"
    with pytest.raises(PolicyError, match="profile must be one of standard, private, facts-only"):
        Policy.from_dict({"profile": ["standard"]}, "t")
