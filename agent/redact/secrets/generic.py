"""Secrets found by what surrounds them: a key that names a secret, an HTTP header, a URL's
user-info, a command-line option, an XML element.

Values may be bare, quoted, single-quoted or JSON-escaped once or more (``\\"…\\"``, as a
JSON log line carries an embedded JSON document); separators ``=``, ``:``, ``:=``, ``=>``, ``?=``.
The kv rule refuses values that already hold ``[REDACTED`` so a vendor token caught by
its own rule is not counted twice (field-notes §5.3).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.redact.secrets._base import SecretRule, value_group

__all__ = ["GENERIC_RULES", "KV_KEYWORD", "LATE_RULES"]

# A key names a secret when it holds one of these words; checked on the key alone, after
# a cheap key=value match, because a keyword alternation inside [\w.-]* backtracks badly.
KV_KEYWORD = re.compile(
    r"(?i)passw(?:or)?d|passphrase|secret|token|api[_-]?key|access[_-]?key|private[_-]?key"
    r"|credential|client[_-]?key|key[_-]?data|auth[_-]?key|session[_-]?key|signing[_-]?key|encryption[_-]?key"
    r"|master[_-]?key|dockerconfigjson|dockercfg|(?:^|[_.-])(?:pass|pwd|ssh[_-]?key)$|\.key$"
)
# A bare value runs to a blank, a delimiter or a JSON escape (``\r\n`` written out), so
# ``Basic abc\r\nContent-Length: 5`` ends at ``abc``; ``\\`` (an escaped backslash) and
# a lone backslash stay part of it.
_BARE = r"(?:[^\s\"',;&<>\\]++|\\\\|\\(?![rnt\"'u]))++"
_VALUE = (
    r"(?P<val>\"(?:[^\"\\]|\\.)*\"|'[^']*'|(?P<q>\\+[\"']).*?(?P=q)"
    r"|(?!\S*\[REDACTED)" + _BARE + ")"
)
_SEP = r"(?P<sep>(?>[ \t]*(?::=|=>|\?=|[:=])[ \t]*))"  # atomic: ":=" never falls back to ":" before "="
# Possessive (3.11+): a key never holds a quote or separator, so giving characters back
# could not help, and not trying costs a third of the time on key=value-dense lines.
_KV_PATTERN = re.compile(r"(?<![\w./-])(?:--?)?(?P<key>[A-Za-z_][\w.-]{0,80}+)(?:\\*[\"'])?" + _SEP + _VALUE)

# Values that are not credentials although their key says so: an object printed by its
# type (``token=Token{a64f992``, ``Token: Token { kind: … }``, Java's
# ``android.os.BinderProxy@2bd79ce``) and a Debian multi-arch qualifier
# (``libsecret-common:amd64``, ``passwd:all`` in dpkg and apt logs; the list is dpkg's).
_OBJECT = re.compile(
    r"[A-Z][A-Za-z0-9]*[a-z][A-Za-z0-9]*(?:\{[0-9a-f]{5,8})?"  # Token{a64f992, or a type name before " {"
    r"|(?:[a-z_]\w*\.)+[A-Z][\w$]*@[0-9a-f]{1,8}"  # pkg.Class@hash
)
_FIELDS = re.compile(r" ?\{ ?\w+[:=]")  # " { kind: …": the fields of the object just named
_DEB_ARCH = frozenset(
    {
        "all", "any", "native", "amd64", "arm64", "armel", "armhf", "i386", "mips64el", "mipsel", "ppc64el",
        "riscv64", "s390x", "alpha", "hppa", "ia64", "loong64", "m68k", "powerpc", "ppc64", "sh4", "sparc64", "x32",
        "hurd-i386", "hurd-amd64", "kfreebsd-amd64", "kfreebsd-i386",
    }
)  # fmt: skip


def _names_secret(key: str) -> bool:
    """Whether a key names a secret. In a dotted key the last part names the thing and the
    rest is its namespace: ``spring.datasource.password`` and ``tls.key`` do,
    ``com.android.server.wm.AppWindowToken.destroySurfaces`` (a stack frame) does not."""
    head, dot, last = key.rpartition(".")
    if not dot or not head or not last:
        return KV_KEYWORD.search(key) is not None
    return last.lower() == "key" or KV_KEYWORD.search(last) is not None


def _not_a_secret(line: str, m: re.Match[str]) -> bool:
    value = m.group("val")
    if m.group("sep") == ":" and value.rstrip(".") in _DEB_ARCH:
        return True
    if _OBJECT.fullmatch(value):
        return "{" in value or "@" in value or _FIELDS.match(line, m.end()) is not None
    return False


@dataclass(frozen=True)
class _KvRule(SecretRule):
    """key=value pairs whose key names a secret.

    A pair whose key names none keeps its key and separator and the scan goes on from its
    value, which may start the next pair: in ``kernel: password: x`` the first match is
    key ``kernel``, value ``password:``; the secret is the pair after it.
    """

    def apply(self, line: str) -> tuple[str, int]:
        parts: list[str] = []
        at = matched = 0
        while (m := self.pattern.search(line, at)) is not None:
            if not _names_secret(m.group("key")):
                parts.append(line[at : m.start("val")])
                at = m.start("val")
                continue
            if "[REDACTED" in m.group("val") or _not_a_secret(line, m):
                parts.append(line[at : m.end()])
                at = m.end()
                continue
            parts.append(line[at : m.start()])
            parts.append(self.replace(m))
            at = m.end()
            matched += 1
        if not matched:
            return line, 0
        parts.append(line[at:])
        return "".join(parts), matched


@dataclass(frozen=True)
class _NamedValueRule(SecretRule):
    """A secret whose name is a value of its own: ``{"name": "DB_PASSWORD", "value": "…"}``
    (Kubernetes and ECS env lists as JSON), ``<add key="ClearTextPassword" value="…"/>``
    (NuGet.Config, .NET appSettings)."""

    def wanted(self, line: str, lower: str) -> bool:
        return "value" in lower and super().wanted(line, lower)

    def apply(self, line: str) -> tuple[str, int]:
        n = 0

        def repl(m: re.Match[str]) -> str:
            nonlocal n
            if KV_KEYWORD.search(m.group("name")) is None or "[REDACTED" in m.group("val"):
                return m.group(0)
            n += 1
            return self.replace(m)

        out = self.pattern.sub(repl, line)
        return (out, n) if n else (line, 0)


_Q = r"\\*[\"']"  # a quote, plain or JSON-escaped (once or more)
# Compound keys (``authkey``, ``dockerconfigjson``) without one of these are still
# matched when the line is read for another hint (their values are base64: ``eyJ``…).
_KV_HINTS = ("pass", "secret", "token", "credential", "_key", "-key", ".key", "apikey", "accesskey", "privatekey",
             "pwd")

GENERIC_RULES: tuple[SecretRule, ...] = (
    SecretRule(
        "auth-header",
        ("authorization", "bearer", "cookie"),
        re.compile(
            r"(?i)(?:(?:proxy-)?authorization\\*[\"']?\s*[:=]\s*\\*[\"']?(?:(?:bearer|basic|token|digest|negotiate"
            r"|apikey|sso-key)\s+)?+|\bbearer\s+(?=[A-Za-z0-9._~+/=-]{16,})|(?:set-)?cookie\\*[\"']?\s*[:=]\s*\\*[\"']?)"
            r"(?P<val>(?!\[REDACTED)[^\s\"';\\]+(?:[ ]*;[ ]*[^\s\"';\\]+)*)"
        ),
        value_group("auth-header"),
        fold=True,
    ),
    SecretRule(
        "url-credentials",
        ("://",),
        re.compile(r"(?i)(?<![a-z0-9+.-])[a-z][a-z0-9+.-]{1,30}://[^\s:/@\"'<>\\\[]*:(?P<val>(?!\[REDACTED)[^\s@/\"'<>\\]+)@"),
        value_group("url-credentials"),
    ),
    SecretRule(
        "cli-secret",
        ("pass", "token", "secret", "-key", "apikey"),  # --password, --api-key…: the kv hints
        re.compile(
            r"(?i)(?<!\S)--?(?:password|passwd|pass|token|secret|api-key|apikey|client-secret)[ \t]+"
            r"(?P<val>(?!-)(?!\S*\[REDACTED)[^\s\"']+)"
        ),
        value_group("cli-secret"),
        fold=True,
    ),
    SecretRule(
        "cli-user-password",
        ("-u ", "--user"),
        re.compile(r"(?<!\S)(?:-u|--user)[ \t]+[^\s:\"']+:(?P<val>(?!\S*\[REDACTED)[^\s\"']+)"),
        value_group("cli-user-password"),
        fold=True,
    ),
    # mysql -uroot -pS3cret: the password glued to -p (a bare -p prompts for it).
    SecretRule(
        "cli-secret",
        ("mysql",),
        re.compile(r"(?i)\b(?:mysql|mariadb)[\w-]*\b[^\n|;&]*?[ \t]-p(?P<val>(?!\S*\[REDACTED)[^\s\"']+)"),
        value_group("cli-secret"),
        fold=True,
    ),
)

# After the shapes: these catch what is left by the key or element it sits under.
LATE_RULES: tuple[SecretRule, ...] = (
    _NamedValueRule(
        "kv-secret",
        _KV_HINTS,
        re.compile(
            r"(?i)(?:name|key)" + _Q + r"?\s*[:=]\s*" + _Q + r"(?P<name>[\w.-]{1,80})" + _Q + r"\s*,?\s*"
            + _Q + r"?value" + _Q + r"?\s*[:=]\s*(?P<val>\"(?:[^\"\\]|\\.)*\"|'[^']*'|(?P<q>\\+[\"']).*?(?P=q))"
        ),
        value_group("kv-secret"),
        fold=True,
    ),
    _KvRule(
        "kv-secret",
        _KV_HINTS,
        _KV_PATTERN,
        value_group("kv-secret"),
        fold=True,
    ),
    SecretRule(
        "xml-secret",
        ("pass", "secret", "token"),
        re.compile(r"(?i)<(?P<tag>[\w:-]*(?:password|passwd|secret|token)[\w:-]*)>(?P<val>(?!\[REDACTED)[^<]+)</"),
        value_group("xml-secret"),
        fold=True,
    ),
)
