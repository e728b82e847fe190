"""The spec parser: every refusal names the key's path; hostile input is a SpecError, never a crash."""

from __future__ import annotations

import re
import time
from importlib import resources

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.specs import SpecError, parse_spec
from agent.specs.patterns import MATCH_TIMEOUT_S, MAX_MATCH_CHARS, compile_pattern
from agent.specs.trust import builtin_names, load_builtin
from agent.specs.yamlsafe import MAX_SPEC_BYTES

BASE = """
name: demo
version: 2
description: a demo spec
parameters:
  dir: {default: /var/log/demo, help: where}
files:
  - {glob: /etc/demo/*.conf, max_bytes: 1000}
logs:
  - {name: app, glob: "{dir}/app-*.log", timestamp: "%Y-%m-%d %H:%M:%S"}
commands:
  - {name: status, argv: [demo-ctl, status, "{dir}"], timeout_s: 3, max_bytes: 100}
redact:
  - {name: demo-token, pattern: "dtok_[a-z0-9]{8}"}
rules:
  - {id: errors, count: "ERROR", in: [logs:app], at_least: 2, title: Errors, next_step: Read them}
  - {id: mem, fact: memory.available, below: 1000, severity: critical, title: Low memory, next_step: Add memory}
"""


def test_a_full_spec_reads_into_typed_frozen_data() -> None:
    spec = parse_spec(BASE)
    assert (spec.name, spec.version, spec.collector_name) == ("demo", 2, "spec_demo")
    assert spec.commands[0].argv == ("demo-ctl", "status", "{dir}")
    assert spec.logs[0].timestamp == "%Y-%m-%d %H:%M:%S"
    assert spec.rules[0].count is not None and spec.rules[0].sources == ("logs:app",)
    assert spec.rules[1].below == 1000.0 and spec.rules[1].severity == "critical"
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize("name", ["postgresql", "rabbitmq", "systemd"])
def test_the_shipped_specs_parse(name: str) -> None:
    assert name in builtin_names()
    assert load_builtin(name).spec.name == name


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("timeout_s: 3", "timeout_s: 3, shell: true"), "commands[0].shell: unknown key"),
        (("timeout_s: 3", "timeout_s: 3000"), "commands[0].timeout_s: expected a number in [0.1, 60]"),
        (("max_bytes: 1000", "max_bytes: -1"), "files[0].max_bytes: expected an integer"),
        (
            ("glob: /etc/demo/*.conf", "glob: etc/demo/*.conf"),
            "files[0].glob: 'etc/demo/*.conf' must be an absolute path",
        ),
        (("glob: /etc/demo/*.conf", "glob: /etc/../x"), "files[0].glob"),
        (('"{dir}"]', '"{nope}"]'), "commands[0].argv[2]: {nope} is not a parameter"),
        (("argv: [demo-ctl,", 'argv: ["{dir}",'), "commands[0].argv[0]: the program must be named literally"),
        (('pattern: "dtok_[a-z0-9]{8}"', 'pattern: "(a+)+$"'), "redact[0].pattern: pattern '(a+)+$' refused"),
        (('count: "ERROR"', 'count: "(x|xy)*z"'), "rules[0].count: pattern '(x|xy)*z' refused: an alternation"),
        (('count: "ERROR"', 'count: "(a)\\\\1"'), "backreferences are not allowed"),
        (('count: "ERROR"', 'count: "a*"'), "matches the empty text"),
        (("in: [logs:app]", "in: [logs:nope]"), "rules[0].in[0]: 'logs:nope' names no log"),
        (("below: 1000,", ""), "rules[1]: a fact rule needs above or below"),
        (("severity: critical", "severity: fatal"), "rules[1].severity: 'fatal' is not one of"),
        (("version: 2", "version: two"), "version: expected an integer"),
        (("name: demo", "name: Demo"), "name: 'Demo' is not of the form"),
        (('timestamp: "%Y-%m-%d %H:%M:%S"', "timestamp: yesterday"), "logs[0].timestamp: 'yesterday' is neither"),
    ],
)
def test_refusals_name_the_key(change: tuple[str, str], message: str) -> None:
    text = BASE.replace(*change)
    assert text != BASE
    with pytest.raises(SpecError) as info:
        parse_spec(text, where="demo.yaml")
    assert message in str(info.value)
    assert str(info.value).startswith("demo.yaml: ")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: &x [1, 2]\nb: *x\n", "anchors (&name) are not allowed"),
        ("name: demo\nname: again\n", "key 'name' appears twice"),
        ("---\nname: a\n---\nname: b\n", "another document"),
        ("", "empty document"),
        ("x: !!python/object/apply:os.system [id]\n", "could not determine a constructor"),
        ("[" * 50 + "]" * 50, "nested more than"),
        ("- just\n- a list\n", "expected a mapping"),
        ("name: demo\nversion: 1\ndescription: x\n", "must collect something"),
    ],
)
def test_hostile_yaml_is_refused(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=re.escape(message)):
        parse_spec(text)


def test_the_billion_laughs_never_expands() -> None:
    lol = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    started = time.monotonic()
    with pytest.raises(SpecError, match="not allowed"):
        parse_spec(lol)
    assert time.monotonic() - started < 1.0


def test_an_oversized_spec_is_refused_before_parsing() -> None:
    with pytest.raises(SpecError, match=f"at most {MAX_SPEC_BYTES:,}"):
        parse_spec(BASE + "#" * MAX_SPEC_BYTES)


# -- properties -----------------------------------------------------------------------

_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=30))
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=20,
)
_KEYS = ["name", "version", "description", "parameters", "files", "logs", "commands", "redact", "rules"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=400))
def test_any_text_is_a_spec_or_a_spec_error(text: str) -> None:
    try:
        spec = parse_spec(text)
    except SpecError as exc:
        assert str(exc).startswith("spec: ")  # the message says where
        return
    assert spec.name and (spec.files or spec.logs or spec.commands)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([*_KEYS, "argv", "glob", "count"]), _values, st.integers(min_value=0, max_value=3))
def test_hostile_values_in_a_real_spec_are_refused_cleanly(key: str, value: object, where: int) -> None:
    doc = yaml.safe_load(BASE)
    targets = [doc, doc["commands"][0], doc["files"][0], doc["rules"][0]]
    targets[where][key] = value
    try:
        text = yaml.safe_dump(doc)
    except yaml.YAMLError:
        return
    try:
        spec = parse_spec(text)
    except SpecError as exc:
        assert str(exc).startswith("spec: ")
        return
    assert spec.name and spec.version >= 1  # what was accepted is well-formed


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab()|*+?{}[]^$.\\1,0-9", max_size=25))
def test_accepted_patterns_stay_fast_on_hostile_lines(text: str) -> None:
    try:
        pattern = compile_pattern(text, "rules[0].count")
    except SpecError:
        return
    started = time.monotonic()
    for line in (("ab" * MAX_MATCH_CHARS)[:MAX_MATCH_CHARS] + "!", "a" * MAX_MATCH_CHARS + "!", "a" * 100_000):
        assert pattern.search(line) in (True, False, None)  # None: it ran out of its time
        replaced = pattern.subn("[x]", line)  # once: a second call may run out of its time where the first did not
        assert replaced is None or isinstance(replaced, tuple)
    assert time.monotonic() - started < 6 * MATCH_TIMEOUT_S + 0.5, text


def test_a_polynomial_pattern_is_cut_at_its_time_limit() -> None:
    pattern = compile_pattern("a+a+0", "rules[0].count")  # no nesting, but cubic on a line of a
    started = time.monotonic()
    assert pattern.search("a" * MAX_MATCH_CHARS + "!") is None
    assert pattern.subn("[x]", "a" * MAX_MATCH_CHARS + "!") is None
    assert time.monotonic() - started < 1.0


RABBITMQ = (resources.files("agent.specs") / "builtin" / "rabbitmq.yaml").read_text("utf-8")
_YAML_BITS = st.sampled_from(
    [":", "- ", "{", "}", "[", "]", "\n", "  ", "\t", "&a ", "*a", "!!python/object ", "'", '"', "#", "? ", "|", ">"]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(0, 10_000), st.integers(0, 3), _YAML_BITS | st.sampled_from(["%", "@", "\0", "\ufeff"])),
        max_size=6,
    )
)
def test_a_shipped_spec_broken_anywhere_is_a_spec_or_a_spec_error(edits: list[tuple[int, int, str]]) -> None:
    # Malformed YAML near a real spec: characters cut out and YAML syntax put in anywhere.
    text = RABBITMQ
    for at, cut, bit in edits:
        at %= len(text) + 1
        text = text[:at] + bit + text[at + cut :]
    try:
        spec = parse_spec(text)
    except SpecError as exc:
        assert str(exc).startswith("spec: ")
        return
    assert spec.name and spec.version >= 1 and (spec.files or spec.logs or spec.commands)
