"""Network rules: NIC errors, TCP retransmissions, DNS, reaching the collector."""

from __future__ import annotations

from collections.abc import Iterator
from types import MappingProxyType
from typing import TYPE_CHECKING

from agent.analysis.model import Evidence, Finding, Severity
from agent.analysis.rule import Rule

if TYPE_CHECKING:
    from agent.analysis.view import BundleView

__all__ = ["CollectorReachability", "DnsResolution", "NicErrors", "TcpRetransmissions"]


class NicErrors(Rule):
    code = "nic-errors"
    title = "Network interface errors or drops"
    description = "An interface counts errors or dropped packets beyond a small share of its traffic."
    options = MappingProxyType({"warn_pct": 0.1, "crit_pct": 1.0, "min_events": 100.0})

    def evaluate(self, view: BundleView) -> Iterator[Finding]:
        for i, nic in enumerate(view.snapshot.network.interfaces):
            c = nic.counters
            bad = c.errin + c.errout + c.dropin + c.dropout
            packets = c.packets_sent + c.packets_recv
            if nic.name == "lo" or bad < self.opt("min_events"):
                continue
            pct = 100.0 * bad / packets if packets else 100.0
            if pct < self.opt("warn_pct"):
                continue
            severity: Severity = "critical" if pct >= self.opt("crit_pct") else "warning"
            base = f"network.interfaces[{i}].counters"
            yield self.finding(
                severity,
                f"{nic.name}: {bad:,} errors/drops ({pct:.2f}% of packets)",
                f"Interface {nic.name} counted {c.errin:,} receive and {c.errout:,} send errors, {c.dropin:,} "
                f"inbound and {c.dropout:,} outbound drops against {packets:,} packets since boot. Errors point "
                "at cabling, duplex or driver problems; drops at full ring buffers or a saturated host.",
                [Evidence(f"network.interfaces[{i}].name", nic.name), Evidence(f"{base}.errin", c.errin),
                 Evidence(f"{base}.errout", c.errout), Evidence(f"{base}.dropin", c.dropin),
                 Evidence(f"{base}.dropout", c.dropout)],
                "Check ethtool -S for the failing counter, speed/duplex negotiation and the switch port; "
                "raise ring buffers (ethtool -G) for drops.",
                subject=nic.name,
            )


class TcpRetransmissions(Rule):
    code = "tcp-retransmissions"
    title = "TCP retransmissions"
    description = "A high share of sent TCP segments were retransmitted."
    options = MappingProxyType({"warn_pct": 2.0, "crit_pct": 5.0, "min_segments": 1000.0})

    def evaluate(self, view: BundleView) -> Iterator[Finding]:
        n = view.snapshot.network_depth
        if not n.tcp_retrans_known:
            return
        if n.tcp_out_segs and n.tcp_out_segs < self.opt("min_segments"):
            return
        pct = n.tcp_retrans_percent
        if pct < self.opt("warn_pct"):
            return
        severity: Severity = "critical" if pct >= self.opt("crit_pct") else "warning"
        yield self.finding(
            severity,
            f"{pct:.1f}% of TCP segments retransmitted",
            f"Between two samples {n.tcp_retrans_segs:,} of {n.tcp_out_segs:,} sent segments were retransmitted "
            f"({pct:.1f}%). Above ~1-2% throughput collapses and requests stall on timeouts.",
            [Evidence("network_depth.tcp_retrans_percent", round(pct, 2)),
             Evidence("network_depth.tcp_retrans_segs", n.tcp_retrans_segs),
             Evidence("network_depth.tcp_out_segs", n.tcp_out_segs)],
            "Look for packet loss on the path (mtr to the peers), NIC errors, and MTU mismatches.",
        )


class DnsResolution(Rule):
    code = "dns-failure"
    title = "DNS resolution failing or slow"
    description = "The resolve test failed, or took too long."
    options = MappingProxyType({"slow_ms": 1000.0})

    def evaluate(self, view: BundleView) -> Iterator[Finding]:
        n = view.snapshot.network_depth
        r = n.resolve
        if not r.name:
            return
        servers = ", ".join(n.dns_servers) or "none configured"
        evidence = [Evidence("network_depth.resolve.name", r.name), Evidence("network_depth.resolve.ok", r.ok),
                    Evidence("network_depth.resolve.duration_ms", round(r.duration_ms, 1)),
                    Evidence("network_depth.dns_servers", servers)]
        if not r.ok:
            yield self.finding(
                "critical",
                f"DNS cannot resolve {r.name}",
                f"Resolving {r.name} failed after {r.duration_ms:.0f} ms: {r.error or 'no error text'}. "
                f"DNS servers: {servers}. Most network clients fail or hang when names do not resolve.",
                [*evidence, Evidence("network_depth.resolve.error", r.error)],
                "Test each server (dig @SERVER NAME), check /etc/resolv.conf or the adapter's DNS settings "
                "and whether a firewall blocks port 53.",
            )
        elif r.duration_ms >= self.opt("slow_ms"):
            yield self.finding(
                "warning",
                f"DNS slow: {r.duration_ms:.0f} ms to resolve {r.name}",
                f"Resolving {r.name} took {r.duration_ms:.0f} ms (DNS servers: {servers}). Every new "
                "connection pays this; a first server that times out before the second answers looks like this.",
                evidence,
                "Time each configured server with dig; remove or fix the slow one.",
            )


class CollectorReachability(Rule):
    code = "collector-unreachable"
    title = "Collector unreachable or slow"
    description = "The support collector could not be reached, or connecting to it was slow."
    options = MappingProxyType({"slow_connect_ms": 500.0, "slow_dns_ms": 1000.0})

    def evaluate(self, view: BundleView) -> Iterator[Finding]:
        c = view.snapshot.network_depth.collector
        if not c.target:
            return
        evidence = [Evidence("network_depth.collector.target", c.target), Evidence("network_depth.collector.ok", c.ok),
                    Evidence("network_depth.collector.dns_ms", round(c.dns_ms, 1)),
                    Evidence("network_depth.collector.connect_ms", round(c.connect_ms, 1))]
        if not c.ok:
            yield self.finding(
                "warning",
                f"Collector {c.target} unreachable",
                f"Connecting to the collector {c.target} failed: {c.error or 'no error text'}. Uploads and "
                "live snapshots will not work from this machine until it can.",
                [*evidence, Evidence("network_depth.collector.error", c.error)],
                "Check the proxy/firewall rules for the collector's host and port; send the bundle file "
                "another way meanwhile.",
            )
        elif c.connect_ms >= self.opt("slow_connect_ms") or c.dns_ms >= self.opt("slow_dns_ms"):
            yield self.finding(
                "info",
                f"Collector {c.target} slow to reach ({c.connect_ms:.0f} ms connect)",
                f"Resolving took {c.dns_ms:.0f} ms and connecting {c.connect_ms:.0f} ms.",
                evidence,
                "Expect slow uploads; check the path (proxy, VPN) if live snapshots time out.",
            )
