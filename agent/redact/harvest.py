"""Values harvested from this host, so they are caught even where no pattern matches.

sos clean's "preppers" idea: hostnames like ``dhcp-192-168-0-66`` or a user name in a
path match no generic pattern, but they are known before a line is read.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Harvested", "harvest_host"]

# Names that identify nobody and would otherwise over-redact every line; also the
# words tokens are made of, so a token never looks like a harvested value again.
_SKIP_NAMES = frozenset(
    {
        "localhost", "localdomain", "localhost.localdomain", "root", "nobody", "daemon", "admin",
        "user", "users", "host", "fqdn", "domain", "email", "mac", "private", "public", "shared",
        "linklocal", "ip4", "ip6", "redacted", "unknown", "none", "debian", "ubuntu",
    }
)  # fmt: skip
_MIN_NAME = 3


@dataclass(frozen=True)
class Harvested:
    """Identifiers of this host. Empty tuples are fine (tests, other platforms)."""

    hostnames: tuple[str, ...] = ()
    fqdns: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    macs: tuple[str, ...] = ()
    users: tuple[str, ...] = ()

    def literals(self) -> tuple[tuple[str, str], ...]:
        """(kind, value) for the literal matcher: names and dashed IPv4 forms (addresses have patterns)."""
        out: dict[str, str] = {}
        for kind, values in (
            ("fqdn", self.fqdns),
            ("host", self.hostnames),
            ("domain", self.domains),
            ("user", self.users),
        ):
            for v in values:
                out.setdefault(v.lower(), kind)
        # An address written with dashes is part of a host name (ip-10-1-2-3.ec2.internal,
        # dhcp-192-168-0-66, sos#3388): no address pattern sees it, so it is a literal.
        for ip in self.ips:
            if "." in ip:
                out.setdefault(ip.replace(".", "-"), "host")
        return tuple((kind, value) for value, kind in out.items())

    def values(self) -> tuple[tuple[str, str], ...]:
        """Every harvested value with its kind, for the leak gate."""
        return (
            *self.literals(),
            *(("ip", v) for v in self.ips),
            *(("mac", v) for v in self.macs),
        )


def _names(values: Iterable[str], *, minimum: int = _MIN_NAME) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for v in values:
        v = v.strip().strip(".")
        if len(v) >= minimum and v.lower() not in _SKIP_NAMES:
            seen.setdefault(v, None)
    return tuple(seen)


def _local_users() -> list[str]:
    users: list[str] = []
    try:
        with open("/etc/passwd", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                parts = line.split(":")
                if len(parts) >= 3 and parts[2].isdigit() and 1000 <= int(parts[2]) < 65534:
                    users.append(parts[0])
    except OSError:
        pass
    try:
        import getpass

        users.append(getpass.getuser())
    except (OSError, KeyError, ImportError):
        pass
    for var in ("SUDO_USER", "USER", "USERNAME"):
        if os.environ.get(var):
            users.append(os.environ[var])
    return users


def harvest_host() -> Harvested:
    """Hostname, FQDN, its domain, addresses and MACs (psutil), local users (uid ≥ 1000)."""
    import psutil

    host = socket.gethostname()
    # getfqdn asks the resolver; a dead one would stall the run, so it gets no say
    # beyond what the hosts file and the name itself give.
    fqdn = host if "." in host else ""
    try:
        with open("/etc/hostname", encoding="utf-8", errors="replace") as fh:
            named = fh.read().strip()
        fqdn = fqdn or (named if "." in named else "")
    except OSError:
        pass
    hostnames = [host.split(".", 1)[0], host]
    fqdns = [fqdn] if fqdn else []
    domains = [fqdn.split(".", 1)[1]] if fqdn.count(".") >= 2 else []
    ips: list[str] = []
    macs: list[str] = []
    try:
        nics = psutil.net_if_addrs()
    except OSError:
        nics = {}
    for addrs in nics.values():
        for a in addrs:
            if a.family == psutil.AF_LINK:
                mac = a.address.lower().replace("-", ":")
                if mac.count(":") == 5 and mac not in ("00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff"):
                    macs.append(mac)
                continue
            try:
                addr = ipaddress.ip_address(a.address.split("%", 1)[0])
            except ValueError:
                continue
            if not (addr.is_loopback or addr.is_unspecified or addr.is_multicast):
                ips.append(str(addr))
    return Harvested(
        hostnames=_names(hostnames, minimum=2),
        fqdns=_names(fqdns),
        domains=_names(domains),
        ips=tuple(dict.fromkeys(ips)),
        macs=tuple(dict.fromkeys(macs)),
        users=_names(_local_users()),
    )
