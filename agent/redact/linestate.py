"""What the pipeline carries from one line of a member to the next, and the multi-line
private key block it follows with it.

A PEM/OpenSSH/PGP private key spans lines: from its ``-----BEGIN … PRIVATE KEY-----``
line every base64 run is key material until the END line (or ``MAX_KEY_LINES`` lines,
when an END never comes). A YAML Kubernetes Secret is followed by ``yamlsecret.py``;
a member named like PostgreSQL's password file has every line read as an entry.

Also here: the facts of the log record envelope that let the JSON walk skip fields
which by their form hold nothing to redact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.redact.secrets import marker
from agent.redact.yamlsecret import YamlSecret

__all__ = ["ENVELOPE_KEYS", "MAX_KEY_LINES", "LineState", "for_member", "key_body", "key_start", "plain_field"]

# A key block whose END never comes stops swallowing lines after this many.
MAX_KEY_LINES = 300
_KEY_BEGIN = re.compile(r"-----BEGIN[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----")
_KEY_END = re.compile(r"-----END[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----")
# A base64 run in a key body; not the inside of a marker left by an earlier pass.
_B64_RUN = re.compile(r"(?<![\[A-Za-z0-9+/=])[A-Za-z0-9+/=]{8,}")
# PostgreSQL's password file by its name (PGPASSFILE may name any file; these are the
# defaults on Unix and Windows).
_PGPASS_FILE = re.compile(r"(?:^|[/\\])(?:\.pgpass|pgpass\.conf)$")

# The log record envelope (agent/collect/logparse/record.py): its keys, and the values of
# ``ts`` and ``sev`` when they have the one form the collector writes, hold nothing to redact.
ENVELOPE_KEYS = frozenset({"ts", "src", "sev", "msg", "n"})
_SEVERITIES = frozenset({"emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"})
_TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def plain_field(key: object, value: str) -> bool:
    """An envelope field whose value has the collector's own form (a timestamp, a severity)."""
    return (key == "ts" and _TS.fullmatch(value) is not None) or (key == "sev" and value in _SEVERITIES)


@dataclass
class LineState:
    """Per-member state carried from line to line."""

    in_key: bool = False  # inside a multi-line private key block
    key_lines: int = 0
    counted: bool = False  # this block's body had key material (a marker-only body is not a hit)
    yaml: YamlSecret | None = None  # a YAML document that is or may be a Kubernetes Secret
    pgpass: bool = False  # the member is a .pgpass file: every entry's last field is a password


def for_member(artifact: str) -> LineState:
    return LineState(pgpass=_PGPASS_FILE.search(artifact) is not None)


def key_start(line: str, counts: dict[str, int], state: LineState) -> str:
    """A line holding a BEGIN marker: what follows it is key material."""
    m = _KEY_BEGIN.search(line)
    if m is None or line.startswith(marker("private-key"), m.end()):
        return line
    state.in_key, state.key_lines, state.counted = True, 0, False
    return line[: m.end()] + key_body(line[m.end() :], counts, state)


def key_body(text: str, counts: dict[str, int], state: LineState) -> str:
    """A line of a key block: base64 runs replaced, up to the END marker."""
    state.key_lines += 1
    end = _KEY_END.search(text)
    body, tail = (text[: end.start()], text[end.start() :]) if end else (text, "")
    if end or state.key_lines > MAX_KEY_LINES:
        state.in_key = False
    body, n = _B64_RUN.subn(marker("private-key"), body)
    if n and not state.counted:
        # One hit per key; a body that is only markers (redacted before) is none.
        state.counted = True
        counts["private-key"] = counts.get("private-key", 0) + 1
    return body + tail
