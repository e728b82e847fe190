"""Network depth: /proc parsers on crafted text, Windows/macOS parsers on recorded outputs,
and the collector on this machine with a probe to a real listener on loopback."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.collect import CollectionSpec, run_collection
from agent.collect.builtin import netdepth_parse as parse
from agent.collect.builtin.netdepth import probe
from agent.state import Enrollment
from protos import facts_pb2

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

PROC_ROUTE = """\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
wg0\t00000000\t00000000\t0001\t0\t0\t50\t00000000\t0\t0\t0
"""

PROC_IPV6 = """\
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000001 00000000 00000003 eth0
fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo
"""  # noqa: E501

SNMP = """\
Ip: Forwarding DefaultTTL InReceives
Ip: 1 64 1000
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors
Tcp: 1 200 120000 -1 10 5 0 0 2 5000 4000 12 0 3 0
Udp: InDatagrams NoPorts
Udp: 1 2
"""  # noqa: E501


def test_proc_route_default_v4() -> None:
    routes = parse.parse_proc_route(PROC_ROUTE)
    assert routes == [
        parse.DefaultRoute("ipv4", "192.0.2.1", "eth0", 100),
        parse.DefaultRoute("ipv4", "", "wg0", 50),  # a device route without gateway
    ]


def test_proc_ipv6_route_skips_the_unreachable_default_on_lo() -> None:
    assert parse.parse_proc_ipv6_route(PROC_IPV6) == [parse.DefaultRoute("ipv6", "fd00::1", "eth0", 1024)]


@given(st.text(max_size=500))
def test_route_parsers_never_crash(text: str) -> None:
    for fn in (parse.parse_proc_route, parse.parse_proc_ipv6_route, parse.parse_route_print,
               parse.parse_netstat_rn):
        fn(text)
    parse.parse_resolv_conf(text)
    parse.parse_scutil_dns(text)


def test_resolv_conf() -> None:
    cfg = parse.parse_resolv_conf(
        "# generated\nnameserver 10.0.0.2\nnameserver 10.0.0.3 # second\nsearch a.example b.example\n"
        "options ndots:2\nnameserver 10.0.0.2\n"
    )
    assert cfg == parse.DnsConfig(("10.0.0.2", "10.0.0.3"), ("a.example", "b.example"))


def test_snmp_and_retransmission_rate() -> None:
    assert parse.parse_snmp_tcp(SNMP) == (4000, 12)
    assert parse.retrans_percent((4000, 12), (5000, 17)) == pytest.approx(0.5)
    assert parse.retrans_percent((4000, 12), (4000, 12)) == 0.0
    with pytest.raises(ValueError, match="no Tcp"):
        parse.parse_snmp_tcp("Ip: a\nIp: 1\n")


def test_windows_route_print_fixture() -> None:
    routes = parse.parse_route_print((FIXTURES / "windows/route_print.txt").read_text())
    assert routes == [
        parse.DefaultRoute("ipv4", "10.20.0.1", "10.20.0.57", 25),
        parse.DefaultRoute("ipv4", "10.30.0.1", "10.30.0.12", 50),
        parse.DefaultRoute("ipv6", "fe80::1", "12", 281),
    ]


def test_windows_dns_fixture() -> None:
    cfg = parse.parse_dns_client_json((FIXTURES / "windows/dns_client_server_address.json").read_text())
    assert cfg.servers == ("10.20.0.10", "10.20.0.11", "fec0:0:0:ffff::1")
    with pytest.raises(ValueError, match="not JSON"):
        parse.parse_dns_client_json("Get-DnsClientServerAddress : not recognized")


def test_macos_fixtures() -> None:
    routes = parse.parse_netstat_rn((FIXTURES / "macos/netstat_rn.txt").read_text())
    assert routes == [
        parse.DefaultRoute("ipv4", "192.168.1.1", "en0"),
        parse.DefaultRoute("ipv6", "fe80::a62b:b0ff:fe11:2233", "en0"),
        parse.DefaultRoute("ipv6", "fe80::", "utun0"),
    ]
    dns = parse.parse_scutil_dns((FIXTURES / "macos/scutil_dns.txt").read_text())
    assert dns.servers == ("192.168.1.1", "2001:db8::53")
    assert dns.search == ("corp.example.com", "example.com")


def test_split_target() -> None:
    assert parse.split_target("collector.example:7443") == ("collector.example", 7443)
    assert parse.split_target("[::1]:50051") == ("::1", 50051)
    for bad in ("nohost", "host:0", "host:99999", ":12"):
        with pytest.raises(ValueError):
            parse.split_target(bad)


@pytest.fixture
def listener() -> Iterator[int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                conn.close()
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join()
        srv.close()


def test_probe_separates_dns_and_connect(listener: int) -> None:
    ok = probe(f"localhost:{listener}", 2.0)
    assert ok.ok and ok.error == "" and ok.dns_ms > 0 and ok.connect_ms > 0
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()  # nothing listens there now
    refused = probe(f"127.0.0.1:{port}", 2.0)
    assert not refused.ok and refused.error.startswith("connect:")
    bad = probe("no-such-host.invalid:80", 2.0)
    assert not bad.ok and bad.error.startswith("dns:")


def test_collector_on_this_machine(listener: int) -> None:
    spec = CollectionSpec(
        only=("netdepth",), options={"collector_target": f"127.0.0.1:{listener}", "retrans_sample_s": 0.1}
    )
    result = run_collection(spec)
    status = {s.name: s for s in result.statuses}["netdepth"]
    assert status.state == facts_pb2.CollectorStatus.OK, status.error
    nd = result.snapshot.network_depth
    assert nd.collector.ok and nd.collector.target == f"127.0.0.1:{listener}"
    assert nd.resolve.name == "127.0.0.1" and nd.resolve.ok
    assert nd.tcp_retrans_known and nd.tcp_out_segs > 0
    ours = [p for p in nd.listening if p.port == listener]
    assert ours and ours[0].protocol == "tcp" and ours[0].address == "127.0.0.1"
    assert nd.connections_by_state["LISTEN"] >= 1


def test_resolve_test_needs_a_name_and_says_so() -> None:
    """No collector and no resolve_name: no test that would only read the hosts file, and a warning."""
    result = run_collection(CollectionSpec(only=("netdepth",), options={"retrans_sample_s": 0.0}))
    nd = result.snapshot.network_depth
    assert not nd.HasField("resolve") and not nd.HasField("collector")
    warnings = [w for name, w in result.warnings if name == "netdepth"]
    assert any("resolve test not run" in w and "resolve_name" in w for w in warnings), warnings


def test_resolve_name_option() -> None:
    spec = CollectionSpec(only=("netdepth",), options={"retrans_sample_s": 0.0, "resolve_name": "localhost"})
    nd = run_collection(spec).snapshot.network_depth
    assert nd.resolve.name == "localhost" and nd.resolve.ok and nd.resolve.addresses


def test_enrolled_collector_host() -> None:
    assert Enrollment("a", "collector.example:7443", None, "k").collector_host == "collector.example"
    assert Enrollment("a", "[::1]:7443", None, "k").collector_host == "::1"
    assert Enrollment("a", "nonsense", None, "k").collector_host == ""


def test_network_collector_keeps_mtu_errors_and_drops() -> None:
    """MTU, errors and drops stay in the existing network collector (not duplicated here)."""
    nic = facts_pb2.Interface.DESCRIPTOR.fields_by_name
    assert "mtu" in nic
    counters = facts_pb2.NicCounters.DESCRIPTOR.fields_by_name
    assert {"errin", "errout", "dropin", "dropout"} <= set(counters)
    result = run_collection(CollectionSpec(only=("network",)))
    lo = [i for i in result.snapshot.network.interfaces if i.name == "lo"]
    assert not lo or lo[0].mtu > 0
