"""A spec as a collector: the one class the runner runs for ``casefile collect --spec``.

``spec_collector`` builds a :class:`~agent.collect.Collector` subclass from a verified
spec. It runs like any other collector — in the run's thread pool, under the resource
guard (lowered CPU and I/O priority, set by the runner before collector threads start),
within its budget — and:

* copies each file its globs match (``spec/<name>/files/<path>``), at most ``max_bytes``
  each, through :mod:`agent.specs.reading` (no symlink out of the glob);
* reads each product log newest first into ``logs/spec-<name>-<log>.jsonl`` (the bundle's
  log contract: the timeline and the log rules read it like any system log), within the
  run's logs window and per-source cap (``log_bounds``) — a spec cannot widen them;
* runs each command without a shell through ``run_command`` (its own process group,
  killed at ``timeout_s``, stdout cut at ``max_bytes``) into ``spec/<name>/commands/<cmd>.txt``;
* replaces its ``redact`` patterns in all of that before it leaves the collector (the
  run's redactor then scrubs it like every other member);
* counts each rule's pattern over the kept log lines and command output.

Its facts (``Snapshot.plugin_facts["spec_<name>"]``) carry the spec's identity (name,
version, signer), what was read and run, the counts and the rules themselves, so the
analysis (``agent.analysis.rules.specs``) turns them into findings from the bundle alone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from agent.collect import (
    LOG_OPTIONS,
    LOG_SOURCES_KEY,
    CollectContext,
    Collector,
    CommandNotFound,
    NewestFirstSink,
    log_bounds,
    log_source_entry,
    run_command,
)
from agent.collect.framework import MAX_BUDGET_S
from agent.errors import CollectionError
from agent.specs.model import Spec
from agent.specs.patterns import MAX_MATCH_CHARS
from agent.specs.reading import Refused, expand, matching_files, read_bounded, read_log, redact_text

__all__ = ["PARAM_OPTION_PREFIX", "parameters", "plan_of", "spec_budget", "spec_collector"]

# ``--set spec.<param>=VALUE`` sets a parameter for a one-shot run.
PARAM_OPTION_PREFIX = "spec."
_MARGIN_S = 0.3


def spec_budget(spec: Spec) -> float:
    """The collector's time budget: its commands' bounds plus time for files and logs."""
    return min(MAX_BUDGET_S, 5.0 + sum(c.timeout_s for c in spec.commands) + 2.0 * len(spec.logs))


def parameters(spec: Spec, options: Mapping[str, object]) -> dict[str, str]:
    values = spec.parameter_defaults()
    for name in values:
        given = options.get(PARAM_OPTION_PREFIX + name)
        if given is not None:
            text = str(given)
            if isinstance(given, bool) or "\0" in text or len(text) > 500:
                raise CollectionError(f"option {PARAM_OPTION_PREFIX}{name} must be text of at most 500 characters")
            values[name] = text
    return values


def plan_of(spec: Spec, params: Mapping[str, str]) -> dict[str, Any]:
    """What the spec will read and run here, for the preview shown before it runs."""
    files = []
    for item in spec.files:
        pattern = expand(item.glob, params)
        found, refused = matching_files(pattern, item.max_files)
        files.append(
            {"glob": pattern, "max_bytes": item.max_bytes, "matches": [str(p) for p in found], "refused": refused}
        )
    logs = []
    for log in spec.logs:
        pattern = expand(log.glob, params)
        found, refused = matching_files(pattern, 16)
        logs.append({"name": log.name, "glob": pattern, "matches": [str(p) for p in found], "refused": refused})
    commands = [
        {
            "name": c.name,
            "argv": [expand(a, params) for a in c.argv],
            "timeout_s": c.timeout_s,
            "max_bytes": c.max_bytes,
        }
        for c in spec.commands
    ]
    return {"files": files, "logs": logs, "commands": commands, "redact": [r.name for r in spec.redact]}


def spec_collector(spec: Spec, origin: Mapping[str, str]) -> type[Collector]:
    """A collector class that runs ``spec``; ``origin`` names its signer and version."""
    identity = {"name": spec.name, "version": spec.version, "description": spec.description, **dict(origin)}

    class SpecCollector(Collector):
        name = spec.collector_name
        description = f"Spec {spec.name} v{spec.version}: {spec.description}"[:300]
        budget_s = spec_budget(spec)
        # Globs, O_NOFOLLOW and /proc/self/fd checks are POSIX; elsewhere: "unsupported".
        platforms = frozenset({"linux", "darwin"})
        default = True
        options = LOG_OPTIONS  # the run's log window and caps bound its logs; spec.<param> is its own

        def collect(self, ctx: CollectContext) -> None:
            ctx.set_plugin_facts(json.dumps(_run(spec, identity, ctx), sort_keys=True, separators=(",", ":")))

    SpecCollector.__qualname__ = SpecCollector.__name__ = f"SpecCollector_{spec.collector_name}"
    return SpecCollector


def _run(spec: Spec, identity: Mapping[str, object], ctx: CollectContext) -> dict[str, Any]:
    params = parameters(spec, ctx.options)
    redact = tuple((r.name, r.pattern) for r in spec.redact)
    hits: dict[str, int] = {}
    texts: dict[str, list[str]] = {}  # "logs:NAME" / "commands:NAME" -> lines, for the counts
    facts: dict[str, Any] = {"spec": dict(identity), "parameters": params}
    facts["files"] = _files(spec, params, ctx, redact, hits)
    facts["logs"], facts[LOG_SOURCES_KEY] = _logs(spec, params, ctx, redact, hits, texts)
    facts["commands"] = _commands(spec, params, ctx, redact, hits, texts)
    # Pairs, not an object: a pattern named like "app-token" must not read as a secret's key.
    facts["redacted"] = [[name, n] for name, n in sorted(hits.items())]
    facts["counts"], facts["count_timeouts"] = _counts(spec, texts)
    facts["rules"] = [r.to_dict() for r in spec.rules]
    return facts


def _files(spec: Spec, params: Mapping[str, str], ctx: CollectContext, redact: Any, hits: dict[str, int]) -> list[Any]:
    out: list[Any] = []
    for item in spec.files:
        pattern = expand(item.glob, params)
        found, refused = matching_files(pattern, item.max_files)
        entry: dict[str, Any] = {"glob": pattern, "copied": [], "refused": refused}
        for path in found:
            try:
                data, cut = read_bounded(path, item.max_bytes)
            except (OSError, Refused) as exc:
                entry["refused"].append(f"{path}: {getattr(exc, 'strerror', None) or exc}")
                continue
            text = redact_text(data.decode("utf-8", "surrogateescape"), redact, hits)
            member = f"spec/{spec.name}/files{path}"
            ctx.add_artifact(member, text.encode("utf-8", "surrogateescape"), kind="file")
            entry["copied"].append({"path": str(path), "member": member, "bytes": len(data), "truncated": cut})
        out.append(entry)
    return out


def _logs(
    spec: Spec,
    params: Mapping[str, str],
    ctx: CollectContext,
    redact: Any,
    hits: dict[str, int],
    texts: dict[str, list[str]],
) -> tuple[dict[str, Any], list[Any]]:
    bounds = log_bounds(ctx)  # the run's window and per-source cap: a spec cannot widen them
    since = bounds.since()
    out: dict[str, Any] = {}
    sources: list[Any] = []
    for index, log in enumerate(spec.logs):
        source = f"spec-{spec.name}-{log.name}"
        pattern = expand(log.glob, params)
        found, refused = matching_files(pattern, 16)
        cap = min(log.max_bytes, bounds.source_cap)
        sink = NewestFirstSink(source, ctx.temp_path(f"{source}.spool"), cap)
        share = (ctx.deadline - time.monotonic() - _MARGIN_S) / (len(spec.logs) - index + len(spec.commands))
        lines: list[str] = texts.setdefault(f"logs:{log.name}", [])
        error = ""
        try:
            for msg in read_log(
                found,
                sink,
                fmt=log.timestamp,
                since=since,
                deadline=time.monotonic() + max(0.2, share),
                redact=redact,
                hits=hits,
            ):
                lines.append(msg[:MAX_MATCH_CHARS])
        except (OSError, Refused) as exc:
            error = f"{getattr(exc, 'filename', '') or ''} {getattr(exc, 'strerror', None) or exc}".strip()
        member = f"logs/{source}.jsonl"
        if sink.lines:
            dest = ctx.temp_path(f"{source}.jsonl")
            sink.finish(dest)
            ctx.add_artifact_file(member, dest, kind="log")
        else:
            sink.discard()
            member = ""
        out[log.name] = {
            "glob": pattern,
            "files": [str(p) for p in found],
            "refused": refused,
            "lines": sink.lines,
            "since": since.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "error": error,
        }
        sources.append(
            log_source_entry(
                source,
                artifact=member,
                lines=sink.lines,
                bytes_kept=sink.bytes,
                truncated=sink.truncated,
                lines_dropped=sink.lines_dropped,
                error=error,
            )
        )
    return out, sources


def _commands(
    spec: Spec,
    params: Mapping[str, str],
    ctx: CollectContext,
    redact: Any,
    hits: dict[str, int],
    texts: dict[str, list[str]],
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for cmd in spec.commands:
        argv = [expand(a, params) for a in cmd.argv]
        entry: dict[str, Any] = {"argv": [redact_text(a, redact, hits) for a in argv]}
        out[cmd.name] = entry
        timeout = min(cmd.timeout_s, ctx.remaining() - _MARGIN_S)
        if timeout <= 0:
            entry["error"] = "not run: the collector's time budget was spent"
            continue
        try:
            res = run_command(argv, timeout=timeout, max_bytes=cmd.max_bytes, cancel=ctx.cancelled)
        except CommandNotFound as exc:
            entry["error"] = str(exc)
            continue
        text = redact_text(res.text(), redact, hits)
        member = f"spec/{spec.name}/commands/{cmd.name}.txt"
        ctx.add_artifact(member, text.encode("utf-8"), kind="command")
        texts[f"commands:{cmd.name}"] = [line[:MAX_MATCH_CHARS] for line in text.splitlines()]
        entry.update(
            member=member,
            exit_status=res.returncode,
            timed_out=res.timed_out,
            truncated=res.truncated,
            duration_s=round(res.duration_s, 3),
            bytes=len(res.stdout),
        )
        if not res.ok:
            entry["error"] = redact_text(res.describe_failure(), redact, hits)
    return out


def _counts(spec: Spec, texts: Mapping[str, list[str]]) -> tuple[dict[str, int], dict[str, int]]:
    """Lines each count rule's pattern matches, and lines it ran out of time on (skipped)."""
    counts: dict[str, int] = {}
    timeouts: dict[str, int] = {}
    for rule in spec.rules:
        if rule.count is None:
            continue
        n = slow = 0
        for key, lines in texts.items():
            kind = key.split(":", 1)[0]
            if kind in rule.sources or key in rule.sources:
                for line in lines:
                    hit = rule.count.search(line)
                    n += hit is True
                    slow += hit is None
        counts[rule.id] = n
        if slow:
            timeouts[rule.id] = slow
    return counts, timeouts
