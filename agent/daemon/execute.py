"""One live collection: the same path as ``casefile collect``, kind "live" with the request id."""

from __future__ import annotations

from pathlib import Path

from agent.bundle import WrittenBundle
from agent.collect import CollectionSpec
from agent.keys import SigningKey
from agent.oneshot import PrivacyOptions, collect_bundle

__all__ = ["LIVE_SAMPLING", "collect_live"]

LIVE_SAMPLING: dict[str, float] = {
    "cpu_sample_s": 0.2,
    "processes_sample_s": 0.2,
    "retrans_sample_s": 0.2,
    "timeseries_duration_s": 0.25,
    "timeseries_interval_s": 0.05,
    "frag_budget_s": 0.5,
}


def collect_live(
    *,
    key: SigningKey,
    agent_id: str,
    request_id: str,
    collectors: tuple[str, ...],
    since_s: int | None,
    profile: str,
    home: Path,
    output_dir: Path,
) -> WrittenBundle:
    """Collect ``collectors`` into a signed bundle in ``output_dir`` (blocking; run in a thread)."""
    # An engineer waits on a live snapshot: sample "now" over a fifth of a second rather
    # than the half second to a second a one-shot run affords (same facts, shorter windows).
    options: dict[str, str | int | float | bool] = dict(LIVE_SAMPLING)
    if since_s and "logs" in collectors:
        options["logs_since_s"] = float(since_s)
    output_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    collected = collect_bundle(
        key=key,
        output_dir=output_dir,
        agent_id=agent_id,
        kind="live",
        request_id=request_id,
        spec=CollectionSpec(only=collectors, options=options),
        privacy=PrivacyOptions(profile=profile, home=home),
    )
    return collected.bundle
