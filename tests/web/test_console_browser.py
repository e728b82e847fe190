"""The console in a real headless browser (Debian's chromium through chromium-driver).

A real ``casefile-collector serve --web-address`` process, a real ``casefile agent run``
process connected to it, real signed bundles. The browser signs in, opens a case, a
finding and its evidence, the timeline, requests a live snapshot from the agent and
sees it arrive; a viewer sees no controls and is refused when posting anyway; sign-out
ends the session; no page logs a console error (a CSP violation would). Screenshots at
desktop and phone widths are kept in ``$CASEFILE_TEST_ARTEFACTS`` (default: the test's
temporary folder) and listed in the test output.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_live import BIN, HOSTNAME, Agent, Collector, connects, enroll_agent, free_port, wait_for
from tests.web.conftest import CASE, upload_case

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)

webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the dev extra)")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402


class WebCollector(Collector):
    """The e2e collector process, with its console on a second loopback port."""

    web_port: int = 0

    def start(self) -> None:
        ready = self.data.parent / f"ready-{self.port}.json"
        ready.unlink(missing_ok=True)
        self.web_port = free_port()
        with self.log.open("a") as fh:
            proc = self.proc = subprocess.Popen(
                [str(BIN / "casefile-collector"), "serve", "--address", self.addr, "--data-dir", str(self.data),
                 "--ready-file", str(ready), "--web-address", f"127.0.0.1:{self.web_port}"],
                stdout=fh, stderr=subprocess.STDOUT,
            )
        wait_for("collector ready", lambda: ready.exists() or proc.poll() is not None, logs=self.log.read_text)
        assert proc.poll() is None, self.log.read_text()
        info = json.loads(ready.read_text())
        self.fingerprint = info["fingerprint"]
        assert info["web_port"] == self.web_port


@dataclass
class Site:
    collector: WebCollector
    agent: Agent
    tokens: dict[str, str]
    bundles: dict[str, str]
    shots: Path

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.collector.web_port}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("browser")
    c = WebCollector(data=tmp / "data", port=free_port(), log=tmp / "collector.log")
    c.start()
    try:
        with c.store() as store:
            tokens = {}
            for role in ("viewer", "engineer", "admin"):
                tokens[role], _ = store.create_token("engineer", role=role, label=f"{role} alice", ttl=_HOUR)
            enroll_token, _ = store.create_token("enroll", label="t", ttl=_HOUR, max_uses=1)
        bundles = upload_case(c.channel(), enroll_token, tmp / "bundles")
        agent = enroll_agent(c, tmp / "home", HOSTNAME)
        before = connects(c, agent.agent_id)
        agent.start()
        wait_for("agent connected", lambda: connects(c, agent.agent_id) > before, logs=agent.log.read_text)
        shots = Path(os.environ.get("CASEFILE_TEST_ARTEFACTS") or tmp / "screenshots")
        shots.mkdir(parents=True, exist_ok=True)
        try:
            yield Site(c, agent, tokens, bundles, shots)
        finally:
            agent.stop_all()
    finally:
        c.stop()


_HOUR = dt.timedelta(hours=1)


@pytest.fixture
def browser(site: Site) -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    # The collector's certificate is self-signed; the connection is still HTTPS (Secure
    # cookies, a secure context), only the certificate is not checked against a CA.
    options.accept_insecure_certs = True
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def shoot(site: Site, driver: Any, name: str) -> list[Path]:
    """The page at desktop and phone widths; the files are listed in the test output."""
    made = []
    for label, (w, h) in (("desktop", (1280, 900)), ("phone", (390, 844))):
        driver.set_window_size(w, h)
        path = site.shots / f"{name}-{label}.png"
        assert driver.save_screenshot(str(path)), path
        made.append(path)
    driver.set_window_size(1280, 900)
    print("screenshots:", *made)
    return made


def sign_in(site: Site, driver: Any, role: str, next_path: str = "/cases") -> None:
    driver.get(f"{site.base}/signin?next={next_path}")
    field = driver.switch_to.active_element  # autofocus: the token field, ready to type
    assert field.get_attribute("id") == "token"
    field.send_keys(site.tokens[role], Keys.ENTER)  # the keyboard alone signs in
    wait_for("signed in", lambda: "/signin" not in driver.current_url, timeout=30)


def unlabelled_fields(driver: Any) -> list[str]:
    """Form fields a screen reader could not name (no label[for], no wrapping label)."""
    return list(driver.execute_script("""
        return Array.from(document.querySelectorAll('input:not([type=hidden]), select, textarea'))
          .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
          .map(el => el.outerHTML);
    """))


def test_engineer_works_a_case_and_gets_a_live_snapshot(site: Site, browser: Any) -> None:
    d = browser
    sign_in(site, d, "engineer")
    assert d.current_url.endswith("/cases")
    assert CASE in d.find_element(By.TAG_NAME, "main").text
    shoot(site, d, "cases")
    d.find_element(By.LINK_TEXT, CASE).click()
    wait_for("case page", lambda: "/case?id=" in d.current_url)
    d.find_element(By.CSS_SELECTOR, f'a[href="/bundles/{site.bundles["after"]}"]').click()
    wait_for("bundle page", lambda: site.bundles["after"] in d.current_url)
    finding = d.find_element(By.CSS_SELECTOR, "#findings details.finding.critical")
    assert "/var" in finding.text and "Next step:" in finding.text
    evidence = finding.find_element(By.CSS_SELECTOR, "table.evidence")
    assert "disks." in evidence.text and evidence.is_displayed()
    shoot(site, d, "bundle")

    d.get(f"{site.base}/bundles/{site.bundles['before']}")
    d.find_element(By.LINK_TEXT, "Timeline").click()
    chart = d.find_element(By.CSS_SELECTOR, "#timeline svg.chart")
    assert chart.is_displayed() and d.find_elements(By.CSS_SELECTOR, "#timeline svg line.onset")
    search = d.find_element(By.ID, "fact-search")
    search.send_keys("uptime_seconds")
    leaves = [e for e in d.find_elements(By.CSS_SELECTOR, "#fact-tree .leaf") if e.is_displayed()]
    assert leaves and all("uptime_seconds" in e.text for e in leaves)
    shoot(site, d, "timeline")

    d.get(f"{site.base}/host?name={HOSTNAME}")
    assert not unlabelled_fields(d)
    reason = d.find_element(By.ID, "reason")
    reason.send_keys("SR-4711: slow disk, console test")
    reason.send_keys(Keys.TAB)
    assert d.switch_to.active_element.get_attribute("id") == "wait_minutes"  # keyboard order follows the form
    shoot(site, d, "host")
    d.find_element(By.CSS_SELECTOR, '#live button[type="submit"]').click()
    wait_for("progress page", lambda: "/snapshots/" in d.current_url or "/bundles/" in d.current_url, timeout=30)
    seen: set[str] = set()

    def arrived() -> bool:
        if "/snapshots/" in d.current_url:
            # Read the list in one script call: it grows while it is read, and the page is replaced by the
            # bundle page when the snapshot is done, which Chromium reports as a stale element or as an
            # "unknown error" about a node that left the document.
            with contextlib.suppress(WebDriverException):
                texts = d.execute_script(
                    "return Array.from(document.querySelectorAll('#progress li'), e => e.textContent.trim())"
                )
                seen.update(t.split()[0] for t in texts or [] if t)
        return "/bundles/" in d.current_url

    wait_for("the live bundle opens", arrived, timeout=90, logs=site.agent.log.read_text)
    bundle_id = d.current_url.rsplit("/", 1)[1]
    with site.collector.store() as store:
        rec = store.get_bundle(bundle_id)
    assert rec.kind == "live" and rec.agent_id == site.agent.agent_id
    assert "queued" in seen or "delivered" in seen, seen
    assert HOSTNAME in d.find_element(By.TAG_NAME, "h1").text
    assert console_errors(d) == []

    # The form offers what the agent's policy allows (it reported facts only on connecting).
    d.get(f"{site.base}/host?name={HOSTNAME}")
    offered = [e.get_attribute("value") for e in d.find_elements(By.CSS_SELECTOR, "input[name=scope]")]
    assert offered == ["facts"], offered
    assert "policy allows" in d.find_element(By.ID, "scope-note").text
    # A scope outside it posted anyway (a hand-made form): the agent denies it, the page says so.
    d.execute_script(
        "const i = document.createElement('input'); i.type = 'checkbox'; i.name = 'scope'; i.value = 'logs';"
        "i.checked = true; document.querySelector('#live fieldset').append(i);"
    )
    d.find_element(By.ID, "reason").send_keys("SR-4711: logs too")
    d.find_element(By.CSS_SELECTOR, '#live button[type="submit"]').click()
    wait_for("denied shown", lambda: d.find_elements(By.CSS_SELECTOR, "#progress li.state-denied"), timeout=60)
    assert "not allowed" in d.find_element(By.CSS_SELECTOR, "#progress li.state-denied").text
    shoot(site, d, "snapshot-denied")
    assert console_errors(d) == []

    d.find_element(By.CSS_SELECTOR, ".signout button").click()
    wait_for("signed out", lambda: d.current_url.endswith("/signin"))
    d.get(f"{site.base}/cases")
    assert "/signin" in d.current_url  # the session is gone
    assert console_errors(d) == []


def test_viewer_sees_no_controls_and_posting_anyway_is_refused(site: Site, browser: Any) -> None:
    d = browser
    sign_in(site, d, "viewer")
    d.get(f"{site.base}/bundles/{site.bundles['before']}")
    assert not d.find_elements(By.ID, "download")
    d.get(f"{site.base}/host?name={HOSTNAME}")
    assert not d.find_elements(By.ID, "live")
    shoot(site, d, "viewer-host")
    assert console_errors(d) == []
    # Posting the snapshot form anyway, with the session's own CSRF token: the API refuses.
    status = d.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const csrf = document.querySelector('form.signout input[name=csrf]').value;
        const body = new URLSearchParams({csrf, host: arguments[0], scope: 'facts', reason: 'curious'});
        fetch('/snapshots', {method: 'POST', body}).then(r => done(r.status), e => done(String(e)));
    """, HOSTNAME)
    assert status == 403
    # And without the CSRF token, even an engineer's form is refused.
    status = d.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch('/signout', {method: 'POST', body: new URLSearchParams({})}).then(r => done(r.status));
    """)
    assert status == 403
    d.get(f"{site.base}/cases")
    assert d.current_url.endswith("/cases")  # still signed in: the forged sign-out did nothing


def test_admin_pages_work_from_the_keyboard(site: Site, browser: Any) -> None:
    d = browser
    sign_in(site, d, "admin", "/tokens")
    assert not unlabelled_fields(d)
    d.find_element(By.ID, "label").send_keys("browser test")
    d.find_element(By.ID, "ttl").send_keys("1h", Keys.ENTER)
    wait_for("token shown", lambda: d.find_elements(By.ID, "new-token"))
    assert d.find_element(By.ID, "new-token").get_attribute("value").startswith("cfu_")
    shoot(site, d, "tokens")
    d.get(f"{site.base}/audit?action=token.create")
    assert not unlabelled_fields(d)
    assert "token.create" in d.find_element(By.TAG_NAME, "table").text
    shoot(site, d, "audit")
    d.get(f"{site.base}/fleet?rule=disk-full")
    assert not unlabelled_fields(d)
    assert site.bundles["after"][:12] in d.find_element(By.ID, "fleet-findings").text
    shoot(site, d, "fleet")
    assert console_errors(d) == []


def test_engineer_hunts_from_the_keyboard_and_sees_the_hosts_finish(site: Site, browser: Any) -> None:
    d = browser
    sign_in(site, d, "engineer", "/hunts")
    assert d.current_url.endswith("/hunts") and not unlabelled_fields(d)
    d.find_element(By.ID, "labels").click()
    d.switch_to.active_element.send_keys(Keys.TAB)
    assert d.switch_to.active_element.get_attribute("id") == "host_pattern"  # keyboard order follows the form
    d.switch_to.active_element.send_keys("*")
    d.find_element(By.ID, "case").send_keys(CASE)
    d.find_element(By.ID, "reason").send_keys("SR-4711: compare the fleet, console test")
    shoot(site, d, "hunt-form")
    d.find_element(By.ID, "case").send_keys(Keys.ENTER)  # the keyboard alone starts it
    wait_for("hunt page", lambda: "/hunts/hu_" in d.current_url, timeout=30)
    assert "db-1" in d.find_element(By.ID, "hunt-hosts").text  # enrolled, never connected: it waits

    def state_of(host: str) -> str:
        with contextlib.suppress(WebDriverException):  # rows are replaced in place while read
            for row in d.find_elements(By.CSS_SELECTOR, "#hunt-hosts tbody tr"):
                if row.text.startswith(host):
                    return str(row.find_element(By.CSS_SELECTOR, "td.state").text)
        return ""

    # The page's script polls the status RPC and updates the row in place (no reload).
    wait_for("the live agent's row says done", lambda: state_of(HOSTNAME) == "done", timeout=90,
             logs=site.agent.log.read_text)
    assert state_of("db-1") == "offline"
    refresh = d.find_element(By.CSS_SELECTOR, "#hunt-refresh a")
    wait_for("reload offered", refresh.is_displayed)
    shoot(site, d, "hunt-progress")
    refresh.click()
    wait_for("results", lambda: d.find_elements(By.ID, "hunt-outliers"), timeout=30)
    links = d.find_elements(By.CSS_SELECTOR, '#hunt-results a[href^="/bundles/"]')
    assert len(links) == 1
    bundle_id = links[0].get_attribute("href").rsplit("/", 1)[1]
    with site.collector.store() as store:
        rec = store.get_bundle(bundle_id)
    assert rec.kind == "live" and rec.agent_id == site.agent.agent_id
    shoot(site, d, "hunt-results")
    assert console_errors(d) == []
