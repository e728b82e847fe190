"""The collection spec: what support asks a machine for, as typed frozen data.

A spec is one YAML document (see docs/specs.md)::

    name: postgresql             # lowercase, digits and -, at most 40
    version: 3                   # a positive integer; newer replaces older
    description: PostgreSQL server logs, config and live stats
    parameters:                  # {name} in globs and argv; the customer may --set them
      log_dir: {default: /var/log/postgresql, help: the server's log folder}
    files:                       # copied into the bundle as spec/<name>/files/...
      - {glob: /etc/postgresql/*/main/*.conf, max_bytes: 262144, max_files: 8}
    logs:                        # product logs: parsed, join the timeline
      - {name: server, glob: "{log_dir}/postgresql-*.log", timestamp: auto}
    commands:                    # argument lists, never a shell
      - {name: version, argv: [psql, -X, -A, -t, -c, "SELECT version()"], timeout_s: 5}
    redact:                      # extra patterns, replaced in what the spec collects
      - {name: app-token, pattern: "tok_[A-Za-z0-9]{20,}"}
    rules:                       # findings, decided when the bundle is analysed
      - id: fatal
        count: "FATAL:"          # a pattern counted over logs and command output
        in: [logs]               # logs, commands, logs:NAME, commands:NAME
        at_least: 1
        severity: warning
        title: PostgreSQL FATAL errors
        next_step: Group the FATAL lines by message.

``parse_spec`` refuses an unknown key, a wrong type or a value out of its bounds with
the path of the key (``commands[2].timeout_s``), never a traceback.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from agent.specs.patterns import SpecPattern
from agent.specs.yamlsafe import SpecError

__all__ = [
    "CommandItem",
    "FileItem",
    "LogItem",
    "Parameter",
    "RedactItem",
    "RuleItem",
    "Spec",
]

NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,39}\Z")
_ID_RE = re.compile(r"[a-z][a-z0-9_-]{0,39}\Z")
_PARAM_RE = re.compile(r"\{([a-z][a-z0-9_]{0,39})\}")
_FACT_RE = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_:-]+){0,8}\Z")
_MAX_ITEMS = 32
MAX_FILE_BYTES = 16 << 20
MAX_FILES_PER_GLOB = 64
MAX_LOG_BYTES = 64 << 20
MAX_COMMAND_S = 60.0
MAX_COMMAND_BYTES = 4 << 20
_MAX_TEXT = 2000
SEVERITIES = ("info", "warning", "critical")


@dataclass(frozen=True)
class Parameter:
    name: str
    default: str
    help: str


@dataclass(frozen=True)
class FileItem:
    glob: str
    max_bytes: int
    max_files: int


@dataclass(frozen=True)
class LogItem:
    name: str
    glob: str
    timestamp: str  # "auto" or a strptime format
    max_bytes: int


@dataclass(frozen=True)
class CommandItem:
    name: str
    argv: tuple[str, ...]
    timeout_s: float
    max_bytes: int


@dataclass(frozen=True)
class RedactItem:
    name: str
    pattern: SpecPattern


@dataclass(frozen=True)
class RuleItem:
    id: str
    severity: Literal["info", "warning", "critical"]
    title: str
    explanation: str
    next_step: str
    count: SpecPattern | None  # a pattern rule...
    sources: tuple[str, ...]  # ...over these (logs, commands, logs:NAME, commands:NAME)
    fact: str  # ...or a threshold over a fact (dotted path into facts.json)
    at_least: float | None
    above: float | None
    below: float | None

    def to_dict(self) -> dict[str, object]:
        """The rule as the bundle carries it (the analysis reads it from the facts)."""
        return {
            "id": self.id,
            "severity": self.severity,
            "title": self.title,
            "explanation": self.explanation,
            "next_step": self.next_step,
            "count": self.count.pattern if self.count is not None else None,
            "in": list(self.sources),
            "fact": self.fact,
            "at_least": self.at_least,
            "above": self.above,
            "below": self.below,
        }


@dataclass(frozen=True)
class Spec:
    name: str
    version: int
    description: str
    parameters: tuple[Parameter, ...]
    files: tuple[FileItem, ...]
    logs: tuple[LogItem, ...]
    commands: tuple[CommandItem, ...]
    redact: tuple[RedactItem, ...]
    rules: tuple[RuleItem, ...]

    @property
    def collector_name(self) -> str:
        """The collector a spec runs as (``spec_`` + its name, ``-`` as ``_``)."""
        return "spec_" + self.name.replace("-", "_")

    def parameter_defaults(self) -> dict[str, str]:
        return {p.name: p.default for p in self.parameters}


class _Fields:
    """One mapping of the document, read key by key; unknown keys are refused at the end."""

    def __init__(self, value: object, path: str) -> None:
        if not isinstance(value, Mapping):
            raise SpecError(f"{path}: expected a mapping, got {_kind(value)}")
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise SpecError(f"{path}: key {str(bad[0])[:40]!r} is not text")
        self.data: Mapping[str, Any] = value
        self.path = path
        self.read: set[str] = set()

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str) -> Any:
        self.read.add(key)
        return self.data.get(key)

    def text(
        self, key: str, *, default: str | None = None, limit: int = _MAX_TEXT, pattern: re.Pattern[str] | None = None
    ) -> str:
        value = self.get(key)
        if value is None and default is not None:
            return default
        if not isinstance(value, str) or not value.strip():
            raise SpecError(f"{self.at(key)}: expected non-empty text, got {_kind(value)}")
        if len(value) > limit:
            raise SpecError(f"{self.at(key)}: {len(value)} characters; at most {limit}")
        if "\0" in value:
            raise SpecError(f"{self.at(key)}: holds a NUL character")
        if pattern is not None and not pattern.match(value):
            raise SpecError(f"{self.at(key)}: {value[:60]!r} is not of the form {pattern.pattern}")
        return value

    def integer(self, key: str, *, default: int | None, lo: int, hi: int) -> int:
        value = self.get(key)
        if value is None and default is not None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise SpecError(f"{self.at(key)}: expected an integer in [{lo}, {hi}], got {_shown(value)}")
        return value

    def number(self, key: str, *, default: float | None, lo: float, hi: float) -> float | None:
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise SpecError(f"{self.at(key)}: expected a number, got {_shown(value)}")
        if not lo <= value <= hi:
            raise SpecError(f"{self.at(key)}: expected a number in [{lo:g}, {hi:g}], got {_shown(value)}")
        return float(value)

    def items(self, key: str) -> list[tuple[str, object]]:
        value = self.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise SpecError(f"{self.at(key)}: expected a list, got {_kind(value)}")
        if len(value) > _MAX_ITEMS:
            raise SpecError(f"{self.at(key)}: {len(value)} entries; at most {_MAX_ITEMS}")
        return [(f"{self.at(key)}[{i}]", v) for i, v in enumerate(value)]

    def done(self) -> None:
        extra = sorted(set(self.data) - self.read)
        if extra:
            raise SpecError(f"{self.at(extra[0])}: unknown key (known here: {', '.join(sorted(self.read))})")


def _kind(value: object) -> str:
    return "nothing" if value is None else type(value).__name__


def _shown(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "…"


def _check_params(text: str, where: str, known: Mapping[str, str]) -> str:
    for name in _PARAM_RE.findall(text):
        if name not in known:
            raise SpecError(f"{where}: {{{name}}} is not a parameter of this spec")
    return text


def _glob(f: _Fields, key: str, params: Mapping[str, str]) -> str:
    value = _check_params(f.text(key, limit=500), f.at(key), params)
    if not value.startswith(("/", "{")):
        raise SpecError(f"{f.at(key)}: {value[:60]!r} must be an absolute path")
    if "/../" in value + "/" or value.endswith("/.."):
        raise SpecError(f"{f.at(key)}: {value[:60]!r} holds '..'")
    return value


def _unique(names: list[str], where: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise SpecError(f"{where}: name {name!r} is used twice")
        seen.add(name)
