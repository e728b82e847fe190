"""Kubernetes Secrets written as multi-line YAML: every value of ``data``/``stringData``.

In a ``kind: Secret`` document the whole ``data`` and ``stringData`` blocks are secret,
whatever the keys (``username: YWRtaW4=``). The one-line JSON form is a rule of its own
(``secrets/shapes.py``); YAML spans lines, so it is followed here, line by line, as the
pipeline reads them:

- ``kind: Secret`` before ``data:`` (hand-written manifests): the values are redacted as
  they come;
- ``data:`` before ``kind:`` (``kubectl get secret -o yaml`` sorts its keys: apiVersion,
  data, kind, metadata, type): the block is *held* — not written — until the document's
  ``kind`` says what it was, then written redacted (Secret) or as it was, through the
  ordinary rules (ConfigMap and the rest). A Secret holds at most 1 MiB (Kubernetes'
  limit), so a held block is bounded: past ``MAX_HELD`` bytes it cannot be a Secret's.

A document ends at ``---``, at a line less indented than its keys, or at a new list item
(``items:`` of a ``kind: List``); a held block whose document ended without ``kind:
Secret`` is written through the ordinary rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from agent.redact.secrets import marker

__all__ = ["MAX_HELD", "RULE", "YamlSecret", "start"]

RULE = "k8s-secret"
MAX_HELD = 2 << 20

# A mapping key: indentation, list dashes, the key, a colon, the rest.
_KEY = re.compile(r"^([ \t]*)((?:-[ \t]+)*)([\"']?[\w.\-/]+[\"']?)[ \t]*:(?:[ \t]+(.*?))?[ \t]*\r?\n?$")
_BLOCK_SCALAR = re.compile(r"[|>][+-]?\d?")


def start(line: str) -> YamlSecret | None:
    """A document to follow, when this line is its ``kind: Secret`` or a ``data:`` key."""
    if "Secret" not in line and "ata:" not in line:
        return None
    m = _KEY.match(line)
    if m is None:
        return None
    key, rest = m.group(3).strip("\"'"), m.group(4) or ""
    col = len(m.group(1)) + len(m.group(2))
    if key == "kind" and rest.strip("\"'") == "Secret":
        return YamlSecret(col, secret=True)
    if key in ("data", "stringData") and not rest:
        return YamlSecret(col)
    return None


# What to write: (text, whether it still goes through the ordinary rules), in order.
Out = list[tuple[str, bool]]


@dataclass
class YamlSecret:
    """The state of one document being followed; ``feed`` says what to write."""

    col: int  # the column of the document's keys
    secret: bool | None = None  # None: not known yet
    block: int | None = None  # indentation of the data block's key while inside it
    child: int | None = None  # indentation of the block's own keys
    held: list[tuple[str, int | None]] = field(default_factory=list)  # (line, its data block or None)
    held_bytes: int = 0
    hits: int = 0

    def feed(self, line: str) -> tuple[Out, bool]:
        """What to write now, and whether the document ended (then the line that ended
        it is the last one out, to be read afresh: it may start something else)."""
        stripped = line.strip()
        if self.block is not None:
            indent = len(line) - len(line.lstrip(" \t"))
            if not stripped or stripped.startswith("#") or indent > self.block:
                return self._emit(line, in_block=True), False
            self.block = None
        if stripped in ("---", "..."):
            return self._end(line)
        m = _KEY.match(line)
        if m is None:
            # Not a key: the end, unless deeper than the keys (a value's lines), a comment
            # or a list item of a key above.
            indent = len(line) - len(line.lstrip(" \t"))
            if stripped and indent <= self.col and not stripped.startswith(("#", "-")):
                return self._end(line)
            return self._emit(line, in_block=False), False
        col = len(m.group(1)) + len(m.group(2))
        if col < self.col or (m.group(2) and len(m.group(1)) < self.col):
            return self._end(line)
        key, rest = m.group(3).strip("\"'"), (m.group(4) or "")
        if col == self.col and key == "kind":
            self.secret = rest.strip("\"'") == "Secret"
            return [*self._release(), (line, True)], False
        if col == self.col and key in ("data", "stringData") and rest == "":
            out = self._emit(line, in_block=False)
            self.block, self.child = col, None
            return out, False
        return self._emit(line, in_block=False), False

    def flush(self) -> Out:
        """End of the member: what was held goes through the ordinary rules."""
        self.secret = False
        return self._release()

    def _emit(self, line: str, *, in_block: bool) -> Out:
        if self.secret is None and (in_block or self.held):
            self.held.append((line, self.block if in_block else None))
            self.held_bytes += len(line)
            if self.held_bytes > MAX_HELD:  # larger than any Secret can be
                self.secret = False
                return self._release()
            return []
        if in_block and self.secret:
            return [(self._redact(line), False)]
        return [(line, True)]

    def _release(self) -> Out:
        held, self.held, self.held_bytes = self.held, [], 0
        if not self.secret:
            return [(h, True) for h, _ in held]
        out: Out = []
        block, self.block = self.block, None
        for h, b in held:
            if b is None:
                self.child = None
                out.append((h, True))
            else:
                self.block = b
                out.append((self._redact(h), False))
        self.block = block
        return out

    def _end(self, line: str) -> tuple[Out, bool]:
        if self.secret is None:
            self.secret = False
        return [*self._release(), (line, True)], True

    def _redact(self, line: str) -> str:
        """A line of a Secret's data block with its value replaced: the value of a key at
        the block's first indentation, or all of a deeper (continuation) line."""
        body = line.rstrip("\r\n")
        eol = line[len(body) :]
        if not body.strip() or body.lstrip().startswith("#") or "[REDACTED" in body:
            return line
        indent = len(body) - len(body.lstrip(" \t"))
        if self.child is None:
            self.child = indent
        m = _KEY.match(body) if indent == self.child else None
        if m is not None:
            rest = m.group(4) or ""
            if not rest or _BLOCK_SCALAR.fullmatch(rest):
                return line  # the value follows on the lines below
            self.hits += 1
            return body[: m.start(4)] + marker(RULE) + eol
        self.hits += 1
        return body[:indent] + marker(RULE) + eol
