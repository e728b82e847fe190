"""Identifiers the ``private`` profile pseudonymises, recognised by position and shape.

Values harvested from this host are replaced wherever they appear; everything else is
found where logs put names: the syslog host field (``Nov 23 10:00:01 web02 sshd[7]:``,
relayed ``dn228/dn228`` and ``local@tbird-admin1`` forms included), ``user=``/``USER=``/
``ruser=``, ``for user X``, ``of user X``, sshd's ``Accepted … for X from`` and
``Invalid user X from``, ``by X(uid=…)``, ``sudo:  X : TTY=…``, ``rhost=``/``host=``,
postfix's ``name[address]``, ``X@host`` and e-mail addresses — so other servers and
other people in a log are pseudonymised too, not only this machine's own names.

Then MACs and addresses. An IPv4 address is four dotted octets 0-255 standing alone:
``1.7.4.4-2`` (a package version), ``v1.2.3.4`` or ``1.2.3.4.5`` are not addresses.

Every rule leaves tokens alone, so running the rules again changes nothing — the leak
gate relies on that. Well-known system accounts (root, daemon, …) identify nobody and
stay readable.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

from agent.redact.pseudonym import TOKEN_RE, Pseudonymizer, ip_token_kind

__all__ = ["IPV4_RE", "IPV6_RE", "SYSTEM_USERS", "IdentifierRules", "learnable"]

SYSTEM_USERS = frozenset(
    {
        "root", "nobody", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp", "proxy",
        "www-data", "backup", "list", "irc", "gnats", "messagebus", "sshd", "syslog", "_apt", "polkitd", "avahi",
        "colord", "gdm", "lightdm", "ntp", "chrony", "postfix", "unknown", "invalid", "system", "admin",
        "systemd-network", "systemd-resolve", "systemd-timesync", "systemd-coredump", "SYSTEM",
    }
)  # fmt: skip
# Words a "host" position may hold in a line that is not syslog after all.
_NOT_HOSTS = frozenset(
    {
        "error", "err", "warn", "warning", "info", "debug", "notice", "crit", "critical", "fatal", "trace",
        "alert", "emerg", "emergency", "panic", "severe", "localhost", "unknown", "-",
    }
)  # fmt: skip
# Tags that log without a pid; only these make a time-less "host tag:" line syslog-like.
_PIDLESS_TAGS = frozenset(
    {"kernel", "sudo", "su", "sshd", "cron", "crond", "CRON", "anacron", "systemd", "login", "init", "dhclient",
     "ntpd", "rsyslogd", "syslogd", "postfix", "named", "xinetd", "auditd", "smartd"}
)  # fmt: skip

_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_HOME = re.compile(r"(?:(?<=/home/)|(?<=/Users/)|(?<=\\Users\\))(?!(?:user|host)-[0-9a-f])[^/\\\s\"':;,]+")
_MAC = re.compile(r"(?<![0-9A-Fa-f:-])[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(?:\1[0-9A-Fa-f]{2}){4}(?![0-9A-Fa-f:-])")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
# Not inside a longer dotted or dashed token on either side (versions, "v1.2.3.4").
IPV4_RE = _IPV4 = re.compile(
    r"(?<![0-9A-Za-z.])(?<![0-9A-Za-z][.-])(?:" + _OCTET + r"\.){3}" + _OCTET + r"(?![0-9A-Za-z]|[.-][0-9A-Za-z])"
)
IPV6_RE = _IPV6 = re.compile(
    r"(?<![0-9A-Za-z:.])(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{0,4}){2,7}|::(?:[0-9A-Fa-f]{1,4}:){0,6}[0-9A-Fa-f]{1,4})"
    r"(?:%[0-9A-Za-z_.-]+)?(?![0-9A-Za-z:])"
)
_NO_MAC = frozenset({"00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff"})

_HOSTNAME = r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}(?:\.[A-Za-z0-9_-]{1,63})*"
_TS = (
    r"(?:[A-Z][a-z]{2} {1,2}\d{1,2} \d\d:\d\d:\d\d"
    r"|\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d{1,9})?(?:Z|[+-]\d\d:?\d\d)?)"
)
_SYSLOG_HEAD = re.compile(
    r"(?:<\d{1,3}>)?(?:(?P<ts>" + _TS + r") +)?(?P<host>" + _HOSTNAME + r"(?:[/@]" + _HOSTNAME + r")?)"
    r" +(?:(?P<tag>[A-Za-z0-9_.()/-]{1,64}?)(?P<pid>\[\d+\])?(?: \(\[\d+\]\))?:(?=\s|$))?"
)
# A name does not end in a dot: "of user gina." keeps its full stop.
_USER_NAME = r"(?P<u>[A-Za-z_](?:[A-Za-z0-9_.-]{0,30}[A-Za-z0-9_-])?\$?)(?![\w@-])"
class _Gated:
    """An alternation whose branches each have a cheap guard (substring tests on the line
    and its lower-cased copy); only the branches whose guard holds are compiled into the
    regex that scans the line. The same leftmost match as the whole alternation — a
    branch whose guard fails could not match — at a fraction of the per-character cost
    (a regex of seven branches tries all seven at every position)."""

    def __init__(self, branches: tuple[tuple[str, Callable[[str, str], bool]], ...], tail: str = "") -> None:
        self._branches = branches
        self._tail = tail
        self._compiled: dict[tuple[int, ...], re.Pattern[str]] = {}

    def pattern(self, line: str, lower: str) -> re.Pattern[str] | None:
        which: list[int] = []
        for i, (_, guard) in enumerate(self._branches):
            if guard(line, lower):
                which.append(i)
        if not which:
            return None
        key = tuple(which)
        rx = self._compiled.get(key)
        if rx is None:
            rx = self._compiled[key] = re.compile(
                "(?:" + "|".join(self._branches[i][0] for i in which) + ")" + self._tail
            )
        return rx


_USER_KEYS = ("user", "logname", "acct", "uname")
_USER_CTX = _Gated(
    (
        (r"\b(?:for|of|by) (?:invalid |illegal )?user [\"']?", lambda s, lo: "user " in s),
        (r"\b(?:[Ii]nvalid|[Ii]llegal) user ", lambda s, lo: "user " in s),
        (r"\b(?:Accepted|Failed|Postponed) [\w-]+ for (?:invalid user )?",
         lambda s, lo: " for " in s and ("Accepted " in s or "Failed " in s or "Postponed " in s)),
        (r"(?<![\w-])(?i:r?user|user_?name|logname|acct|uname)(?:=|:[ \t]*)[\"']?",
         lambda s, lo: ("=" in s or ":" in s) and any(k in lo for k in _USER_KEYS)),
        (r"\bby (?=[A-Za-z_][\w.-]*\(uid=)", lambda s, lo: "(uid=" in s),
        (r"\bsudo(?:\[\d+\])?: +", lambda s, lo: "sudo" in s),
        (r"\bUser (?=[\w.$-]+, )", lambda s, lo: "User " in s),
    ),
    _USER_NAME,
)
_HOST_KEYS = ("host", "server_name", "servername", "nodename")
# postfix's name[address]: the address right after a "[" (a pid "[1201]" is none).
_BRACKET_ADDR = re.compile(r"\[(?:\d{1,3}\.|[0-9A-Fa-f]*:)")
_HOST_CTX = _Gated(
    (
        (r"(?<![\w-])(?i:r?host|host_?name|server_?name|nodename)=[\"']?(?P<h>" + _HOSTNAME + r")(?![\w.-])",
         lambda s, lo: "=" in s and any(k in lo for k in _HOST_KEYS)),
        # Possessive name: at each word the name is read once, then the "[" is tested.
        (r"(?<![\w.-])(?P<b>[A-Za-z0-9][A-Za-z0-9_-]{0,62}+(?:\.[A-Za-z0-9_-]{1,63})*+)"
         r"(?=\[(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]*:[0-9A-Fa-f:.]+)\])",
         lambda s, lo: "[" in s and _BRACKET_ADDR.search(s) is not None),
    )
)
_AT_HOST = re.compile(
    r"(?<![\w.%+@-])(?P<u>[A-Za-z_][\w.-]{0,31})@(?P<h>[A-Za-z][A-Za-z0-9-]{0,62}(?:\.[A-Za-z0-9-]{1,63})*)"
    r"(?![\w@-])"
)
_UNIT_SUFFIX = (".service", ".socket", ".timer", ".target", ".mount", ".slice", ".scope", ".path", ".device",
                ".swap", ".automount")  # fmt: skip


_IPISH = re.compile(r"[0-9A-Fa-f:.%]+")


def learnable(name: str) -> bool:
    """A host field worth looking for elsewhere: not a token, not a plain short word."""
    if len(name) < 3 or TOKEN_RE.fullmatch(name) or name.lower() in _NOT_HOSTS or _is_ip(name):
        return False
    return len(name) >= 6 or any(c.isdigit() or c == "-" or c.isupper() for c in name)


def _is_ip(text: str) -> bool:
    if _IPISH.fullmatch(text) is None:  # most names: no exception raised and caught
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


_CACHE = 65536


def _ip_kind(text: str) -> str | None:
    if ":" in text and "::" not in text and text.count(":") < 7:
        return None  # a time of day or similar, never a full IPv6 address
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    return ip_token_kind(addr)


class IdentifierRules:
    """Applies the identifier rules to one line, counting hits per kind."""

    def __init__(self, pseudo: Pseudonymizer, literals: tuple[tuple[str, str], ...]) -> None:
        self.pseudo = pseudo
        ordered = sorted(literals, key=lambda kv: -len(kv[1]))
        self._literal_kind = {value.lower(): kind for kind, value in ordered}
        self._literal_re = (
            re.compile(
                "(?i)(?<![A-Za-z0-9])(?:" + "|".join(re.escape(v) for _, v in ordered) + ")(?![A-Za-z0-9])"
            )
            if ordered
            else None
        )
        # Host names learned from syslog host fields, replaced wherever they appear later
        # ("setting hostname to \"web02.local\""). Lower-case name -> kind.
        self._learned: dict[str, str] = {}
        self._learned_re: re.Pattern[str] | None = None
        self._ip_kinds: dict[str, str | None] = {}  # address text -> token kind (None: left)

    def literals(self, line: str, counts: dict[str, int], prefix: str = "") -> str:
        """Harvested values only (the leak gate's private-profile check); kinds get ``prefix``."""
        if self._literal_re is None:
            return line
        lower = line.lower()
        if not any(v in lower for v in self._literal_kind):
            return line

        def literal(m: re.Match[str]) -> str:
            kind = self._literal_kind.get(m.group(0).lower(), "host")
            counts[prefix + kind] = counts.get(prefix + kind, 0) + 1
            return self.pseudo.token(kind, m.group(0))

        return self._literal_re.sub(literal, line)

    def _learned_word(self, word: str, counts: dict[str, int]) -> str:
        kind = self._learned.get(word.lower())
        if kind is not None:
            counts[kind] = counts.get(kind, 0) + 1
            return self.pseudo.token(kind, word)
        first, dot, rest = word.partition(".")
        if dot and self._learned.get(first.lower()) == "host":  # web02.local, web02.corp.example
            counts["host"] = counts.get("host", 0) + 1
            return self.pseudo.token("host", first) + dot + rest
        return word

    def _host(self, name: str, counts: dict[str, int]) -> str:
        if TOKEN_RE.fullmatch(name) or name.lower() in _NOT_HOSTS or _is_ip(name) or name.isdigit():
            return name
        kind = "fqdn" if "." in name else "host"
        counts[kind] = counts.get(kind, 0) + 1
        return self.pseudo.token(kind, name)

    def _user(self, name: str, counts: dict[str, int]) -> str:
        if TOKEN_RE.fullmatch(name) or name in SYSTEM_USERS or name.lower() in SYSTEM_USERS:
            return name
        counts["user"] = counts.get("user", 0) + 1
        return self.pseudo.token("user", name)

    def apply(self, line: str, counts: dict[str, int]) -> str:
        pseudo = self.pseudo

        def count(rule: str) -> None:
            counts[rule] = counts.get(rule, 0) + 1

        def email(m: re.Match[str]) -> str:
            if m.group(0).endswith(_UNIT_SUFFIX):
                return m.group(0)  # user@1000.service is a systemd unit, not an address
            count("email")
            return pseudo.token("email", m.group(0))

        def user_ctx(m: re.Match[str]) -> str:
            s, e = m.span("u")
            b = m.start()
            return m.group(0)[: s - b] + self._user(m.group("u"), counts) + m.group(0)[e - b :]

        def host_ctx(m: re.Match[str]) -> str:
            group = "h" if m.groupdict().get("h") is not None else "b"
            s, e = m.span(group)
            b = m.start()
            return m.group(0)[: s - b] + self._host(m.group(group), counts) + m.group(0)[e - b :]

        def at_host(m: re.Match[str]) -> str:
            host = m.group("h")
            if host.endswith(_UNIT_SUFFIX) or TOKEN_RE.fullmatch(m.group(0)):
                return m.group(0)  # systemd template units: getty@tty1.service
            return self._user(m.group("u"), counts) + "@" + self._host(host, counts)

        def home(m: re.Match[str]) -> str:
            return self._user(m.group(0), counts)

        def mac(m: re.Match[str]) -> str:
            if m.group(0).lower().replace("-", ":") in _NO_MAC:
                return m.group(0)
            count("mac")
            return pseudo.token("mac", m.group(0))

        def ip(m: re.Match[str]) -> str:
            text = m.group(0)
            if text in self._ip_kinds:
                kind = self._ip_kinds[text]
            else:
                kind = self._ip_kinds[text] = _ip_kind(text)
                if len(self._ip_kinds) > _CACHE:
                    self._ip_kinds.clear()
            if kind is None:
                return text
            count("ipv4" if kind.startswith("ip4") else "ipv6")
            return pseudo.token(kind, text)

        out = line
        if "@" in out:
            out = _EMAIL.sub(email, out)
        out = self.literals(out, counts)
        out = self._syslog_head(out, counts)
        if self._learned_re is not None:
            out = self._learned_re.sub(lambda m: self._learned_word(m.group(0), counts), out)
        lower = out.lower()
        if (rx := _USER_CTX.pattern(out, lower)) is not None:
            out = rx.sub(user_ctx, out)
            lower = out.lower()
        if (rx := _HOST_CTX.pattern(out, lower)) is not None:
            out = rx.sub(host_ctx, out)
        if "@" in out:
            out = _AT_HOST.sub(at_host, out)
        if "/home/" in out or "Users" in out:
            out = _HOME.sub(home, out)
        if out.count(":") >= 5 or out.count("-") >= 5:  # a MAC has five separators
            out = _MAC.sub(mac, out)
        if out.count(".") >= 3:
            out = _IPV4.sub(ip, out)
        if ":" in out:
            out = _IPV6.sub(ip, out)
        return out

    def _syslog_head(self, line: str, counts: dict[str, int]) -> str:
        m = _SYSLOG_HEAD.match(line)
        if m is None:
            return line
        ts, tag = m.group("ts"), m.group("tag")
        # Without a BSD time the position alone proves nothing ("2026-… main ERROR x"):
        # the tag must look like syslog's, with a pid or one of the pid-less daemons.
        bsd = ts is not None and not ts[0].isdigit()
        if not bsd and (tag is None or (m.group("pid") is None and tag not in _PIDLESS_TAGS)):
            return line
        host = m.group("host")
        parts = re.split(r"([/@])", host)
        new = "".join(p if p in ("/", "@") else self._host(p, counts) for p in parts)
        grown = False
        for p in parts:
            if p.lower() not in self._learned and learnable(p):
                self._learned[p.lower()] = "fqdn" if "." in p else "host"
                grown = True
        if grown:  # a few dozen names in a real log: one alternation, rebuilt when one is new
            names = "|".join(re.escape(n) for n in sorted(self._learned, key=len, reverse=True))
            self._learned_re = re.compile(r"(?i)(?<![\w.-])(?:" + names + r")(?:\.[\w-]+)*(?![\w-])")
        if new == host:
            return line
        s, e = m.span("host")
        return line[:s] + new + line[e:]
