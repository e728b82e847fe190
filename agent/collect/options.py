"""Collector options, declared once on the collector that reads them.

A collector lists its options in ``Collector.options``; each declaration carries the
name, the type, the default, the bounds and one line of help. That one place is where

* the collector reads the value (``ctx.get(OPTION)``: the run's value, checked, or the
  default),
* ``casefile collect --set KEY=VALUE`` checks the name and turns the text into the
  declared type (``parse_set``: an unknown name or a bad value is a usage error),
* ``casefile options`` and the README's option table come from (``agent.collect.options_doc``).

An option read by several collectors (the log window, read by every source of logs) is
one shared declaration object that each of them lists. ``internal`` options are set by
the agent itself (the collector's clock offset, the flight recorder's home): collectors
read them like any other, but ``--set`` refuses them and the tables leave them out.
"""

from __future__ import annotations

import difflib
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeAlias, TypeVar

from agent.collect.spec import OptionValue
from agent.errors import CollectionError

__all__ = [
    "SPEC_PARAM_PREFIX",
    "AnyOption",
    "BoolOption",
    "FloatOption",
    "IntOption",
    "Option",
    "StrOption",
    "option_problems",
    "parse_set",
]

# ``--set spec.<param>=VALUE`` is a collection spec's parameter, checked by the spec itself.
SPEC_PARAM_PREFIX = "spec."
_NAME_RE = re.compile(r"[a-z][a-z0-9_]*\Z")
V = TypeVar("V", float, int, str, bool)


@dataclass(frozen=True)
class Option(ABC, Generic[V]):
    """One declared option; subclasses fix the type."""

    name: str
    default: V
    help: str
    # How the tables show the default when the value alone says too little ("the run's window").
    shown_default: str = ""
    internal: bool = False

    type_name: ClassVar[str]

    @abstractmethod
    def check(self, value: object) -> V:
        """``value`` as this option's type within its bounds; CollectionError names the option."""

    @abstractmethod
    def parse(self, text: str) -> V:
        """Command-line text as this option's type; CollectionError when it is not one."""

    def default_text(self) -> str:
        return self.shown_default or _show(self.default)

    def bounds_text(self) -> str:
        return ""

    def problems(self) -> list[str]:
        """What is wrong with the declaration itself; empty when it is sound."""
        found: list[str] = []
        if not (isinstance(self.name, str) and _NAME_RE.match(self.name)):
            found.append(f"option name {self.name!r} is not a lowercase identifier")
        if not (isinstance(self.help, str) and self.help.strip()):
            found.append(f"option {self.name!r} has no help")
        try:
            self.check(self.default)
        except CollectionError as exc:
            found.append(f"option {self.name!r}: its default does not pass its own check ({exc})")
        return found

    def _bad(self, what: str, value: object) -> CollectionError:
        return CollectionError(f"option {self.name!r} must be {what}, got {value!r}")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e18 else f"{x:g}"


def _show(value: OptionValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value) if value == "" else value
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class FloatOption(Option[float]):
    minimum: float = 0.0
    maximum: float = 60.0
    type_name: ClassVar[str] = "float"

    def check(self, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise self._bad("a number", value)
        if not self.minimum <= value <= self.maximum:
            raise self._bad(f"within [{self.minimum:g}, {self.maximum:g}]", value)
        return float(value)

    def parse(self, text: str) -> float:
        try:
            return self.check(float(text.strip()))
        except ValueError:
            raise self._bad("a number", text) from None

    def bounds_text(self) -> str:
        return f"{_num(self.minimum)}..{_num(self.maximum)}"


@dataclass(frozen=True)
class IntOption(Option[int]):
    minimum: int = 0
    maximum: int = 2**63 - 1
    type_name: ClassVar[str] = "int"

    def check(self, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad("an integer", value)
        if not self.minimum <= value <= self.maximum:
            raise self._bad(f"within [{self.minimum}, {self.maximum}]", value)
        return value

    def parse(self, text: str) -> int:
        try:
            return self.check(int(text.strip().replace("_", "")))
        except ValueError:
            raise self._bad("an integer", text) from None

    def bounds_text(self) -> str:
        return f"{self.minimum}..{self.maximum}"


@dataclass(frozen=True)
class StrOption(Option[str]):
    max_chars: int = 4096
    choices: tuple[str, ...] = ()  # when not empty, the only values it takes
    type_name: ClassVar[str] = "str"

    def check(self, value: object) -> str:
        if not isinstance(value, str):
            raise self._bad("text", value)
        if self.choices and value not in self.choices:
            raise self._bad(f"one of {', '.join(self.choices)}", value[:80])
        if len(value) > self.max_chars or "\0" in value:
            raise self._bad(f"text of at most {self.max_chars} characters without NUL", value[:80])
        return value

    def bounds_text(self) -> str:
        return " / ".join(self.choices)

    def parse(self, text: str) -> str:
        return self.check(text.strip())


@dataclass(frozen=True)
class BoolOption(Option[bool]):
    type_name: ClassVar[str] = "bool"

    def check(self, value: object) -> bool:
        if not isinstance(value, bool):
            raise self._bad("true or false", value)
        return value

    def parse(self, text: str) -> bool:
        word = text.strip().lower()
        if word in ("true", "yes", "1", "on"):
            return True
        if word in ("false", "no", "0", "off"):
            return False
        raise self._bad("true or false", text)


AnyOption: TypeAlias = Option[Any]


def option_problems(options: object) -> list[str]:
    """What is wrong with a collector's ``options`` declaration; empty when it is sound."""
    if not isinstance(options, tuple):
        return [f"options {options!r} is not a tuple of option declarations"]
    found: list[str] = []
    seen: set[str] = set()
    for opt in options:
        if not isinstance(opt, Option):
            found.append(f"options holds {opt!r}, not an option declaration (FloatOption, IntOption, ...)")
            continue
        found.extend(opt.problems())
        if opt.name in seen:
            found.append(f"option {opt.name!r} is declared twice")
        seen.add(opt.name)
    return found


def parse_set(items: Iterable[str], declared: Mapping[str, AnyOption]) -> dict[str, OptionValue]:
    """``--set KEY=VALUE`` pairs checked against the declarations: each value in its type.

    An unknown or internal name, or a value its option refuses, is a CollectionError that
    says what is known (``casefile options`` lists them). ``spec.<param>`` keys are kept
    as text for the collection spec to check.
    """
    out: dict[str, OptionValue] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CollectionError(f"--set {item!r}: expected KEY=VALUE")
        if key.startswith(SPEC_PARAM_PREFIX) and len(key) > len(SPEC_PARAM_PREFIX):
            out[key] = raw.strip()
            continue
        opt = declared.get(key)
        if opt is None or opt.internal:
            public = sorted(name for name, o in declared.items() if not o.internal)
            close = difflib.get_close_matches(key, public, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            why = "is set by the agent itself, not by --set" if opt is not None else "is not an option of any collector"
            raise CollectionError(f"--set {key}: {why}{hint} (`casefile options` lists them)")
        out[key] = opt.parse(raw)
    return out
