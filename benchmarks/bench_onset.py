"""Onset accuracy on real public logs with an incident injected at a known time.

    .venv/bin/python benchmarks/bench_onset.py [--seeds 6] [--datasets all] [--json]

For each loghub sample in ``../shared/corpus/loghub/`` (11 datasets, 2,000 lines each):

* background: the dataset's own lines with their real arrival structure — runs of
  consecutive inter-arrival gaps (bursts and lulls kept together) resampled and
  stretched over 3.5 days; a second dataset as a quieter second source; a periodic job
  (every 15 min, a warning) as a third;
* an incident made of the dataset's own error/warning lines, in one of these shapes:
  ``sharp`` (a step rise), ``ramp`` (rate rising linearly over 60-120 min, then flat),
  ``crashloop`` (a burst of 3-8 lines every 1-3 min), ``noisy`` (a sharp rise during an
  hour of four-fold chatter), ``daily`` (a sharp rise after 15-min spikes of the same
  lines at the same time on each earlier day), and ``none`` (the daily spikes only: any
  onset reported is a false onset).

Every case is analysed with windows of 24 h and 3 d through the product's path: the
records become bundle-contract JSON lines, read by ``BundleView`` and timed by
``build_timeline``. Prints per shape the median and p90 absolute onset error, the rate
of false onsets (an onset more than 30 min from the truth, or any onset in ``none``)
and of misses (no onset), then a Markdown row for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
import random
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.analysis import BundleView, build_timeline
from agent.analysis.templates import template_of
from agent.collect.logparse.textlog import guess_severity
from protos import facts_pb2

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus" / "loghub"
SHAPES = ("sharp", "ramp", "crashloop", "noisy", "daily", "none")
WINDOWS = (86400, 3 * 86400)
FALSE_ONSET_S = 1800.0
END = dt.datetime(2026, 11, 22, 16, 7, 0, tzinfo=dt.UTC).timestamp()
SPAN_S = 3.5 * 86400
BACKGROUND_LINES = 30_000


@dataclass(frozen=True)
class Line:
    ts: float
    sev: str | None
    msg: str


_LEVELS = {"ERROR": "err", "FATAL": "crit", "SEVERE": "crit", "FAILURE": "err", "WARN": "warning",
           "WARNING": "warning", "E": "err", "F": "crit", "W": "warning", "INFO": "info", "I": "info",
           "DEBUG": "debug", "D": "debug", "V": "debug", "Info": "info", "Warning": "warning", "Error": "err"}


def _stamp(fmt: str, text: str) -> float:
    return dt.datetime.strptime(text, fmt).replace(tzinfo=dt.UTC).timestamp()


# name -> (line pattern, f(match) -> (ts, level word or None, message)); level None: guessed from words.
_Parse = Callable[[re.Match[str]], tuple[float, str | None, str]]
_FORMATS: dict[str, tuple[re.Pattern[str], _Parse]] = {
    "Android": (re.compile(r"(\d\d-\d\d \d\d:\d\d:\d\d)\.(\d{3})\s+\d+\s+\d+ ([VDIWEF]) (.*)"),
                lambda m: (_stamp("%Y-%m-%d %H:%M:%S", "2017-" + m[1]) + int(m[2]) / 1e3, m[3], m[4])),
    "BGL": (re.compile(r"\S+ (\d+) \S+ \S+ \S+-\d\d\.\d\d\.\d\d\.(\d+) \S+ \S+ \S+ (\w+) (.*)"),
            lambda m: (int(m[1]) + int(m[2]) / 1e6, m[3], m[4])),
    "HDFS": (re.compile(r"(\d{6} \d{6}) \d+ (\w+) (.*)"),
             lambda m: (_stamp("%y%m%d %H%M%S", m[1]), m[2], m[3])),
    "Hadoop": (re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) (\w+) (.*)"),
               lambda m: (_stamp("%Y-%m-%d %H:%M:%S", m[1]) + int(m[2]) / 1e3, m[3], m[4])),
    "HealthApp": (re.compile(r"(\d{8}-\d+:\d+:\d+):(\d+)\|(.*)"),
                  lambda m: (_stamp("%Y%m%d-%H:%M:%S", m[1]) + int(m[2]) / 1e3, None, m[3])),
    "Mac": (re.compile(r"(\w{3} +\d+ \d\d:\d\d:\d\d) \S+ (.*)"),
            lambda m: (_stamp("%Y %b %d %H:%M:%S", "2017 " + m[1]), None, m[2])),
    "OpenStack": (re.compile(r"\S+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.(\d{3}) \d+ (\w+) (.*)"),
                  lambda m: (_stamp("%Y-%m-%d %H:%M:%S", m[1]) + int(m[2]) / 1e3, m[3], m[4])),
    "Spark": (re.compile(r"(\d\d/\d\d/\d\d \d\d:\d\d:\d\d) (\w+) (.*)"),
              lambda m: (_stamp("%y/%m/%d %H:%M:%S", m[1]), m[2], m[3])),
    "Thunderbird": (re.compile(r"(\S+) (\d+) \S+ \S+ \w{3} +\d+ [\d:]+ \S+ (.*)"),
                    lambda m: (float(m[2]), None if m[1] == "-" else "ERROR", m[3])),
    "Windows": (re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d), (\w+)\s+(.*)"),
                lambda m: (_stamp("%Y-%m-%d %H:%M:%S", m[1]), m[2], m[3])),
    "Zookeeper": (re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) - (\w+)\s+(.*)"),
                  lambda m: (_stamp("%Y-%m-%d %H:%M:%S", m[1]) + int(m[2]) / 1e3, m[3], m[4])),
}
DATASETS = tuple(_FORMATS)


def load_dataset(name: str, corpus: Path = CORPUS) -> list[Line]:
    """The sample's lines in time order, with the dataset's own level (or a keyword guess)."""
    pattern, parse = _FORMATS[name]
    out: list[Line] = []
    for raw in (corpus / f"{name}_2k.log").read_text("utf-8", "replace").splitlines():
        m = pattern.fullmatch(raw.strip())
        if m is None:
            continue
        ts, level, msg = parse(m)
        sev = _LEVELS.get(level or "") if level is not None else guess_severity(msg)
        out.append(Line(ts, sev, msg))
    out.sort(key=lambda x: x.ts)
    return out


def _background(lines: list[Line], n: int, start: float, span: float, rng: random.Random) -> list[Line]:
    """``n`` lines over ``[start, start+span)``: runs of consecutive real gaps, stretched."""
    gaps = [max(0.0, b.ts - a.ts) for a, b in itertools.pairwise(lines)]
    # Outliers (a sample spanning months) would swallow the whole span: cap at the 99th percentile.
    cap = sorted(gaps)[int(len(gaps) * 0.99)] or 1.0
    picks: list[tuple[float, Line]] = []
    while len(picks) < n:
        i = rng.randrange(len(gaps))
        for j in range(i, min(len(gaps), i + rng.randint(50, 300))):
            picks.append((min(gaps[j], cap), lines[j + 1]))
    picks = picks[:n]
    total = sum(g for g, _ in picks) or 1.0
    scale = span / total
    t = start + rng.uniform(0, 60)
    out: list[Line] = []
    for gap, line in picks:
        t += gap * scale
        out.append(Line(t, line.sev, line.msg))
    return out


def _poisson_times(rate_at: Callable[[float], float], lo: float, hi: float, peak: float,
                   rng: random.Random) -> Iterator[float]:
    """Arrival times of an inhomogeneous Poisson process (thinning) with rate <= peak per second."""
    t = lo
    while True:
        t += rng.expovariate(peak)
        if t >= hi:
            return
        if rng.random() * peak <= rate_at(t):
            yield t


@dataclass(frozen=True)
class Case:
    dataset: str
    shape: str
    seed: int
    truth: float | None  # the incident's first line (None: no incident)
    end: float
    records: tuple[dict[str, object], ...]  # bundle-contract log lines, 3.5 days


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_case(dataset: str, shape: str, seed: int, corpus: Path = CORPUS) -> Case:
    """One test log: background, periodic job, second source, and the incident in ``shape``."""
    rng = random.Random(f"{dataset}/{shape}/{seed}")
    lines = load_dataset(dataset, corpus)
    other = load_dataset(DATASETS[(DATASETS.index(dataset) + 1) % len(DATASETS)], corpus)
    start = END - SPAN_S
    bg = _background(lines, BACKGROUND_LINES, start, SPAN_S, rng)
    second = _background(other, BACKGROUND_LINES // 5, start, SPAN_S, rng)
    alarming = [x for x in lines if x.sev in ("err", "crit", "warning")]
    errors = [x for x in alarming if x.sev != "warning"] or alarming
    if not errors:  # a sample with no error level (Spark, Windows CBS): its lines that read as errors
        errors = [Line(x.ts, sev, x.msg) for x in lines if (sev := guess_severity(x.msg)) is not None]
    if not errors:  # nothing reads as an error: its rarest lines, raised to errors
        counts: dict[str, int] = {}
        for x in lines:
            counts[template_of(x.msg)] = counts.get(template_of(x.msg), 0) + 1
        errors = [Line(x.ts, "err", x.msg) for x in lines if counts[template_of(x.msg)] <= 2]
    # The incident's lines: two or three templates among the dataset's own errors (else warnings).
    by_template: dict[str, list[Line]] = {}
    for x in errors:
        by_template.setdefault(template_of(x.msg), []).append(x)
    keys = sorted(by_template)
    chosen = rng.sample(keys, min(len(keys), rng.randint(2, 3)))
    pool = [x for k in chosen for x in by_template[k]]
    bg_alarming = sum(1 for x in bg if x.sev in ("err", "crit", "warning")) / (SPAN_S / 60)
    peak = max(3.0, 5.0 * bg_alarming) / 60.0  # lines per second at full strength
    truth_start = END - rng.uniform(1800, 4 * 3600)
    incident: list[float] = []
    noisy: list[Line] = []
    if shape in ("sharp", "noisy", "daily"):
        incident = list(_poisson_times(lambda _t: peak, truth_start, END, peak, rng))
    elif shape == "ramp":
        ramp = rng.uniform(3600, 7200)
        truth_start = END - ramp - rng.uniform(900, 3600)
        incident = list(_poisson_times(lambda t: peak * min(1.0, (t - truth_start) / ramp), truth_start, END,
                                       peak, rng))
    elif shape == "crashloop":
        t = truth_start
        while t < END:
            incident += [t + k * rng.uniform(0.05, 0.4) for k in range(rng.randint(3, 8))]
            t += rng.uniform(60, 180)
    if shape == "noisy":  # an hour of four-fold chatter (every level) around the onset
        lo = truth_start - rng.uniform(1800, 3000)
        window = [x for x in bg if lo <= x.ts < lo + 3600]
        noisy = [Line(x.ts + rng.uniform(-30, 30), x.sev, x.msg) for x in window for _ in range(3)]
    spikes: list[float] = []
    if shape in ("daily", "none"):  # 15-min spikes of the same lines, same time each earlier day
        at = truth_start - rng.uniform(3600, 6 * 3600)
        day = at - 86400 if shape == "daily" else at
        while day > start + 1800:
            spikes += list(_poisson_times(lambda _t: 3 * peak, day, day + 900, 3 * peak, rng))
            day -= 86400
    truth = min(incident) if incident and shape != "none" else None
    if shape == "none":
        incident = []
    job = [Line(t, "warning", f"backup job run {int(t) % 9973} took {rng.randint(40, 90)} s (slow disk)")
           for t in range(int(start) + 300, int(END), 900)]
    merged: list[tuple[str, Line]] = [("app", x) for x in bg + noisy]
    merged += [("other", x) for x in second] + [("cron", x) for x in job]
    merged += [("app", Line(t, (p := rng.choice(pool)).sev, p.msg)) for t in incident + spikes]
    merged.sort(key=lambda item: item[1].ts)
    records = tuple(
        {"ts": _iso(x.ts), "src": src, "sev": x.sev, "msg": x.msg, "n": i + 1}
        for i, (src, x) in enumerate(merged) if x.ts < END
    )
    return Case(dataset, shape, seed, truth, END, records)


def _snapshot(end: float) -> facts_pb2.Snapshot:
    s = facts_pb2.Snapshot(kind="one-shot", agent_version="bench")
    s.collected_at.FromMicroseconds(int(end * 1e6))
    s.host.hostname = "bench"
    return s


@dataclass(frozen=True)
class Outcome:
    dataset: str
    shape: str
    seed: int
    window_s: int
    truth: float | None
    onset: float | None
    seconds: float

    @property
    def error_s(self) -> float | None:
        if self.truth is None or self.onset is None:
            return None
        return abs(self.onset - self.truth)

    @property
    def false_onset(self) -> bool:
        if self.onset is None:
            return False
        return self.truth is None or abs(self.onset - self.truth) > FALSE_ONSET_S

    @property
    def missed(self) -> bool:
        return self.truth is not None and self.onset is None


def run_case(case: Case, window_s: int) -> Outcome:
    """The case cut to the last ``window_s`` seconds, analysed as a bundle would be."""
    cut = _iso(case.end - window_s)
    records = [r for r in case.records if str(r["ts"]) >= cut]
    view = BundleView.from_snapshot(_snapshot(case.end), records)
    t0 = time.perf_counter()
    tl = build_timeline(view)
    took = time.perf_counter() - t0
    onset = tl.onset.began_at if tl.onset else None
    return Outcome(case.dataset, case.shape, case.seed, window_s, case.truth, onset, took)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def summarise(outcomes: list[Outcome]) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = {}
    for shape in SHAPES:
        rows = [o for o in outcomes if o.shape == shape]
        if not rows:
            continue
        errs = [o.error_s / 60 for o in rows if o.error_s is not None and not o.false_onset]
        table[shape] = {
            "cases": len(rows),
            "median_min": statistics.median(errs) if errs else float("nan"),
            "p90_min": _pct(errs, 0.9) if errs else float("nan"),
            "false_onset": sum(o.false_onset for o in rows) / len(rows),
            "missed": sum(o.missed for o in rows) / len(rows),
        }
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--datasets", default="all")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--json", action="store_true", help="also print every outcome as JSON")
    ap.add_argument("-v", "--verbose", action="store_true", help="print each wrong case")
    args = ap.parse_args()
    if not CORPUS.is_dir():
        sys.exit(f"no corpus at {CORPUS} (see ../shared/corpus/README.md)")
    names = DATASETS if args.datasets == "all" else tuple(args.datasets.split(","))
    outcomes: list[Outcome] = []
    for name in names:
        for shape in args.shapes.split(","):
            for seed in range(args.seeds):
                case = make_case(name, shape, seed)
                for window in WINDOWS:
                    o = run_case(case, window)
                    outcomes.append(o)
                    if args.verbose and (o.false_onset or o.missed or (o.error_s or 0) > 300):
                        print(f"  {name:12} {shape:9} seed {seed} {window // 3600:3d} h: truth "
                              f"{_iso(o.truth)[5:16] if o.truth else '-'} onset "
                              f"{_iso(o.onset)[5:16] if o.onset else '-'} err "
                              f"{(o.error_s or 0) / 60:.1f} min")
    table = summarise(outcomes)
    print(f"{'shape':10} {'cases':>5} {'median':>8} {'p90':>8} {'false':>6} {'missed':>6}")
    for shape, r in table.items():
        print(f"{shape:10} {r['cases']:5.0f} {r['median_min']:7.1f}m {r['p90_min']:7.1f}m "
              f"{r['false_onset']:6.1%} {r['missed']:6.1%}")
    same = [(a.onset, b.onset) for a, b in zip(outcomes[::2], outcomes[1::2], strict=True)
            if a.onset is not None and b.onset is not None]
    agree = sum(abs(x - y) <= 300 for x, y in same) / len(same) if same else float("nan")
    times = [o.seconds for o in outcomes]
    print(f"24 h and 3 d agree within 5 min: {agree:.1%} of {len(same)} pairs with both onsets; "
          f"build_timeline median {statistics.median(times) * 1e3:.0f} ms (max {max(times) * 1e3:.0f})")
    cells = "; ".join(f"{s} {r['median_min']:.1f}/{r['p90_min']:.1f} min, false {r['false_onset']:.0%}"
                      for s, r in table.items())
    print(f"| onset error on loghub with injected incidents ({len(names)} datasets x {args.seeds} seeds x "
          f"24 h/3 d; median/p90) | `.venv/bin/python benchmarks/bench_onset.py --seeds {args.seeds}` | {cells} |")
    if args.json:
        print(json.dumps([o.__dict__ for o in outcomes]))


if __name__ == "__main__":
    main()
