"""Every key of the customer's policy with absent, zero, negative and huge values, and the
logs window a request gets when it names none."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.daemon.policy import DEFAULT_POLICY, LIMITS, SCOPES, Policy, PolicyError

HUGE = 10**30  # JSON integers are unbounded; the policy's are not
NUMBERS = sorted(LIMITS)


@pytest.mark.parametrize("key", NUMBERS)
def test_a_number_left_out_takes_its_default(key: str) -> None:
    assert getattr(Policy.from_dict({}, "t"), key) == getattr(DEFAULT_POLICY, key)


@pytest.mark.parametrize("key", NUMBERS)
def test_a_number_may_be_zero(key: str) -> None:
    assert getattr(Policy.from_dict({key: 0}, "t"), key) == 0


@pytest.mark.parametrize("key", NUMBERS)
@pytest.mark.parametrize("value", [-1, -(2**63), 1.5, "60", None, True, [60]])
def test_a_number_that_is_negative_or_no_integer_is_refused(key: str, value: Any) -> None:
    with pytest.raises(PolicyError, match=rf"policy t: {key} must be an integer >= 0 and <= {LIMITS[key]}"):
        Policy.from_dict({key: value}, "t")


@pytest.mark.parametrize("key", NUMBERS)
def test_a_huge_number_is_refused_naming_the_ceiling(key: str) -> None:
    assert getattr(Policy.from_dict({key: LIMITS[key]}, "t"), key) == LIMITS[key]
    for value in (LIMITS[key] + 1, HUGE):
        with pytest.raises(PolicyError, match=rf"{key} must be an integer >= 0 and <= {LIMITS[key]}; got "):
            Policy.from_dict({key: value}, "t")


def test_a_huge_value_is_cut_in_the_message() -> None:
    with pytest.raises(PolicyError) as info:
        Policy.from_dict({"spool_max_bytes": 10**5000}, "t")
    assert len(str(info.value)) < 200


@pytest.mark.parametrize(
    ("scopes", "expected"),
    [(None, ("facts",)), ([], ()), (list(SCOPES), SCOPES), (["logs", "logs", "facts"], ("logs", "facts"))],
)
def test_allowed_scopes_absent_empty_all_and_repeated(scopes: Any, expected: tuple[str, ...]) -> None:
    data = {} if scopes is None else {"allowed_scopes": scopes}
    assert Policy.from_dict(data, "t").allowed_scopes == expected


@pytest.mark.parametrize("scopes", [["facts"] * 10_000 + ["root"], "facts", [1], [None], ["FACTS"], {"facts": 1}])
def test_allowed_scopes_that_are_no_list_of_scopes_are_refused(scopes: Any) -> None:
    with pytest.raises(PolicyError, match="allowed_scopes must be a list of"):
        Policy.from_dict({"allowed_scopes": scopes}, "t")


@pytest.mark.parametrize("profile", ["", 0, None, "x" * 10_000, ["standard"]])
def test_profile_must_be_a_known_name(profile: Any) -> None:
    assert Policy.from_dict({}, "t").profile == "standard"
    with pytest.raises(PolicyError, match="profile must be one of"):
        Policy.from_dict({"profile": profile}, "t")


# -- the logs window ---------------------------------------------------------------------

LOGS = Policy(allowed_scopes=("facts", "logs"), max_logs_window_s=3600)


def test_no_window_named_means_the_policys_maximum_not_the_collectors_day() -> None:
    """``snapshot --scope logs`` without ``--since`` sends 0: before, that skipped the check
    and the agent collected its own default of 24 h whatever the policy said."""
    assert LOGS.denial(("logs",), 0, 0) is None
    assert LOGS.logs_window(0) == 3600
    assert LOGS.logs_window(600) == 600


def test_a_window_beyond_the_maximum_is_denied() -> None:
    assert LOGS.denial(("logs",), 3600, 0) is None
    assert LOGS.denial(("logs",), 3601, 0) == "logs window 3601 s exceeds max_logs_window_s 3600"
    assert LOGS.denial(("logs",), 2**63 - 1, 0) == f"logs window {2**63 - 1} s exceeds max_logs_window_s 3600"


def test_a_negative_window_is_denied() -> None:
    assert LOGS.denial(("logs",), -1, 0) == "logs window -1 s is negative"
    assert LOGS.denial(("facts",), -(2**63), 0) == f"logs window {-(2**63)} s is negative"


def test_a_maximum_of_zero_collects_no_logs_at_all() -> None:
    closed = Policy(allowed_scopes=("facts", "logs"), max_logs_window_s=0)
    assert closed.denial(("logs",), 0, 0) == "max_logs_window_s is 0: no logs are collected"
    assert closed.denial(("logs",), 60, 0) == "max_logs_window_s is 0: no logs are collected"
    assert closed.denial(("facts",), 0, 0) is None


def test_rate_limit_zero_is_no_limit_and_any_other_value_a_limit() -> None:
    assert Policy(rate_limit_per_hour=0).denial(("facts",), 0, 10**9) is None
    assert Policy(rate_limit_per_hour=1).denial(("facts",), 0, 1) == "rate limit of 1 requests per hour reached"


def test_an_unknown_scope_is_named_and_cut() -> None:
    assert DEFAULT_POLICY.denial(("x" * 10_000,), 0, 0) == f"unknown scope {'x' * 100!r}"


@given(
    st.lists(st.text(max_size=20), max_size=6),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=0, max_value=10**6),
)
def test_whatever_a_request_asks_the_window_collected_is_within_the_policy(
    scopes: list[str], since: int, recent: int
) -> None:
    requested = tuple(scopes) or ("facts",)
    if LOGS.denial(requested, since, recent) is None and "logs" in requested:
        assert 0 < LOGS.logs_window(since) <= LOGS.max_logs_window_s
