"""Collector options declared on the collectors (``agent.collect.options``): the README's
tables are made from them, ``--set`` takes only declared names in their type, and
``casefile options`` lists the installed ones, the PostgreSQL plugin's included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from casefile_pgsql.collector import PostgresCollector
from hypothesis import given
from hypothesis import strategies as st

from agent.collect import (
    BoolOption,
    CollectContext,
    CollectionSpec,
    Collector,
    FloatOption,
    IntOption,
    StrOption,
    declaration_problems,
    registered_collectors,
)
from agent.collect.builtin import BUILTIN_COLLECTORS
from agent.collect.options import option_problems, parse_set
from agent.collect.options_doc import main as options_doc
from agent.collect.registry import build_registry, declared_options
from agent.errors import CollectionError

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def casefile(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "casefile"), *args],
        env={**os.environ, "COLUMNS": "200"},
        text=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def test_the_readme_tables_are_the_declarations() -> None:
    # `make options-table` rewrites them; a changed declaration without it fails here.
    assert options_doc([str(ROOT / "README.md"), "--check"]) == 0
    plugin = ROOT / "plugins/casefile-pgsql/README.md"
    assert options_doc([str(plugin), "--check", "--collectors", "casefile_pgsql.collector:PostgresCollector"]) == 0


def test_a_changed_declaration_makes_the_check_fail(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    text = (ROOT / "README.md").read_text()
    readme.write_text(text.replace("| `frag_budget_s` | float | 0.4 |", "| `frag_budget_s` | float | 0.5 |"))
    assert options_doc([str(readme), "--check"]) == 1
    assert options_doc([str(readme)]) == 0  # rewritten from the declarations
    assert readme.read_text() == text


def test_every_shipped_option_is_declared_soundly_and_once() -> None:
    for cls in (*BUILTIN_COLLECTORS, PostgresCollector):
        assert option_problems(cls.options) == [], cls.name
    table = declared_options((*BUILTIN_COLLECTORS, PostgresCollector))
    # The log window is one declaration, shared by every collector that reads a log.
    assert table["logs_since_s"][1] == ("logs", "pgsql")
    assert table["frag_free_budget_s"][0].default == 0.5
    assert table["lower_priority"][1] == ("",)  # the runner's own


def test_bad_declarations_are_named() -> None:
    class Bad(Collector):
        name = "bad"
        description = "declares its options wrongly"
        options = (
            FloatOption("too_big", 99.0, "a default outside its own range", maximum=10.0),
            IntOption("Upper", 1, "not a lowercase name"),
            StrOption("twice", "", "one"),
            StrOption("twice", "", "two"),
            StrOption("no_help", "", " "),
        )

        def collect(self, ctx: CollectContext) -> None:
            return None

    problems = " / ".join(declaration_problems(Bad))
    assert "'too_big': its default does not pass its own check" in problems
    assert "option name 'Upper' is not a lowercase identifier" in problems
    assert "option 'twice' is declared twice" in problems
    assert "option 'no_help' has no help" in problems

    class Loose(Collector):
        name = "loose"
        description = "options that are not declarations"
        options = ("frag_budget_s",)  # type: ignore[assignment]

        def collect(self, ctx: CollectContext) -> None:
            return None

    assert "not an option declaration" in " ".join(declaration_problems(Loose))


def test_one_name_means_one_declaration() -> None:
    class Other(Collector):
        name = "other"
        description = "takes a built-in option's name with another default"
        options = (FloatOption("frag_budget_s", 9.0, "mine", maximum=3600.0),)

        def collect(self, ctx: CollectContext) -> None:
            return None

    with pytest.raises(CollectionError, match="'frag_budget_s' is declared differently by 'fragmentation' and 'other'"):
        build_registry((*BUILTIN_COLLECTORS, Other))


def test_set_values_become_their_declared_type() -> None:
    declared = registered_collectors().options()
    got = parse_set(
        [
            "frag_budget_s=2",
            "processes_top_n= 40 ",
            "lower_priority=no",
            "log_files=/var/log/a.log,/var/log/b.log",
            "resolve_name=1234",  # text stays text, even when it reads as a number
            "spec.dir=/opt/app",
        ],
        declared,
    )
    assert got == {
        "frag_budget_s": 2.0,
        "processes_top_n": 40,
        "lower_priority": False,
        "log_files": "/var/log/a.log,/var/log/b.log",
        "resolve_name": "1234",
        "spec.dir": "/opt/app",
    }
    assert isinstance(got["frag_budget_s"], float)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("frag_budget=3", "--set frag_budget: is not an option of any collector; did you mean frag_budget_s"),
        ("processes_top_n=lots", "option 'processes_top_n' must be an integer, got 'lots'"),
        ("processes_top_n=0", "option 'processes_top_n' must be within [1, 500], got 0"),
        ("cpu_sample_s=nan", "option 'cpu_sample_s' must be a number"),
        ("frag_walker=process", "option 'frag_walker' must be one of child, thread"),
        ("coredump_files=maybe", "option 'coredump_files' must be true or false"),
        ("recorder_home=/tmp/x", "--set recorder_home: is set by the agent itself"),
        ("no-equals-sign", "expected KEY=VALUE"),
    ],
)
def test_set_refuses_unknown_names_and_bad_values(item: str, message: str) -> None:
    with pytest.raises(CollectionError) as caught:
        parse_set([item], registered_collectors().options())
    assert message in str(caught.value)


@given(key=st.sampled_from(sorted(registered_collectors().options())), text=st.text(max_size=40))
def test_any_text_for_any_option_is_a_checked_value_or_a_clear_error(key: str, text: str) -> None:
    declared = registered_collectors().options()
    try:
        got = parse_set([f"{key}={text}"], declared)
    except CollectionError as exc:
        assert key in str(exc)
        return
    assert declared[key].check(got[key]) == got[key]


def test_the_context_reads_by_declaration_and_old_style_reads_still_work() -> None:
    top_n = IntOption("top_n", 15, "how many", minimum=1, maximum=500)
    verbose = BoolOption("verbose", False, "say more")
    ctx = CollectContext("demo", CollectionSpec(options={"top_n": 40}), deadline=0.0, declared=(top_n, verbose))
    assert (ctx.get(top_n), ctx.get(verbose)) == (40, False)
    assert ctx.int_option("top_n") == 40  # the declaration gives the bounds and default
    assert ctx.float_option("undeclared_s", 1.5) == 1.5  # a plugin written before declarations
    with pytest.raises(CollectionError, match="reads option 'elsewhere' without declaring it"):
        ctx.str_option("elsewhere")
    bad = CollectContext("demo", CollectionSpec(options={"top_n": 900}), deadline=0.0, declared=(top_n,))
    with pytest.raises(CollectionError, match=r"must be within \[1, 500\], got 900"):
        bad.get(top_n)
    assert ctx.option_reads >= {"top_n", "verbose"}


def test_casefile_options_lists_builtins_and_the_plugin() -> None:
    res = casefile("options", "--json")
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)["options"]}
    assert rows["frag_free_budget_s"]["default"] == 0.5 and rows["frag_free_budget_s"]["type"] == "float"
    assert rows["pg_dsn"]["collectors"] == ["pgsql"]
    assert rows["logs_since_s"]["collectors"] == ["logs", "pgsql"]
    assert "recorder_home" not in rows and "collector_offset_ms" not in rows  # the agent's own
    text = casefile("options").stdout
    assert "frag_budget_s" in text and "pg_log_dir" in text


def test_collect_refuses_a_bad_set_before_collecting(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for bad, said in [
        (["--set", "processes_top=3"], "did you mean processes_top_n"),
        (["--set", "frag_max_files=many"], "must be an integer"),
        (["--set", "spec.dir=/opt"], "pass --spec too"),
        (["--spec", "systemd", "--set", "spec.nosuch=1"], "spec systemd has no such parameter"),
    ]:
        res = casefile("collect", "--home", str(tmp_path / "home"), "-o", str(out), "--only", "host", *bad)
        assert res.returncode == 2, res.stderr
        assert said in " ".join(res.stderr.replace("│", " ").split())
        assert not out.exists()


def test_every_option_the_agent_sets_itself_is_declared(tmp_path: Path) -> None:
    from agent.collect_request import run_options
    from agent.daemon.execute import LIVE_SAMPLING
    from agent.daemon.policy import Policy

    declared = registered_collectors().options()
    set_by_agent = {
        **LIVE_SAMPLING,
        **run_options(home=tmp_path, recorder_since_s=3600.0, collector_host="collector.example"),
        **Policy.from_dict({"crash_core_files": True}, "test").collector_options(),
        "collector_target": "collector.example:7443",
        "collector_offset_ms": -12.5,
    }
    for key, value in set_by_agent.items():
        assert key in declared, key
        assert declared[key].check(value) == value, key


CLASHING_PLUGIN = '''
from agent.collect import CollectContext, Collector, FloatOption


class Clash(Collector):
    name = "clash"
    description = "declares a built-in's option with its own default"
    options = (FloatOption("cpu_sample_s", 5.0, "mine", maximum=30.0),)

    def collect(self, ctx: CollectContext) -> None:
        return None
'''


def test_a_plugin_redeclaring_an_option_is_broken_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.collect import ENTRY_POINT_GROUP, run_collection
    from protos import facts_pb2

    (tmp_path / "casefile_clash_plugin.py").write_text(CLASHING_PLUGIN)
    info = tmp_path / "casefile_clash_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: casefile_clash_plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nclash = casefile_clash_plugin:Clash\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        registry = registered_collectors(refresh=True)
        (broken,) = [b for b in registry.broken if b.name == "clash"]
        assert "'cpu_sample_s' is declared differently by 'cpu' and 'clash'" in broken.error
        assert registry.options()["cpu_sample_s"].default == 0.25  # the built-in's meaning stays
        with run_collection(CollectionSpec(only=("host",))) as result:
            states = {s.name: s for s in result.statuses}
        assert states["host"].state == facts_pb2.CollectorStatus.OK
        assert states["clash"].state == facts_pb2.CollectorStatus.SKIPPED  # listed, as every broken plugin
    finally:
        monkeypatch.undo()
        sys.modules.pop("casefile_clash_plugin", None)
        registered_collectors(refresh=True)
