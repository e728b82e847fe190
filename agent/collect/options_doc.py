"""The option tables, made from the collectors' declarations (``Collector.options``).

``casefile options`` prints every option of the installed collectors (plugins included);
the README's table (and a plugin README's) is the same listing in Markdown between two
marker lines, rewritten by ``make options-table``::

    python -m agent.collect.options_doc README.md                      # the built-ins
    python -m agent.collect.options_doc plugins/casefile-pgsql/README.md \\
        --collectors casefile_pgsql.collector:PostgresCollector        # a plugin's own

``--check`` rewrites nothing and exits 1 when the file's table differs (the test suite
runs the same comparison).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.collect.framework import Collector
from agent.collect.options import AnyOption
from agent.collect.registry import declared_options

__all__ = ["BEGIN", "END", "OptionRow", "markdown_table", "option_rows", "replace_table"]

BEGIN = "<!-- options table: made by `make options-table` from the collectors' declarations; do not edit -->"
END = "<!-- end of the options table -->"


@dataclass(frozen=True)
class OptionRow:
    option: AnyOption
    readers: tuple[str, ...]  # collector names; "" is the runner

    def to_dict(self) -> dict[str, object]:
        opt = self.option
        return {
            "name": opt.name,
            "type": opt.type_name,
            "default": opt.default,
            "default_text": opt.default_text(),
            "bounds": opt.bounds_text(),
            "help": opt.help,
            "collectors": [r or "(runner)" for r in self.readers],
        }


def option_rows(collectors: Iterable[type[Collector]], *, leave_out: Iterable[type[Collector]] = ()) -> list[OptionRow]:
    """Public options of ``collectors`` (and the runner's), by name; ``leave_out``'s options
    are not listed (a plugin's table leaves out the shared ones the built-ins list)."""
    known = set(declared_options(leave_out)) if leave_out else set()
    rows = [
        OptionRow(opt, readers)
        for name, (opt, readers) in declared_options(collectors).items()
        if not opt.internal and name not in known
    ]
    return sorted(rows, key=lambda r: r.option.name)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[OptionRow]) -> str:
    lines = ["| option | type | default | range | read by | what it does |", "|---|---|---|---|---|---|"]
    for row in rows:
        opt = row.option
        readers = ", ".join(f"`{r}`" if r else "the runner" for r in row.readers)
        cells = [f"`{opt.name}`", opt.type_name, opt.default_text(), opt.bounds_text(), readers, opt.help]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def replace_table(text: str, table: str) -> str:
    """``text`` with the part between the marker lines replaced by ``table``."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the markers are missing: a line {BEGIN!r} and later a line {END!r}")
    return text[: start + len(BEGIN)] + "\n" + table + "\n" + text[end:]


def _load(spec: str) -> type[Collector]:
    module, _, attr = spec.partition(":")
    obj = getattr(importlib.import_module(module), attr)
    if not (isinstance(obj, type) and issubclass(obj, Collector)):
        raise SystemExit(f"{spec} is not a Collector class")
    return obj


def main(argv: Sequence[str] | None = None) -> int:
    from agent.collect.builtin import BUILTIN_COLLECTORS

    parser = argparse.ArgumentParser(description="Write (or --check) a file's option table.")
    parser.add_argument("file", type=Path)
    parser.add_argument("--collectors", nargs="*", default=[], help="MODULE:CLASS of a plugin's collectors")
    parser.add_argument("--check", action="store_true", help="exit 1 when the table differs; write nothing")
    args = parser.parse_args(argv)
    if args.collectors:
        rows = option_rows([_load(s) for s in args.collectors], leave_out=BUILTIN_COLLECTORS)
    else:
        rows = option_rows(BUILTIN_COLLECTORS)
    text = args.file.read_text(encoding="utf-8")
    made = replace_table(text, markdown_table(rows))
    if args.check:
        if made != text:
            print(f"{args.file}: the option table differs from the declarations (make options-table)")
            return 1
        return 0
    if made != text:
        args.file.write_text(made, encoding="utf-8")
        print(f"{args.file}: option table rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
