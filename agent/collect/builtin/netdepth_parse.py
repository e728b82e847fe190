"""Parsers for network state: Linux /proc files, Windows and macOS command output.

All inputs are untrusted text; a line that does not parse is skipped, never fatal,
because one odd route must not hide the default route next to it.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass

RTF_UP = 0x1
RTF_GATEWAY = 0x2
RTF_REJECT = 0x200


@dataclass(frozen=True)
class DefaultRoute:
    family: str  # "ipv4" | "ipv6"
    gateway: str
    interface: str
    metric: int = 0


@dataclass(frozen=True)
class DnsConfig:
    servers: tuple[str, ...]
    search: tuple[str, ...]


# --- Linux ---------------------------------------------------------------------------


def parse_proc_route(text: str) -> list[DefaultRoute]:
    """Default IPv4 routes from /proc/net/route (gateway is little-endian hex)."""
    routes = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 8:
            continue
        try:
            dest, gw, flags, metric, mask = int(f[1], 16), int(f[2], 16), int(f[3], 16), int(f[6]), int(f[7], 16)
        except ValueError:
            continue
        if dest == 0 and mask == 0 and flags & RTF_UP and not flags & RTF_REJECT and 0 <= gw < 2**32:
            gateway = socket.inet_ntoa(struct.pack("<I", gw)) if flags & RTF_GATEWAY else ""
            routes.append(DefaultRoute("ipv4", gateway, f[0], metric))
    return routes


def parse_proc_ipv6_route(text: str) -> list[DefaultRoute]:
    """Default IPv6 routes from /proc/net/ipv6_route (the unreachable one on lo is skipped)."""
    routes = []
    for line in text.splitlines():
        f = line.split()
        if len(f) < 10 or len(f[0]) != 32 or len(f[4]) != 32:
            continue
        try:
            dest, plen, metric, flags = int(f[0], 16), int(f[1], 16), int(f[5], 16), int(f[8], 16)
            hop = ipaddress.IPv6Address(bytes.fromhex(f[4]))
        except ValueError:
            continue
        if dest == 0 and plen == 0 and flags & RTF_UP and not flags & RTF_REJECT:
            routes.append(DefaultRoute("ipv6", "" if hop.is_unspecified else str(hop), f[9], metric))
    return routes


def parse_resolv_conf(text: str) -> DnsConfig:
    servers: list[str] = []
    search: list[str] = []
    for line in text.splitlines():
        f = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(f) >= 2 and f[0] == "nameserver":
            servers.append(f[1])
        elif f and f[0] in ("search", "domain"):
            search = f[1:]  # the last search/domain line wins, as in the resolver
    return DnsConfig(tuple(dict.fromkeys(servers)), tuple(search))


def parse_snmp_tcp(text: str) -> tuple[int, int]:
    """(OutSegs, RetransSegs) from /proc/net/snmp's header/value line pair for Tcp."""
    lines = [ln.split() for ln in text.splitlines() if ln.startswith("Tcp:")]
    if len(lines) < 2:
        raise ValueError("no Tcp: lines in /proc/net/snmp")
    header, values = lines[0][1:], lines[1][1:]
    if len(header) != len(values):
        raise ValueError("Tcp: header and values differ in length")
    table = dict(zip(header, values, strict=True))
    try:
        return int(table["OutSegs"]), int(table["RetransSegs"])
    except (KeyError, ValueError):
        raise ValueError("Tcp: OutSegs/RetransSegs missing or not numbers") from None


def retrans_percent(first: tuple[int, int], second: tuple[int, int]) -> float:
    """Retransmitted / sent segments between two samples, in percent (0 with no traffic)."""
    out = second[0] - first[0]
    retrans = second[1] - first[1]
    if out <= 0 or retrans < 0:
        return 0.0
    return 100.0 * retrans / out


# --- Windows ------------------------------------------------------------------------

_IPV4 = r"\d{1,3}(?:\.\d{1,3}){3}"
_WIN_V4 = re.compile(
    rf"^\s*0\.0\.0\.0\s+0\.0\.0\.0\s+(?P<gw>{_IPV4}|On-link)\s+(?P<iface>{_IPV4})\s+(?P<metric>\d+)\s*$"
)
_WIN_V6 = re.compile(r"^\s*(?P<iface>\d+)\s+(?P<metric>\d+)\s+::/0\s+(?P<gw>\S+)\s*$")


def parse_route_print(text: str) -> list[DefaultRoute]:
    """Default routes from Windows ``route print`` (active routes only, not persistent)."""
    routes = []
    section = ""
    for line in text.splitlines():
        low = line.strip().lower()
        if low.startswith("ipv4 route table") or low.startswith("ipv4-routentabelle"):
            section = "v4"
        elif low.startswith("ipv6 route table") or low.startswith("ipv6-routentabelle"):
            section = "v6"
        elif low.startswith(("persistent routes", "ständige routen")):
            section = "persistent-" + section
        elif section == "v4" and (m := _WIN_V4.match(line)):
            gw = "" if m["gw"] == "On-link" else m["gw"]
            routes.append(DefaultRoute("ipv4", gw, m["iface"], int(m["metric"])))
        elif section == "v6" and (m := _WIN_V6.match(line)):
            gw = "" if m["gw"] == "On-link" else m["gw"]
            routes.append(DefaultRoute("ipv6", gw, m["iface"], int(m["metric"])))
    return routes


def parse_dns_client_json(text: str) -> DnsConfig:
    """``Get-DnsClientServerAddress | ConvertTo-Json``: servers of every interface, deduped."""
    try:
        data = json.loads(text.lstrip("\ufeff") or "null")
    except json.JSONDecodeError as exc:
        raise ValueError(f"Get-DnsClientServerAddress output is not JSON: {exc}") from None
    items = data if isinstance(data, list) else [data] if data is not None else []
    servers: list[str] = []
    for item in items:
        if not isinstance(item, Mapping):
            continue
        addresses = item.get("ServerAddresses") or []
        if isinstance(addresses, str):
            addresses = [addresses]
        if isinstance(addresses, list):
            servers.extend(str(a) for a in addresses if isinstance(a, str) and a)
    return DnsConfig(tuple(dict.fromkeys(servers)), ())


# --- macOS --------------------------------------------------------------------------


def parse_netstat_rn(text: str) -> list[DefaultRoute]:
    """Default routes from macOS ``netstat -rn`` (Internet and Internet6 sections)."""
    routes = []
    family = ""
    for line in text.splitlines():
        s = line.strip()
        if s == "Internet:":
            family = "ipv4"
        elif s == "Internet6:":
            family = "ipv6"
        f = s.split()
        if family and len(f) >= 4 and f[0] == "default" and "U" in f[2]:
            gw = f[1].split("%", 1)[0]
            if gw.startswith("link#"):
                gw = ""
            routes.append(DefaultRoute(family, gw, f[3]))
    return routes


_SCUTIL = re.compile(r"^\s*(?P<key>nameserver|search domain)\[\d+\]\s*:\s*(?P<value>\S+)\s*$")


def parse_scutil_dns(text: str) -> DnsConfig:
    """``scutil --dns``: resolvers of the main configuration (scoped duplicates merged)."""
    servers: list[str] = []
    search: list[str] = []
    for line in text.splitlines():
        m = _SCUTIL.match(line)
        if m:
            (servers if m["key"] == "nameserver" else search).append(m["value"])
    return DnsConfig(tuple(dict.fromkeys(servers)), tuple(dict.fromkeys(search)))


def split_target(target: str) -> tuple[str, int]:
    """"host:port" / "[v6]:port" → (host, port); a clear ValueError otherwise."""
    m = re.fullmatch(r"\[(?P<h6>[^\]]+)\]:(?P<p6>\d+)|(?P<h>[^:\s]+):(?P<p>\d+)", target.strip())
    if not m:
        raise ValueError(f"collector target {target!r} is not HOST:PORT")
    host = m["h6"] or m["h"]
    port = int(m["p6"] or m["p"])
    if not 0 < port < 65536:
        raise ValueError(f"collector target {target!r}: port out of range")
    return host, port
