"""Operational rules: clock, services, log bursts, reboots, OOM kills, incomplete collection."""

from __future__ import annotations

from collections.abc import Iterator
from types import MappingProxyType
from typing import TYPE_CHECKING

from agent.analysis.model import Evidence, Finding, LogEvidence, Severity
from agent.analysis.rule import Rule
from protos import facts_pb2

if TYPE_CHECKING:
    from agent.analysis.view import BundleView

__all__ = ["ClockSkew", "CollectionIncomplete", "FailedServices", "LogErrorBurst", "OomKills", "RecentReboot"]

_MAX_LISTED = 20


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


class ClockSkew(Rule):
    code = "clock-skew"
    title = "Clock not synchronised or skewed"
    description = "The clock is not synchronised, or differs from NTP or from the collector."
    options = MappingProxyType({"warn_ms": 500.0, "crit_ms": 5000.0, "collector_warn_ms": 5000.0,
                                "collector_crit_ms": 60000.0})

    def evaluate(self, view: BundleView) -> Iterator[Finding]:
        c = view.snapshot.clock
        if c.sync_known and not c.synchronized:
            yield self.finding(
                "warning",
                "Clock not synchronised",
                f"The time source ({c.sync_source or 'none'}) reports the clock as not synchronised. "
                "Timestamps drift, TLS and Kerberos fail when the drift grows, and logs no longer line up "
                "with other machines.",
                [Evidence("clock.synchronized", False), Evidence("clock.sync_source", c.sync_source),
                 Evidence("clock.detail", c.detail)],
                "Check the time service (timedatectl timesync-status, chronyc tracking, w32tm /query /status) "
                "and that NTP (UDP 123) is allowed out.",
                subject="sync",
            )
        offset = abs(c.ntp_offset_ms)
        if c.sync_known and offset >= self.opt("warn_ms"):
            severity: Severity = "critical" if offset >= self.opt("crit_ms") else "warning"
            yield self.finding(
                severity,
                f"Clock {offset:.0f} ms off NTP",
                f"The sync daemon measures an offset of {c.ntp_offset_ms:.0f} ms.",
                [Evidence("clock.ntp_offset_ms", round(c.ntp_offset_ms, 1))],
                "Let the daemon step the clock (chronyc makestep) and find why it drifted.",
                subject="ntp",
            )
        skew = abs(c.collector_offset_ms)
        if c.collector_offset_known and skew >= self.opt("collector_warn_ms"):
            severity = "critical" if skew >= self.opt("collector_crit_ms") else "warning"
            yield self.finding(
                severity,
                f"Clock {skew / 1000:.1f} s away from the collector's",
                f"The collector's clock minus this machine's is {c.collector_offset_ms / 1000:.1f} s. "
                "The timeline in this report is corrected by it; the machine's own logs are not.",
                [Evidence("clock.collector_offset_ms", round(c.collector_offset_ms, 1))],
                "Synchronise the clock; compare log times across machines with this offset in mind.",
                subject="collector",
            )


class FailedServices(Rule):
    code = "services-failed"
    title = "Failed services"
    description = "Services are in a failed state (or auto-start services are stopped)."
    options = MappingProxyType({"crit_count": 5.0})

    def evaluate(self, view: BundleView) -> Iterator[Finding]:
        sv = view.snapshot.services
        failed = list(sv.failed)
        if not failed:
            return
        names = ", ".join(f.name for f in failed[:_MAX_LISTED])
        severity: Severity = "critical" if len(failed) >= self.opt("crit_count") else "warning"
        evidence = [Evidence(f"services.failed[{i}]", f"{f.name}: {f.state}/{f.sub_state} ({f.result or '-'})")
                    for i, f in enumerate(failed[:_MAX_LISTED])]
        yield self.finding(
            severity,
            f"{len(failed)} failed service{'s' if len(failed) > 1 else ''}: {names}"[:160],
            f"The {sv.manager or 'service manager'} reports {len(failed)} failed service(s): {names}.",
            evidence,
            "Read each unit's log (journalctl -u UNIT -b, or the System event log) from the time it failed; "
            "the timeline shows when.",
        )


class LogErrorBurst(Rule):
    code = "log-error-burst"
    title = "Burst of errors in the logs"
    description = "Errors and warnings rose well above their baseline at some point in the window."
    options = MappingProxyType({"crit_ratio": 20.0})

    def evaluate(self, view: BundleView) -> Iterator[Finding]:
        from agent.analysis.timeline import build_timeline

        timeline = build_timeline(view)
        onset = timeline.onset
        if onset is None:
            return
        ratio = onset.count / max(onset.baseline, 0.5)
        severity: Severity = "critical" if ratio >= self.opt("crit_ratio") else "warning"
        examples: list[Evidence | LogEvidence] = [g.example for g in onset.templates if g.example is not None]
        groups = "; ".join(f"{g.count} x “{g.template[:80]}”" for g in onset.templates[:3])
        yield self.finding(
            severity,
            _sentence(timeline.summary.split(" (")[0]),
            f"{timeline.summary} Dominant messages: {groups or 'none templated'}.",
            examples,
            "Start from the first of these lines: what changed at that time (deploys, updates, a disk filling, "
            "a network change)?",
        )


class RecentReboot(Rule):
    code = "recent-reboot"
    title = "Recent reboot"
    description = "The machine booted shortly before the collection."
    options = MappingProxyType({"uptime_s": 3600.0})

    def evaluate(self, view: BundleView) -> Iterator[Finding]:
        h = view.snapshot.host
        if not (0 < h.uptime_seconds < self.opt("uptime_s")):
            return
        yield self.finding(
            "info",
            f"Rebooted {h.uptime_seconds / 60:.0f} min before collection",
            "Counters (errors, swap, NIC drops) restarted at boot and the problem may not have come back yet; "
            "logs from before the boot are in the previous boot's journal.",
            [Evidence("host.uptime_seconds", round(h.uptime_seconds)),
             Evidence("host.boot_time", h.boot_time.ToJsonString() if h.HasField("boot_time") else None)],
            "Ask whether the reboot was planned; if not, look for a crash or watchdog in the previous boot's log.",
        )


class OomKills(Rule):
    code = "oom-kill"
    title = "Processes killed for lack of memory"
    description = "The kernel's OOM killer killed processes (kernel log 'Out of memory: Killed process')."

    def evaluate(self, view: BundleView) -> Iterator[Finding]:
        scan = view.log_scan
        if not scan.oom_kills:
            return
        yield self.finding(
            "critical",
            f"{scan.oom_kills} process{'es' if scan.oom_kills > 1 else ''} killed by the OOM killer",
            "The kernel ran out of memory and killed processes to survive. Services restart or vanish, "
            "and work in flight is lost.",
            scan.oom_evidence,
            "Find what grew before each kill (the kill line lists the biggest processes); set memory limits "
            "or add RAM.",
        )


class CollectionIncomplete(Rule):
    code = "collection-incomplete"
    title = "Some collectors failed"
    description = "Collectors that failed or timed out leave gaps: rules over their facts could not run."

    def evaluate(self, view: BundleView) -> Iterator[Finding]:
        bad_states = {facts_pb2.CollectorStatus.ERROR, facts_pb2.CollectorStatus.TIMEOUT}
        bad = [(i, c) for i, c in enumerate(view.snapshot.collectors) if c.state in bad_states]
        if not bad:
            return
        names = ", ".join(c.name for _, c in bad)
        yield self.finding(
            "info",
            f"Collectors failed: {names}"[:160],
            "These collectors failed or ran out of time, so their facts are missing from this analysis.",
            [Evidence(f"collectors[{i}]", f"{c.name}: {facts_pb2.CollectorStatus.State.Name(c.state)} {c.error}"[:300])
             for i, c in bad],
            "Re-run the collection with a longer budget, or read the error of each collector.",
        )
