"""Credentials recognised by the shape of the file or document that holds them.

Docker's ``config.json`` (``auths.*.auth``: base64 of user:password) and npm's ``_auth``;
a Kubernetes Secret written as one line of JSON (``kubectl get -o json``, the
``last-applied-configuration`` annotation), where every ``data``/``stringData`` value is
secret whatever its key; ``.pgpass`` lines; ``.netrc`` entries; and base64 that wraps a
private key or a docker config (a Secret's ``tls.key``, ``.dockerconfigjson``).
A multi-line YAML Secret is read line by line: its values are caught by their keys
(``password``, ``token``, ``tls.key``, ``ssh-privatekey``, ``.dockerconfigjson``) or
their encoded content, not by the ``kind: Secret`` lines above them.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from agent.redact.secrets._base import CheckedRule, SecretRule, marker, value_group

__all__ = ["PGPASS_LINE", "PRIVATE_KEY", "SHAPE_RULES", "pgpass_entry", "pgpass_line"]


def _b64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _user_password(m: re.Match[str]) -> bool:
    """Docker's and npm's ``auth``: base64 of ``user:password``."""
    raw = _b64(m.group("val"))
    return raw is not None and b":" in raw and raw.isascii()


_JWT = re.compile(rb"eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}")


def _wraps_secret(m: re.Match[str]) -> bool:
    """Base64 of a private key, of a docker config with credentials (not a certificate),
    or of a JWT (``ZXlK…``, gitleaks' jwt-base64)."""
    raw = _b64(m.group("val"))
    if raw is None:
        return False
    return b"PRIVATE KEY" in raw or (b'"auths"' in raw and raw.count(b'"auth') >= 2) or _JWT.match(raw) is not None


_Q = r'\\*"'  # a JSON quote, escaped any number of times
_K8S_KIND = re.compile(_Q + r"kind" + _Q + r"\s*:\s*" + _Q + r"Secret" + _Q)
_K8S_DATA = re.compile(_Q + r"(?:data|stringData)" + _Q + r"\s*:\s*\{")
_K8S_PAIR = re.compile(
    r"\s*,?\s*" + _Q + r"[^\"\\]{1,253}" + _Q + r"\s*:\s*(?P<q>\\*\")(?P<val>.*?)(?P=q)(?=\s*[,}])"
)


@dataclass(frozen=True)
class _K8sSecretJson(SecretRule):
    """Every value under ``data`` and ``stringData`` of a one-line JSON ``kind: Secret``."""

    def apply(self, line: str) -> tuple[str, int]:
        if _K8S_KIND.search(line) is None:
            return line, 0
        out: list[str] = []
        at = n = 0
        for block in _K8S_DATA.finditer(line):
            if block.start() < at:
                continue
            pos = block.end()
            while (p := _K8S_PAIR.match(line, pos)) is not None:
                if "[REDACTED" not in p.group("val"):
                    out.append(line[at : p.start("val")])
                    out.append(marker(self.name))
                    at = p.end("val")
                    n += 1
                pos = p.end()
        if not n:
            return line, 0
        out.append(line[at:])
        return "".join(out), n


# host:port:database:user:password, the whole line (a colon or backslash inside a field
# is escaped with a backslash); port 1-65535 or ``*``. The line has no literal to key on:
# the log path finds such lines by their shape (scan.py), and a member named ``.pgpass``
# or ``pgpass.conf`` has every line read (pipeline.py).
_FIELD = r"(?:[^:\s\\]|\\.)+"
PGPASS_LINE = re.compile(
    r"^[ \t]*(?P<host>(?:[^:\s#\\]|\\.)(?:[^:\s\\]|\\.)*):(?P<port>\d{1,5}|\*):" + _FIELD + ":" + _FIELD + ":"
    r"(?P<val>(?!\[REDACTED)" + _FIELD + r")[ \t]*\r?\n?$"
)
_HEX_FIELDS = re.compile(r"[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4})+")


def pgpass_line(m: re.Match[str]) -> bool:
    """A whole-line match that is a .pgpass entry: a real port, not an IPv6 address."""
    port = m.group("port")
    if port != "*" and not 1 <= int(port) <= 65535:
        return False
    return _HEX_FIELDS.fullmatch(m.group(0).strip()) is None


_ENTRY = re.compile(r"^([ \t]*[^#\s](?:[^:\\\r\n]|\\.)*(?::(?:[^:\\\r\n]|\\.)*){3}:)(?!\[REDACTED)([^\r\n]+)")


def pgpass_entry(line: str) -> tuple[str, int]:
    """A line of a file known to be a .pgpass: whatever follows the fourth unescaped
    colon is the password, whatever the other fields look like."""
    m = _ENTRY.match(line)
    if m is None:
        return line, 0
    return line[: m.start(2)] + marker("pgpass") + line[m.end(2) :], 1


@dataclass(frozen=True)
class _PgpassRule(SecretRule):
    """A .pgpass line wherever it stands; wanted on any line with four colons."""

    def wanted(self, line: str, lower: str) -> bool:
        return line.count(":") >= 4

    def apply(self, line: str) -> tuple[str, int]:
        m = self.pattern.match(line)
        if m is None or not pgpass_line(m):
            return line, 0
        return line[: m.start()] + self.replace(m) + line[m.end() :], 1


# Whole PEM/OpenSSH/PGP blocks within one line (JSON with \n escapes); multi-line blocks
# are handled by the pipeline's block state.
PRIVATE_KEY = SecretRule(
    "private-key",
    ("-----BEGIN",),
    re.compile(
        r"(-----BEGIN[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----)"
        r".*?(-----END[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----)"
    ),
    lambda m: m.group(1) + marker("private-key") + m.group(2),
)

SHAPE_RULES: tuple[SecretRule, ...] = (
    CheckedRule(
        "encoded-secret",
        ("LS0tLS1CRUdJTi", "eyJ", "ZXlK"),
        re.compile(r"(?<![A-Za-z0-9+/])(?P<val>(?:LS0tLS1CRUdJTi|eyJhdXRocyI6|ZXlK)[A-Za-z0-9+/]{16,}={0,2})"),
        value_group("encoded-secret"),
        check=_wraps_secret,
    ),
    _K8sSecretJson("k8s-secret", ("secret",), _K8S_KIND, value_group("k8s-secret"), fold=True),
    CheckedRule(
        "registry-auth",
        ('"auth', "_auth"),
        re.compile(
            r"(?:" + _Q + r"auth" + _Q + r"\s*:\s*" + _Q + r"|(?<![\w/:-])(?://[^\s:]*:)?_auth\s*=\s*\"?)"
            r"(?P<val>[A-Za-z0-9+/]{4,}={0,2})"
        ),
        value_group("registry-auth"),
        check=_user_password,
    ),
    _PgpassRule("pgpass", (), PGPASS_LINE, value_group("pgpass")),
    # machine HOST login USER password SECRET on one line, or an indented ``password
    # SECRET`` line of an entry spread over lines (a bare ``password x`` is prose).
    SecretRule(
        "netrc",
        ("pass",),
        re.compile(
            r"^(?:[ \t]*(?:machine[ \t]+\S+[ \t]+|default[ \t]+)(?:(?:login|account|port)[ \t]+\S+[ \t]+)*"
            r"|[ \t]*login[ \t]+\S+[ \t]+|[ \t]+(?=password[ \t]+\S+\s*$))password[ \t]+"
            r"(?P<val>(?![:=])(?!\[REDACTED)\S+)"
        ),
        value_group("netrc"),
        fold=True,
    ),
)
