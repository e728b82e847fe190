"""Keyed, stable pseudonyms for identifiers, and the customer-held map to reverse them.

A token is ``<kind>-<first 12 hex of HMAC-SHA256(key, kind NUL canonical value)>``:
48 bits, so ~10k distinct values collide with probability ~2e-7 (field-notes §5.3 asks
for ≥ 10 hex digits). A value written other than in its canonical form (``WEB7``,
``FE80:0000::1``, ``3C-22-FB-…``) gets the same token plus ``-w<6 hex>`` naming the
spelling, so engineers still correlate on the first part while ``casefile unmask``
restores exactly the text that was written. The key is made once per installation (``redact.key``, 0600 in the
agent home), so the same address gives the same token in every artifact and every later
bundle — engineers can correlate without learning the value.

The reverse map (``redact-map.jsonl``, 0600, beside the key) never enters a bundle; only
``casefile unmask`` on the customer's machine reads it. It is append-only JSON lines so a
crash mid-write loses at most the last line, never the file.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
import threading
from pathlib import Path

from agent.redact.errors import RedactionError

__all__ = [
    "KEY_NAME",
    "MAP_NAME",
    "TOKEN_HEX",
    "TOKEN_RE",
    "Pseudonymizer",
    "ip_token_kind",
    "load_mapping",
    "load_or_create_redact_key",
    "unmask_text",
]

KEY_NAME = "redact.key"
MAP_NAME = "redact-map.jsonl"
TOKEN_HEX = 12
_KEY_BYTES = 32
_CACHE = 65536
TOKEN_RE = re.compile(
    r"\b(?:host|fqdn|domain|user|email|mac|ip4-(?:private|public|linklocal|shared)"
    r"|ip6-(?:private|public|linklocal))-[0-9a-f]{" + str(TOKEN_HEX) + r"}(?:-w[0-9a-f]{6})?\b"
)


def load_or_create_redact_key(home: Path, *, create: bool = True) -> bytes | None:
    """The installation's pseudonym key; made (0600) on first use when ``create``."""
    path = home / KEY_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if not create:
            return None
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = secrets.token_bytes(_KEY_BYTES)
        tmp = path.with_name(f".{KEY_NAME}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key.hex().encode("ascii") + b"\n")
        try:
            os.link(tmp, path)  # another process may have won the race: use its key
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        return load_or_create_redact_key(home, create=False)
    except OSError as exc:
        raise RedactionError(f"cannot read pseudonym key {path}: {exc.strerror or exc}") from None
    try:
        key = bytes.fromhex(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise RedactionError(f"pseudonym key {path} is damaged (expected hex)") from None
    if len(key) < 16:
        raise RedactionError(f"pseudonym key {path} is too short ({len(key)} bytes)")
    return key


def ip_token_kind(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """The token kind keeping an address's class, or None to leave it as is.

    Loopback, unspecified, multicast and reserved (netmasks, broadcast) identify nobody.
    IPv6 link-local is tokenised: its EUI-64 form carries the MAC.
    """
    if addr.is_loopback or addr.is_unspecified or addr.is_multicast:
        return None
    fam = "ip4" if addr.version == 4 else "ip6"
    if addr.is_link_local:
        return f"{fam}-linklocal"
    if addr.version == 4 and addr in _SHARED:
        return "ip4-shared"
    if addr.is_reserved:
        return None
    if addr.is_global:
        return f"{fam}-public"
    return f"{fam}-private"


_SHARED = ipaddress.ip_network("100.64.0.0/10")


def canonical(kind: str, value: str) -> str:
    if kind.startswith(("ip4", "ip6")):
        return str(ipaddress.ip_address(value.split("%", 1)[0]))
    if kind == "mac":
        return value.replace("-", ":").lower()
    return value.lower()


class Pseudonymizer:
    """Makes tokens and remembers new ones for the map file (written by ``flush``)."""

    def __init__(self, key: bytes, *, home: Path | None = None) -> None:
        self._key = key
        self._home = home
        self._lock = threading.Lock()
        self._new: dict[str, tuple[str, str]] = {}
        self._known: set[str] = set(load_mapping(home)) if home is not None else set()
        # The same names recur on every line: one HMAC per distinct (kind, spelling).
        self._cache: dict[tuple[str, str], str] = {}

    def token(self, kind: str, value: str) -> str:
        cached = self._cache.get((kind, value))
        if cached is not None:
            return cached
        token = self._make(kind, value)
        if len(self._cache) >= _CACHE:
            self._cache.clear()
        self._cache[(kind, value)] = token
        return token

    def _make(self, kind: str, value: str) -> str:
        canon = canonical(kind, value)
        digest = hmac.new(self._key, f"{kind}\0{canon}".encode(), hashlib.sha256).hexdigest()
        token = f"{kind}-{digest[:TOKEN_HEX]}"
        if value != canon:
            # The spelling as written, so unmask gives back these very characters.
            written = hmac.new(self._key, f"{kind}\0{canon}\0{value}".encode(), hashlib.sha256).hexdigest()
            token = f"{token}-w{written[:6]}"
        if token not in self._known:
            with self._lock:
                self._new.setdefault(token, (kind, value))
        return token

    def flush(self) -> int:
        """Append tokens first seen in this run to the map file; return how many."""
        if self._home is None or not self._new:
            return 0
        with self._lock:
            entries, self._new = self._new, {}
        path = self._home / MAP_NAME
        self._home.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            for token, (kind, value) in entries.items():
                fh.write(json.dumps({"token": token, "kind": kind, "value": value}) + "\n")
        self._known.update(entries)
        return len(entries)


def load_mapping(home: Path) -> dict[str, str]:
    """token -> original value from the map file (empty when there is none)."""
    path = home / MAP_NAME
    mapping: dict[str, str] = {}
    try:
        fh = open(path, encoding="utf-8")  # noqa: SIM115 - errors mapped below
    except FileNotFoundError:
        return mapping
    except OSError as exc:
        raise RedactionError(f"cannot read pseudonym map {path}: {exc.strerror or exc}") from None
    with fh:
        for number, line in enumerate(fh, 1):
            try:
                entry = json.loads(line)
                mapping[str(entry["token"])] = str(entry["value"])
            except (ValueError, KeyError, TypeError):
                # A torn last line after a crash: skip it, say where.
                if line.endswith("\n"):
                    raise RedactionError(f"pseudonym map {path} line {number} is damaged") from None
    return mapping


def unmask_text(text: str, mapping: dict[str, str]) -> tuple[str, int, int]:
    """Replace known tokens by their values; return (text, restored, unknown)."""
    restored = unknown = 0

    def repl(m: re.Match[str]) -> str:
        nonlocal restored, unknown
        value = mapping.get(m.group(0))
        if value is None:
            unknown += 1
            return m.group(0)
        restored += 1
        return value

    return TOKEN_RE.sub(repl, text), restored, unknown
