"""The console in a real browser: Debian's chromium, driven by Selenium through Debian's
chromedriver (``apt-get install chromium chromium-driver``; scripts/test.sh installs them;
no browser is ever downloaded). The gateway runs in front of the fake Stripe hosts with the
admin listener, cache, rate limits and audit on; the stripe SDK sends traffic from two
teams; the page is read with explicit waits for what it must show."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import stripe

from sandbox.delivery import signature_header
from tests.helpers import (
    BILLING_KEY,
    PASSTHROUGH_KEY,
    Stack,
    WebhookReceiver,
    digest,
    free_port,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

if not (CHROMIUM.exists() and CHROMEDRIVER.exists()) and not os.environ.get("CI"):
    pytest.skip(
        "needs Debian's chromium and chromium-driver (scripts/test.sh installs them)",
        allow_module_level=True,
    )

# Selenium Manager never fetches a driver or browser here: both paths are given
os.environ.setdefault("SE_OFFLINE", "true")

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import (  # noqa: E402
    JavascriptException,
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

ADMIN_TOKEN = "adm_test_browser_0000000000000001"
CUSTOMER = "cus_1Nbrowser0001"
OTHER = "cus_1Nbrowser0002"
#: an audit line with markup in a field: the page must show it as text
INJECTED_PATH = '/v1/customers/<img id="injected" src="x">'


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,2400",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
    ):
        options.add_argument(argument)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


#: what a condition may meet while the page it reads is being replaced (a sign-in loads
#: the console in place of the sign-in page)
NAVIGATING = (NoSuchElementException, StaleElementReferenceException, JavascriptException)


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str) -> Any:
    return WebDriverWait(driver, 30, poll_frequency=0.05, ignored_exceptions=NAVIGATING).until(
        condition, message=what
    )


def displayed(element_id: str) -> Callable[[WebDriver], bool]:
    return lambda d: d.find_element(By.ID, element_id).is_displayed()


def sign_in(driver: WebDriver, admin: str, token: str) -> None:
    """Open the console: the sign-in page first (no cookie yet), then the console."""
    driver.get(admin + "/")
    wait_for(driver, displayed("login-form"), "the sign-in page")
    assert driver.find_elements(By.ID, "console") == []  # not the console's page at all
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "login-button").click()
    wait_for(driver, displayed("console"), "the console")


def texts(driver: WebDriver, selector: str) -> list[str]:
    """The text of every element ``selector`` matches, read in one script: the page
    replaces its tables on each refresh, so elements found one call earlier may be gone."""
    got: list[str] = driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.textContent.trim())",
        selector,
    )
    return got


def attributes(driver: WebDriver, selector: str, name: str) -> list[str | None]:
    """Attribute ``name`` of every element ``selector`` matches, read in one script."""
    got: list[str | None] = driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]))"
        ".map(e => e.getAttribute(arguments[1]))",
        selector,
        name,
    )
    return got


def click(driver: WebDriver, selector: str) -> None:
    """Click the element ``selector`` matches, finding it again if a refresh replaced it."""

    def clicked(d: WebDriver) -> bool:
        try:
            d.find_element(By.CSS_SELECTOR, selector).click()
        except (StaleElementReferenceException, NoSuchElementException):
            return False
        return True

    wait_for(driver, clicked, f"a click on {selector}")


def text_is(selector: str, expected: str) -> Callable[[WebDriver], bool]:
    return lambda d: texts(d, selector) == [expected]


def retrieve_cache_status(stack: Stack, object_id: str) -> str:
    response = requests.get(
        f"{stack.gateway_url}/v1/customers/{object_id}",
        headers={"Authorization": f"Bearer {BILLING_KEY}"},
        timeout=10,
    )
    assert response.status_code == 200
    return response.headers["X-Cache"]


def test_the_console_shows_the_traffic_and_purges(
    stack: Stack, browser: WebDriver, tmp_path: Path
) -> None:
    assert shutil.which("chromium") or CHROMIUM.exists()
    stack.start_gateway(
        admin={"port": free_port(), "token_sha256": digest(ADMIN_TOKEN)},
        plugins={
            "audit": {"path": str(stack.audit_path)},
            "rate_limit": {"teams": {"billing": {"write": {"rate": 0.01, "burst": 1}}}},
            "console": {"refresh_seconds": 0.5},
        },
    )
    admin = stack.admin_url
    billing = stripe.StripeClient(
        BILLING_KEY, base_addresses={"api": stack.gateway_url}, max_network_retries=0
    )
    direct = stripe.StripeClient(
        PASSTHROUGH_KEY, base_addresses={"api": stack.gateway_url}, max_network_retries=0
    )
    for _ in range(3):
        billing.v1.customers.retrieve(CUSTOMER)
    direct.v1.customers.retrieve(OTHER)
    billing.v1.customers.update(CUSTOMER, {"name": "n"})
    with pytest.raises(stripe.RateLimitError):
        billing.v1.customers.update(CUSTOMER, {"name": "m"})
    hostile = requests.get(
        stack.gateway_url + INJECTED_PATH.replace("<", "%3C").replace(">", "%3E"),
        headers={
            "Authorization": f"Bearer {BILLING_KEY}",
            "Idempotency-Key": "<script>window.pwned = 1</script>",
        },
        timeout=10,
    )
    assert hostile.status_code < 500
    lines = stack.audit_lines(at_least=7)
    assert any(line["path"] == INJECTED_PATH for line in lines)
    per_team = {t: sum(1 for line in lines if line["team"] == t) for t in ("billing", "direct")}
    assert per_team == {"billing": 6, "direct": 1}
    statuses = [line.get("cache") for line in lines]
    lookups = sum(1 for s in statuses if s in ("HIT", "MISS", "COALESCED", "STALE"))
    hits = sum(1 for s in statuses if s in ("HIT", "STALE"))
    assert (hits, lookups) == (2, 4)

    # without the cookie the console's files are refused, and / is the sign-in page
    browser.get(admin + "/console/console.js")
    assert "console_signed_out" in browser.find_element(By.TAG_NAME, "body").text
    browser.get(admin + "/")
    wait_for(browser, displayed("login-form"), "the sign-in page")
    assert browser.find_elements(By.ID, "console") == []
    browser.find_element(By.ID, "token").send_keys("not the token")
    browser.find_element(By.ID, "login-button").click()
    wait_for(browser, text_is("#login-error", "That token was refused."), "refusal shown")
    assert browser.get_cookies() == []  # a wrong token gets no cookie
    browser.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
    browser.find_element(By.ID, "login-button").click()
    wait_for(browser, displayed("console"), "the console")
    refused = browser.get_log("browser")  # read, so the checks at the end see only what follows
    assert any("401" in entry["message"] for entry in refused)
    (cookie,) = browser.get_cookies()
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/")
    assert ADMIN_TOKEN not in cookie["value"] and digest(ADMIN_TOKEN) not in cookie["value"]
    assert browser.execute_script("return document.cookie") == ""  # out of the script's reach

    # the numbers are the traffic's
    for team, count in per_team.items():
        wait_for(
            browser,
            text_is(f'#teams tr[data-team="{team}"] td.requests', str(count)),
            f"{team} requests",
        )
    wait_for(browser, text_is("#cache-hit-ratio", f"{100 * hits / lookups:.1f} %"), "hit ratio")
    assert texts(browser, "#cache-lookups") == [str(lookups)]
    assert int(texts(browser, "#cache-bytes")[0]) > 0
    wait_for(browser, text_is('#rate-limits tr[data-team="billing"] td.refusals', "1"), "refusals")
    assert texts(browser, '#rate-limits tr[data-team="billing"] td.write') == ["0 / 1 (0.01/s)"]
    assert texts(browser, '#teams tr[data-team="analytics"] td.requests') == ["0"]
    # the charts: one line per team, the legend naming each team's total
    wait_for(
        browser,
        lambda d: "billing: 6 requests" in texts(d, "#chart-requests svg text.legend"),
        "requests chart legend",
    )
    assert set(attributes(browser, "#chart-requests svg polyline.series", "data-series")) == {
        "billing",
        "analytics",
        "direct",
    }
    latency = attributes(browser, "#chart-latency svg polyline.series", "data-series")
    assert {"billing p50", "billing p99", "direct p50", "direct p99"} <= set(latency)

    # the hostile audit line is text in a cell, and nothing of it became an element
    wait_for(browser, lambda d: INJECTED_PATH in texts(d, "#audit td.path"), "hostile line")
    assert browser.find_elements(By.CSS_SELECTOR, "#injected") == []
    assert browser.find_elements(By.CSS_SELECTOR, "#audit img, #audit script") == []
    assert browser.execute_script("return window.pwned === undefined") is True

    # filter the audit lines by team
    Select(browser.find_element(By.ID, "filter-team")).select_by_value("direct")
    browser.find_element(By.ID, "filter-button").click()
    wait_for(browser, lambda d: texts(d, "#audit td.team") == ["direct"], "filtered by team")
    Select(browser.find_element(By.ID, "filter-team")).select_by_value("")
    browser.find_element(By.ID, "filter-status").send_keys("429")
    browser.find_element(By.ID, "filter-button").click()
    wait_for(browser, lambda d: texts(d, "#audit td.status") == ["429"], "filtered by status")
    browser.find_element(By.ID, "filter-status").clear()

    # purge: the next retrieve is a MISS (the update evicted it: cache it again first)
    assert retrieve_cache_status(stack, CUSTOMER) == "MISS"
    assert retrieve_cache_status(stack, CUSTOMER) == "HIT"
    browser.find_element(By.ID, "purge-object").send_keys(CUSTOMER)
    browser.find_element(By.ID, "purge-button").click()
    wait_for(
        browser,
        lambda d: any(t.startswith("purged ") for t in texts(d, "#purge-result")),
        "purge done",
    )
    assert texts(browser, "#purge-result")[0].endswith(CUSTOMER)
    assert retrieve_cache_status(stack, CUSTOMER) == "MISS"
    browser.find_element(By.ID, "filter-object").send_keys(CUSTOMER)
    browser.find_element(By.ID, "filter-button").click()
    wait_for(
        browser,
        lambda d: texts(d, "#audit td.cache")[:2] == ["MISS", "HIT"],
        "the MISS after the purge in the audit lines",
    )

    # the page ran within its policy: no violation, no failed request, no script error
    assert [
        entry
        for entry in browser.get_log("browser")
        if entry["level"] in ("SEVERE", "WARNING") or "Content Security Policy" in entry["message"]
    ] == []

    shot = tmp_path / "console.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000

    # a new tab of the same browser has the cookie but not the token: the page asks for it
    browser.switch_to.new_window("tab")
    browser.get(admin + "/")
    wait_for(browser, displayed("login"), "the console's own token form")
    assert not browser.find_element(By.ID, "console").is_displayed()
    browser.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
    browser.find_element(By.ID, "login-button").click()
    wait_for(browser, text_is('#teams tr[data-team="direct"] td.requests', "1"), "figures")

    # sign out: the cookie is gone, / is the sign-in page again
    browser.find_element(By.ID, "logout").click()
    wait_for(
        browser,
        lambda d: not d.find_elements(By.ID, "console") and displayed("login-form")(d),
        "the sign-in page after signing out",
    )
    assert browser.get_cookies() == []


# ------------------------------------------------------------------ the webhooks panel

SOURCE_SECRET = "whsec_console_source_000000000001"
TEAM_SECRET = "whsec_console_team_00000000000001"


def _secret_file(tmp: Path, name: str, secret: str) -> str:
    path = tmp / f"{name}.secret"
    path.write_text(secret + "\n")
    return str(path)


def _admin_call(admin: str, method: str, path: str) -> Any:
    response = requests.request(
        method, admin + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_the_webhooks_panel_shows_the_queue_and_replays_a_dead_letter(
    stack: Stack,
    browser: WebDriver,
    tmp_path: Path,
    webhook_receivers: Callable[..., WebhookReceiver],
) -> None:
    failing, held = webhook_receivers(status=500), webhook_receivers()

    def subscription(name: str, url: str) -> dict[str, Any]:
        return {
            "name": name,
            "team": "billing",
            "url": url,
            "secret_file": _secret_file(tmp_path, name, TEAM_SECRET),
            "retry_delays": [0.05],
            "jitter": 0.0,
            "timeout": 5.0,
        }

    stack.start_gateway(
        admin={"port": free_port(), "token_sha256": digest(ADMIN_TOKEN)},
        plugins={
            "audit": {"path": str(stack.audit_path)},
            "console": {"refresh_seconds": 0.5},
            "webhooks": {
                "sqlite_path": str(tmp_path / "webhooks.sqlite3"),
                "sources": [
                    {
                        "name": "main",
                        "path": "/webhooks/stripe",
                        "secret_file": [_secret_file(tmp_path, "source", SOURCE_SECRET)],
                    }
                ],
                "subscriptions": [
                    subscription("billing", failing.url),
                    subscription("ledger", held.url),
                ],
                "poll_seconds": 0.2,
                "breaker_failures": 100,
            },
        },
    )
    admin = stack.admin_url
    _admin_call(admin, "POST", "/admin/webhooks/subscriptions/ledger/pause")
    event_id = "evt_test_console000000000001"
    body = json.dumps(
        {
            "id": event_id,
            "object": "event",
            "api_version": "2024-06-20",
            "created": int(time.time()),
            "data": {"object": {"id": "in_1Nconsole00001", "object": "invoice"}},
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": "invoice.paid",
        }
    ).encode()
    posted = requests.post(
        stack.gateway_url + "/webhooks/stripe",
        data=body,
        headers={
            "Stripe-Signature": signature_header(body, SOURCE_SECRET, int(time.time())),
            "Content-Type": "application/json",
        },
        timeout=10,
    )
    assert posted.status_code == 200
    failing.wait_for(2)  # the first attempt and its one retry: then a dead letter

    sign_in(browser, admin, ADMIN_TOKEN)
    wait_for(browser, displayed("webhooks"), "panel")
    wait_for(browser, text_is("#webhook-pending", "1"), "the paused subscription's delivery")
    assert texts(browser, "#webhook-oldest")[0].endswith("s ago)")
    wait_for(browser, text_is("#webhook-dead-count", "1"), "the dead letter")
    assert texts(browser, "#webhook-dead tbody td")[:2] == [event_id, "billing"]

    failing.status = 200
    click(browser, "#webhook-dead button.replay")
    wait_for(
        browser,
        text_is("#replay-result", f"replay queued: {event_id} to billing"),
        "replay queued",
    )
    received = failing.wait_for(3)
    assert received[2][0] == body
    wait_for(browser, text_is("#webhook-dead-count", "0"), "the dead letter replayed")
    assert browser.save_screenshot(str(tmp_path / "console-webhooks.png"))
