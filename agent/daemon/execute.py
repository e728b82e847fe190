"""One live collection (the same path as ``casefile collect``, kind "live" with the
request id) and its upload, in the daemon's child process.

``python -m agent.daemon.execute`` serves the requests of ``agent.daemon.worker`` (which
describes the protocol) on stdin/stdout. Never imported by the daemon itself: this
module brings in the whole collection machinery.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import IO, Any

from agent.bundle import WrittenBundle
from agent.collect import CollectionSpec, RunningCollection, start_collection
from agent.collect_request import run_options, upload_target
from agent.daemon.policy import load_policy
from agent.keys import SigningKey
from agent.oneshot import PrivacyOptions, collect_bundle, prepare_collection
from agent.state import AgentHome
from agent.transport import open_channel, parse_address, upload_bundle

__all__ = ["LIVE_SAMPLING", "collect_live", "main", "serve"]

log = logging.getLogger("casefile.agent.daemon.execute")

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
    trigger: str = "",
    history_s: int | None = None,
    spec_envelope: bytes | None = None,
    spec_signers: tuple[str, ...] = (),
) -> WrittenBundle:
    """Collect ``collectors`` into a signed bundle in ``output_dir`` (blocking); kind
    "triggered" when ``trigger`` names the policy's trigger that fired (in the manifest's
    ``spec.options.trigger``); with ``spec_envelope``, that signed spec (verified again
    here) runs as one more collector."""
    # An engineer waits on a live snapshot: sample "now" over a fifth of a second rather
    # than the half second to a second a one-shot run affords (same facts, shorter windows).
    options: dict[str, str | int | float | bool] = dict(LIVE_SAMPLING)
    if since_s:  # the daemon names a window only for scopes that read logs (agent.scopes.reads_logs)
        options["logs_since_s"] = float(since_s)
    enrollment = AgentHome(home).enrollment()
    # The flight recorder's history for the same window, and the name this agent has to reach.
    collector_host = enrollment.collector_host if enrollment else ""
    options.update(
        run_options(home=home, recorder_since_s=float(history_s or since_s or 3600), collector_host=collector_host)
    )
    if (home / "policy.json").is_file():  # the daemon's policy: whether core files may go (crash_core_files)
        options.update(load_policy(home).collector_options())
    if trigger:
        options["trigger"] = trigger
    output_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    spec = CollectionSpec(only=collectors, options=options)
    privacy = PrivacyOptions(profile=profile, home=home)
    kind = "triggered" if trigger else "live"
    if spec_envelope is None:
        collected = collect_bundle(
            key=key,
            output_dir=output_dir,
            agent_id=agent_id,
            kind=kind,
            request_id=request_id or None,
            spec=spec,
            privacy=privacy,
        )
        return collected.bundle
    running = start_spec_collection(spec, spec_envelope, spec_signers)
    with prepare_collection(
        key=key, agent_id=agent_id, kind=kind, request_id=request_id or None, running=running, privacy=privacy
    ) as prepared:
        return prepared.seal(output_dir, key).bundle


def start_spec_collection(spec: CollectionSpec, envelope: bytes, signers: tuple[str, ...]) -> RunningCollection:
    """Start ``spec``'s collectors plus the signed collection spec's own."""
    from agent.specs import verify_spec
    from agent.specs.runner import spec_budget, spec_collector
    from agent.specs.trust import LoadedSpec

    signed = verify_spec(envelope, signers)
    loaded = LoadedSpec(signed.spec, signed.signer, signed.spec_sha256, "live request", signed)
    cls = spec_collector(signed.spec, loaded.origin())
    total = max(spec.total_budget_s, spec_budget(signed.spec) + 2.0)
    spec = dataclasses.replace(spec, only=(*spec.only, cls.name), total_budget_s=total)
    return start_collection(spec, extra=(cls,))


def _key(home: Path) -> SigningKey:
    return SigningKey.load(AgentHome(home).key_path)  # never created here: the daemon owns it


def _collect(request: dict[str, Any]) -> dict[str, Any]:
    home = Path(request["home"])
    bundle = collect_live(
        key=_key(home),
        agent_id=str(request["agent_id"]),
        request_id=str(request["request_id"]),
        collectors=tuple(str(c) for c in request["collectors"]),
        since_s=int(request["since_s"]) if request.get("since_s") else None,
        profile=str(request["profile"]),
        home=home,
        output_dir=Path(request["output_dir"]),
        trigger=str(request.get("trigger") or ""),
        history_s=int(request["history_s"]) if request.get("history_s") else None,
        spec_envelope=str(request["spec_envelope"]).encode("ascii") if request.get("spec_envelope") else None,
        spec_signers=tuple(str(s) for s in request.get("spec_signers") or ()),
    )
    return {
        "bundle": {
            "path": str(bundle.path),
            "bundle_id": bundle.bundle_id,
            "size": bundle.size,
            "sha256": bundle.sha256,
        }
    }


def _upload(request: dict[str, Any]) -> dict[str, Any]:
    bundle_id = str(request["bundle_id"])
    target = upload_target(_key(Path(request["home"])), token=None, agent_id=str(request["agent_id"]))
    address = parse_address(str(request["collector"]))
    with open_channel(address, ca_fingerprint=request.get("ca_fingerprint")) as channel:
        upload_bundle(
            channel, Path(request["path"]), bundle_id=bundle_id, target=target, attempts=int(request["attempts"])
        )
    return {"uploaded": bundle_id}


_OPS = {"collect": _collect, "upload": _upload}
_ERROR_MAX = 64 * 1024  # an error message longer than this is cut: a reply line stays small


def serve(requests: IO[str], replies: IO[str]) -> None:
    """Answer each request line with one reply line, until EOF (see ``agent.daemon.worker``)."""
    for line in requests:
        op = ""
        try:
            request = json.loads(line)
            op = str(request["op"])
            reply = _OPS[op](request)
        except Exception as exc:  # answered; the worker stays for the next request
            if op == "upload":  # expected when the collector is away: the daemon spools
                log.warning("upload failed: %s", exc)
            else:
                log.exception("%s failed", op or "request")
            reply = {"error": (str(exc) or type(exc).__name__)[:_ERROR_MAX]}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def main() -> None:
    # Our stdout is the reply channel. Whatever else writes to fd 1 — a collector, a
    # command it runs — must not corrupt it: replies go to a private duplicate, and fd 1
    # becomes stderr (the daemon's log).
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    # Ctrl-C at a terminal reaches the whole process group; the daemon decides when we
    # stop (EOF on stdin, or SIGTERM when it stops mid-collection).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=os.environ.get("CASEFILE_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    serve(sys.stdin, replies)


if __name__ == "__main__":
    main()
