"""Template miners compared: the masking in agent/analysis/templates.py against Drain (drain3).

    .venv/bin/pip install -e '.[drain3]'
    .venv/bin/python benchmarks/bench_templates.py --truth DIR [--seeds 2] [--lines 1000000] [--runs 3]

Three measures, each for ``template_of`` (behind ``TemplateCache``, as the product uses it)
and for drain3's ``TemplateMiner`` with its default settings, alone and after our masking:

* accuracy: loghub's *grouping accuracy* on the 2k samples — the share of lines whose
  group (the lines given the same template) is exactly their ground-truth group (the
  lines with the same EventId). The ground truth is the ``<name>_2k.log_structured.csv``
  files of the loghub repository, which ``../shared/corpus/loghub`` does not carry:
  ``--truth`` names a folder holding them. Every miner reads the ``Content`` column.
* onset: ``benchmarks/bench_onset.py``'s cases with the miner's groups as the templates
  whose per-minute series the onset searches (the product's path otherwise).
* speed: the 1,000,000-line message mix of ``benchmarks/bench_analysis.py`` through each
  miner, with the product's digit-stripped cache in front of each (Drain's cluster of a
  message is taken at its first sight, so the cache changes nothing but speed).
"""

from __future__ import annotations

import argparse
import csv
import random
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import agent.analysis.logscan as logscan
from agent.analysis.templates import MAX_TEMPLATE_CHARS, TemplateCache, template_of
from benchmarks.bench_analysis import _MESSAGES
from benchmarks.bench_onset import DATASETS, WINDOWS, make_case, run_case, summarise

_DIGITS = b"0123456789"


class DrainCache:
    """drain3's clusters as templates, keyed like ``TemplateCache`` (digits deleted) for speed."""

    def __init__(self, *, mask: bool = False, cache: bool = True) -> None:
        from drain3 import TemplateMiner  # type: ignore[import-untyped]
        from drain3.template_miner_config import TemplateMinerConfig  # type: ignore[import-untyped]

        config = TemplateMinerConfig()
        config.profiling_enabled = False
        self._miner = TemplateMiner(config=config)
        self._mask = mask
        self._cache = cache
        self._seen: dict[bytes, str] = {}
        self._names: dict[int, str] = {}

    def __call__(self, message: str) -> str:
        head = message[:MAX_TEMPLATE_CHARS]
        key = head.encode("utf-8", "surrogatepass").translate(None, _DIGITS)
        found = self._seen.get(key) if self._cache else None
        if found is None:
            result = self._miner.add_log_message(template_of(head) if self._mask else head)
            cid = int(result["cluster_id"])
            found = self._names.setdefault(cid, f"{result['template_mined']} #{cid}")
            if self._cache:
                self._seen[key] = found
        return found


Miner = Callable[[str], str]
MINERS: dict[str, Callable[[], Miner]] = {
    "templates.py": TemplateCache,
    "drain3": DrainCache,
    "drain3 after masking": lambda: DrainCache(mask=True),
}


def grouping_accuracy(contents: list[str], truth: list[str], miner: Miner) -> float:
    """Loghub's GA: lines whose predicted group equals their true group, over all lines."""
    predicted = [miner(c) for c in contents]
    by_pred: dict[str, set[int]] = defaultdict(set)
    by_true: dict[str, set[int]] = defaultdict(set)
    for i, (p, t) in enumerate(zip(predicted, truth, strict=True)):
        by_pred[p].add(i)
        by_true[t].add(i)
    right = sum(1 for i, t in enumerate(truth) if by_pred[predicted[i]] == by_true[t])
    return right / len(truth)


def load_truth(folder: Path, name: str) -> tuple[list[str], list[str]]:
    with (folder / f"{name}_2k.log_structured.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["Content"] for r in rows], [r["EventId"] for r in rows]


def messages(n: int) -> list[str]:
    rng = random.Random(5)
    return [rng.choice(_MESSAGES)[2].format(rng.randint(1, 10**6), rng.randint(1, 999)) for _ in range(n)]


def timed(miner: Miner, lines: Iterable[str]) -> float:
    t0 = time.perf_counter()
    for line in lines:
        miner(line)
    return time.perf_counter() - t0


def onset_table(make: Callable[[], Miner], seeds: int) -> dict[str, dict[str, float]]:
    original = logscan.TemplateCache
    logscan.TemplateCache = make  # type: ignore[assignment,misc]
    try:
        outcomes = [run_case(make_case(name, shape, seed), window)
                    for name in DATASETS for shape in ("sharp", "ramp", "crashloop", "noisy", "daily", "none")
                    for seed in range(seeds) for window in WINDOWS]
    finally:
        logscan.TemplateCache = original  # type: ignore[misc]
    return summarise(outcomes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--truth", type=Path, required=True, help="folder with loghub's <name>_2k.log_structured.csv")
    ap.add_argument("--seeds", type=int, default=2, help="bench_onset seeds (0: skip the onset measure)")
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    print("grouping accuracy on loghub 2k samples (Content column):")
    print(f"{'dataset':12} " + " ".join(f"{m:>22}" for m in MINERS))
    means: dict[str, list[float]] = defaultdict(list)
    for name in DATASETS:
        contents, truth = load_truth(args.truth, name)
        row = {m: grouping_accuracy(contents, truth, make()) for m, make in MINERS.items()}
        for m, v in row.items():
            means[m].append(v)
        print(f"{name:12} " + " ".join(f"{v:22.3f}" for v in row.values()))
    print(f"{'mean':12} " + " ".join(f"{statistics.mean(v):22.3f}" for v in means.values()))
    lines = messages(args.lines)
    print(f"\nspeed, {args.lines:,} messages, median (min-max) of {args.runs} runs, a new miner each run:")
    for m, make in MINERS.items():
        runs = sorted(timed(make(), lines) for _ in range(args.runs))
        print(f"  {m:22} {statistics.median(runs):6.2f} s ({runs[0]:.2f}-{runs[-1]:.2f})")
    sample = lines[:100_000]
    raw = timed(DrainCache(cache=False), sample)
    whole = raw * args.lines / len(sample)
    print(f"  drain3 without the cache: {raw:.2f} s per 100,000 ({whole:.1f} s per {args.lines:,})")
    if args.seeds:
        print(f"\nonset harness (bench_onset, {args.seeds} seeds, 24 h and 3 d):")
        for m, make in MINERS.items():
            table = onset_table(make, args.seeds)
            cells = "; ".join(f"{s} {r['median_min']:.1f}/{r['p90_min']:.1f} min, false {r['false_onset']:.1%}"
                              for s, r in table.items())
            print(f"  {m:22} {cells}")


if __name__ == "__main__":
    main()
