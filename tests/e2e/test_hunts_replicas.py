"""A hunt across PostgreSQL replicas: created on replica 1, the agent's stream on replica 2.

The hunt's requests are written in one transaction with one NOTIFY each; replica 2,
holding the agent's stream, claims and delivers its request; replica 1 reports ``done``.
"""

from __future__ import annotations

import pytest

from protos import collector_pb2, collector_pb2_grpc
from tests.e2e.test_live import wait_for
from tests.e2e.test_replicas import Pair, pair  # noqa: F401 (the fixture)

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def test_hunt_on_replica_1_reaches_the_agent_held_by_replica_2(pair: Pair) -> None:  # noqa: F811
    md = (("authorization", f"Bearer {pair.engineer}"),)
    spec = collector_pb2.HuntSpec(host_pattern="replica-*", case_id="SR-8", reason="across replicas")
    with pair.r1.channel() as ch:
        stub = collector_pb2_grpc.HuntStub(ch)
        created = stub.CreateHunt(spec, metadata=md, timeout=60)
        assert [h.agent_id for h in created.hosts] == [pair.agent_id]

        def done() -> collector_pb2.HuntStatus | None:
            s = stub.GetHuntStatus(collector_pb2.HuntRef(hunt_id=created.hunt_id), metadata=md, timeout=30)
            return s if s.hosts[0].state == "done" else None

        status = wait_for("hunt done across replicas", done, timeout=120, logs=pair.r2.log.read_text)
    with pair.r1.store() as store:
        (req,) = store.hunt_live_requests(created.hunt_id)
        assert store.get_bundle(status.hosts[0].bundle_id).agent_id == pair.agent_id
    assert req.state == "done" and req.bundle_id == status.hosts[0].bundle_id
