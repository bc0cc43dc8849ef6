"""The console plugin's JSON endpoints, charts and page, over real sockets: the gateway in
front of the fake Stripe hosts, traffic from the stripe SDK, the admin listener read with
``requests``. The browser test is tests/plugins/test_console_browser.py."""

from __future__ import annotations

import json
import math
import re
import signal
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

import pytest
import requests
import stripe
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.hookspecs import hookimpl
from gateway.testing import PluginTest
from plugins.console import LATENCY_BOUNDS_MS, ConsoleSettings, Window, _quantile
from tests.fake_stripe import FakeStripe
from tests.helpers import (
    BILLING_KEY,
    PASSTHROUGH_KEY,
    Served,
    Stack,
    digest,
    free_port,
)
from tests.serving import GatewayConfigFile, get, serve_gateway

ADMIN_TOKEN = "adm_test_console_0000000000000001"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CUSTOMER = "cus_1Nconsole0001"
OTHER = "cus_1Nconsole0002"


def plugins_of(stack: Stack) -> dict[str, Any]:
    return {
        "audit": {"path": str(stack.audit_path)},
        "rate_limit": {
            "account": {"rate": 0.01, "burst": 50},
            "teams": {
                "billing": {
                    "read": {"rate": 100, "burst": 100},
                    "write": {"rate": 0.01, "burst": 1},
                }
            },
        },
    }


def start(stack: Stack, **overrides: Any) -> str:
    plugins = {**plugins_of(stack), **overrides.pop("plugins", {})}
    stack.start_gateway(
        admin={"port": free_port(), "token_sha256": digest(ADMIN_TOKEN)},
        plugins=plugins,
        **overrides,
    )
    return stack.admin_url


def client(stack: Stack, key: str) -> stripe.StripeClient:
    return stripe.StripeClient(
        key, base_addresses={"api": stack.gateway_url}, max_network_retries=0
    )


def summary(admin: str) -> dict[str, Any]:
    response = requests.get(admin + "/admin/console/summary", headers=AUTH, timeout=5)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def summary_with(admin: str, requests_seen: int) -> dict[str, Any]:
    """The summary once the console has counted ``requests_seen`` requests (a request's
    audit line is written just after its response)."""

    deadline = time.monotonic() + 30
    while True:
        got = summary(admin)
        if got["requests"] >= requests_seen or time.monotonic() > deadline:
            return got
        time.sleep(0.02)


def team_of(body: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [t for t in body["teams"] if t["name"] == name]
    return found


def audit(admin: str, **params: str) -> requests.Response:
    return requests.get(admin + "/admin/console/audit", params=params, headers=AUTH, timeout=5)


# ------------------------------------------------------------------ the figures


def test_summary_counts_each_teams_requests_cache_and_refusals(stack: Stack) -> None:
    admin = start(stack)
    billing, direct = client(stack, BILLING_KEY), client(stack, PASSTHROUGH_KEY)
    for _ in range(3):
        billing.v1.customers.retrieve(CUSTOMER)  # a MISS, then two HITs
    direct.v1.customers.retrieve(OTHER)  # another credential: its own MISS
    billing.v1.customers.update(CUSTOMER, {"name": "n"})  # a write, within the limit
    with pytest.raises(stripe.RateLimitError):
        billing.v1.customers.update(CUSTOMER, {"name": "m"})  # refused: write burst 1

    body = summary_with(admin, 6)
    assert body["object"] == "console_summary"
    assert body["requests"] == 6
    billing_team = team_of(body, "billing")
    assert billing_team["requests"] == 5
    assert billing_team["refusals"] == 1
    assert billing_team["errors"] == 0  # a refusal is a 4xx, not an error
    assert billing_team["last_refusals"][0]["limit"] == "write"
    assert billing_team["p50_ms"] > 0 and billing_team["p99_ms"] >= billing_team["p50_ms"]
    assert billing_team["cache"] == {"HIT": 2, "MISS": 1, "BYPASS": 2}
    limits = {b["name"]: b for b in billing_team["rate_limit"]["limits"]}
    assert (limits["write"]["burst"], limits["write"]["remaining"]) == (1, 0)
    assert limits["read"]["burst"] == 100
    # the account budget (50) bound the read that went upstream
    assert 0 < billing_team["account_remaining"]["remaining"] < 50
    assert team_of(body, "direct")["requests"] == 1
    assert team_of(body, "analytics")["requests"] == 0  # configured teams are always listed
    cache = body["cache"]
    assert (cache["lookups"], cache["from_cache"], cache["hit_ratio"]) == (4, 2, 0.5)
    assert cache["bytes_from_cache"] > 0
    assert body["upstream_errors"] == {}
    # the webhooks plugin is loaded by default but not configured: the page must not ask
    # for its endpoints (a 404 in the browser's log)
    assert "webhooks" in body["plugins"] and body["webhooks"] is False


def test_upstream_errors_are_counted_by_kind(stack: Stack) -> None:
    admin = start(stack)
    billing = client(stack, BILLING_KEY)
    stack.upstreams["api"].plan = ["noretry500"]
    with pytest.raises(stripe.APIError):
        billing.v1.customers.retrieve(CUSTOMER)
    with pytest.raises(stripe.APIError):
        billing.raw_request("get", "/v1/test_faults/reset_before")
    body = summary_with(admin, 2)
    assert body["upstream_errors"] == {"stripe_5xx": 1, "upstream_unreachable": 1}
    assert team_of(body, "billing")["errors"] == 2
    assert team_of(body, "billing")["error_ratio"] == 1.0


def test_the_console_keeps_only_the_redacted_line(stack: Stack) -> None:
    card = "4242424242424242"
    admin = start(stack)
    billing = client(stack, BILLING_KEY)
    billing.raw_request("get", f"/v1/customers/{card}", metadata={"card": card})
    lines = stack.audit_lines()
    assert card not in json.dumps(lines)
    kept = audit(admin).json()["data"]
    assert len(kept) == 1
    assert card not in json.dumps(kept)
    assert "params" not in kept[0]  # bulky fields are not kept at all
    assert kept[0]["request_id"] == lines[0]["request_id"]
    assert kept[0]["path"] == lines[0]["path"]


# ------------------------------------------------------------------ the audit lines


def test_audit_lines_filter_by_team_status_and_object(stack: Stack) -> None:
    admin = start(stack)
    billing, direct = client(stack, BILLING_KEY), client(stack, PASSTHROUGH_KEY)
    billing.v1.customers.retrieve(CUSTOMER)
    billing.v1.customers.retrieve(OTHER)
    direct.v1.customers.retrieve(CUSTOMER)
    billing.v1.customers.update(CUSTOMER, {"name": "n"})
    with pytest.raises(stripe.RateLimitError):
        billing.v1.customers.update(CUSTOMER, {"name": "m"})
    summary_with(admin, 5)

    everything = audit(admin).json()["data"]
    assert len(everything) == 5
    assert everything[0]["status"] == 429  # newest first
    assert {line["team"] for line in audit(admin, team="direct").json()["data"]} == {"direct"}
    assert len(audit(admin, team="billing").json()["data"]) == 4
    assert [line["status"] for line in audit(admin, status="429").json()["data"]] == [429]
    assert len(audit(admin, status="4xx").json()["data"]) == 1
    assert len(audit(admin, status="2xx").json()["data"]) == 4
    by_object = audit(admin, object=CUSTOMER).json()["data"]
    assert len(by_object) == 4 and {line["object_id"] for line in by_object} == {CUSTOMER}
    both = audit(admin, object=CUSTOMER, team="billing", status="200").json()["data"]
    assert len(both) == 2
    assert len(audit(admin, limit="1").json()["data"]) == 1


@pytest.mark.parametrize(
    "params",
    [{"limit": "0"}, {"limit": "x"}, {"limit": "100000"}, {"status": "abc"}, {"status": "6xx"}],
)
def test_audit_refuses_bad_filters(stack: Stack, params: dict[str, str]) -> None:
    admin = start(stack)
    response = audit(admin, **params)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "parameter_invalid"


def test_the_audit_lines_are_bounded(stack: Stack) -> None:
    admin = start(stack, plugins={"console": {"audit_lines": 3}})
    billing = client(stack, BILLING_KEY)
    for _ in range(5):
        billing.v1.customers.retrieve(CUSTOMER)
    summary_with(admin, 5)
    assert len(audit(admin).json()["data"]) == 3  # the page asks for 100: it gets 3


# ------------------------------------------------------------------ charts


def test_charts_are_svg_with_a_line_per_team(stack: Stack) -> None:
    admin = start(stack)
    billing = client(stack, BILLING_KEY)
    for _ in range(2):
        billing.v1.customers.retrieve(CUSTOMER)
    summary_with(admin, 2)
    for name in ("requests", "errors", "latency"):
        response = requests.get(
            admin + f"/admin/console/charts/{name}.svg", headers=AUTH, timeout=5
        )
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("image/svg+xml")
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
        svg = response.text
        assert svg.startswith("<svg") and "<script" not in svg and "style=" not in svg
        series = set(re.findall(r'<polyline class="series" data-series="([^"]+)"', svg))
        if name == "latency":
            assert series == {"billing p50", "billing p99"}
        else:
            assert series == {"billing", "analytics", "direct"}
    requests_svg = requests.get(
        admin + "/admin/console/charts/requests.svg", headers=AUTH, timeout=5
    ).text
    assert 'data-series="billing" x=' in requests_svg and "billing: 2 requests" in requests_svg
    missing = requests.get(admin + "/admin/console/charts/nothing.svg", headers=AUTH, timeout=5)
    assert missing.status_code == 404


# ------------------------------------------------------------------ the page and the token


def signed_in(admin: str) -> requests.Session:
    """A client holding the console's session cookie (``POST /admin/console/session``)."""
    browser = requests.Session()
    answer = browser.post(admin + "/admin/console/session", headers=AUTH, timeout=5)
    assert answer.status_code == 200, answer.text
    return browser


def test_the_page_is_static_with_a_strict_policy(stack: Stack) -> None:
    admin = start(stack)
    client(stack, BILLING_KEY).v1.customers.retrieve(CUSTOMER)
    summary_with(admin, 1)
    browser = signed_in(admin)
    page = browser.get(admin + "/", timeout=5)
    assert page.status_code == 200 and 'id="console"' in page.text
    assert page.headers["Content-Type"].startswith("text/html")
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy and "http" not in policy
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Cache-Control"] == "no-store"
    # no data in the page (it needs no token, only the cookie): no team, no id, no script body
    assert "billing" not in page.text and CUSTOMER not in page.text
    assert re.findall(r"<script[^>]*>([^<]*)</script>", page.text) == [""]
    assert re.findall(r'src="([^"]+)"', page.text) == ["/console/console.js"]
    assert "http://" not in page.text and "https://" not in page.text
    script = browser.get(admin + "/console/console.js", timeout=5)
    assert script.headers["Content-Type"].startswith("text/javascript")
    assert "innerHTML" not in script.text and "eval(" not in script.text
    assert "http://" not in script.text.replace("http://www.w3.org/2000/svg", "")
    css = browser.get(admin + "/console/console.css", timeout=5)
    assert css.headers["Content-Type"].startswith("text/css")


GUESSES = [
    {},
    {"Authorization": ""},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer "},
    {"Authorization": ADMIN_TOKEN},
    {"Authorization": f"Basic {ADMIN_TOKEN}"},
    {"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}"},
    {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
    {"Authorization": f"Bearer {ADMIN_TOKEN.upper()}"},
    {"Authorization": f"Bearer {digest(ADMIN_TOKEN)}"},
    {"Cookie": f"token={ADMIN_TOKEN}"},
    {"X-Admin-Token": ADMIN_TOKEN},
]


@pytest.mark.parametrize("headers", GUESSES)
def test_the_console_json_needs_the_token(stack: Stack, headers: dict[str, str]) -> None:
    admin = start(stack)
    for path in (
        "/admin/console/summary",
        "/admin/console/audit",
        "/admin/console/charts/requests.svg",
    ):
        response = requests.get(admin + path, headers=headers, timeout=5)
        assert response.status_code == 401, path
        assert response.json()["error"]["code"] == "admin_unauthorized"
        assert "billing" not in response.text


def test_purge_is_a_post_with_the_token_never_a_get(stack: Stack) -> None:
    admin = start(stack)
    billing = client(stack, BILLING_KEY)
    billing.v1.customers.retrieve(CUSTOMER)
    # a cross-site form post carries no Authorization header: refused
    forged = requests.post(admin + "/admin/cache/purge", data={"object_id": CUSTOMER}, timeout=5)
    assert forged.status_code == 401
    as_get = requests.get(
        admin + "/admin/cache/purge", params={"object_id": CUSTOMER}, headers=AUTH, timeout=5
    )
    assert as_get.status_code == 405
    billing.v1.customers.retrieve(CUSTOMER)
    assert audit(stack.admin_url).json()["data"][0]["cache"] == "HIT"  # nothing was purged
    done = requests.post(
        admin + "/admin/cache/purge", json={"object_id": CUSTOMER}, headers=AUTH, timeout=5
    )
    assert done.json()["purged"] >= 1
    billing.v1.customers.retrieve(CUSTOMER)
    summary_with(admin, 3)
    assert audit(admin).json()["data"][0]["cache"] == "MISS"


def test_off_without_the_admin_listener_or_when_disabled(stack: Stack) -> None:
    admin = start(stack, plugins={"console": {"enabled": False}})
    assert requests.get(admin + "/", timeout=5).status_code == 404
    response = requests.get(admin + "/admin/console/summary", headers=AUTH, timeout=5)
    assert response.status_code == 404


def test_a_reload_keeps_the_figures(stack: Stack) -> None:
    admin = start(stack)
    client(stack, BILLING_KEY).v1.customers.retrieve(CUSTOMER)
    summary_with(admin, 1)
    assert stack.config is not None
    admin_table = {"port": stack.config.admin.port, "token_sha256": digest(ADMIN_TOKEN)}
    answer = stack.reload(admin=admin_table, plugins=plugins_of(stack))
    assert answer["reloaded"], answer
    assert summary(admin)["requests"] == 1
    assert len(audit(admin).json()["data"]) == 1


# ------------------------------------------------------------------ the counting


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(min_value=0.25, max_value=100_000), min_size=1, max_size=200),
    st.sampled_from([0.5, 0.9, 0.99]),
)
def test_a_quantile_is_within_20_percent_above_the_true_one(
    latencies: list[float], q: float
) -> None:
    window = Window(5, 10)
    for ms in latencies:
        window.record({"team": "t", "status": 200, "duration_ms": ms}, now=1000.0)
    histogram = window.ring[-1][1]["t"].latency
    got = _quantile(histogram, q)
    assert got is not None
    ranked = sorted(latencies)
    true = ranked[max(0, math.ceil(len(ranked) * q) - 1)]
    assert true <= got <= true * 1.2 + 1e-9


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.floats(0, 400)), max_size=100))
def test_the_window_forgets_what_is_older_than_it(events: list[tuple[str, float]]) -> None:
    window = Window(seconds=5, slots=6)  # 30 s
    for team, at in sorted(events, key=lambda e: e[1]):
        window.record({"team": team, "status": 200, "duration_ms": 1.0}, now=at)
    now = max((at for _, at in events), default=0.0)
    counted = sum(c.requests for _, teams in window.buckets(now) for c in teams.values())
    first = int(now // 5) - 5
    assert counted == sum(1 for _, at in events if int(at // 5) >= first)
    assert len(window.ring) <= 6


def test_the_settings_bound_the_memory() -> None:
    assert LATENCY_BOUNDS_MS[0] == 0.25 and LATENCY_BOUNDS_MS[-1] >= 120_000
    with pytest.raises(ValueError):
        ConsoleSettings.model_validate({"audit_lines": 10**6})
    with pytest.raises(ValueError):
        ConsoleSettings.model_validate({"bucket_seconds": 0})


# ------------------------------------------------------------------ the gateway_audit_line hook


class _Seer:
    name = "seer"

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    @hookimpl
    def gateway_audit_line(self, line: dict[str, Any]) -> None:
        self.lines.append(dict(line))


class _Broken:
    name = "broken"

    @hookimpl
    def gateway_audit_line(self, line: dict[str, Any]) -> None:
        raise RuntimeError("boom")


async def test_plugins_see_the_written_line_redacted_and_a_failure_is_skipped(
    tmp_path: Path,
) -> None:
    card = "4242424242424242"
    audit_file = tmp_path / "audit.jsonl"
    seer = _Seer()
    async with PluginTest(
        _Broken(),
        seer,
        builtins=("audit", "redaction"),
        settings={"audit": {"path": str(audit_file)}},
    ) as plugins:
        ctx = plugins.context("GET", f"/v1/customers/{card}?card={card}", team="billing")
        assert await plugins.request(ctx) is None
        await plugins.finish(ctx, 200, body=b"{}")
        assert [line["event"] for line in plugins.logs()] == ["plugin_failed"]
        assert plugins.logs()[0]["plugin"] == "broken"
    (seen,) = seer.lines
    (written,) = [json.loads(line) for line in audit_file.read_text().splitlines()]
    assert seen["request_id"] == written["request_id"] == ctx.request_id
    assert seen["path"] == written["path"] and card not in json.dumps(seen, default=str)
    assert seen["timestamp"] == written["timestamp"]


class _Levels:
    """A plugin adding a field to each team in ``GET /admin/teams``, counting the calls."""

    name = "levels"

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    @hookimpl
    def gateway_admin_team(self, team: Any) -> dict[str, Any]:
        self.calls[team.name] += 1
        return {"rate_limit": {"read": self.calls[team.name]}}


async def test_the_team_fields_are_read_at_most_once_a_second() -> None:
    levels = _Levels()
    async with PluginTest(levels, builtins=("console",)) as plugins:
        console = plugins.plugin("console")
        for _ in range(5):  # five pages refreshing at once
            body = console.summary(time.time())
        assert levels.calls == {"billing": 1, "analytics": 1}
        assert team_of(body, "billing")["rate_limit"] == {"read": 1}
        at, fields = console._admin_fields_at
        console._admin_fields_at = (at - 1.0, fields)  # a second later
        body = console.summary(time.time())
        assert levels.calls == {"billing": 2, "analytics": 2}
        assert team_of(body, "billing")["rate_limit"] == {"read": 2}


# ------------------------------------------------------------------ several workers


def test_windows_of_several_workers_add_up() -> None:
    a = {"team": "a", "status": 200, "cache": "HIT"}
    seen_by_one = [(100.0, {**a, "duration_ms": 1.0}), (112.0, {**a, "duration_ms": 50.0})]
    seen_by_two = [
        (101.0, {"team": "a", "status": 503, "duration_ms": 9.0, "outcome": "ok"}),
        (112.0, {"team": "b", "status": 429, "rate_limit": "deny", "rate_limit_name": "read"}),
    ]
    one, two, same = Window(5, 6), Window(5, 6), Window(5, 6)
    for window, events in ((one, seen_by_one), (two, seen_by_two)):
        for at, line in events:
            window.record(line, now=at)
    for at, line in sorted(seen_by_one + seen_by_two, key=lambda e: e[0]):
        same.record(line, now=at)
    both = Window.combined(5, 6, [one.export(), two.export()])
    # the same as one window that saw every line
    assert [(i, {t: c.export() for t, c in teams.items()}) for i, teams in both.ring] == [
        (i, {t: c.export() for t, c in teams.items()}) for i, teams in same.ring
    ]
    assert [r[1] for r in both.refusals] == ["b"]
    # an export of another bucket size (a worker mid-reload) is left out
    assert Window.combined(10, 6, [one.export()]).ring == deque()


def test_with_workers_every_answer_covers_every_worker(
    tmp_path: Path, fake_api: tuple[FakeStripe, Served]
) -> None:
    admin_port = free_port()
    config = GatewayConfigFile(tmp_path, api=fake_api[1].url)
    config.write(extra=f'[admin]\nport = {admin_port}\ntoken_sha256 = "{digest(ADMIN_TOKEN)}"\n')
    admin = f"http://127.0.0.1:{admin_port}"
    with serve_gateway(config.path, "--workers", "2") as gw:
        sent = 0
        for _ in range(200):  # fresh connections until both workers served some
            assert get(gw, f"/v1/customers/{CUSTOMER}", BILLING_KEY)[0] == 200
            sent += 1
            workers = {line["worker"] for line in config.audit_lines(at_least=sent)}
            if workers == {0, 1}:
                break
        assert workers == {0, 1}
        for _ in range(6):  # whichever worker answers, it answers for both
            body = summary_with(admin, sent)
            assert (body["requests"], body["workers"], body["workers_unreached"]) == (sent, 2, [])
            assert team_of(body, "billing")["requests"] == sent
            lines = audit(admin, limit=str(sent)).json()["data"]
            assert len(lines) == sent and {line["worker"] for line in lines} == {0, 1}
            stamps = [line["timestamp"] for line in lines]
            assert stamps == sorted(stamps, reverse=True)
            svg = requests.get(
                admin + "/admin/console/charts/requests.svg", headers=AUTH, timeout=5
            ).text
            assert f"billing: {sent} requests" in svg
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(10) == 0
