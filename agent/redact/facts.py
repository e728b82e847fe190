"""Redact every string in a ``Snapshot``: the typed facts go through the same phase.

The walk is generic (all string fields, repeated strings, map values, nested messages,
``plugin_facts`` JSON text), so a field added to facts.proto tomorrow is redacted
without anyone remembering to. Exempt are identifiers Casefile made itself and
enum-like fields whose values come from a small fixed vocabulary (``_ALLOW``): running
patterns over them can only do harm (a kernel version looks like an IPv4 address).

When the profile pseudonymises, fields that *are* identifiers by type (host name, FQDN,
MAC, user name) become tokens even where no pattern or harvested value would match.
"""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from agent.redact.pipeline import Redactor

__all__ = ["FACTS_ARTIFACT", "redact_message"]

FACTS_ARTIFACT = "facts"

_P = "casefile.v1."
_ALLOW = frozenset(
    _P + name
    for name in (
        "Snapshot.bundle_id", "Snapshot.agent_id", "Snapshot.case_id", "Snapshot.kind",
        "Snapshot.request_id", "Snapshot.agent_version", "Snapshot.key_fingerprint",
        "CollectorStatus.name", "HostFacts.os", "HostFacts.os_release", "HostFacts.os_version",
        "HostFacts.kernel", "HostFacts.arch", "HostFacts.timezone", "HostFacts.python_version",
        "HostFacts.virtualization", "Partition.fstype", "Interface.duplex", "Address.family",
        "Address.netmask", "LogSource.name", "FsFragmentation.method", "FsFragmentation.fstype",
        "ProcessInfo.status", "ServiceFacts.manager", "ClockFacts.sync_source", "ClockFacts.timezone",
        "Route.family", "ListeningPort.protocol", "TriggerFacts.when",
    )
)  # fmt: skip
# Fields that are identifiers by type: pseudonymised whole, whatever their shape.
_TYPED = {
    _P + "HostFacts.hostname": "host",
    _P + "HostFacts.fqdn": "fqdn",
    _P + "Interface.mac": "mac",
    _P + "ProcessInfo.username": "user",
    _P + "RecordedProcess.name": "process",
}
_SYSTEM_USERS = frozenset({"root", "nobody", "daemon", "systemd-network", "systemd-resolve", "messagebus"})
_STRING = FieldDescriptor.TYPE_STRING


def redact_message(msg: Message, redactor: Redactor, artifact: str = FACTS_ARTIFACT) -> None:
    """Redact ``msg`` in place, recursively."""
    for field, value in msg.ListFields():
        name = field.full_name
        if name in _ALLOW:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            _redact_map(msg, field, value, redactor, artifact)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            items = value if _is_repeated(field) else [value]
            for item in items:
                redact_message(item, redactor, artifact)
        elif field.type == _STRING:
            if _is_repeated(field):
                for i, text in enumerate(list(value)):
                    value[i] = redactor.redact_text(text, artifact)
            else:
                setattr(msg, field.name, _one(name, value, redactor, artifact))


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _one(name: str, text: str, redactor: Redactor, artifact: str) -> str:
    kind = _TYPED.get(name)
    out = redactor.redact_text(text, artifact)
    if kind is None or redactor.pseudo is None or out != text:
        return out
    if kind == "user" and text in _SYSTEM_USERS:
        return text
    return redactor.pseudonym(kind, text, artifact)


def _redact_map(msg: Message, field: FieldDescriptor, value: object, redactor: Redactor, artifact: str) -> None:
    entry = field.message_type
    assert entry is not None  # only map fields come here
    value_field = entry.fields_by_name["value"]
    container = getattr(msg, field.name)
    if value_field.type == FieldDescriptor.TYPE_MESSAGE:
        for key in list(container):
            redact_message(container[key], redactor, artifact)
    elif value_field.type == _STRING:
        for key in list(container):  # a value whose key names a secret goes whole, as in JSON
            container[key] = redactor.redact_field(key, container[key], artifact)
    # Maps to numbers are counts keyed by a fixed vocabulary (severity, state, event id).
