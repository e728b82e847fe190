"""What a collection asks for, checked whole before collecting (``agent.collect_request``):
the same checks and messages ``casefile collect`` answers with exit 2, the consent the
receipt records, and the options every run sets, one-shot or live."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.collect_request import (
    RequestError,
    check_collect_request,
    decide_consent,
    key_values,
    run_options,
    split_selectors,
    upload_target,
)
from agent.keys import SigningKey
from agent.state import Enrollment

ENROLLED = Enrollment(agent_id="ag_1", collector="collector.example:7443", ca_fingerprint=None, key_fingerprint="k")


def _check(tmp_path: Path, **over: Any) -> Any:
    args: dict[str, Any] = dict(
        case=None, only=None, exclude=None, since="2h", logs_max="32M", set_options=None, budgets=None,
        add_files=None, upload=None, token=None, enrollment=None, preview=False, home=tmp_path,
    )  # fmt: skip
    args.update(over)
    return check_collect_request(**args)


def test_a_plain_run_sets_the_log_window_and_the_flight_recorder(tmp_path: Path) -> None:
    req = _check(tmp_path)
    assert dict(req.options) == {
        "logs_since_s": 7200.0, "logs_max_bytes": 32 << 20, "recorder_home": str(tmp_path), "recorder_since_s": 7200.0
    }  # fmt: skip
    assert (req.wants_upload, req.collector) == (False, None)
    spec = req.spec({"collector_target": "x:1"})
    assert spec.options["collector_target"] == "x:1" and spec.total_budget_s == 20.0


def test_selectors_budgets_and_set_options_are_read(tmp_path: Path) -> None:
    req = _check(tmp_path, only=["host,logs", "logs/*"], exclude=["commands"], set_options=["frag_budget_s=10"],
                 budgets=["fragmentation=90"])  # fmt: skip
    assert (req.only, req.only_paths, req.exclude) == (("host", "logs"), ("logs/*",), ("commands",))
    assert req.asked == {"frag_budget_s"} and req.options["frag_budget_s"] == 10
    assert req.spec().total_budget_s == 90.0  # a budget asked for outlasts the default total


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"case": "SR\x1b1"}, "holds a control character"),
        ({"only": [","]}, "names no collector"),
        ({"since": "soon"}, "duration must look like"),
        ({"set_options": ["novalue"]}, "expected KEY=VALUE"),
        ({"budgets": ["fragmentation=long"]}, "is not a number of seconds"),
        ({"token": "ct_x"}, "--token is the key to an upload: pass --upload HOST:PORT as well"),
        ({"upload": "c:1"}, "--upload needs --token"),
    ],
)
def test_a_bad_command_line_is_refused_before_collecting(tmp_path: Path, over: dict[str, Any], message: str) -> None:
    with pytest.raises(RequestError, match=message):
        _check(tmp_path, **over)


def test_an_enrolled_agent_uploads_to_its_collector_and_resolves_its_name(tmp_path: Path) -> None:
    req = _check(tmp_path, token="ct_x", enrollment=ENROLLED)
    assert (req.wants_upload, req.collector) == (True, "collector.example:7443")
    assert req.options["resolve_name"] == "collector.example"
    assert not _check(tmp_path, token="ct_x", enrollment=ENROLLED, preview=True).wants_upload


def test_who_an_upload_goes_as() -> None:
    key = SigningKey.generate()
    assert upload_target(key, token="ct_x", agent_id="ag_1").case_token == "ct_x"
    assert upload_target(key, token=None, agent_id="ag_1").agent_id == "ag_1"
    with pytest.raises(RequestError, match="needs --token"):
        upload_target(key, token=None, agent_id=None)


def test_consent() -> None:
    def never() -> bool:
        raise AssertionError("asked")

    assert decide_consent(wants_upload=False, yes=True, interactive=True, ask=never) == ("not-asked", False)
    assert decide_consent(wants_upload=True, yes=True, interactive=True, ask=never) == ("yes-flag", False)
    assert decide_consent(wants_upload=True, yes=False, interactive=False, ask=never) == ("non-interactive", False)
    assert decide_consent(wants_upload=True, yes=False, interactive=True, ask=lambda: True) == ("interactive", True)
    assert decide_consent(wants_upload=True, yes=False, interactive=True, ask=lambda: False) == ("declined", True)


def test_run_options_name_the_collector_host_only_when_known(tmp_path: Path) -> None:
    assert "resolve_name" not in run_options(home=tmp_path, recorder_since_s=60.0, collector_host="")
    assert run_options(home=tmp_path, recorder_since_s=60.0, collector_host="c.example")["resolve_name"] == "c.example"


@given(st.lists(st.tuples(st.from_regex(r"[a-z_]{1,12}", fullmatch=True), st.integers(-10**6, 10**6))))
def test_key_values_read_integers_back(pairs: list[tuple[str, int]]) -> None:
    assert key_values([f"{k}={v}" for k, v in pairs], "--set") == dict(pairs)


@given(st.lists(st.text(alphabet="abc,/*", max_size=8), max_size=5))
def test_selectors_split_into_names_and_globs_or_refuse(values: list[str]) -> None:
    try:
        names, globs = split_selectors(values)
    except RequestError:
        assert any(not any(c in v for c in "/*?[") and not v.replace(",", "").strip() for v in values)
        return
    assert all(any(c in g for c in "/*?[") for g in globs)
    assert all(n and "," not in n for n in names)
