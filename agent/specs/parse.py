"""From YAML text to a :class:`~agent.specs.model.Spec`, every key checked with its path."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from agent.specs.model import (
    _FACT_RE,
    _ID_RE,
    _PARAM_RE,
    MAX_COMMAND_BYTES,
    MAX_COMMAND_S,
    MAX_FILE_BYTES,
    MAX_FILES_PER_GLOB,
    MAX_LOG_BYTES,
    NAME_RE,
    SEVERITIES,
    CommandItem,
    FileItem,
    LogItem,
    Parameter,
    RedactItem,
    RuleItem,
    Spec,
    _check_params,
    _Fields,
    _glob,
    _unique,
)
from agent.specs.patterns import compile_pattern
from agent.specs.yamlsafe import SpecError, load_yaml

__all__ = ["parse_spec"]

_MAX_ARGV = 64
_RULE_SOURCES = ("logs", "commands")


def parse_spec(data: bytes | str, *, where: str = "spec") -> Spec:
    """The spec in ``data``; SpecError naming ``where`` and the key's path otherwise."""
    doc = load_yaml(data, where=where)
    try:
        return _spec(_Fields(doc, ""))
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None


def _spec(top: _Fields) -> Spec:
    name = top.text("name", pattern=NAME_RE)
    version = top.integer("version", default=None, lo=1, hi=1_000_000)
    description = top.text("description")
    params = _parameters(top)
    known = {p.name: p.default for p in params}
    files = tuple(_file(_Fields(v, p), known) for p, v in top.items("files"))
    logs = tuple(_log(_Fields(v, p), known) for p, v in top.items("logs"))
    _unique([item.name for item in logs], top.at("logs"))
    commands = tuple(_command(_Fields(v, p), known) for p, v in top.items("commands"))
    _unique([item.name for item in commands], top.at("commands"))
    redact = tuple(_redact(_Fields(v, p)) for p, v in top.items("redact"))
    _unique([item.name for item in redact], top.at("redact"))
    names = {"logs": {i.name for i in logs}, "commands": {i.name for i in commands}}
    rules = tuple(_rule(_Fields(v, p), names) for p, v in top.items("rules"))
    _unique([r.id for r in rules], top.at("rules"))
    top.done()
    if not (files or logs or commands):
        raise SpecError("a spec must collect something: files, logs or commands")
    return Spec(name, version, description, params, files, logs, commands, redact, rules)


def _parameters(top: _Fields) -> tuple[Parameter, ...]:
    raw = top.get("parameters")
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise SpecError(f"{top.at('parameters')}: expected a mapping of name to {{default, help}}")
    if len(raw) > 16:
        raise SpecError(f"{top.at('parameters')}: {len(raw)} parameters; at most 16")
    out: list[Parameter] = []
    for key, value in raw.items():
        where = f"parameters.{str(key)[:40]}"
        if not isinstance(key, str) or not _PARAM_RE.fullmatch("{" + key + "}"):
            raise SpecError(f"{where}: a parameter name is lowercase letters, digits and _")
        f = _Fields(value, where)
        default = f.get("default")
        if not isinstance(default, str) or len(default) > 500 or "\0" in default:
            raise SpecError(f"{f.at('default')}: expected text of at most 500 characters")
        out.append(Parameter(key, default, f.text("help", default="")))
        f.done()
    return tuple(out)


def _file(f: _Fields, params: Mapping[str, str]) -> FileItem:
    item = FileItem(
        glob=_glob(f, "glob", params),
        max_bytes=f.integer("max_bytes", default=1 << 20, lo=1, hi=MAX_FILE_BYTES),
        max_files=f.integer("max_files", default=16, lo=1, hi=MAX_FILES_PER_GLOB),
    )
    f.done()
    return item


def _log(f: _Fields, params: Mapping[str, str]) -> LogItem:
    name = f.text("name", pattern=_ID_RE)
    glob = _glob(f, "glob", params)
    timestamp = f.text("timestamp", default="auto", limit=100)
    if timestamp != "auto":
        _check_strptime(timestamp, f.at("timestamp"))
    item = LogItem(name, glob, timestamp, f.integer("max_bytes", default=4 << 20, lo=1024, hi=MAX_LOG_BYTES))
    f.done()
    return item


def _check_strptime(fmt: str, where: str) -> None:
    if "%" not in fmt:
        raise SpecError(f"{where}: {fmt!r} is neither 'auto' nor a strptime format (%Y-%m-%d %H:%M:%S)")
    sample = dt.datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
    try:
        dt.datetime.strptime(sample.strftime(fmt), fmt)
    except ValueError as exc:
        raise SpecError(f"{where}: {fmt!r} does not read back what it writes: {exc}") from None


def _command(f: _Fields, params: Mapping[str, str]) -> CommandItem:
    name = f.text("name", pattern=_ID_RE)
    argv_raw = f.get("argv")
    where = f.at("argv")
    if not isinstance(argv_raw, list) or not argv_raw or len(argv_raw) > _MAX_ARGV:
        raise SpecError(f"{where}: expected a list of 1 to {_MAX_ARGV} arguments (no shell: one string per argument)")
    argv: list[str] = []
    for i, arg in enumerate(argv_raw):
        if isinstance(arg, bool) or not isinstance(arg, str | int | float):
            raise SpecError(f"{where}[{i}]: expected text, got {type(arg).__name__}")
        text = str(arg)
        if "\0" in text or len(text) > 2000:
            raise SpecError(f"{where}[{i}]: holds a NUL or is over 2000 characters")
        argv.append(_check_params(text, f"{where}[{i}]", params))
    if not argv[0] or "{" in argv[0]:
        raise SpecError(f"{where}[0]: the program must be named literally, not by a parameter")
    timeout = f.number("timeout_s", default=10.0, lo=0.1, hi=MAX_COMMAND_S)
    item = CommandItem(
        name,
        tuple(argv),
        timeout if timeout is not None else 10.0,
        f.integer("max_bytes", default=256 * 1024, lo=1, hi=MAX_COMMAND_BYTES),
    )
    f.done()
    return item


def _redact(f: _Fields) -> RedactItem:
    name = f.text("name", pattern=_ID_RE)
    item = RedactItem(name, compile_pattern(f.get("pattern"), f.at("pattern")))
    f.done()
    return item


def _rule(f: _Fields, names: Mapping[str, set[str]]) -> RuleItem:
    rule_id = f.text("id", pattern=_ID_RE)
    severity = f.text("severity", default="warning")
    if severity not in SEVERITIES:
        raise SpecError(f"{f.at('severity')}: {severity[:40]!r} is not one of {', '.join(SEVERITIES)}")
    title = f.text("title", limit=200)
    explanation = f.text("explanation", default=title)
    next_step = f.text("next_step")
    count_raw, fact_raw = f.get("count"), f.get("fact")
    if (count_raw is None) == (fact_raw is None):
        raise SpecError(f"{f.path}: a rule has exactly one of count (a pattern) or fact (a path)")
    big = 1e15
    count = None
    sources: tuple[str, ...] = ()
    fact = ""
    at_least = above = below = None
    if count_raw is not None:
        count = compile_pattern(count_raw, f.at("count"))
        sources = _sources(f, names)
        at_least = f.number("at_least", default=1.0, lo=1, hi=big)
    else:
        fact = f.text("fact", limit=200, pattern=_FACT_RE)
        above = f.number("above", default=None, lo=-big, hi=big)
        below = f.number("below", default=None, lo=-big, hi=big)
        if above is None and below is None:
            raise SpecError(f"{f.path}: a fact rule needs above or below (a threshold)")
    f.done()
    return RuleItem(rule_id, severity, title, explanation, next_step, count, sources, fact, at_least, above, below)  # type: ignore[arg-type]


def _sources(f: _Fields, names: Mapping[str, set[str]]) -> tuple[str, ...]:
    raw = f.get("in")
    where = f.at("in")
    if raw is None:
        return _RULE_SOURCES
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw or len(raw) > 32:
        raise SpecError(f"{where}: expected a list of logs, commands, logs:NAME or commands:NAME")
    for i, item in enumerate(raw):
        if not isinstance(item, str):
            raise SpecError(f"{where}[{i}]: expected text")
        kind, _, name = item.partition(":")
        if kind not in _RULE_SOURCES or (name and name not in names[kind]):
            raise SpecError(f"{where}[{i}]: {item[:60]!r} names no log or command of this spec")
    return tuple(dict.fromkeys(raw))
