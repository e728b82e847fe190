"""Network: one Interface per NIC with its addresses, link state and counters."""

from __future__ import annotations

import socket

import psutil

from agent.collect.framework import CollectContext, Collector
from protos import facts_pb2

_FAMILIES = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}


class NetworkCollector(Collector):
    name = "network"
    description = "Network interfaces: addresses, MAC, link state, MTU, speed, traffic and errors"
    budget_s = 2.0
    facts_field = "network"
    facts_type = facts_pb2.NetworkFacts

    def collect(self, ctx: CollectContext) -> facts_pb2.NetworkFacts:
        duplex = {
            psutil.NIC_DUPLEX_FULL: "full",
            psutil.NIC_DUPLEX_HALF: "half",
            psutil.NIC_DUPLEX_UNKNOWN: "unknown",
        }
        addrs = psutil.net_if_addrs()
        stats = psutil.net_if_stats()
        try:
            counters = psutil.net_io_counters(pernic=True) or {}
        except (OSError, RuntimeError) as exc:
            ctx.warn(f"NIC counters unavailable: {exc}")
            counters = {}
        facts = facts_pb2.NetworkFacts()
        for name in sorted(set(addrs) | set(stats) | set(counters)):
            nic = facts.interfaces.add(name=name)
            for addr in addrs.get(name, ()):
                if addr.family == psutil.AF_LINK:
                    nic.mac = nic.mac or str(addr.address or "")
                elif addr.family in _FAMILIES:
                    nic.addresses.add(
                        family=_FAMILIES[addr.family],
                        address=str(addr.address or ""),
                        netmask=str(addr.netmask or ""),
                        broadcast=str(addr.broadcast or ""),
                    )
            st = stats.get(name)
            if st is not None:
                nic.is_up = bool(st.isup)
                nic.mtu = int(st.mtu)
                nic.speed_mbps = int(st.speed)
                nic.duplex = duplex.get(st.duplex, "unknown")
            c = counters.get(name)
            if c is not None:
                nic.counters.CopyFrom(
                    facts_pb2.NicCounters(
                        bytes_sent=int(c.bytes_sent),
                        bytes_recv=int(c.bytes_recv),
                        packets_sent=int(c.packets_sent),
                        packets_recv=int(c.packets_recv),
                        errin=int(c.errin),
                        errout=int(c.errout),
                        dropin=int(c.dropin),
                        dropout=int(c.dropout),
                    )
                )
        return facts
