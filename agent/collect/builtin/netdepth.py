"""Network depth: default routes, DNS and a resolve test, TCP retransmissions, listeners,
connection states, and a reachability probe to the collector (DNS time apart from
connect time). MTU, errors and drops per NIC stay in the ``network`` collector.

Options: ``resolve_name`` (default: the collector's host when ``collector_target`` is
set; the CLI and the daemon also set it to the enrolled collector's host),
``collector_target`` ("HOST:PORT"), ``resolve_timeout_s`` (default 2),
``retrans_sample_s`` (default 0.25). With no name to resolve the test is not run and a
warning says so: resolving "localhost" would answer from the hosts file and say nothing
about DNS.

TCP retransmissions come from two reads of ``/proc/net/snmp`` (Linux). Elsewhere they are
not measured and a warning says so.

``getaddrinfo`` has no timeout of its own, so every lookup runs in a ``Pending`` daemon
thread and is abandoned at its timeout; a dead resolver costs the timeout, not minutes.
"""

from __future__ import annotations

import socket
import time
from collections import Counter

import psutil

from agent.collect.builtin import netdepth_parse as parse
from agent.collect.command import CommandNotFound, run_command
from agent.collect.framework import CollectContext, Collector, Pending, current_platform, describe_exception
from agent.collect.options import FloatOption, StrOption
from protos import facts_pb2

_CMD_MAX_BYTES = 1 << 20
_MAX_LISTENING = 500


COLLECTOR_TARGET = StrOption(
    "collector_target", "", "the collector HOST:PORT this run uploads to (set by --upload)", internal=True
)
RESOLVE_NAME = StrOption(
    "resolve_name",
    "",
    "the name the DNS resolve test looks up",
    shown_default="the collector's host (the upload target, else the enrolled collector; with neither the test "
    "is not run and a warning says so)",
)
RESOLVE_TIMEOUT = FloatOption(
    "resolve_timeout_s", 2.0, "the DNS resolve test's bound, seconds", minimum=0.01, maximum=30.0
)
RETRANS_SAMPLE = FloatOption("retrans_sample_s", 0.25, "the TCP retransmission window, seconds", maximum=10.0)


class NetworkDepthCollector(Collector):
    name = "netdepth"
    description = "Default routes, DNS and resolve test, TCP retransmissions, listeners, collector reachability"
    budget_s = 5.0
    facts_field = "network_depth"
    facts_type = facts_pb2.NetworkDepthFacts

    options = (COLLECTOR_TARGET, RESOLVE_NAME, RESOLVE_TIMEOUT, RETRANS_SAMPLE)

    def collect(self, ctx: CollectContext) -> facts_pb2.NetworkDepthFacts:
        target = ctx.get(COLLECTOR_TARGET).strip()
        host = ""
        if target:
            host, _ = parse.split_target(target)
        name = ctx.get(RESOLVE_NAME).strip() or host
        timeout = ctx.get(RESOLVE_TIMEOUT)
        retrans_wait = ctx.get(RETRANS_SAMPLE)
        facts = facts_pb2.NetworkDepthFacts()
        platform = current_platform()
        snmp_first = _snmp(ctx) if platform == "linux" else None
        if platform != "linux":
            ctx.warn(f"TCP retransmissions not measured: no /proc/net/snmp on {platform}")
        started = time.monotonic()
        # Lookups run while the retransmission window elapses.
        resolve = Pending(lambda: _timed_lookup(name), name="casefile-resolve") if name else None
        routes, dns = _routes_and_dns(ctx, platform)
        facts.default_routes.extend(
            facts_pb2.Route(family=r.family, gateway=r.gateway, interface=r.interface, metric=r.metric)
            for r in routes
        )
        facts.dns_servers.extend(dns.servers)
        facts.dns_search.extend(dns.search)
        _sockets(ctx, facts)
        if resolve is not None:
            facts.resolve.CopyFrom(_resolve_result(name, resolve, min(timeout, ctx.remaining())))
        else:
            ctx.warn("DNS resolve test not run: no collector is known; set resolve_name=HOST to run it")
        if target:
            facts.collector.CopyFrom(probe(target, min(timeout, ctx.remaining())))
        if snmp_first is not None:
            time.sleep(max(0.0, min(retrans_wait - (time.monotonic() - started), ctx.remaining() - 0.2)))
            snmp_second = _snmp(ctx)
            if snmp_second is not None:
                facts.tcp_retrans_known = True
                facts.tcp_retrans_percent = parse.retrans_percent(snmp_first, snmp_second)
                facts.tcp_out_segs, facts.tcp_retrans_segs = snmp_second
        return facts


def _snmp(ctx: CollectContext) -> tuple[int, int] | None:
    try:
        with open("/proc/net/snmp") as fh:
            return parse.parse_snmp_tcp(fh.read())
    except (OSError, ValueError) as exc:
        ctx.warn(f"TCP counters unavailable: {exc}")
        return None


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return fh.read()


def _routes_and_dns(ctx: CollectContext, platform: str) -> tuple[list[parse.DefaultRoute], parse.DnsConfig]:
    routes: list[parse.DefaultRoute] = []
    dns = parse.DnsConfig((), ())
    if platform == "windows":
        out = _command(ctx, ["route", "print"])
        routes = parse.parse_route_print(out) if out else []
        out = _command(
            ctx,
            ["powershell", "-NoProfile", "-NonInteractive", "-Command",
             "Get-DnsClientServerAddress | Select-Object InterfaceAlias,AddressFamily,ServerAddresses "
             "| ConvertTo-Json"],
        )
        try:
            dns = parse.parse_dns_client_json(out) if out else dns
        except ValueError as exc:
            ctx.warn(str(exc))
        return routes, dns
    if platform == "darwin":
        out = _command(ctx, ["netstat", "-rn"])
        routes = parse.parse_netstat_rn(out) if out else []
        out = _command(ctx, ["scutil", "--dns"])
        return routes, parse.parse_scutil_dns(out) if out else dns
    for path, parser in (("/proc/net/route", parse.parse_proc_route), ("/proc/net/ipv6_route",
                                                                         parse.parse_proc_ipv6_route)):
        try:
            routes.extend(parser(_read(path)))
        except OSError as exc:
            ctx.warn(f"{path}: {exc.strerror or exc}")
    try:
        dns = parse.parse_resolv_conf(_read("/etc/resolv.conf"))
    except OSError as exc:
        ctx.warn(f"/etc/resolv.conf: {exc.strerror or exc}")
    if "127.0.0.53" in dns.servers:
        # systemd-resolved's stub: the real upstream servers are listed here.
        try:
            upstream = parse.parse_resolv_conf(_read("/run/systemd/resolve/resolv.conf"))
            dns = parse.DnsConfig(tuple(dict.fromkeys((*dns.servers, *upstream.servers))), dns.search)
        except OSError:
            pass
    return routes, dns


def _command(ctx: CollectContext, argv: list[str]) -> str:
    try:
        res = run_command(argv, timeout=max(0.2, min(3.0, ctx.remaining() - 0.5)), max_bytes=_CMD_MAX_BYTES)
    except CommandNotFound as exc:
        ctx.warn(str(exc))
        return ""
    if not res.ok:
        ctx.warn(res.describe_failure())
        return ""
    return res.stdout.decode("utf-8", "replace")


def _timed_lookup(name: str) -> tuple[float, list[str]]:
    started = time.perf_counter()
    infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    elapsed = (time.perf_counter() - started) * 1000
    return elapsed, list(dict.fromkeys(str(info[4][0]) for info in infos))


def _resolve_result(
    name: str, pending: Pending[tuple[float, list[str]]], timeout: float
) -> facts_pb2.ResolveTest:
    out = facts_pb2.ResolveTest(name=name)
    try:
        ms, addresses = pending.result(timeout)
    except TimeoutError:
        out.error = f"no answer within {timeout:.2f} s"
        out.duration_ms = timeout * 1000
        return out
    except OSError as exc:
        out.error = describe_exception(exc)
        return out
    out.ok, out.duration_ms = True, ms
    out.addresses.extend(addresses)
    return out


def probe(target: str, timeout: float) -> facts_pb2.Reachability:
    """Resolve then TCP-connect to ``target``; the error names the stage that failed."""
    out = facts_pb2.Reachability(target=target)
    try:
        host, port = parse.split_target(target)
    except ValueError as exc:
        out.error = str(exc)
        return out
    started = time.perf_counter()
    lookup = Pending(lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM), name="casefile-probe-dns")
    try:
        infos = lookup.result(timeout)
    except TimeoutError:
        out.error = f"dns: no answer within {timeout:.2f} s"
        return out
    except OSError as exc:
        out.error = f"dns: {describe_exception(exc)}"
        return out
    finally:
        out.dns_ms = (time.perf_counter() - started) * 1000
    if not infos:
        out.error = "dns: no addresses"
        return out
    family, socktype, proto, _, addr = infos[0]
    sock = socket.socket(family, socktype, proto)
    sock.settimeout(max(0.01, timeout))
    started = time.perf_counter()
    try:
        sock.connect(addr)
    except OSError as exc:
        out.error = f"connect: {describe_exception(exc)}"
        return out
    finally:
        out.connect_ms = (time.perf_counter() - started) * 1000
        sock.close()
    out.ok = True
    return out


def _protocol(conn: psutil._common.sconn) -> str:
    base = "tcp" if conn.type == socket.SOCK_STREAM else "udp"
    return base + ("6" if conn.family == socket.AF_INET6 else "")


def _sockets(ctx: CollectContext, facts: facts_pb2.NetworkDepthFacts) -> None:
    try:
        conns = psutil.net_connections(kind="inet")
    except psutil.AccessDenied:
        ctx.warn("listening ports and connections need root on this platform")
        return
    except OSError as exc:
        ctx.warn(f"connections unavailable: {exc}")
        return
    states: Counter[str] = Counter()
    names: dict[int, str] = {}
    seen: set[tuple[str, str, int, int]] = set()
    listening = []
    for c in conns:
        is_tcp = c.type == socket.SOCK_STREAM
        if is_tcp:
            states[str(c.status)] += 1
        if (is_tcp and c.status != psutil.CONN_LISTEN) or (not is_tcp and c.raddr):
            continue
        if not c.laddr:
            continue
        pid = int(c.pid or 0)  # None: another user's socket and we may not see whose
        key = (_protocol(c), str(c.laddr.ip), int(c.laddr.port), pid)
        if key in seen:
            continue
        seen.add(key)
        listening.append(key)
    for proto, ip, port, pid in sorted(listening)[:_MAX_LISTENING]:
        facts.listening.add(protocol=proto, address=ip, port=port, pid=pid, process=_name(pid, names))
    if len(listening) > _MAX_LISTENING:
        ctx.warn(f"{len(listening)} listening sockets; kept the first {_MAX_LISTENING}")
    for state, n in states.items():
        facts.connections_by_state[state] = n


def _name(pid: int, cache: dict[int, str]) -> str:
    if pid <= 0:
        return ""
    if pid not in cache:
        try:
            cache[pid] = str(psutil.Process(pid).name())
        except (psutil.Error, OSError):
            cache[pid] = ""
    return cache[pid]
