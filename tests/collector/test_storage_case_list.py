"""The case listing: kept with every bundle insert, newest activity first, keyset-paged,
with each case's hosts and worst stored finding."""

from __future__ import annotations

import random
from datetime import timedelta

from collector.storage import Store
from collector.storage.findings import AnalysisRows, FindingRow
from tests.collector.test_storage_bundles import T0, make_agent, make_bundle


def _rows(*findings: tuple[str, str, int, str]) -> AnalysisRows:
    return AnalysisRows(
        version="t", findings_json="{}", timeline_json="{}", report_html="",
        findings=tuple(FindingRow(rule, sev, rank, title, "", {}, ()) for rule, sev, rank, title in findings),
        metrics={}, filesystems=(),
    )


def test_cases_are_listed_by_their_newest_bundle_and_paged(store: Store) -> None:
    web, db = make_agent(store, "web-01"), make_agent(store, "db-01")
    rng = random.Random(7)
    expected: dict[str, tuple[int, set[str], int]] = {}
    # 30 cases, 1 to 4 bundles each, inserted in random order (uploads arrive late).
    plan = [(f"SR-{c}", h) for c in range(30) for h in range(1 + c % 4)]
    rng.shuffle(plan)
    for case_id, h in plan:
        agent = web if h % 2 else db
        created = T0 + timedelta(minutes=rng.randrange(10_000))
        store.insert_bundle(make_bundle(agent, case_id=case_id, created_at=created), facts_pb=b"", manifest_json="{}")
        count, hosts, last = expected.get(case_id, (0, set(), 0))
        expected[case_id] = (count + 1, hosts | {agent.hostname}, max(last, int(created.timestamp() * 1e6)))
    store.insert_bundle(make_bundle(web, case_id=None), facts_pb=b"", manifest_json="{}")  # no case: not listed
    seen, cursor, pages = [], None, 0
    while True:
        page, cursor = store.list_cases(page_size=7, cursor=cursor)
        pages += 1
        seen.extend(page)
        if cursor is None:
            break
    assert pages == 5 and len(seen) == 30 and len({c.case_id for c in seen}) == 30
    assert [c.last_us for c in seen] == sorted((c.last_us for c in seen), reverse=True)
    for c in seen:
        count, hosts, last = expected[c.case_id]
        assert (c.bundle_count, set(c.hosts), c.host_count, c.last_us) == (count, hosts, len(hosts), last)
    # The same bundle again is no new activity.
    again = make_bundle(web, case_id="SR-0", created_at=T0 + timedelta(days=30))
    store.insert_bundle(again, facts_pb=b"", manifest_json="{}")
    store.insert_bundle(again, facts_pb=b"", manifest_json="{}")
    top = store.list_cases(page_size=1)[0][0]
    assert (top.case_id, top.bundle_count) == ("SR-0", expected["SR-0"][0] + 1)


def test_a_cases_worst_finding_is_its_highest_rank(store: Store) -> None:
    agent = make_agent(store)
    one = make_bundle(agent, case_id="SR-9")
    two = make_bundle(agent, case_id="SR-9", created_at=T0 + timedelta(hours=1))
    for rec in (one, two):
        store.insert_bundle(rec, facts_pb=b"", manifest_json="{}")
    store.put_analysis(one.bundle_id, _rows(("disk-full", "critical", 3, "/var full"), ("swap", "info", 1, "x")),
                       analysed_at_us=1)
    store.put_analysis(two.bundle_id, _rows(("memory", "warning", 2, "memory high")), analysed_at_us=1)
    (case,), _ = store.list_cases()
    assert case.worst is not None
    assert (case.worst.severity, case.worst.title, case.worst.count) == ("critical", "/var full", 2)
    assert store.list_cases(min_rank=3)[0][0].worst.count == 1  # type: ignore[union-attr]
