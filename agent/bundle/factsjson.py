"""``facts.json``: the typed facts for people and ``jq``, named as in ``protos/facts.proto``.

Protobuf's canonical JSON mapping renames fields to lowerCamelCase, leaves out fields at
their default value and writes 64-bit integers as strings. For this file all three get in
the way: a finding's evidence names ``network_depth.resolve.ok`` as the .proto does (and
``false`` must be there to be read), and ``jq '.memory.total > 8e9'`` needs a number. So
the file keeps the .proto's field names, writes every field, and writes integers as
numbers wherever a double holds them exactly (as jq reads them); larger ones stay text.
Timestamps stay RFC 3339 text and enums their names, as in the canonical mapping. A
plugin's facts, which travel as JSON text, are written as the JSON document they are.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

__all__ = ["facts_json", "message_to_plain"]


def message_to_plain(message: Message) -> dict[str, Any]:
    """The message as a dict: .proto field names, every field, integers as numbers."""
    return json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True,
    )


def _plugin_documents(facts: dict[str, Any]) -> None:
    """A plugin's facts travel as JSON text (``plugin_facts``); here they are the JSON
    itself, so ``plugin_facts.pgsql.counts.FATAL`` reads as findings name it."""
    plugins = facts.get("plugin_facts")
    if not isinstance(plugins, dict):
        return
    for name, text in plugins.items():
        try:
            plugins[name] = json.loads(text)
        except (TypeError, ValueError):
            continue  # not JSON: kept as the text it is


def facts_json(snapshot: Message) -> bytes:
    """The bytes of ``facts.json`` for ``snapshot`` (deterministic: keys sorted)."""
    plain = message_to_plain(snapshot)
    _plugin_documents(plain)
    return (json.dumps(plain, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()
