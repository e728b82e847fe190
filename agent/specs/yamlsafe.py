"""YAML for collection specs: ``safe_load`` only, and nothing that can make it explode.

A spec comes from the support organisation, but the agent reads it before anything else
about it is known to be sound, so the loader refuses what YAML allows and a spec never
needs: anchors and aliases (the "billion laughs" bomb), duplicate keys (two readers could
see two different specs), documents deeper than :data:`MAX_DEPTH`, several documents in
one text, and texts over :data:`MAX_SPEC_BYTES`. Every refusal is a ``SpecError`` that
says where (line and column).
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node

from agent.errors import CasefileError

__all__ = ["MAX_DEPTH", "MAX_SPEC_BYTES", "SpecError", "load_yaml"]

MAX_SPEC_BYTES = 64 * 1024
MAX_DEPTH = 12


class SpecError(CasefileError):
    """A spec cannot be used: says what is wrong and where."""


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "somewhere"


class _Loader(yaml.SafeLoader):
    """SafeLoader without aliases, anchors, duplicate keys or deep nesting."""

    _depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            raise SpecError(f"{_where(event.start_mark)}: YAML aliases (*name) are not allowed in a spec")
        if getattr(event, "anchor", None) is not None:
            raise SpecError(f"{_where(event.start_mark)}: YAML anchors (&name) are not allowed in a spec")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise SpecError(f"{_where(event.start_mark)}: nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                raise SpecError(f"{_where(key_node.start_mark)}: a mapping key must be plain text") from None
            if duplicate:
                raise SpecError(f"{_where(key_node.start_mark)}: key {str(key)[:60]!r} appears twice")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(data: bytes | str, *, where: str = "spec") -> object:
    """The one YAML document in ``data``; SpecError naming ``where`` and the place otherwise."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"{where}: {len(raw):,} bytes; a spec is at most {MAX_SPEC_BYTES:,}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{where}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    loader: _Loader | None = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            raise SpecError("empty document")
        doc = loader.construct_document(node)
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise SpecError(f"{where}: not valid YAML at {_where(mark)}: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:  # ReaderError: a control character, a bad encoding
        raise SpecError(f"{where}: not valid YAML: {str(exc)[:200]}") from None
    except RecursionError:
        raise SpecError(f"{where}: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()
    return doc
