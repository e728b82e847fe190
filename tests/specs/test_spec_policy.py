"""What a spec may not do: widen the logs window, run without the policy's say, keep the old scope alive."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from agent.collect import CollectionSpec, run_collection
from agent.daemon.policy import Policy, PolicyError
from agent.scopes import collectors_for, is_scope, reads_logs, spec_of
from agent.specs import parse_spec
from agent.specs.runner import spec_collector

LOG_SPEC = """
name: windowed
version: 1
description: a product log read within the run's window only
parameters:
  dir: {default: /nonexistent, help: folder}
logs:
  - {name: app, glob: "{dir}/app.log", timestamp: "%Y-%m-%dT%H:%M:%S"}
rules:
  - {id: lines, count: "tick", in: [logs], title: Ticks, next_step: none}
"""


def test_a_spec_reads_its_logs_within_the_runs_window_only(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    ages = (7200, 1800, 60)  # two hours, half an hour, a minute
    lines = [f"{(now - dt.timedelta(seconds=a)).strftime('%Y-%m-%dT%H:%M:%S')} tick {a}" for a in ages]
    (tmp_path / "app.log").write_text("\n".join(lines) + "\n")
    cls = spec_collector(parse_spec(LOG_SPEC), {"signer": "test"})
    for window, expected in ((3600, 2), (300, 1), (86400, 3)):
        options = {"spec.dir": str(tmp_path), "logs_since_s": float(window)}
        result = run_collection(CollectionSpec(only=(cls.name,), options=options), collectors=[cls])
        try:
            facts = json.loads(result.snapshot.plugin_facts[cls.name])
        finally:
            result.close()
        assert facts["counts"]["lines"] == expected, (window, facts)
        assert facts["logs"]["app"]["lines"] == expected


def test_spec_scopes_are_not_policy_scopes() -> None:
    assert spec_of("spec:postgresql@3") == ("postgresql", 3) and is_scope("spec:postgresql@3")
    assert spec_of("spec:postgresql") is None and spec_of("spec:Bad@1") is None
    assert collectors_for(("spec:postgresql@3",)) == ("host",)  # the spec's collector is added by the agent
    assert reads_logs(("facts", "spec:postgresql@3"))  # bounded by max_logs_window_s like logs
    with pytest.raises(PolicyError, match="allowed_scopes must be a list of"):
        Policy.from_dict({"allowed_scopes": ["facts", "spec:postgresql@3"]}, "test")


def test_the_commands_scope_is_gone_but_old_policies_still_load() -> None:
    assert "commands" not in Policy().allowed_scopes and not is_scope("commands")
    old = Policy.from_dict({"version": 1, "allowed_scopes": ["facts", "commands"]}, "/etc/x/policy.json")
    assert old.allowed_scopes == ("facts",)
    assert len(old.notes) == 1 and "signed collection specs" in old.notes[0] and "/etc/x/policy.json" in old.notes[0]
    assert old.denial(("commands",), 0, 0) is not None
    assert "removed" in (old.denial(("commands",), 0, 0) or "")
    assert "commands" not in json.dumps(old.to_dict())


def test_spec_requests_need_trusted_signers_and_one_spec_and_the_logs_window() -> None:
    fp = "sha256:" + "ab" * 32
    none_trusted = Policy()
    assert "spec_signers is empty" in (none_trusted.denial(("facts", "spec:pg@1"), 0, 0) or "")
    trusting = Policy.from_dict({"spec_signers": [fp], "live_specs": ["pg", fp + "/*"]}, "test")
    assert trusting.denial(("facts", "spec:pg@1"), 0, 0) is None
    assert "one collection spec" in (trusting.denial(("spec:pg@1", "spec:other@2"), 0, 0) or "")
    assert "exceeds max_logs_window_s" in (trusting.denial(("spec:pg@1",), 7200, 0) or "")
    closed = Policy.from_dict({"spec_signers": [fp], "max_logs_window_s": 0}, "test")
    assert "no logs" in (closed.denial(("spec:pg@1",), 0, 0) or "")
    for bad in ({"spec_signers": ["not-a-fingerprint"]}, {"live_specs": ["Bad Name"]}, {"live_specs": "pg"}):
        with pytest.raises(PolicyError):
            Policy.from_dict(bad, "test")
    assert Policy.from_dict(trusting.to_dict(), "again") == trusting


SECRETS_SPEC = """
name: greedy
version: 1
description: asks for key material next to a config file
parameters:
  dir: {default: /nonexistent, help: folder}
files:
  - {glob: "{dir}/*", max_bytes: 1000}
"""


def test_secret_material_is_never_read_whatever_the_spec_says(tmp_path: Path) -> None:
    (tmp_path / "app.conf").write_text("port = 1\n")
    (tmp_path / "server.key").write_text("-----BEGIN PRIVATE KEY-----\nabc\n")
    (tmp_path / "agent.key").write_text("x\n")
    cls = spec_collector(parse_spec(SECRETS_SPEC), {"signer": "test"})
    result = run_collection(CollectionSpec(only=(cls.name,), options={"spec.dir": str(tmp_path)}), collectors=[cls])
    try:
        facts = json.loads(result.snapshot.plugin_facts[cls.name])
        members = [a.path for a in result.artifacts]
    finally:
        result.close()
    assert [c["path"] for c in facts["files"][0]["copied"]] == [str(tmp_path / "app.conf")]
    assert sum("secret material is never read" in r for r in facts["files"][0]["refused"]) == 2
    assert all(not m.endswith(".key") for m in members)


def test_a_parameter_cannot_make_a_glob_relative_or_climb(tmp_path: Path) -> None:
    (tmp_path / "app.conf").write_text("port = 1\n")
    cls = spec_collector(parse_spec(SECRETS_SPEC), {"signer": "test"})
    for value in (f"{tmp_path}/../{tmp_path.name}", "relative/dir"):
        result = run_collection(CollectionSpec(only=(cls.name,), options={"spec.dir": value}), collectors=[cls])
        try:
            files = json.loads(result.snapshot.plugin_facts[cls.name])["files"][0]
        finally:
            result.close()
        assert files["copied"] == [] and "not an absolute path without '..'" in files["refused"][0]
