"""CollectionSpec, CollectContext and Pending: the small pieces collectors and callers touch."""

from __future__ import annotations

import json
import math
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.collect import CollectContext, CollectionSpec, OptionValue, Pending
from agent.errors import CollectionError

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=12)
option_values = st.one_of(
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
anything = st.one_of(
    st.none(),
    st.integers(),
    st.floats(),
    st.text(max_size=10),
    st.binary(max_size=10),
    st.lists(st.integers(), max_size=5),
)


@given(
    only=st.lists(names, max_size=5),
    exclude=st.lists(names, max_size=5),
    budgets=st.dictionaries(names, st.floats(min_value=0.001, max_value=3600), max_size=5),
    options=st.dictionaries(names, option_values, max_size=5),
)
def test_valid_specs_round_trip_to_json(
    only: list[str], exclude: list[str], budgets: dict[str, float], options: dict[str, OptionValue]
) -> None:
    spec = CollectionSpec(
        only=tuple(only), exclude=tuple(exclude), budgets=budgets, options=options
    )
    record = json.loads(json.dumps(spec.to_dict()))
    assert record["only"] == list(dict.fromkeys(only))
    assert record["budgets"] == budgets
    assert record["options"] == options


@given(
    only=anything,
    budgets=st.dictionaries(st.text(max_size=10), anything, max_size=4),
    options=anything,
)
def test_bad_specs_raise_collection_error_only(
    only: object, budgets: dict[str, object], options: object
) -> None:
    try:
        CollectionSpec(only=only, budgets=budgets, options=options)  # type: ignore[arg-type]
    except CollectionError as exc:
        assert str(exc).startswith("collection spec: ")


def test_spec_is_frozen_and_read_only() -> None:
    spec = CollectionSpec(only=["cpu"], budgets={"cpu": 1}, options={"cpu_sample_s": 0.1})  # type: ignore[arg-type]
    assert spec.only == ("cpu",)
    with pytest.raises(TypeError):
        spec.options["cpu_sample_s"] = 9  # type: ignore[index]
    with pytest.raises(AttributeError):
        spec.only = ()  # type: ignore[misc]
    with pytest.raises(CollectionError, match="sequence of collector names"):
        CollectionSpec(only="cpu")  # type: ignore[arg-type]
    with pytest.raises(CollectionError, match="budget for 'cpu'"):
        CollectionSpec(budgets={"cpu": 0})
    with pytest.raises(CollectionError, match="not finite"):
        CollectionSpec(options={"x": math.inf})


def _ctx(**options: object) -> CollectContext:
    spec = CollectionSpec(options=options)  # type: ignore[arg-type]
    return CollectContext("probe", spec, time.monotonic() + 5)


@given(path=st.text(max_size=40))
def test_artifact_paths_stay_inside_the_bundle(path: str) -> None:
    ctx = _ctx()
    try:
        ctx.add_artifact(path, b"x")
    except CollectionError as exc:
        assert "'probe'" in str(exc)
        return
    (artifact,) = ctx.artifacts
    assert artifact.path == path and artifact.data == b"x" and artifact.kind == "file"
    assert not path.startswith("/") and "\\" not in path and "\0" not in path
    assert ".." not in path.split("/") and "" not in path.split("/")


def test_artifact_rules() -> None:
    ctx = _ctx()
    ctx.add_artifact("logs/syslog.txt", bytearray(b"abc"))  # type: ignore[arg-type]
    assert [(a.path, a.data, a.size) for a in ctx.artifacts] == [("logs/syslog.txt", b"abc", 3)]
    for bad in ("", "/etc/passwd", "a/../b", "a//b", "./a", "a\\b", "MANIFEST.json", "facts.pb"):
        with pytest.raises(CollectionError):
            ctx.add_artifact(bad, b"")
    with pytest.raises(CollectionError, match="added twice"):
        ctx.add_artifact("logs/syslog.txt", b"again")


def test_float_option() -> None:
    assert _ctx().float_option("cpu_sample_s", 0.5) == 0.5
    assert _ctx(cpu_sample_s=2).float_option("cpu_sample_s", 0.5) == 2.0
    for bad in ("1", True, -1.0, 61.0):
        with pytest.raises(CollectionError, match="cpu_sample_s"):
            _ctx(cpu_sample_s=bad).float_option("cpu_sample_s", 0.5)


def test_context_deadline_and_warnings() -> None:
    ctx = CollectContext("probe", CollectionSpec(), time.monotonic() - 1)
    assert ctx.remaining() == 0.0
    ctx.warn("one")
    ctx.warn("two")
    assert ctx.warnings == ("one", "two")


def test_pending_returns_raises_or_times_out() -> None:
    assert Pending(lambda: 7, name="t-value").result(5) == 7

    def boom() -> int:
        raise PermissionError("no")

    with pytest.raises(PermissionError, match="no"):
        Pending(boom, name="t-error").result(5)

    gate = threading.Event()
    blocked = Pending(lambda: gate.wait(60), name="t-blocked")
    with pytest.raises(TimeoutError):
        blocked.result(0.01)
    assert not blocked.done()
    gate.set()
    assert blocked.result(60) is True and blocked.done()
