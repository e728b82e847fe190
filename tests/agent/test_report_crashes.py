"""The trigger and crash-artefact blocks of the reports: older bundles, failed collectors,
and any text from the machine escaped."""

from __future__ import annotations

import html
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.analysis.report_crashes import bundle_trigger, crashes_section, trigger_line, trigger_section
from agent.collect_request import trigger_facts, trigger_options
from protos import facts_pb2


def test_a_bundle_sealed_before_the_trigger_fact_is_named_from_its_manifest() -> None:
    manifest = {"kind": "triggered", "spec": {"options": {"trigger": "cpu-high", "recorder_since_s": 3600}}}
    t = bundle_trigger(facts_pb2.Snapshot(kind="triggered"), manifest["spec"])
    assert t is not None and trigger_line(t) == "triggered by cpu-high"
    assert 'id="trigger"' in trigger_section(t) and "cpu-high" in trigger_section(t)


@pytest.mark.parametrize(
    "manifest",
    [None, {}, {"spec": None}, {"spec": {"options": []}}, {"spec": {"options": {"trigger": 7}}},
     {"spec": {"options": {"trigger": ""}}}, {"spec": "options"}],
)
def test_no_trigger_no_block(manifest: dict[str, Any] | None) -> None:
    assert bundle_trigger(facts_pb2.Snapshot(kind="live"), (manifest or {}).get("spec")) is None
    assert trigger_section(None) == ""


def test_the_facts_win_over_the_manifest() -> None:
    s = facts_pb2.Snapshot(kind="triggered")
    fired = trigger_facts(trigger_options("oom", {"when": "oom_kill", "detail": "ran 1 time(s)", "at": 1.8e9}))
    assert fired is not None
    s.trigger.CopyFrom(fired)
    t = bundle_trigger(s, {"options": {"trigger": "other"}})
    assert t is not None and trigger_line(t) == "triggered by oom (oom_kill) at 2027-01-15 08:00:00 UTC: ran 1 time(s)"


def test_trigger_options_keep_only_what_they_know() -> None:
    options = trigger_options("t", {"when": 3, "detail": "x" * 10_000, "at": True, "extra": "y"})
    assert options == {"trigger": "t", "trigger_detail": "x" * 4096}
    facts = trigger_facts({**options, "trigger_at": float("inf")})
    assert facts is not None and not facts.HasField("fired_at") and facts.when == ""
    assert trigger_facts({"trigger": 5}) is None and trigger_facts({}) is None


def test_a_failed_crash_collector_is_said() -> None:
    s = facts_pb2.Snapshot()
    s.collectors.add(name="coredumps", state=facts_pb2.CollectorStatus.TIMEOUT, error="budget 20 s used up")
    s.coredumps.detail = "coredumpctl list: timed out"
    out = crashes_section(s)
    assert "coredumpctl list: timed out" in out and "collector coredumps ended timeout: budget 20 s used up" in out
    assert "Kernel crashes" not in out  # its collector did not run: nothing claimed about it


# Each text between marks our own markup never holds (one pair per field), so a raw copy
# of a text holding a character HTML must escape can only be an unescaped one.
def _marked(field: str) -> st.SearchStrategy[str]:
    return st.text(max_size=60).map(lambda t: f"\u03a9{field}:{t}\u03a8")


@settings(max_examples=150, deadline=None)
@given(exe=_marked("exe"), frame=_marked("frame"), line=_marked("line"), path=_marked("path"),
       detail=_marked("detail"), name=_marked("name"))
def test_machine_text_is_always_escaped(exe: str, frame: str, line: str, path: str, detail: str, name: str) -> None:
    s = facts_pb2.Snapshot(kind="triggered")
    for c in ("coredumps", "kernel_crashes", "crash_files"):
        s.collectors.add(name=c, state=facts_pb2.CollectorStatus.OK)
    d = s.coredumps.coredumps.add(executable=exe, command_line=exe, unit=exe, pid=1)
    d.stack.append(frame)
    s.coredumps.core_files.add(name=path, size=1, included=False, reason=detail)
    s.kernel_crashes.previous_boot.append(line)
    s.kernel_crashes.pstore.add(path=path, size=3)
    s.crash_files.files.add(path=path, size=2)
    s.crash_files.detail = detail
    s.trigger.name, s.trigger.detail = name, detail
    page = trigger_section(bundle_trigger(s)) + crashes_section(s)
    for text in (exe, frame, line, path, detail, name):
        assert html.escape(text, quote=True) in page
        if set(text) & set("<>\"'"):
            assert text not in page
