"""Analysis owned once: the collector analyses each stored bundle once and keeps the result.

Who owns what: the agent's sealed ``findings.json`` (and ``report.html``) inside the
bundle are the customer's view, signed with the bundle and kept untouched in the blob.
The collector's own analysis is made here, after the receipt (never on the receive path),
with the collector's rules, and stored with its rule-set version in indexed tables
(``collector.storage.findings``). Every query reads that stored analysis; ``reanalyze``
re-runs newer rules over stored bundles.

Nothing is lost when the collector dies before analysing: a bundle is stored before
its analysis is even queued, and at start the worker sweeps for bundles without one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from agent.analysis import Analysis, BundleView, RuleRegistry, analyse, registered_rules, render_html
from agent.analysis.model import SEVERITY_RANK, Evidence, LogEvidence
from collector.storage import BlobBackend, Store
from collector.storage.findings import AnalysisRows, FindingRow, FsRow, StoredAnalysis
from collector.storage.schema import to_micros

__all__ = ["AnalysisWorker", "Reanalysis", "analyse_bundle", "analysis_rows", "reanalyze", "rules_version"]

log = logging.getLogger("casefile.collector.analysis")

# The analysis process runs this much nicer than the collector: it is background work,
# and nicer than the verifier processes (``IngestLimits.verify_nice``), which a bundle
# waits for before it is stored. At 5 it took a quarter of a core from the collector's
# event loop during a hunt's uploads (benchmarks/bench_hunt.py).
ANALYSIS_NICE = 15

# Bump when what is stored per bundle changes shape (not when rules change: their
# declarations are hashed into the version below).
_FORMAT = 1


def rules_version(registry: RuleRegistry) -> str:
    """A short digest of the rule set: codes, classes, thresholds and each rule's
    optional ``version`` attribute (bump it when a rule's logic changes)."""
    parts = [f"format={_FORMAT}"]
    for cls in sorted(registry.rules, key=lambda c: c.code):
        options = ",".join(f"{k}={v!r}" for k, v in sorted(cls.options.items()))
        parts.append(f"{cls.code}|{cls.__module__}.{cls.__qualname__}|{getattr(cls, 'version', 1)}|{options}")
    parts.extend(f"broken:{b.name}" for b in registry.broken)
    return "r" + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _opt(known: bool, value: float) -> float | None:
    return float(value) if known else None


def analysis_rows(a: Analysis, version: str) -> AnalysisRows:
    """The rows one analysis stores: rendered outputs, findings and the typed metrics."""
    s = a.view.snapshot
    findings = []
    for f in a.findings.findings:
        numbers: dict[str, float] = {}
        paths: list[str] = []
        for e in f.evidence:
            if isinstance(e, Evidence):
                paths.append(e.fact_path)
                if isinstance(e.value, int | float) and not isinstance(e.value, bool):
                    numbers[e.fact_path] = float(e.value)
            elif isinstance(e, LogEvidence):
                paths.append(f"logs/{e.source}" + (f":{e.line_no}" if e.line_no is not None else ""))
        findings.append(
            FindingRow(f.code, f.severity, SEVERITY_RANK[f.severity], f.title, f.subject, numbers, tuple(paths))
        )
    has_mem = s.HasField("memory") and s.memory.total > 0
    has_cpu = s.HasField("cpu")
    depth = s.network_depth
    clock = s.clock
    metrics: dict[str, float | None] = {
        "cpu_percent": _opt(has_cpu, s.cpu.total_percent),
        "memory_percent": _opt(has_mem, s.memory.percent),
        "swap_percent": _opt(has_mem and s.memory.swap_total > 0, s.memory.swap_percent),
        "load1": _opt(has_cpu, s.cpu.load1),
        "load5": _opt(has_cpu, s.cpu.load5),
        "load15": _opt(has_cpu, s.cpu.load15),
        "tcp_retrans_pct": _opt(depth.tcp_retrans_known, depth.tcp_retrans_percent),
        "clock_ntp_offset_ms": _opt(clock.sync_known, clock.ntp_offset_ms),
        "clock_collector_offset_ms": _opt(clock.collector_offset_known, clock.collector_offset_ms),
    }
    fs: dict[str, FsRow] = {}
    for p in s.disks.partitions:
        use = None if p.error or not p.total else float(p.percent)
        fs[p.mountpoint] = FsRow(p.mountpoint, p.fstype, use, None, None, None)
    for fr in s.fragmentation.filesystems:
        prev = fs.get(fr.mountpoint)
        sampled = fr.files_sampled > 0
        fs[fr.mountpoint] = FsRow(
            fr.mountpoint,
            fr.fstype or (prev.fstype if prev else ""),
            prev.use_pct if prev else None,
            _opt(sampled, fr.pct_files_fragmented),
            _opt(sampled or fr.vendor_fragmented_pct > 0, max(fr.pct_bytes_in_fragmented, fr.vendor_fragmented_pct)),
            _opt(sampled, fr.fragments_p95),
        )
    return AnalysisRows(
        version=version,
        findings_json=a.findings.to_json(),
        timeline_json=json.dumps(a.timeline.to_dict(), ensure_ascii=False),
        report_html=render_html(a),
        findings=tuple(findings),
        metrics=metrics,
        filesystems=tuple(fs.values()),
    )


def analyse_bundle(
    store: Store, blobs: BlobBackend, bundle_id: str, registry: RuleRegistry | None = None
) -> tuple[StoredAnalysis | None, AnalysisRows]:
    """Verify the stored blob once, analyse it, store the result; returns (previous, new)."""
    registry = registry or registered_rules()
    rec = store.get_bundle(bundle_id)
    view = BundleView.from_file(blobs.blob_path(rec.blob_key))
    rows = analysis_rows(analyse(view, registry=registry), rules_version(registry))
    previous = store.put_analysis(bundle_id, rows, analysed_at_us=to_micros(datetime.now(UTC)))
    return previous, rows


def _comparable(findings_json: str) -> list[dict[str, object]]:
    # As ``Finding`` compares: the implementing class's name (``rule``) is not the finding.
    return [{k: v for k, v in f.items() if k != "rule"} for f in json.loads(findings_json)["findings"]]


def _changed(previous: StoredAnalysis | None, rows: AnalysisRows) -> bool:
    return previous is None or _comparable(previous.findings_json) != _comparable(rows.findings_json)


@dataclass(frozen=True)
class Reanalysis:
    examined: int
    changed: int
    failed: int
    version: str


def reanalyze(
    store: Store,
    blobs: BlobBackend,
    *,
    since_us: int | None = None,
    registry: RuleRegistry | None = None,
    progress: Callable[[str, bool], None] | None = None,
) -> Reanalysis:
    """Re-run the current rules over every stored bundle analysed by another rule set
    (or never). Resumable: each bundle is its own transaction, and a run that stops is
    continued by the next, which skips bundles already at the current version."""
    registry = registry or registered_rules()
    version = rules_version(registry)
    examined = changed = failed = 0
    after = ""
    while ids := store.bundles_to_analyse(version=version, since_us=since_us, after=after):
        for bundle_id in ids:
            after = bundle_id
            examined += 1
            try:
                previous, rows = analyse_bundle(store, blobs, bundle_id, registry)
            except Exception as exc:  # one unreadable blob never stops the others
                failed += 1
                log.warning("bundle %s: not reanalysed: %s", bundle_id, exc)
                continue
            differs = _changed(previous, rows)
            changed += differs
            if progress is not None:
                progress(bundle_id, differs)
    return Reanalysis(examined, changed, failed, version)


def _rows_of_file(path: str) -> AnalysisRows | str:
    """In the analysis process: verify and analyse one stored bundle with the current
    rules; the rows, or why not (as text: an exception might not unpickle)."""
    try:
        registry = registered_rules()
        return analysis_rows(analyse(BundleView.from_file(Path(path)), registry=registry), rules_version(registry))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


class AnalysisWorker:
    """One background thread analysing bundles queued after their receipt.

    The thread reads the queue and writes the results; the analysis itself (verify,
    rules, report) runs in a child process at ``ANALYSIS_NICE``, so its CPU is never
    taken from the collector's event loop (one interpreter lock: an analysis in a thread
    held up every receipt and query while it ran). ``processes=False`` keeps it in the
    thread (tests of the worker's own logic).

    Bounded: the queue holds at most ``max_queued`` ids; beyond that an id is dropped
    from the queue (it stays unanalysed in the database) and the next sweep picks it up.
    Queries for a bundle not analysed yet analyse it on demand.
    """

    def __init__(
        self, store: Store, blobs: BlobBackend, *, max_queued: int = 10_000, processes: bool = True
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._queue: queue.Queue[str | None] = queue.Queue(max_queued)
        self._thread: threading.Thread | None = None
        self._overflowed = threading.Event()
        self._processes = processes
        self._pool: ProcessPoolExecutor | None = None
        self.analysed = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="casefile-analysis", daemon=True)
        self._thread.start()

    def _child(self) -> ProcessPoolExecutor:
        if self._pool is None:
            from collector.services.verifier import _verifier_process_init

            # spawn, not fork (a forked copy of a process running grpc threads is not
            # safe); nicer than the collector and gone with it, as the verifier's.
            self._pool = ProcessPoolExecutor(
                1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_verifier_process_init,
                initargs=(ANALYSIS_NICE, os.getpid()),
            )
        return self._pool

    def _analyse_in_child(self, bundle_id: str, blob_key: str) -> None:
        path = str(self._blobs.blob_path(blob_key))
        try:
            rows = self._child().submit(_rows_of_file, path).result()
        except BrokenProcessPool:
            self._pool = None  # the process died (killed, out of memory): the next bundle starts another
            raise
        if isinstance(rows, str):
            raise RuntimeError(rows)
        self._store.put_analysis(bundle_id, rows, analysed_at_us=to_micros(datetime.now(UTC)))

    def submit(self, bundle_id: str) -> None:
        """Queue a bundle; never blocks the caller (ingest's event loop)."""
        try:
            self._queue.put_nowait(bundle_id)
        except queue.Full:
            self._overflowed.set()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None:
            return
        self._queue.put(None)  # blocks only while the queue is full: the worker is draining it
        self._thread.join(timeout)
        self._thread = None
        if self._pool is not None:
            # What is left unanalysed is found by the next start's sweep.
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _sweep(self) -> None:
        after = ""
        while ids := self._store.bundles_to_analyse(after=after):
            for bundle_id in ids:
                self._analyse(bundle_id)
                after = bundle_id

    def _analyse(self, bundle_id: str) -> None:
        try:
            blob_key = self._store.blob_to_analyse(bundle_id)  # None: analysed already (or gone)
            if blob_key is not None:
                if self._processes:
                    self._analyse_in_child(bundle_id, blob_key)
                else:
                    analyse_bundle(self._store, self._blobs, bundle_id)
                self.analysed += 1
        except Exception:
            log.exception("bundle %s: analysis failed; the next start retries it", bundle_id)

    def _run(self) -> None:
        try:
            self._sweep()  # bundles stored but never analysed (a crash, a full queue)
        except Exception:
            log.exception("start-up analysis sweep failed")
        while (bundle_id := self._queue.get()) is not None:
            self._analyse(bundle_id)
            if self._overflowed.is_set() and self._queue.empty():
                self._overflowed.clear()
                self._sweep()
