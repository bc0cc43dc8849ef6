"""The metrics plugin and the plugins' own counters, read back from the admin listener's
``/metrics`` after real traffic (the stripe SDK and plain HTTP) through the gateway.

Every app has its own registry, so each test reads absolute values."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import requests
import stripe
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.context import RequestContext
from gateway.hookspecs import hookimpl
from gateway.keys import GENERATIONS
from plugins.metrics import route_family
from tests.conftest import RedisServer
from tests.helpers import ANALYTICS_KEY, BILLING_KEY, Scrape, Stack, free_port

CUSTOMER = "cus_1Nmetrics00001"
P = "stripe_gateway_"


def _start(stack: Stack, **overrides: Any) -> str:
    stack.start_gateway(admin={"port": free_port()}, **overrides)
    return stack.admin_url


def _client(stack: Stack, key: str = BILLING_KEY) -> stripe.StripeClient:
    return stripe.StripeClient(
        key, base_addresses={"api": stack.gateway_url}, max_network_retries=0
    )


def _get(stack: Stack, path: str, key: str = BILLING_KEY, **headers: str) -> requests.Response:
    return requests.get(
        stack.gateway_url + path, headers={"Authorization": f"Bearer {key}", **headers}, timeout=10
    )


def _eventually(admin: str, name: str, labels: Mapping[str, str], want: float) -> Scrape:
    """Scrape until the sample reaches ``want`` (a request is counted just after its
    response has been sent, so a client can read the answer first)."""
    deadline = time.monotonic() + 3
    while True:
        scrape = Scrape(admin)
        if scrape[name, labels] >= want or time.monotonic() > deadline:
            return scrape
        time.sleep(0.02)


# ------------------------------------------------------------------ route families


@pytest.mark.parametrize(
    ("path", "family"),
    [
        ("/v1/sigma/scheduled_query_runs/sqr_1Nabcdefgh", "sigma"),
        ("/v1/reporting/report_runs", "reporting"),
        ("/v1/financial_connections/accounts/fca_1Nabcdefgh/refresh", "financial_connections"),
        ("/v1/tax/calculations", "tax"),
        ("/v1/tax_rates/txr_1Nabcdefgh", "tax"),
        ("/v1/identity/verification_sessions", "identity"),
        ("/v1/crypto/onramp_sessions", "crypto"),
        ("/v1/climate/orders", "climate"),
        ("/v1/forwarding/requests", "forwarding"),
        ("/v1/webhook_endpoints/we_1Nabcdefgh", "webhook_endpoints"),
        ("/v1/files", "files"),
        ("/v1/file_links", "files"),
        ("/oauth/token", "oauth"),
        ("/v1/customers/cus_1Nabcdefgh", "other"),
        ("/v2/billing/meter_event_stream", "other"),
        ("/v1", "other"),
        ("/favicon.ico", "other"),
    ],
)
def test_route_family_is_bounded_and_never_the_path(path: str, family: str) -> None:
    assert route_family(path) == family


# ------------------------------------------------------------------ requests


def test_requests_are_counted_by_team_method_family_and_status_class(stack: Stack) -> None:
    admin = _start(stack)
    billing = _client(stack)
    billing.v1.customers.list()
    billing.v1.customers.retrieve(CUSTOMER)
    billing.v1.webhook_endpoints.create({"url": "https://example.com/h", "enabled_events": ["*"]})
    analytics = _client(stack, ANALYTICS_KEY)
    analytics.v1.sigma.scheduled_query_runs.list()
    with pytest.raises(stripe.PermissionError):
        analytics.v1.customers.list()
    with pytest.raises(stripe.AuthenticationError):
        _client(stack, "gw_test_unknown_000000000000001").v1.tax.calculations.retrieve(
            "taxcalc_1Nabcdefgh"
        )
    assert requests.get(stack.gateway_url + "/nowhere", timeout=5).status_code == 404

    scrape = _eventually(admin, "requests_total", {}, 7)
    counted = {
        (labels["team"], labels["method"], labels["family"], labels["status"]): value
        for name, labels, value in scrape.samples
        if name == P + "requests_total"
    }
    assert counted == {
        ("billing", "GET", "other", "2xx"): 2,
        ("billing", "POST", "webhook_endpoints", "2xx"): 1,
        ("analytics", "GET", "sigma", "2xx"): 1,
        ("analytics", "GET", "other", "4xx"): 1,
        ("-", "GET", "tax", "4xx"): 1,
        ("-", "GET", "other", "4xx"): 1,
    }
    # the duration of every request, by family; the upstream time of those that went up
    assert scrape["request_duration_seconds_count", {"family": "other"}] == 4
    assert scrape["request_duration_seconds_count", {"family": "sigma"}] == 1
    assert scrape["request_duration_seconds_count"] == 7
    assert scrape["upstream_duration_seconds_count", {"upstream": "api"}] == 4
    assert scrape["upstream_duration_seconds_sum", {"upstream": "api"}] > 0
    assert scrape["requests_in_flight"] == 0


def test_unknown_methods_count_as_other(stack: Stack) -> None:
    admin = _start(stack)
    response = requests.request("PROPFIND", stack.gateway_url + "/v1/customers", timeout=5)
    assert response.status_code == 401
    scrape = _eventually(admin, "requests_total", {}, 1)
    assert scrape["requests_total", {"method": "OTHER", "status": "4xx"}] == 1


def test_requests_in_flight(stack: Stack) -> None:
    admin = _start(stack, upstream={"read_timeout": 30.0})
    held = stack.loop.call(asyncio.Event)
    stack.upstreams["api"].hold = held  # the answer waits until the test has looked
    done = threading.Event()

    def slow() -> None:
        _get(stack, "/v1/test_faults/hold")
        done.set()

    thread = threading.Thread(target=slow)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while (in_flight := Scrape(admin)["requests_in_flight"]) != 1:
            assert time.monotonic() < deadline, f"requests_in_flight stayed {in_flight}"
            time.sleep(0.02)
        assert not done.is_set()
    finally:
        stack.loop.call(held.set)
        thread.join(10)
    assert done.is_set()
    assert _eventually(admin, "requests_total", {}, 1)["requests_in_flight"] == 0


def test_nothing_is_counted_without_an_admin_listener(stack: Stack) -> None:
    from gateway.keys import METRICS
    from gateway.metrics import exposition

    stack.start_gateway()
    _client(stack).v1.customers.list()
    assert stack.app is not None
    text = exposition(stack.app[METRICS]).decode()
    assert f'{P}requests_total{{team="billing"' not in text


# ------------------------------------------------------------------ upstream errors


def test_upstream_errors_are_counted_by_kind(stack: Stack) -> None:
    closed = free_port()
    # a read timeout long enough that only the stall meets it on a slow machine
    admin = _start(stack, upstream={"read_timeout": 1.5, "files": f"http://127.0.0.1:{closed}"})
    assert _get(stack, "/v1/test_faults/reset_before").status_code == 502
    assert _get(stack, "/v1/test_faults/stall?seconds=5").status_code == 504
    assert _get(stack, "/v1/files/file_1Nabcdefghij/contents").status_code == 502
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        _get(stack, "/v1/test_faults/reset_mid_body?length=1")
    scrape = _eventually(admin, "upstream_errors_total", {}, 4)
    errors = {
        (labels["upstream"], labels["kind"]): value
        for name, labels, value in scrape.samples
        if name == P + "upstream_errors_total"
    }
    assert errors == {
        ("api", "disconnected"): 2,  # a GET is tried once more after a disconnect
        ("api", "read_timeout"): 1,
        ("files", "connect"): 1,
        ("api", "broken_body"): 1,
    }
    assert scrape["requests_total", {"status": "5xx"}] == 3


# ------------------------------------------------------------------ cache


def test_cache_outcomes_bytes_and_evictions(stack: Stack) -> None:
    admin = _start(stack, plugins={"cache": {"max_entries": 2}})
    client = _client(stack)
    first = client.v1.customers.retrieve(CUSTOMER)  # miss, stored
    client.v1.customers.retrieve(CUSTOMER)  # hit
    client.v1.customers.list()  # bypass
    client.v1.customers.update(CUSTOMER, {"description": "x"})  # bypass, evicts 1
    client.v1.customers.retrieve(CUSTOMER)  # miss, stored
    size = len(first.last_response.body.encode())
    scrape = _eventually(admin, "cache_requests_total", {}, 5)
    assert scrape["cache_requests_total", {"result": "miss"}] == 2
    assert scrape["cache_requests_total", {"result": "hit"}] == 1
    assert scrape["cache_requests_total", {"result": "bypass"}] == 2
    assert scrape["cache_evictions_total", {"reason": "write"}] == 1
    assert scrape["cache_served_bytes_total"] == size
    assert scrape["cache_stored_bytes_total"] >= 2 * size - 10  # the second answer's echo
    # more objects than max_entries: the least recent ones go
    for n in range(3):
        client.v1.customers.retrieve(f"cus_1Nmetricsfill{n}")
    purged = requests.post(
        admin + "/admin/cache/purge", data={"object_id": "cus_1Nmetricsfill2"}, timeout=5
    )
    assert purged.status_code == 401  # no token configured: refused, nothing purged
    scrape = _eventually(admin, "cache_evictions_total", {"reason": "capacity"}, 2)
    assert scrape["cache_evictions_total", {"reason": "capacity"}] == 2
    assert scrape["cache_evictions_total", {"reason": "purge"}] == 0


def test_cache_purge_evictions(stack: Stack) -> None:
    from tests.helpers import digest

    stack.start_gateway(admin={"port": free_port(), "token_sha256": digest("adm_test_0000001")})
    admin = stack.admin_url
    _client(stack).v1.customers.retrieve(CUSTOMER)
    response = requests.post(
        admin + "/admin/cache/purge",
        data={"object_id": CUSTOMER},
        headers={"Authorization": "Bearer adm_test_0000001"},
        timeout=5,
    )
    assert response.json()["purged"] == 1
    assert Scrape(admin)["cache_evictions_total", {"reason": "purge"}] == 1


def test_coalesced_and_stale_answers(stack: Stack) -> None:
    admin = _start(
        stack,
        plugins={"cache": {"default_ttl": 0.2, "stale_if_error": 60}},
        upstream={"read_timeout": 10.0},
    )
    path = f"/v1/customers/{CUSTOMER}?delay=1.5"  # every thread arrives while the first waits
    results: list[str] = []

    def fetch() -> None:
        results.append(_get(stack, path).headers["X-Cache"])

    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert sorted(results) == ["COALESCED", "COALESCED", "MISS"]
    time.sleep(0.3)  # expired, still within stale_if_error
    stack.upstreams["api"].fail_with = 500
    assert _get(stack, path).headers["X-Cache"] == "STALE"
    scrape = _eventually(admin, "cache_requests_total", {"result": "stale"}, 1)
    assert scrape["cache_requests_total", {"result": "coalesced"}] == 2
    assert scrape["cache_requests_total", {"result": "stale"}] == 1
    assert scrape["cache_requests_total", {"result": "miss"}] == 1


# ------------------------------------------------------------------ rate limits


def test_rate_limit_decisions_by_team_and_outcome(stack: Stack) -> None:
    admin = _start(
        stack,
        plugins={
            "disable": ["cache"],
            "rate_limit": {
                "teams": {
                    "billing": {"read": {"rate": 0.01, "burst": 2}},
                    "analytics": {"read": {"rate": 0.01, "burst": 1}, "shadow": True},
                }
            },
        },
    )
    billing = _client(stack)
    billing.v1.customers.list()
    billing.v1.customers.list()
    with pytest.raises(stripe.RateLimitError):
        billing.v1.customers.list()
    analytics = _client(stack, ANALYTICS_KEY)
    analytics.v1.sigma.scheduled_query_runs.list()
    analytics.v1.sigma.scheduled_query_runs.list()  # over, but shadowed
    scrape = _eventually(admin, "rate_limit_decisions_total", {}, 5)
    decisions = {
        (labels["team"], labels["outcome"]): value
        for name, labels, value in scrape.samples
        if name == P + "rate_limit_decisions_total"
    }
    assert decisions == {
        ("billing", "allow"): 2,
        ("billing", "deny"): 1,
        ("analytics", "allow"): 1,
        ("analytics", "shadow_deny"): 1,
    }
    assert scrape["requests_total", {"team": "billing", "status": "4xx"}] == 1
    assert scrape["rate_limit_fallbacks_total"] == 0


def test_rate_limit_backend_fallbacks(stack: Stack, redis_server: RedisServer) -> None:
    admin = _start(
        stack,
        plugins={
            "disable": ["cache"],
            "rate_limit": {
                "backend": "redis",
                "redis_url": redis_server.url,
                "redis_timeout": 5.0,
                "default": {"read": {"rate": 100}},
                "lease": 0,  # each request asks Redis (a lease would decide the next ones)
            },
        },
    )
    client = _client(stack)
    client.v1.customers.list()
    redis_server.kill()
    client.v1.customers.list()
    client.v1.customers.list()
    scrape = _eventually(admin, "rate_limit_decisions_total", {}, 3)
    assert scrape["rate_limit_decisions_total", {"team": "billing", "outcome": "allow"}] == 3
    assert scrape["rate_limit_fallbacks_total", {"team": "billing"}] == 2
    assert scrape["rate_limit_backend_errors_total"] >= 1


# ------------------------------------------------------------------ idempotency


def test_idempotency_keys_injected_and_retries(stack: Stack) -> None:
    admin = _start(stack, plugins={"idempotency": {"backoff": 0.01}})
    # a Forwarding request without a key gets one; Stripe's first answer asks for a retry
    stack.upstreams["api"].plan = ["retry500", "ok"]
    response = requests.post(
        stack.gateway_url + "/v1/forwarding/requests",
        data={"url": "https://example.com", "payment_method": "pm_1Nabcdefgh"},
        headers={"Authorization": f"Bearer {BILLING_KEY}"},
        timeout=10,
    )
    assert response.status_code == 200 and response.headers["X-Gateway-Attempts"] == "2"
    # the SDK sends its own key on every POST: nothing injected, nothing retried
    _client(stack).v1.customers.create({"email": "jenny@example.com"})
    scrape = _eventually(admin, "requests_total", {}, 2)
    assert scrape["idempotency_keys_injected_total"] == 1
    assert scrape["upstream_retries_total", {"upstream": "api"}] == 1
    assert scrape["requests_total", {"family": "forwarding", "status": "2xx"}] == 1


# ------------------------------------------------------------------ redaction


class _Unlistable(Mapping[str, Any]):
    """A mapping that cannot be walked: no redactor can see inside it."""

    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("cannot list")


class _OddLogger:
    """A third-party plugin that logs a value the redactor cannot read."""

    name = "odd_logger"

    def __init__(self) -> None:
        self.log: Any = None

    @hookimpl
    def gateway_startup(self, app: web.Application) -> None:
        self.log = app[GENERATIONS].current.host.log

    @hookimpl
    def gateway_request(self, ctx: RequestContext) -> None:
        self.log.warning("odd_value", value=_Unlistable())


ODD_LOGGER = _OddLogger()


def test_redaction_fail_closed_events_are_counted(stack: Stack) -> None:
    admin = _start(stack, plugins={"load": [f"{__name__}:ODD_LOGGER"]})
    _client(stack).v1.customers.list()
    (line,) = stack.error_events("odd_value")
    assert line["redaction_error"] is True and line["value"] == "[unparsed _Unlistable]"
    scrape = _eventually(admin, "redaction_fail_closed_total", {}, 1)
    assert scrape["redaction_fail_closed_total"] == 1


# ------------------------------------------------------------------ Redis breakers, audit


def test_redis_breaker_gauges_open_on_a_failure_and_close_on_the_next_success(
    stack: Stack, redis_server: RedisServer
) -> None:
    # a timeout with slack: the first calls (connect, script load) on a busy machine must
    # not time out; the hang below is a stopped process, not a timed pause, so nothing races
    shared = {"backend": "redis", "redis_url": redis_server.url, "redis_timeout": 2.0}
    admin = _start(
        stack,
        plugins={
            "cache": {**shared, "redis_breaker": 0.2},
            # lease 0: each request asks Redis, so the hung Redis is met at once
            "rate_limit": {
                **shared,
                "redis_breaker": 0.2,
                "default": {"read": {"rate": 100}},
                "lease": 0,
            },
        },
    )

    def breakers() -> dict[str, float]:
        return {
            labels["store"]: value
            for name, labels, value in Scrape(admin).samples
            if name == P + "redis_breaker_open"
        }

    assert breakers() == {"cache": 0, "rate_limit": 0}  # exported from the start, closed
    path = f"/v1/customers/{CUSTOMER}"
    assert _get(stack, path).status_code == 200
    assert breakers() == {"cache": 0, "rate_limit": 0}  # Redis answered both
    # Redis stops answering: both stores' calls time out, their breakers open
    redis_server.process.send_signal(signal.SIGSTOP)
    try:
        assert _get(stack, path + "?expand[]=a").status_code == 200  # a miss; fallback limiter
        scrape = Scrape(admin)
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    assert scrape["redis_breaker_open", {"store": "cache"}] == 1
    assert scrape["redis_breaker_open", {"store": "rate_limit"}] == 1
    assert scrape["cache_backend_errors_total"] >= 1
    # once Redis answers again, the next calls succeed and the breakers close
    deadline = time.monotonic() + 60
    while (scrape := Scrape(admin))["redis_breaker_open"] != 0:
        open_ = [s for s in ("cache", "rate_limit") if scrape["redis_breaker_open", {"store": s}]]
        assert time.monotonic() < deadline, f"the breakers did not close: {open_}"
        assert _get(stack, path).status_code == 200  # the cache's Redis
        assert _get(stack, "/v1/customers").status_code == 200  # the rate limiter's
        time.sleep(0.1)


def test_audit_write_failures_are_counted(stack: Stack) -> None:
    admin = _start(stack, plugins={"audit": {"path": "/dev/full"}})
    assert Scrape(admin)["audit_write_failures_total"] == 0
    assert _get(stack, "/v1/customers").status_code == 200  # answered; its line fails
    scrape = _eventually(admin, "audit_write_failures_total", {}, 1)
    assert scrape["audit_write_failures_total"] == 1
    assert _get(stack, "/v1/customers").status_code == 503  # refused; its line fails too
    scrape = _eventually(admin, "audit_write_failures_total", {}, 2)
    assert scrape["audit_write_failures_total"] == 2


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(min_value=0, max_value=200, allow_nan=False),
            st.sampled_from([0.005, 0.01, 2.5, 80.0, 80.0000001]),  # on and past the bounds
        ),
        max_size=50,
    )
)
def test_a_tally_flushed_into_a_histogram_equals_observing_one_by_one(
    values: list[float],
) -> None:
    """The metrics plugin sorts latencies into buckets itself (single-process mode) and
    adds them on flush: the histogram must read as if each had been observed."""
    from prometheus_client import CollectorRegistry, Histogram

    from gateway.metrics import LATENCY_BUCKETS
    from plugins.metrics import _Tally

    registry = CollectorRegistry()
    direct = Histogram("direct", "d", buckets=LATENCY_BUCKETS, registry=registry)
    tallied = Histogram("tallied", "t", buckets=LATENCY_BUCKETS, registry=registry)
    tally = _Tally(tallied)
    for i, value in enumerate(values):
        direct.observe(value)
        tally.observe(value)
        if i % 7 == 3:  # flushed now and then: nothing counted twice or lost
            tally.flush_into(tallied)
    tally.flush_into(tallied)
    tally.flush_into(tallied)

    def samples(name: str) -> list[tuple[str, dict[str, str], float]]:
        (family,) = [m for m in registry.collect() if m.name == name]
        return [(s.name.removeprefix(name), s.labels, s.value) for s in family.samples]

    got, want = samples("tallied"), samples("direct")
    assert [(n, labels) for n, labels, _ in got] == [(n, labels) for n, labels, _ in want]
    for (_, _, a), (_, _, b) in zip(got, want, strict=True):
        assert a == pytest.approx(b)
