"""The console over plain HTTPS: sessions, CSRF, redirects, escaping, roles and audit.

A real collector (TLS, SQLite, real signed bundles) serves the console on loopback;
the client here is ``http.client`` with the collector's certificate as trust anchor.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import html
import json
import re
import urllib.parse
from typing import Any

import grpc
from markupsafe import escape

from agent.daemon import channel_message
from agent.keys import SigningKey
from agent.transport import enroll
from agent.transport.connect import PINNED_TARGET_NAME, fetch_certificate, parse_address
from collector.storage import BundleRecord
from collector.storage.schema import to_micros
from collector.web.app import CSP
from collector.web.sessions import COOKIE
from protos import collector_pb2, collector_pb2_grpc
from tests.e2e.test_live import wait_for
from tests.web.conftest import CASE, HOSTILE_HOST, HOSTILE_LOG, HOSTILE_MOUNT, Console


def _cookie(answer_cookies: list[str]) -> str:
    found = [c for c in answer_cookies if c.startswith(COOKIE + "=")]
    assert len(found) == 1, answer_cookies
    return found[0]


def test_sign_in_sets_a_new_strict_cookie_and_sign_out_ends_it(console: Console) -> None:
    web = console.client()
    form = web.get("/signin")
    pre_id = web.jar[COOKIE]
    assert form.headers["Content-Security-Policy"] == CSP
    answer = web.post("/signin", {"csrf": web.csrf(form.body), "token": console.tokens["engineer"], "next": "/hosts"})
    assert answer.status == 303 and answer.headers["location"] == "/hosts"
    cookie = _cookie(answer.cookies())
    flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"secure", "httponly", "samesite", "max-age", "path"} <= flags
    assert "SameSite=Strict" in cookie and "Path=/" in cookie and "Domain" not in cookie
    session_id = web.jar[COOKIE]
    assert session_id != pre_id  # no fixation: sign-in always makes a new id
    # The pre-session's id is gone: presenting it again is not a session.
    stale = console.client()
    stale.jar[COOKIE] = pre_id
    assert stale.get("/cases").status == 303
    assert web.get("/cases").status == 200

    page = web.get("/cases")
    out = web.post("/signout", {"csrf": web.csrf(page.body)})
    assert out.status == 303 and out.headers["location"] == "/signin"
    assert "Max-Age=0" in _cookie(out.cookies())
    replay = console.client()
    replay.jar[COOKIE] = session_id
    again = replay.get("/cases")
    assert again.status == 303 and again.headers["location"].startswith("/signin")


def test_an_attacker_chosen_session_id_is_never_adopted(console: Console) -> None:
    web = console.client()
    web.jar[COOKIE] = "attacker-chosen-id"
    form = web.get("/signin")
    assert web.jar[COOKIE] != "attacker-chosen-id"
    web.post("/signin", {"csrf": web.csrf(form.body), "token": console.tokens["viewer"], "next": "/cases"})
    assert web.jar[COOKIE] != "attacker-chosen-id"
    attacker = console.client()
    attacker.jar[COOKIE] = "attacker-chosen-id"
    assert attacker.get("/cases").status == 303


def test_bad_token_is_refused_and_audited(console: Console) -> None:
    web = console.client()
    form = web.get("/signin")
    answer = web.post("/signin", {"csrf": web.csrf(form.body), "token": "cfu_" + "x" * 43, "next": "/cases"})
    assert answer.status == 401 and "not accepted" in answer.body
    rows = console.collector.store.list_audit(20, action="console.sign_in", outcome="denied")
    assert rows and rows[0].peer.startswith("console ipv4:127.0.0.1:")
    # The sign-in form needs its own CSRF token too; what is not a form is refused in words.
    assert web.post("/signin", {"token": console.tokens["admin"], "next": "/cases"}).status == 403
    assert web.request("POST", "/signin", headers={"Content-Type": "application/json"}).status == 400
    many = "&".join(f"f{i}=x" for i in range(500))
    answer = web.request("POST", "/signin", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status == 403  # an empty form: no CSRF token
    conn_answer = web.raw_post("/signin", many)
    assert conn_answer.status == 400


def test_next_only_leads_to_paths_on_the_console(console: Console) -> None:
    for hostile in ("https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:alert(1)",
                    "/cases\r\nSet-Cookie: x=1"):
        web = console.client()
        answer = web.sign_in(console.tokens["viewer"], hostile)
        assert answer.status == 303
        assert answer.headers["location"] == "/cases", hostile
    web = console.client()
    assert web.sign_in(console.tokens["viewer"], "/hosts?x=1").headers["location"] == "/hosts?x=1"


def test_cases_hosts_and_bundle_pages_show_the_work(console: Console) -> None:
    web = console.client()
    web.sign_in(console.tokens["engineer"])
    cases = web.get("/cases")
    assert cases.status == 200 and CASE in cases.body and "critical" in cases.body
    case = web.get(f"/case?id={CASE}")
    for bundle_id in console.bundles.values():
        assert f"/bundles/{bundle_id}" in case.body
    hosts = web.get("/hosts")
    assert hosts.status == 200 and "/host?name=db-1" in hosts.body
    page = web.get(f"/bundles/{console.bundles['after']}")
    assert page.status == 200
    findings_at, timeline_at, facts_at = (page.body.index(f'id="{s}"') for s in ("findings", "timeline", "facts"))
    assert findings_at < timeline_at < facts_at  # findings first
    assert "Next step:" in page.body and "Evidence: facts" in page.body and "/var" in page.body
    assert f"/bundles/{console.bundles['after']}/diff?against={console.bundles['before']}" in page.body
    diff = web.get(f"/bundles/{console.bundles['after']}/diff?against={console.bundles['before']}")
    assert diff.status == 200 and "/var used: 63.0 % -&gt; 99.0 %" in diff.body
    earlier = web.get(f"/bundles/{console.bundles['before']}")
    assert "<svg" in earlier.body and 'class="onset"' in earlier.body  # the chart with its onset marker
    assert 'class="episode"' in earlier.body and 'id="episodes"' in earlier.body  # and the earlier burst
    report = web.get(f"/bundles/{console.bundles['before']}/report")
    assert report.status == 200 and report.headers["Content-Security-Policy"].startswith("sandbox")
    download = web.get(f"/bundles/{console.bundles['before']}/download")
    assert download.status == 200 and int(download.headers["Content-Length"]) > 0
    # The download's audit row is written when its stream ends, just after the last byte.
    audit = wait_for("download audited", lambda: console.collector.store.list_audit(50, action="query.download_bundle"))
    assert audit[0].target == console.bundles["before"] and audit[0].outcome == "ok"
    assert audit[0].peer.startswith("console ")


def test_log_viewer_filters_and_pages_on_the_server(console: Console) -> None:
    web = console.client()
    web.sign_in(console.tokens["engineer"])
    bid = console.bundles["before"]
    first = web.get(f"/bundles/{bid}/logs")
    assert first.status == 200 and first.body.count("<tr class=\"sev-") == 200 and "next →" in first.body
    errors = web.get(f"/bundles/{bid}/logs?source=kernel&severity=err&text=I%2FO+error")
    rows = re.findall(r'<tr class="sev-([a-z]*)"><td class="num">\d*</td><td>[^<]*</td><td>([^<]*)</td>', errors.body)
    assert rows and all(sev in ("err", "crit", "alert", "emerg") and src == "kernel" for sev, src in rows)
    timed = web.get(f"/bundles/{bid}/logs?since=2026-11-22T16:00&until=2026-11-22T16:01")
    stamps = re.findall(r"<td>(2026-11-22 [0-9:.]+)</td>", timed.body)
    assert stamps and all("16:00:00" <= s[11:19] < "16:01:00" for s in stamps)
    bad = web.get(f"/bundles/{bid}/logs?since=yesterday")
    assert bad.status == 400 and "since" in bad.body


def test_hostile_text_is_escaped_everywhere(console: Console) -> None:
    web = console.client()
    web.sign_in(console.tokens["admin"])
    bid = console.bundles["hostile"]
    pages = [web.get("/hosts"), web.get("/cases"), web.get(f"/case?id={CASE}"), web.get(f"/bundles/{bid}"),
             web.get(f"/bundles/{bid}/logs")]
    for page in pages:
        assert page.status == 200
        for raw in (HOSTILE_HOST, HOSTILE_MOUNT, HOSTILE_LOG):
            assert raw not in page.body
    assert str(escape(HOSTILE_HOST)) in pages[0].body
    assert str(escape(HOSTILE_MOUNT)) in pages[3].body  # in the finding's evidence and title
    assert str(escape(HOSTILE_LOG)) in pages[4].body


def test_viewer_sees_no_controls_and_is_refused_by_the_api(console: Console) -> None:
    web = console.client()
    web.sign_in(console.tokens["viewer"])
    bid = console.bundles["before"]
    page = web.get(f"/bundles/{bid}")
    assert page.status == 200 and "/download" not in page.body and "/logs" not in page.body
    host = web.get("/host?name=db-1")
    assert host.status == 200 and 'action="/snapshots"' not in host.body
    csrf = web.csrf(host.body)
    refused = web.post("/snapshots", {"csrf": csrf, "host": "db-1", "scope": "facts", "reason": "curious"})
    assert refused.status == 403 and "needs &#39;engineer&#39; or above" in refused.body
    assert web.get(f"/bundles/{bid}/download").status == 403
    assert web.get(f"/bundles/{bid}/logs").status == 403
    assert web.get("/audit").status == 403 and web.get("/tokens").status == 403
    denied = console.collector.store.list_audit(20, action="live.request_snapshot", outcome="denied")
    assert denied and denied[0].peer.startswith("console ")


def test_post_without_csrf_is_refused_and_changes_nothing(console: Console) -> None:
    web = console.client()
    web.sign_in(console.tokens["admin"])
    before = len(console.collector.store.list_tokens())
    for form in ({}, {"csrf": "wrong"}):
        answer = web.post("/tokens", {**form, "kind": "engineer", "role": "admin", "label": "sneaky"})
        assert answer.status == 403
    assert len(console.collector.store.list_tokens()) == before
    assert web.post("/signout", {}).status == 403
    assert web.get("/cases").status == 200  # still signed in


def test_tokens_are_shown_once_and_revoking_ends_their_sessions(console: Console) -> None:
    admin = console.client()
    admin.sign_in(console.tokens["admin"])
    page = admin.get("/tokens")
    made = admin.post("/tokens", {"csrf": admin.csrf(page.body), "kind": "engineer", "role": "viewer",
                                  "label": "temp <i>contractor</i>", "ttl": "1h", "uses": ""})
    assert made.status == 200 and made.headers["Cache-Control"] == "no-store"
    token = re.search(r'id="new-token" class="mono" readonly value="(cfu_[A-Za-z0-9_-]{43})"', made.body)
    assert token and "temp &lt;i&gt;contractor&lt;/i&gt;" in made.body
    assert token.group(1) not in admin.get("/tokens").body  # once only
    user = console.client()
    assert user.sign_in(token.group(1)).status == 303 and user.get("/cases").status == 200
    token_id = next(t.id for t in console.collector.store.list_tokens() if t.label == "temp <i>contractor</i>")
    revoked = admin.post("/tokens/revoke", {"csrf": admin.csrf(page.body), "token_id": token_id})
    assert revoked.status == 303
    assert user.get("/cases").status == 303  # signed out
    rows = console.collector.store.list_audit(20, action="token.revoke")
    assert rows[0].target == token_id and rows[0].outcome == "ok" and rows[0].role == "admin"


def test_audit_page_lists_console_actions_with_filters(console: Console) -> None:
    web = console.client()
    web.sign_in(console.tokens["admin"])
    page = web.get("/audit?action=console.sign_in&outcome=ok")
    assert page.status == 200 and "console.sign_in" in page.body and "query.list_bundles" not in page.body


def test_every_asset_is_served_by_the_collector(console: Console) -> None:
    web = console.client()
    page = web.get("/signin")
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.body)
    assert len(assets) >= 3
    for asset in assets:
        answer = web.get(asset)
        assert answer.status == 200, asset
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert "http://" not in page.body and "https://" not in page.body
    assert "<script>" not in page.body and " on" + "load=" not in page.body


def test_snapshot_of_an_offline_host_ends_offline_with_when_it_was_last_seen(console: Console) -> None:
    web = console.client()
    web.sign_in(console.tokens["engineer"])
    host = web.get("/host?name=db-1")
    assert 'action="/snapshots"' in host.body
    missing = web.post("/snapshots", {"csrf": web.csrf(host.body), "host": "db-1", "scope": "facts", "reason": ""})
    assert missing.status == 400 and "reason is required" in missing.body
    started = web.post("/snapshots", {"csrf": web.csrf(host.body), "host": "db-1", "scope": "facts",
                                      "reason": "SR-4711 check"})
    assert started.status == 303 and started.headers["location"].startswith("/snapshots/")
    events = web.get(started.headers["location"] + "/events")
    got = json.loads(events.body)
    assert got["final"] and got["events"][-1]["state"] == "offline"
    assert "offline since never" in got["events"][-1]["detail"]
    other = console.client()
    other.sign_in(console.tokens["admin"])
    assert other.get(started.headers["location"]).status == 404  # another engineer's request is not listed
    rows = console.collector.store.list_audit(10, action="live.request_snapshot", outcome="offline")
    assert rows and rows[0].peer.startswith("console ")


def test_fleet_questions_run_through_the_api(console: Console) -> None:
    web = console.client()
    web.sign_in(console.tokens["viewer"])
    found = web.get("/fleet?rule=disk-full&severity=critical")
    assert found.status == 200 and f"/bundles/{console.bundles['after']}" in found.body
    assert f"/bundles/{console.bundles['before']}" not in found.body.split('id="fleet-findings"')[1]
    rows = web.get("/fleet?q=" + "fs.use_pct+%3E+95")
    body = rows.body.split('id="metric-rows"')[1]
    assert f"/bundles/{console.bundles['after']}" in body and str(escape(HOSTILE_MOUNT)) in body
    bad = web.get("/fleet?q=nonsense.field+%3E+1")
    assert bad.status == 400 and "nonsense.field" in bad.body
    rows_audit = console.collector.store.list_audit(5, action="query.query_metrics")
    assert rows_audit and rows_audit[0].peer.startswith("console ")


async def _connect_reporting(console: Console, agent_id: str, key: SigningKey,
                             policy: collector_pb2.LivePolicy | None) -> str:
    """One Channel handshake whose hello reports ``policy`` (None: an agent too old to)."""
    address = console.collector.address
    pem = fetch_certificate(parse_address(address))
    creds = grpc.ssl_channel_credentials(root_certificates=pem)
    async with grpc.aio.secure_channel(
        address, creds, options=[("grpc.ssl_target_name_override", PINNED_TARGET_NAME)]
    ) as ch:
        call: Any = collector_pb2_grpc.ChannelStub(ch).Connect()
        hello = collector_pb2.ChannelHello(agent_id=agent_id, agent_version="t")
        if policy is not None:
            hello.policy.CopyFrom(policy)
        await call.write(collector_pb2.AgentMessage(hello=hello))
        challenge = await call.read()
        sig = key.sign(channel_message(bytes(challenge.challenge.nonce), agent_id))
        await call.write(collector_pb2.AgentMessage(challenge_response=collector_pb2.ChallengeResponse(signature=sig)))
        accepted = await call.read()
        call.cancel()
        return str(accepted.accepted.agent_id)


def test_snapshot_form_offers_only_what_the_agents_policy_allows(console: Console) -> None:
    key = SigningKey.generate()
    with console.collector.channel() as ch:
        agent_id = enroll(ch, token=console.collector.enroll_token(), key=key, hostname="pol-<1>",
                          agent_version="t").agent_id
    web = console.client()
    web.sign_in(console.tokens["engineer"])

    def offered() -> tuple[list[str], str]:
        page = web.get("/host?name=" + urllib.parse.quote("pol-<1>"))
        assert page.status == 200 and "pol-<1>" not in page.body
        note = re.search(r'<p class="muted" id="scope-note">([^<]*)</p>', page.body)
        return re.findall(r'name="scope" value="([^"]+)"', page.body), note.group(1) if note else ""

    # Never connected: every scope, and the page says the agent decides.
    scopes, note = offered()
    assert scopes == ["facts", "logs", "fragmentation", "crashes"] and "has not reported its policy" in note
    policy = collector_pb2.LivePolicy(allowed_scopes=["facts", "crashes", "plugin:pgsql"], max_logs_window_s=0)
    assert asyncio.run(_connect_reporting(console, agent_id, key, policy)) == agent_id
    scopes, note = offered()
    assert scopes == ["facts", "crashes", "plugin:pgsql"] and "policy allows" in note
    # An older agent's hello (no policy) keeps what was reported before.
    asyncio.run(_connect_reporting(console, agent_id, key, None))
    assert offered()[0] == ["facts", "crashes", "plugin:pgsql"]
    # A policy allowing nothing: no form at all, and the reason.
    asyncio.run(_connect_reporting(console, agent_id, key, collector_pb2.LivePolicy()))
    scopes, note = offered()
    page = web.get("/host?name=" + urllib.parse.quote("pol-<1>"))
    assert scopes == [] and 'action="/snapshots"' not in page.body and "allows no live snapshot" in note


def _walk(web: Any, first: str, wanted: str) -> tuple[int, list[str]]:
    """Follows the pages' "next page" links from ``first`` until ``wanted`` shows; (pages, bodies)."""
    path, bodies = first, []
    while True:
        page = web.get(path)
        assert page.status == 200, page.body[:500]
        bodies.append(page.body)
        if wanted in page.body:
            return len(bodies), bodies
        nxt = re.search(r'<a rel="next" href="([^"]+)">', page.body)
        assert nxt, f"{wanted!r} not found in {len(bodies)} pages"
        path = html.unescape(nxt.group(1))
        assert len(bodies) < 50


def test_every_case_host_and_bundle_is_reachable_through_the_pages(console: Console) -> None:
    """More cases, hosts and bundles than one page holds, all older than the fixture's:
    the oldest of each is found by following the pages, none is listed twice."""
    store = console.collector.store
    agent = store.get_agent(store.get_bundle(console.bundles["before"]).agent_id)
    old = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    for i in range(240):  # 65 cases of two bundles, 240 hosts, 110 bundles outside any case
        digest = hashlib.sha256(f"old-{i}".encode()).hexdigest()
        rec = BundleRecord(
            bundle_id=digest[:32], agent_id=agent.id, hostname=f"old-host-{i:03d}",
            case_id=f"SR-OLD-{i // 2:03d}" if i < 130 else None, kind="one-shot",
            created_at_us=to_micros(old + dt.timedelta(hours=i)), received_at_us=to_micros(old),
            size=1, sha256=digest, key_fingerprint=agent.fingerprint, agent_version="t", file_name="x",
            collectors_ok=1, collectors_failed=0, blob_key=digest,
        )
        store.insert_bundle(rec, facts_pb=b"", manifest_json="{}")
    web = console.client()
    web.sign_in(console.tokens["viewer"])
    pages, bodies = _walk(web, "/cases", "SR-OLD-000<")
    assert pages == 2 and CASE in bodies[0]  # 50 cases a page, the newest activity first
    listed = [c for body in bodies for c in re.findall(r'<a href="/case\?id=([^"]+)">', body)]
    assert len(listed) == len(set(listed))
    pages, bodies = _walk(web, "/hosts", "old-host-239<")
    assert pages == 3
    listed = [h for body in bodies for h in re.findall(r'<td><a href="/host\?name=([^"]+)">', body)]
    assert len(listed) == len(set(listed)) and len(listed) >= 240
    # Bundles outside any case, newest first, paged; the oldest one is reachable.
    oldest_free = hashlib.sha256(b"old-130").hexdigest()[:32]
    pages, bodies = _walk(web, "/case?id=", f"/bundles/{oldest_free}")
    assert pages == 2 and not any(f"/bundles/{b}" in body for b in console.bundles.values() for body in bodies)
    assert console.collector.store.list_audit(1, action="query.list_cases")[0].role == "viewer"
    assert web.get("/cases?page=not-a-token").status == 400


def test_a_pages_calls_are_audited_like_their_rpcs_in_one_commit(console: Console) -> None:
    """The bundle page calls four handlers: four rows, in call order, as over gRPC (written
    together when the page is done). A download's row still comes when its stream ends."""
    web = console.client()
    web.sign_in(console.tokens["engineer"])
    store = console.collector.store
    last = store.list_audit(1)[0].id
    bid = console.bundles["after"]
    assert web.get(f"/bundles/{bid}").status == 200
    rows = list(reversed([r for r in store.list_audit(20) if r.id > last]))
    assert [r.action for r in rows] == [
        "query.get_bundle", "query.get_findings", "query.get_timeline", "query.list_bundles"
    ]
    assert all(r.outcome == "ok" and r.role == "engineer" and r.peer.startswith("console ") for r in rows)
    assert [r.at_us for r in rows] == sorted(r.at_us for r in rows) and rows[0].target == bid
    # A refused call inside a page is in the batch too: a viewer's log page.
    viewer = console.client()
    viewer.sign_in(console.tokens["viewer"])
    last = store.list_audit(1)[0].id
    assert viewer.get(f"/bundles/{bid}/logs").status == 403
    denied = [r for r in store.list_audit(5) if r.id > last]
    assert [(r.action, r.outcome) for r in denied] == [("query.read_logs", "denied")]
