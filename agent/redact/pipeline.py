"""The redaction pipeline: every artifact and every string fact passes through here.

Order per line: secret rules (all profiles), then — when the profile pseudonymises —
e-mails, harvested host/user names, home folders, MACs, IPv4, IPv6. Only hit *counts*
per rule per artifact are kept, never values.

Streams are read in 1 MiB blocks. With secrets only, one bytes regex of every rule's
hints scans the whole block in C and only the lines it points at are decoded and
rewritten; everything else is copied byte for byte. Pseudonymising needs every line
(almost all hold a dot or a colon), so that path goes line by line. Memory stays
bounded by the block size plus one line (lines are cut at ``MAX_LINE``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from agent.redact.errors import RedactionError
from agent.redact.harvest import Harvested
from agent.redact.profiles import Profile
from agent.redact.pseudonym import Pseudonymizer, ip_token_kind
from agent.redact.secrets import SECRET_RULES, marker

__all__ = ["MAX_LINE", "Redactor"]

BLOCK = 1 << 20
MAX_LINE = 1 << 20
# A key block whose END never comes stops swallowing lines after this many.
_MAX_KEY_LINES = 300

# bytes.find per hint runs at memchr speed; one regex alternation of ~50 literals
# would try every alternative at every byte (measured ~30x slower).
_CS_HINTS = tuple(sorted({h.encode() for r in SECRET_RULES if not r.fold for h in r.hints}))
_CI_HINTS = tuple(sorted({h.encode() for r in SECRET_RULES if r.fold for h in r.hints}))
_KEY_BEGIN = re.compile(r"-----BEGIN[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----")
_KEY_END = re.compile(r"-----END[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----")
_B64_RUN = re.compile(r"[A-Za-z0-9+/=]{8,}")

_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_HOME = re.compile(r"(?:(?<=/home/)|(?<=/Users/)|(?<=\\Users\\))(?!(?:user|host)-[0-9a-f])[^/\\\s\"':;,]+")
_MAC = re.compile(r"(?<![0-9A-Fa-f:-])[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(?:\1[0-9A-Fa-f]{2}){4}(?![0-9A-Fa-f:-])")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(r"(?<![0-9A-Za-z.])(?:" + _OCTET + r"\.){3}" + _OCTET + r"(?![0-9A-Za-z]|\.\d)")
_IPV6 = re.compile(
    r"(?<![0-9A-Za-z:.])(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{0,4}){2,7}|::(?:[0-9A-Fa-f]{1,4}:){0,6}[0-9A-Fa-f]{1,4})"
    r"(?:%[0-9A-Za-z_.-]+)?(?![0-9A-Za-z:])"
)
_NO_MAC = frozenset({"00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff"})


def _hint_positions(data: bytes) -> list[int]:
    """Offsets of every secret-rule hint in ``data``, sorted."""
    found: list[int] = []
    for hints, text in ((_CS_HINTS, data), (_CI_HINTS, data.lower())):
        for h in hints:
            i = text.find(h)
            while i >= 0:
                found.append(i)
                i = text.find(h, i + 1)
    found.sort()
    return found


@dataclass
class _State:
    """Per-artifact state: inside a multi-line private key block, and for how long."""

    in_key: bool = False
    key_lines: int = 0


class Redactor:
    """Redacts text and streams for one bundle; counts hits per rule per artifact.

    ``key`` (the installation's pseudonym key) is needed when the profile pseudonymises;
    pass ``pseudonymizer`` instead to share one map across several redactors.
    """

    def __init__(
        self,
        profile: Profile,
        key: bytes | None = None,
        harvested: Harvested | None = None,
        *,
        pseudonymizer: Pseudonymizer | None = None,
        home: Path | None = None,
    ) -> None:
        self.profile = profile
        self.harvested = harvested or Harvested()
        if pseudonymizer is None and key is not None and profile.pseudonymise:
            pseudonymizer = Pseudonymizer(key, home=home)
        if profile.pseudonymise and pseudonymizer is None:
            raise RedactionError(f"profile {profile.name!r} needs the installation's pseudonym key")
        self.pseudo = pseudonymizer if profile.pseudonymise else None
        self._hits: dict[str, dict[str, int]] = {}
        literals = sorted(self.harvested.literals(), key=lambda kv: -len(kv[1]))
        self._literal_kind = {value: kind for kind, value in literals}
        self._literal_re = (
            re.compile(
                "(?i)(?<![A-Za-z0-9])(?:" + "|".join(re.escape(v) for _, v in literals) + ")(?![A-Za-z0-9])"
            )
            if literals
            else None
        )

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
        counts = self._hits.setdefault(artifact, {})
        state = _State()
        if "\n" not in text and "\r" not in text:
            return self._line(text, counts, state)
        return "".join(self._line(line, counts, state) for line in text.splitlines(keepends=True))

    def pseudonym(self, kind: str, value: str, artifact: str) -> str:
        """A token for a value known to be an identifier of ``kind`` (typed facts)."""
        if self.pseudo is None or not value:
            return value
        counts = self._hits.setdefault(artifact, {})
        counts[kind] = counts.get(kind, 0) + 1
        return self.pseudo.token(kind, value)

    # -- streams ---------------------------------------------------------------

    def redact_stream(self, src: IO[bytes], dst: IO[bytes], artifact: str) -> int:
        """Copy ``src`` to ``dst`` redacted; return the bytes written."""
        counts = self._hits.setdefault(artifact, {})
        state = _State()
        written = 0
        carry = b""
        while True:
            block = src.read(BLOCK)
            data = carry + block if carry else block
            if not data:
                break
            if block:
                cut = data.rfind(b"\n") + 1
                if cut == 0 and len(data) < MAX_LINE:
                    carry = data
                    continue
                if cut == 0:
                    cut = len(data)  # one over-long line: cut it (documented bound)
                data, carry = data[:cut], data[cut:]
            else:
                carry = b""
            written += self._block(data, dst, counts, state)
            if not block:
                break
        return written

    def _block(self, data: bytes, dst: IO[bytes], counts: dict[str, int], state: _State) -> int:
        end = len(data)
        if self.pseudo is not None:
            return self._lines(data, 0, end, dst, counts, state)
        written = 0
        pos = 0
        while state.in_key and pos < end:  # a key block went on from the previous block
            le = data.find(b"\n", pos)
            le = end if le < 0 else le + 1
            written += self._lines(data, pos, le, dst, counts, state)
            pos = le
        for p in _hint_positions(data):
            if p < pos:
                continue
            ls = data.rfind(b"\n", 0, p) + 1
            if ls > pos:
                dst.write(data[pos:ls])
                written += ls - pos
            le = data.find(b"\n", p)
            le = end if le < 0 else le + 1
            written += self._lines(data, ls, le, dst, counts, state)
            pos = le
            while state.in_key and pos < end:
                le = data.find(b"\n", pos)
                le = end if le < 0 else le + 1
                written += self._lines(data, pos, le, dst, counts, state)
                pos = le
        if pos < end:
            dst.write(data[pos:] if pos else data)
            written += end - pos
        return written

    def _lines(
        self, data: bytes, start: int, end: int, dst: IO[bytes], counts: dict[str, int], state: _State
    ) -> int:
        written = 0
        pos = start
        while pos < end:
            le = data.find(b"\n", pos, end)
            le = end if le < 0 else le + 1
            raw = data[pos:le]
            text = raw.decode("utf-8", "surrogateescape")
            out = self._line(text, counts, state)
            if out is not text:
                raw = out.encode("utf-8", "surrogateescape")
            dst.write(raw)
            written += len(raw)
            pos = le
        return written

    # -- one line --------------------------------------------------------------

    def _line(self, line: str, counts: dict[str, int], state: _State) -> str:
        """The redacted line; the very same object when nothing changed."""
        out = line
        if state.in_key:
            out = self._key_body(out, state)
            if state.in_key:
                return out
        lower = out.lower()
        for rule in SECRET_RULES:
            if rule.wanted(out, lower):
                new, n = rule.apply(out)
                if n and new != out:
                    # Counted by markers: a rule may match and decide to leave a value alone.
                    tag = marker(rule.name)
                    counts[rule.name] = counts.get(rule.name, 0) + new.count(tag) - out.count(tag)
                    out = new
        if "-----BEGIN" in out:
            out = self._key_start(out, counts, state)
        if self.pseudo is not None:
            out = self._identifiers(out, counts)
        return line if out == line else out

    def _key_start(self, line: str, counts: dict[str, int], state: _State) -> str:
        m = _KEY_BEGIN.search(line)
        if m is None or line.startswith(marker("private-key"), m.end()):
            return line
        state.in_key, state.key_lines = True, 0
        counts["private-key"] = counts.get("private-key", 0) + 1
        return line[: m.end()] + self._key_body(line[m.end() :], state)

    def _key_body(self, text: str, state: _State) -> str:
        state.key_lines += 1
        end = _KEY_END.search(text)
        body, tail = (text[: end.start()], text[end.start() :]) if end else (text, "")
        if end or state.key_lines > _MAX_KEY_LINES:
            state.in_key = False
        body = _B64_RUN.sub(marker("private-key"), body)
        return body + tail

    def _identifiers(self, line: str, counts: dict[str, int]) -> str:
        def sub(pattern: re.Pattern[str], fn: Callable[[re.Match[str]], str], text: str) -> str:
            return pattern.sub(fn, text)

        def count(rule: str) -> None:
            counts[rule] = counts.get(rule, 0) + 1

        pseudo = self.pseudo
        assert pseudo is not None

        def email(m: re.Match[str]) -> str:
            count("email")
            return pseudo.token("email", m.group(0))

        def literal(m: re.Match[str]) -> str:
            kind = self._literal_kind.get(m.group(0).lower(), "host")
            count(kind)
            return pseudo.token(kind, m.group(0))

        def home(m: re.Match[str]) -> str:
            count("user")
            return pseudo.token("user", m.group(0))

        def mac(m: re.Match[str]) -> str:
            value = m.group(0).lower().replace("-", ":")
            if value in _NO_MAC:
                return m.group(0)
            count("mac")
            return pseudo.token("mac", value)

        def ip(m: re.Match[str]) -> str:
            text = m.group(0)
            if ":" in text and "::" not in text and text.count(":") < 7:
                return text  # a time of day or similar, never a full IPv6 address
            try:
                addr = ipaddress.ip_address(text.split("%", 1)[0])
            except ValueError:
                return text
            kind = ip_token_kind(addr)
            if kind is None:
                return text
            count("ipv4" if addr.version == 4 else "ipv6")
            return pseudo.token(kind, text)

        out = line
        if "@" in out:
            out = sub(_EMAIL, email, out)
        if self._literal_re is not None:
            lower = out.lower()
            if any(v in lower for v in self._literal_kind):
                out = sub(self._literal_re, literal, out)
        if "/home/" in out or "Users" in out:
            out = sub(_HOME, home, out)
        if ":" in out or "-" in out:
            out = sub(_MAC, mac, out)
        if "." in out:
            out = sub(_IPV4, ip, out)
        if ":" in out:
            out = sub(_IPV6, ip, out)
        return out
