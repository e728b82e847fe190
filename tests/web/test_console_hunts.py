"""Hunts in the console over plain HTTPS: the form calls CreateHunt, the hunt's page is
GetHuntResults (audited per view) and its polled status the service's PollHuntStatus (the
same check; audited only when refused), with the API's roles.

The fixture's agent (db-1) is enrolled but not connected: its request waits, ``offline``.
"""

from __future__ import annotations

import json
import re

from hypothesis import given
from hypothesis import strategies as st
from markupsafe import escape

from agent.keys import SigningKey
from agent.transport import enroll
from collector.storage.errors import InvalidArgument
from collector.web.hunts import spec_of
from tests.web.conftest import CASE, HOSTILE_HOST, Console

HOSTILE_REASON = '<script>alert("hunt")</script> check disks'


def _form(csrf: str, **extra: str) -> dict[str, str]:
    return {"csrf": csrf, "labels": "", "host_pattern": "db-*", "case": CASE, "scope": "facts",
            "reason": HOSTILE_REASON, "expires": "2h", "since": "", **extra}


def test_engineer_starts_a_hunt_and_follows_its_hosts(console: Console) -> None:
    web = console.client()
    web.sign_in(console.tokens["engineer"])
    page = web.get("/hunts")
    assert page.status == 200 and 'method="post" action="/hunts"' in page.body
    assert 'href="/hunts" aria-current="page"' in page.body
    for field in ("labels", "host_pattern", "case", "reason", "expires", "since", "hunt-id"):
        assert f'<label for="{field}">' in page.body and f'id="{field}"' in page.body
    started = web.post("/hunts", _form(web.csrf(page.body)))
    assert started.status == 303, started.body
    location = started.headers["location"]
    hunt_id = location.rsplit("/", 1)[1]
    assert re.fullmatch(r"hu_[0-9a-f]{24}", hunt_id)

    shown = web.get(location)
    assert shown.status == 200
    assert HOSTILE_REASON not in shown.body and str(escape(HOSTILE_REASON)) in shown.body
    row = shown.body.split('id="hunt-hosts"')[1].split("</table>")[0]
    assert "db-1" in row and 'class="state state-offline"' in row
    assert f'data-status="/hunts/{hunt_id}/status" data-active="1"' in shown.body
    assert "No host has uploaded its bundle yet." in shown.body

    store = console.collector.store
    polled_before = len(store.list_audit(100, action="hunt.status"))
    for _ in range(3):  # the page's progress poll: the API's check, no audit row per poll
        status = json.loads(web.get(f"{location}/status").body)
    assert len(store.list_audit(100, action="hunt.status")) == polled_before
    assert status["active"] and status["counts"] == {"offline": 1}
    assert [h["hostname"] for h in status["hosts"]] == ["db-1"] and status["hosts"][0]["state"] == "offline"

    # Opened by id from the fleet page's form: a redirect to the same page.
    fleet = web.get("/fleet")
    assert 'aria-label="Open hunt by id"' in fleet.body and '<label for="hunt-id">' in fleet.body
    opened = web.get(f"/hunts?id={hunt_id}")
    assert opened.status == 303 and opened.headers["location"] == location
    assert web.get("/hunts/hu_" + "0" * 24).status == 404
    odd = web.get("/hunts?id=../signout")
    assert odd.status == 303 and odd.headers["location"] == "/hunts/..%2Fsignout"
    assert web.get(odd.headers["location"]).status in (400, 404)

    # The RPC's own audit rows: the hunt, one request per host, and each view of the hunt.
    created = store.list_audit(5, action="hunt.create", outcome="ok")
    assert created and created[0].target == CASE and created[0].peer.startswith("console ")
    requests = store.list_audit(5, action="hunt.request")
    assert requests and hunt_id in requests[0].detail and "queued (offline)" in requests[0].detail
    assert store.list_audit(5, action="hunt.results", outcome="ok")[0].target == hunt_id
    # A poll the API refuses is audited: a viewer polling the hunt.
    viewer = console.client()
    viewer.sign_in(console.tokens["viewer"])
    assert viewer.get(f"{location}/status").status == 403
    refused = store.list_audit(5, action="hunt.status", outcome="denied")
    assert refused and refused[0].target == hunt_id and refused[0].role == "viewer"


def test_bad_hunt_forms_come_back_with_the_apis_words_escaped(console: Console) -> None:
    web = console.client()
    web.sign_in(console.tokens["engineer"])
    csrf = web.csrf(web.get("/hunts").body)
    before = len(console.collector.store.list_audit(50, action="hunt.request"))
    no_reason = web.post("/hunts", _form(csrf, reason=""))
    assert no_reason.status == 400 and "A reason is required" in no_reason.body
    label = "role=<b>web</b>"
    bad_label = web.post("/hunts", _form(csrf, labels=label))
    # A label value may hold any text: no agent carries this one, and the answer says so, escaped.
    assert bad_label.status == 404 and label not in bad_label.body
    assert f"no enrolled agent matches {escape(label)}" in bad_label.body
    nobody = web.post("/hunts", _form(csrf, host_pattern="nomatch-*"))
    assert nobody.status == 404 and "no enrolled agent matches host=nomatch-*" in nobody.body
    too_long = web.post("/hunts", _form(csrf, expires="30d"))
    assert too_long.status == 400 and "expires_s" in too_long.body
    assert str(escape(HOSTILE_REASON)) in too_long.body  # the form comes back as typed, escaped
    assert len(console.collector.store.list_audit(50, action="hunt.request")) == before


def test_viewer_gets_no_hunt_form_and_the_api_refuses_it(console: Console) -> None:
    web = console.client()
    web.sign_in(console.tokens["viewer"])
    page = web.get("/hunts")
    assert page.status == 200 and 'method="post" action="/hunts"' not in page.body
    refused = web.post("/hunts", _form(web.csrf(page.body)))
    assert refused.status == 403 and "needs &#39;engineer&#39; or above" in refused.body
    assert web.get("/hunts/hu_" + "0" * 24).status == 403
    denied = console.collector.store.list_audit(5, action="hunt.create", outcome="denied")
    assert denied and denied[0].peer.startswith("console ")


def test_hunt_post_without_csrf_is_refused_and_creates_nothing(console: Console) -> None:
    web = console.client()
    web.sign_in(console.tokens["admin"])
    before = len(console.collector.store.list_audit(50, action="hunt.create"))
    for extra in ({}, {"csrf": "wrong"}):
        form = {k: v for k, v in _form("x").items() if k != "csrf"}
        assert web.post("/hunts", {**form, **extra}).status == 403
    assert len(console.collector.store.list_audit(50, action="hunt.create")) == before


def test_hostile_host_names_and_labels_are_escaped_on_the_hunt_page(console: Console) -> None:
    label = 'team=<i onmouseover="x()">ops</i>'
    with console.collector.channel() as ch:
        enroll(ch, token=console.collector.enroll_token(), key=SigningKey.generate(), hostname=HOSTILE_HOST,
               agent_version="t", labels=(label,))
    web = console.client()
    web.sign_in(console.tokens["admin"])
    started = web.post("/hunts", _form(web.csrf(web.get("/hunts").body), labels=label, host_pattern=""))
    assert started.status == 303, started.body
    shown = web.get(started.headers["location"])
    assert shown.status == 200
    for raw in (HOSTILE_HOST, label, HOSTILE_REASON):
        assert raw not in shown.body
    rows = shown.body.split('id="hunt-hosts"')[1].split("</table>")[0]
    assert str(escape(HOSTILE_HOST)) in rows and "state-offline" in rows
    assert str(escape(label)) in shown.body  # in the selector line
    status = json.loads(web.get(started.headers["location"] + "/status").body)
    assert [h["hostname"] for h in status["hosts"]] == [HOSTILE_HOST]  # JSON; the script sets textContent


_TEXT = st.text(max_size=60)


_DURATION = st.one_of(_TEXT, st.from_regex(r"[0-9]{1,40}(\.[0-9]{1,5})?[smhd]", fullmatch=True))


@given(labels=_TEXT, pattern=_TEXT, case=_TEXT, reason=_TEXT, expires=_DURATION, since=_DURATION,
       scope=st.one_of(_TEXT, st.lists(_TEXT, max_size=4)))
def test_any_hunt_form_becomes_a_request_or_a_clear_refusal(
    labels: str, pattern: str, case: str, reason: str, expires: str, since: str, scope: str | list[str]
) -> None:
    form = {"labels": labels, "host_pattern": pattern, "case": case, "reason": reason, "expires": expires,
            "since": since, "scope": scope}
    try:
        spec = spec_of(form)
    except InvalidArgument as exc:
        assert str(exc).startswith(("A reason is required", "expiry: ", "logs window: "))
        return
    assert spec.reason == reason.strip() != ""
    assert list(spec.labels) == [line.strip() for line in labels.strip().splitlines() if line.strip()]
    assert all("\n" not in label and label == label.strip() for label in spec.labels)
    assert spec.host_pattern == pattern.strip() and spec.case_id == case.strip()
    assert spec.expires_s >= 0 and spec.since_seconds >= 0
