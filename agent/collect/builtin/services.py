"""Services: failed systemd units, stopped auto-start Windows services, failing launchd jobs.

* systemd: ``systemctl list-units --state=failed --all --output=json`` (systemd ≥ 240
  prints JSON); older ones get ``--plain --no-legend`` parsed. Why each failed unit
  failed comes from one ``systemctl show`` for all of them: its ``Result`` (exit-code,
  signal, timeout, core-dump, start-limit-hit…) and the main process's exit status or
  signal. A unit whose file is missing says so ("load: not-found"). The total is the
  number of loaded units from ``list-units --all``.
* Windows: ``Get-CimInstance Win32_Service`` as JSON through PowerShell; a service with
  StartMode Auto that is not Running is "failed" (what an engineer looks for first).
* macOS: ``launchctl list`` rows whose last exit status is non-zero.
* Anything else, or a host without a running service manager (a container): the facts
  carry ``unsupported_reason``, the collector's status stays OK.
"""

from __future__ import annotations

import json
import os
import signal

from agent.collect.command import CommandNotFound, run_command
from agent.collect.framework import CollectContext, Collector, current_platform
from protos import facts_pb2

__all__ = [
    "ServicesCollector",
    "parse_launchctl_list",
    "parse_systemctl_json",
    "parse_systemctl_plain",
    "parse_systemctl_show",
    "parse_win32_services",
]

_MAX_OUT = 16 * 1024 * 1024


def parse_systemctl_json(text: str) -> list[facts_pb2.ServiceInfo]:
    """``systemctl list-units --output=json`` rows as ServiceInfo; bad input is ValueError."""
    rows = json.loads(text)
    if not isinstance(rows, list):
        raise ValueError("systemctl JSON output is not a list")
    out: list[facts_pb2.ServiceInfo] = []
    for row in rows:
        if not isinstance(row, dict):
            continue
        out.append(
            facts_pb2.ServiceInfo(
                name=str(row.get("unit", "")),
                state=str(row.get("active", "")),
                sub_state=str(row.get("sub", "")),
                description=str(row.get("description", "")),
                result=_load_note(str(row.get("load", ""))),
            )
        )
    return out


def parse_systemctl_plain(text: str) -> list[facts_pb2.ServiceInfo]:
    """``UNIT LOAD ACTIVE SUB DESCRIPTION`` rows of ``--plain --no-legend``."""
    out: list[facts_pb2.ServiceInfo] = []
    for line in text.splitlines():
        parts = line.lstrip("●* ").split(None, 4)
        if len(parts) < 4:
            continue
        out.append(
            facts_pb2.ServiceInfo(
                name=parts[0],
                result=_load_note(parts[1]),
                state=parts[2],
                sub_state=parts[3],
                description=parts[4] if len(parts) > 4 else "",
            )
        )
    return out


def _load_note(load: str) -> str:
    return "" if load in ("", "loaded") else f"load: {load}"


_CLD_EXITED, _CLD_KILLED, _CLD_DUMPED = 1, 2, 3  # ExecMainCode, as in waitid(2)


def parse_systemctl_show(text: str) -> dict[str, str]:
    """Unit id -> why it failed, from ``systemctl show -p Id,Result,ExecMainCode,ExecMainStatus``.

    The output is one ``KEY=VALUE`` block per unit, blocks separated by an empty line.
    "exit-code, status 1", "signal, SIGKILL", "timeout"; "" for a unit whose Result is
    "success" and whose main process exited 0.
    """
    out: dict[str, str] = {}
    for block in text.replace("\r\n", "\n").split("\n\n"):
        props: dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                props[key.strip()] = value.strip()
        unit = props.get("Id", "")
        if not unit:
            continue
        parts = [r] if (r := props.get("Result", "")) and r != "success" else []
        try:
            code, status = int(props.get("ExecMainCode") or 0), int(props.get("ExecMainStatus") or 0)
        except ValueError:
            code = status = 0
        if code == _CLD_EXITED and status:
            parts.append(f"status {status}")
        elif code in (_CLD_KILLED, _CLD_DUMPED) and status:
            parts.append(_signal_name(status) + (" (core dumped)" if code == _CLD_DUMPED else ""))
        out[unit] = ", ".join(parts)
    return out


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name  # systemd runs on Linux: this host's numbering
    except ValueError:
        return f"signal {number}"


def parse_win32_services(text: str) -> tuple[int, list[facts_pb2.ServiceInfo]]:
    """(total, stopped auto-start services) from ``Get-CimInstance Win32_Service | ConvertTo-Json``.

    ConvertTo-Json prints one object (not a list) when there is a single service.
    """
    data = json.loads(text.lstrip("\ufeff") or "[]")
    rows = data if isinstance(data, list) else [data]
    failed: list[facts_pb2.ServiceInfo] = []
    total = 0
    for row in rows:
        if not isinstance(row, dict):
            continue
        total += 1
        mode, state = str(row.get("StartMode") or ""), str(row.get("State") or "")
        # "Auto" covers delayed auto-start too (DelayedAutoStart is a separate flag).
        if mode.lower() == "auto" and state.lower() != "running":
            exit_code = row.get("ExitCode")
            failed.append(
                facts_pb2.ServiceInfo(
                    name=str(row.get("Name") or ""),
                    state=state,
                    sub_state=mode + (" (delayed)" if row.get("DelayedAutoStart") else ""),
                    description=str(row.get("DisplayName") or ""),
                    result="" if exit_code in (None, 0) else f"exit code {exit_code}",
                )
            )
    return total, failed


def parse_launchctl_list(text: str) -> tuple[int, list[facts_pb2.ServiceInfo]]:
    """(total, jobs with a non-zero last exit status) from ``launchctl list``.

    Rows are ``PID<TAB>Status<TAB>Label``; PID is "-" when not running; a negative
    status is the signal that killed it.
    """
    failed: list[facts_pb2.ServiceInfo] = []
    total = 0
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) != 3 or parts[0] == "PID":
            continue
        pid, status, label = (p.strip() for p in parts)
        total += 1
        try:
            code = int(status)
        except ValueError:
            continue
        if code != 0:
            failed.append(
                facts_pb2.ServiceInfo(
                    name=label,
                    state="running" if pid != "-" else "stopped",
                    result=f"killed by signal {-code}" if code < 0 else f"exit status {code}",
                )
            )
    return total, failed


class ServicesCollector(Collector):
    name = "services"
    description = "Failed systemd units, stopped auto-start Windows services, failing launchd jobs"
    budget_s = 4.0
    facts_field = "services"
    facts_type = facts_pb2.ServiceFacts

    def collect(self, ctx: CollectContext) -> facts_pb2.ServiceFacts:
        platform = current_platform()
        try:
            if platform == "linux":
                return self._systemd(ctx)
            if platform == "windows":
                return self._windows(ctx)
            if platform == "darwin":
                return self._launchd(ctx)
        except CommandNotFound as exc:
            return facts_pb2.ServiceFacts(unsupported_reason=str(exc))
        return facts_pb2.ServiceFacts(unsupported_reason=f"unsupported: no service manager support on {platform}")

    def _systemd(self, ctx: CollectContext) -> facts_pb2.ServiceFacts:
        facts = facts_pb2.ServiceFacts(manager="systemd")
        if not os.path.isdir("/run/systemd/system"):
            facts.unsupported_reason = "unsupported: systemd is not the running init system here"
            return facts
        base = ["systemctl", "list-units", "--all", "--no-pager"]
        failed = run_command(
            [*base, "--state=failed", "--output=json"], timeout=ctx.remaining() / 2, max_bytes=_MAX_OUT
        )
        try:
            if not failed.ok:
                raise ValueError(failed.describe_failure())
            facts.failed.extend(parse_systemctl_json(failed.text()))
        except ValueError:
            plain = run_command(
                [*base, "--state=failed", "--plain", "--no-legend"], timeout=ctx.remaining() / 2, max_bytes=_MAX_OUT
            )
            if not plain.ok:
                facts.unsupported_reason = f"systemctl failed: {plain.describe_failure()}"
                return facts
            facts.failed.extend(parse_systemctl_plain(plain.text()))
        if facts.failed:
            self._why_failed(ctx, facts)
        every = run_command([*base, "--plain", "--no-legend"], timeout=ctx.remaining(), max_bytes=_MAX_OUT)
        if every.ok:
            facts.total = len(parse_systemctl_plain(every.text()))
        else:
            ctx.warn(f"unit total unknown: {every.describe_failure()}")
        return facts

    @staticmethod
    def _why_failed(ctx: CollectContext, facts: facts_pb2.ServiceFacts) -> None:
        units = [u.name for u in facts.failed if u.name and not u.name.startswith("-")]
        show = run_command(
            ["systemctl", "show", "--no-pager", "-p", "Id,Result,ExecMainCode,ExecMainStatus", "--", *units],
            timeout=ctx.remaining() / 2,
            max_bytes=_MAX_OUT,
        )
        if not show.ok:
            ctx.warn(f"why the failed units failed is unknown: {show.describe_failure()}")
            return
        why = parse_systemctl_show(show.text())
        for unit in facts.failed:
            reason = why.get(unit.name, "")
            if reason:
                unit.result = f"{reason}; {unit.result}" if unit.result else reason

    def _windows(self, ctx: CollectContext) -> facts_pb2.ServiceFacts:
        script = (
            "Get-CimInstance Win32_Service | Select-Object Name,DisplayName,State,"
            "StartMode,DelayedAutoStart,ExitCode | ConvertTo-Json -Compress"
        )
        result = run_command(
            ["powershell", "-NoProfile", "-NonInteractive", "-Command", script],
            timeout=ctx.remaining(),
            max_bytes=_MAX_OUT,
        )
        facts = facts_pb2.ServiceFacts(manager="windows-scm")
        if not result.ok:
            facts.unsupported_reason = f"service query failed: {result.describe_failure()}"
            return facts
        total, failed = parse_win32_services(result.text())
        facts.total = total
        facts.failed.extend(failed)
        return facts

    def _launchd(self, ctx: CollectContext) -> facts_pb2.ServiceFacts:
        result = run_command(["launchctl", "list"], timeout=ctx.remaining(), max_bytes=_MAX_OUT)
        facts = facts_pb2.ServiceFacts(manager="launchd")
        if not result.ok:
            facts.unsupported_reason = f"launchctl failed: {result.describe_failure()}"
            return facts
        total, failed = parse_launchctl_list(result.text())
        facts.total = total
        facts.failed.extend(failed)
        return facts
