r"""The redaction pipeline: every artifact and every string fact passes through here.

Order per line: secret rules and the high-entropy net (all profiles), then — when the
profile pseudonymises — the identifier rules (``identifiers.py``). Only hit *counts*
per rule per artifact are kept, never values.

Members in JSON lines (``logs/*.jsonl``) are redacted in their decoded form: each line
is parsed, every key and string value is redacted as the text it stands for, a value
whose key names a secret is replaced whole, and a changed record is serialised again —
so ``token=\"…\"`` inside a message is seen with real quotes, a ``\u``-escaped value
cannot hide, and every line stays valid JSON. A line that is not JSON is redacted as text.

Streams are read in 1 MiB blocks. One multi-pattern pass over every rule's hints
(``scan.py``) points at the lines that may hold a secret; only those are decoded and
rewritten, the rest is copied byte for byte (pseudonymising visits every line, but runs
the secret rules only on those). What spans lines — private key blocks, YAML Kubernetes
Secrets, .pgpass files — is followed in ``linestate.py`` and ``yamlsecret.py``. Memory
stays bounded by the block size plus one line (lines are cut at ``MAX_LINE``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import IO, cast

from agent.redact.entropy import ENTROPY_RULE, whole_value_rule
from agent.redact.errors import RedactionError
from agent.redact.harvest import Harvested
from agent.redact.identifiers import IdentifierRules
from agent.redact.linestate import ENVELOPE_KEYS, LineState, for_member, key_body, key_start, plain_field
from agent.redact.profiles import Profile
from agent.redact.pseudonym import Pseudonymizer
from agent.redact.scan import Chain, RuleHints, hint_positions
from agent.redact.secrets import SECRET_RULES, SecretRule, marker
from agent.redact.secrets.shapes import pgpass_entry
from agent.redact.yamlsecret import RULE as RULE_YAML
from agent.redact.yamlsecret import start

__all__ = ["MAX_LINE", "RULES", "Redactor", "is_jsonl"]

# The one rule set: the redactor applies it, the leak gate re-applies it to the result.
RULES: tuple[SecretRule, ...] = (*SECRET_RULES, ENTROPY_RULE)
_HINTS = RuleHints(RULES)

BLOCK = 1 << 20
MAX_LINE = 1 << 20
# A .json member up to this size is parsed whole; a larger one is redacted as text.
_MAX_JSON = 64 << 20
# A double-quoted JSON string literal (linear: an escape or a plain character at a time).
_LITERAL = re.compile(r'"(?:[^"\\\n]|\\.)*"')


def is_jsonl(artifact: str) -> bool:
    """Members written as JSON lines, redacted record by record in decoded form."""
    return artifact.endswith(".jsonl")


class Redactor:
    """Redacts text and streams for one bundle; counts hits per rule per artifact.

    ``key`` (the installation's pseudonym key) is needed when the profile pseudonymises;
    pass ``pseudonymizer`` instead to share one map across several redactors.
    ``max_line``: a line longer than this is cut (memory bound; the gate reads wider).
    """

    def __init__(
        self,
        profile: Profile,
        key: bytes | None = None,
        harvested: Harvested | None = None,
        *,
        pseudonymizer: Pseudonymizer | None = None,
        home: Path | None = None,
        max_line: int = MAX_LINE,
    ) -> None:
        self.profile = profile
        self.harvested = harvested or Harvested()
        self.max_line = max_line
        if pseudonymizer is None and key is not None and profile.pseudonymise:
            pseudonymizer = Pseudonymizer(key, home=home)
        if profile.pseudonymise and pseudonymizer is None:
            raise RedactionError(f"profile {profile.name!r} needs the installation's pseudonym key")
        self.pseudo = pseudonymizer if profile.pseudonymise else None
        self._ids = IdentifierRules(self.pseudo, self.harvested.literals()) if self.pseudo is not None else None
        self._hits: dict[str, dict[str, int]] = {}
        self._no_secret = False  # set per line by _lines: the line holds no rule's hint

    # -- results ---------------------------------------------------------------

    def hits(self) -> dict[str, dict[str, int]]:
        """artifact -> rule -> count, only artifacts and rules that hit."""
        return {a: dict(sorted(c.items())) for a, c in sorted(self._hits.items()) if c}

    def totals(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for counts in self._hits.values():
            for rule, n in counts.items():
                total[rule] = total.get(rule, 0) + n
        return dict(sorted(total.items()))

    def artifact_hits(self, artifact: str) -> dict[str, int]:
        return dict(sorted(self._hits.get(artifact, {}).items()))

    def forget(self, artifact: str) -> None:
        """Drop an artifact's counts (it was excluded after all)."""
        self._hits.pop(artifact, None)

    # -- text ------------------------------------------------------------------

    def redact_text(self, text: str, artifact: str) -> str:
        """Redact a whole text (multi-line allowed: key blocks span lines)."""
        if not text:
            return text
        state = for_member(artifact)
        return self._text(text, self._hits.setdefault(artifact, {}), state)

    def _text(self, text: str, counts: dict[str, int], state: LineState | None = None) -> str:
        state = state or LineState()
        if "\n" not in text and "\r" not in text:
            return self._line(text, counts, state)
        out = "".join(self._doc_line(line, counts, state) for line in text.splitlines(keepends=True))
        return out + self._flush(counts, state)

    def _doc_line(self, line: str, counts: dict[str, int], state: LineState) -> str:
        """A line of a multi-line text: through the YAML Secret tracker, then the rules."""
        doc = state.yaml
        if doc is None:
            doc = None if state.in_key else start(line)
            if doc is None:
                return self._line(line, counts, state)
            state.yaml = doc
        out, done = doc.feed(line)
        if doc.hits:
            counts[RULE_YAML] = counts.get(RULE_YAML, 0) + doc.hits
            doc.hits = 0
        if done:
            state.yaml = None
        if len(out) > 1 or done:
            self._no_secret = False  # lines held earlier come out: each may hold a hint
        parts = [self._line(t, counts, state) if ordinary else t for t, ordinary in out[: len(out) - done]]
        if done:  # the line that ended the document may begin another
            parts.append(self._doc_line(out[-1][0], counts, state))
        return "".join(parts)

    def _flush(self, counts: dict[str, int], state: LineState) -> str:
        """The end of a member: a document still held is written through the rules."""
        if state.yaml is None:
            return ""
        held, state.yaml = state.yaml.flush(), None
        return "".join(self._line(t, counts, state) for t, _ in held)

    def pseudonym(self, kind: str, value: str, artifact: str) -> str:
        """A token for a value known to be an identifier of ``kind`` (typed facts)."""
        if self.pseudo is None or not value:
            return value
        counts = self._hits.setdefault(artifact, {})
        counts[kind] = counts.get(kind, 0) + 1
        return self.pseudo.token(kind, value)

    def redact_field(self, key: str, value: str, artifact: str) -> str:
        """A structured field's value: replaced whole when its key names a secret."""
        return self._field(key, value, self._hits.setdefault(artifact, {}))

    def _field(self, key: str, value: str, counts: dict[str, int]) -> str:
        rule = whole_value_rule(key, value)
        if rule is None:
            return self._text(value, counts) if value else value
        counts[rule] = counts.get(rule, 0) + 1
        return marker(rule)

    # -- JSON ------------------------------------------------------------------

    def _json_line(self, text: str, counts: dict[str, int], state: LineState) -> str:
        """One line of a JSON-lines member, redacted in decoded form; text if not JSON."""
        try:
            obj = json.loads(text)
        except ValueError:
            return self._line(text, counts, state)
        new = self._walk(obj, counts)
        if new is obj:
            return text
        end = text[len(text.rstrip("\r\n")) :]
        try:
            return json.dumps(new, ensure_ascii=False, separators=(",", ":")) + end
        except UnicodeEncodeError:  # pragma: no cover - dumps to str never encodes
            return json.dumps(new, separators=(",", ":")) + end

    def _walk(self, obj: object, counts: dict[str, int]) -> object:
        """``obj`` itself when nothing in it changed, else a redacted copy."""
        if isinstance(obj, str):
            out = self._text(obj, counts) if obj else obj
            return obj if out == obj else out
        if isinstance(obj, dict):
            changed = False
            items: list[tuple[object, object]] = []
            for k, v in obj.items():
                nk = k if k in ENVELOPE_KEYS else self._walk(k, counts)
                nv: object
                if isinstance(v, str):
                    nv = v if plain_field(k, v) else self._field(k, v, counts)
                else:
                    nv = self._walk(v, counts)
                if nv is not v and nv == v:
                    nv = v
                changed = changed or nk is not k or nv is not v
                items.append((nk, nv))
            return dict(items) if changed else obj
        if isinstance(obj, list):
            new = [self._walk(v, counts) for v in obj]
            return new if any(a is not b for a, b in zip(new, obj, strict=True)) else obj
        return obj

    # -- streams ---------------------------------------------------------------

    def redact_stream(self, src: IO[bytes], dst: IO[bytes], artifact: str) -> int:
        """Copy ``src`` to ``dst`` redacted; return the bytes written.

        ``artifact`` names the member; one in JSON lines (``is_jsonl``) is redacted
        record by record in decoded form.
        """
        counts = self._hits.setdefault(artifact, {})
        if artifact.endswith(".json"):
            head = src.read(_MAX_JSON + 1)
            if len(head) <= _MAX_JSON:
                done = self._json_document(head, dst, counts)
                if done is not None:
                    return done
            src = cast(IO[bytes], Chain(head, src))  # not JSON, or too big to hold: as text
        state = for_member(artifact)
        jsonl = is_jsonl(artifact)
        written = 0
        carry = b""
        while True:
            block = src.read(BLOCK)
            data = carry + block if carry else block
            if not data:
                break
            if block:
                cut = data.rfind(b"\n") + 1
                if cut == 0 and len(data) < self.max_line:
                    carry = data
                    continue
                if cut == 0:
                    cut = len(data)  # one over-long line: cut it (documented bound)
                data, carry = data[:cut], data[cut:]
            else:
                carry = b""
            written += self._block(data, dst, counts, state, jsonl)
            if not block:
                break
        tail = self._flush(counts, state).encode("utf-8", "surrogateescape")
        dst.write(tail)
        return written + len(tail)

    def _json_document(self, data: bytes, dst: IO[bytes], counts: dict[str, int]) -> int | None:
        """A whole JSON document redacted in decoded form; None when it is not JSON."""
        try:
            obj = json.loads(data.decode("utf-8", "surrogateescape"))
        except ValueError:
            return None
        # No rule's hint anywhere, escaped or not: nothing to redact without identifiers.
        new = obj if self.pseudo is None and not hint_positions(data, True) else self._walk(obj, counts)
        if new is not obj:
            indent = 1 if b"\n" in data.strip() else None
            text = json.dumps(new, ensure_ascii=False, indent=indent, separators=None if indent else (",", ":"))
            data = text.encode("utf-8", "surrogateescape") + (b"\n" if data.endswith(b"\n") else b"")
        dst.write(data)
        return len(data)

    def _block(self, data: bytes, dst: IO[bytes], counts: dict[str, int], state: LineState, jsonl: bool) -> int:
        end = len(data)
        if self.pseudo is not None or state.pgpass:  # every line is read
            return self._lines(data, 0, end, dst, counts, state, jsonl, hint_positions(data, jsonl))
        written = 0
        pos = 0
        while (state.in_key or state.yaml is not None) and pos < end:  # a key block or document goes on
            le = data.find(b"\n", pos)
            le = end if le < 0 else le + 1
            written += self._lines(data, pos, le, dst, counts, state, jsonl)
            pos = le
        for p in hint_positions(data, jsonl):
            if p < pos:
                continue
            ls = data.rfind(b"\n", 0, p) + 1
            if ls > pos:
                dst.write(data[pos:ls])
                written += ls - pos
            le = data.find(b"\n", p)
            le = end if le < 0 else le + 1
            written += self._lines(data, ls, le, dst, counts, state, jsonl)
            pos = le
            while (state.in_key or state.yaml is not None) and pos < end:
                le = data.find(b"\n", pos)
                le = end if le < 0 else le + 1
                written += self._lines(data, pos, le, dst, counts, state, jsonl)
                pos = le
        if pos < end:
            dst.write(data[pos:] if pos else data)
            written += end - pos
        return written

    def _lines(
        self, data: bytes, start: int, end: int, dst: IO[bytes], counts: dict[str, int], state: LineState,
        jsonl: bool, hints: list[int] | None = None,
    ) -> int:
        """Lines ``start``..``end`` redacted one by one. With ``hints`` (the pseudonymising
        path, which visits every line) the secret rules run only on lines holding a hint."""
        written = 0
        pos = start
        at = 0
        try:
            while pos < end:
                le = data.find(b"\n", pos, end)
                le = end if le < 0 else le + 1
                if hints is not None:
                    while at < len(hints) and hints[at] < pos:
                        at += 1
                    self._no_secret = at == len(hints) or hints[at] >= le
                raw = data[pos:le]
                text = raw.decode("utf-8", "surrogateescape")
                out = self._json_line(text, counts, state) if jsonl else self._doc_line(text, counts, state)
                if out is not text:
                    raw = out.encode("utf-8", "surrogateescape")
                dst.write(raw)
                written += len(raw)
                pos = le
        finally:
            self._no_secret = False
        return written

    # -- one line --------------------------------------------------------------

    def _line(self, line: str, counts: dict[str, int], state: LineState) -> str:
        """The redacted line; the very same object when nothing changed."""
        out = line
        if state.in_key:
            out = key_body(out, counts, state)
            if state.in_key:
                return out
        if state.pgpass:
            out, n = pgpass_entry(out)
            if n:
                counts["pgpass"] = counts.get("pgpass", 0) + n
        if self._no_secret and not state.in_key:
            # No hint in this line (hint_positions): no secret rule could match.
            if self._ids is not None:
                out = self._identifiers(out, counts)
            return line if out == line else out
        if "\\" in out and '"' in out:
            out = _LITERAL.sub(lambda m: self._literal(m.group(0), counts), out)
        lower = out.lower()
        # Only the rules the line wakes, in rule order; after a change the line is asked
        # again (a marker holds words), from the next rule on.
        todo = sorted(_HINTS.woken(out, lower) | _HINTS.own)
        k = 0
        while k < len(todo):
            i = todo[k]
            k += 1
            rule = RULES[i]
            if i in _HINTS.own and not rule.wanted(out, lower):
                continue
            new, n = rule.apply(out)
            if n and new != out:
                # Counted by markers: a rule may match and decide to leave a value alone.
                tag = marker(rule.name)
                counts[rule.name] = counts.get(rule.name, 0) + new.count(tag) - out.count(tag)
                out = new
                lower = out.lower()
                todo, k = sorted(j for j in _HINTS.woken(out, lower) | _HINTS.own if j > i), 0
        if "-----BEGIN" in out:
            out = key_start(out, counts, state)
        if self._ids is not None:
            out = self._identifiers(out, counts)
        return line if out == line else out

    def _literal(self, literal: str, counts: dict[str, int]) -> str:
        """A JSON string literal inside a text, redacted as the text it encodes.

        A JSON document logged inside a message (``detail: "password=\\"x\\""``) hides
        its quotes behind backslashes; decoded, the rules see them as quotes.
        """
        if "\\" not in literal:
            return literal
        try:
            text = json.loads(literal)
        except ValueError:
            return literal
        new = self._text(text, counts)
        return literal if new == text else json.dumps(new, ensure_ascii=False)

    def _identifiers(self, line: str, counts: dict[str, int]) -> str:
        assert self._ids is not None
        return self._ids.apply(line, counts)
