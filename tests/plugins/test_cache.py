"""The cache plugin, with the official SDK through the gateway and a counting upstream."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import pytest
import requests
import stripe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.context import RequestContext
from gateway.errors import ConfigError
from gateway.hookspecs import hookimpl
from gateway.keys import GENERATIONS
from gateway.settings import validate_settings
from gateway.stores.cachekeys import cache_key
from gateway.testing import PluginTest
from plugins.cache import CachePlugin, CacheSettings, state_of
from tests.conftest import RedisServer
from tests.helpers import (
    ANALYTICS_KEY,
    BILLING_KEY,
    PASSTHROUGH_KEY,
    Stack,
    raw_request,
    team,
)

CUSTOMER = "/v1/customers/cus_1Nabcdefghij"


def _client(stack: Stack, key: str = BILLING_KEY, url: str | None = None) -> stripe.StripeClient:
    url = url or stack.gateway_url
    return stripe.StripeClient(key, base_addresses={"api": url}, max_network_retries=0)


def _get(url: str, path: str, key: str = BILLING_KEY, **headers: str) -> requests.Response:
    return requests.get(
        url + path, headers={"Authorization": f"Bearer {key}", **headers}, timeout=10
    )


def test_second_retrieve_is_a_hit(stack: Stack) -> None:
    stack.start_gateway()
    client = _client(stack)
    first = client.v1.customers.retrieve("cus_1Nabcdefghij")
    second = client.v1.customers.retrieve("cus_1Nabcdefghij")
    assert first.to_dict() == second.to_dict()
    assert stack.upstreams["api"].count("GET", CUSTOMER) == 1
    assert first.last_response.headers["X-Cache"] == "MISS"
    assert second.last_response.headers["X-Cache"] == "HIT"
    assert int(second.last_response.headers["Age"]) >= 0
    assert second.last_response.headers["Request-Id"] == first.last_response.headers["Request-Id"]
    hit = stack.audit_lines(2)[1]
    assert hit["cache"] == "HIT" and hit["upstream_request_id"] is None


def test_lists_writes_and_other_paths_bypass(stack: Stack) -> None:
    stack.start_gateway()
    client = _client(stack)
    client.v1.customers.list()
    client.v1.customers.list()
    assert stack.upstreams["api"].count("GET", "/v1/customers") == 2
    response = _get(stack.gateway_url, "/v1/customers")
    assert response.headers["X-Cache"] == "BYPASS"


def test_no_cache_refreshes_and_no_store_skips(stack: Stack) -> None:
    stack.start_gateway()
    url = stack.gateway_url
    assert _get(url, CUSTOMER).headers["X-Cache"] == "MISS"
    assert _get(url, CUSTOMER, **{"Cache-Control": "no-cache"}).headers["X-Cache"] == "MISS"
    assert _get(url, CUSTOMER).headers["X-Cache"] == "HIT"
    assert _get(url, CUSTOMER, **{"Cache-Control": "no-store"}).headers["X-Cache"] == "BYPASS"
    assert stack.upstreams["api"].count("GET", CUSTOMER) == 3


def test_answers_with_secrets_are_never_stored(stack: Stack) -> None:
    stack.start_gateway()
    path = "/v1/setup_intents/seti_1Nabcdefghij?secret=1"
    for _ in range(2):
        assert _get(stack.gateway_url, path).headers["X-Cache"] == "MISS"
    assert stack.upstreams["api"].count("GET", "/v1/setup_intents/seti_1Nabcdefghij") == 2


def test_teams_with_different_credentials_never_share(stack: Stack) -> None:
    stack.start_gateway(
        teams=[
            team("billing", BILLING_KEY, upstream_env="BILLING_STRIPE_KEY"),
            team("analytics", ANALYTICS_KEY, upstream_env="ANALYTICS_STRIPE_KEY"),
            team("direct", PASSTHROUGH_KEY),
        ]
    )
    for key in (BILLING_KEY, ANALYTICS_KEY, PASSTHROUGH_KEY, BILLING_KEY):
        _get(stack.gateway_url, CUSTOMER, key)
    assert stack.upstreams["api"].count("GET", CUSTOMER) == 3
    received = {r.headers["Authorization"] for r in stack.upstreams["api"].received}
    assert len(received) == 3


def test_teams_with_one_credential_share(stack: Stack) -> None:
    stack.start_gateway(
        teams=[
            team("a", BILLING_KEY, upstream_env="BILLING_STRIPE_KEY"),
            team("b", ANALYTICS_KEY, upstream_env="BILLING_STRIPE_KEY"),
        ]
    )
    assert _get(stack.gateway_url, CUSTOMER, BILLING_KEY).headers["X-Cache"] == "MISS"
    assert _get(stack.gateway_url, CUSTOMER, ANALYTICS_KEY).headers["X-Cache"] == "HIT"


def test_allow_rules_are_checked_before_the_cache(stack: Stack) -> None:
    # both teams share one upstream credential, so they share entries; the one that may
    # not read customers must still be refused, cache or no cache
    stack.start_gateway(
        teams=[
            team("all", BILLING_KEY, upstream_env="BILLING_STRIPE_KEY"),
            team(
                "sigma",
                ANALYTICS_KEY,
                upstream_env="BILLING_STRIPE_KEY",
                allow=["GET /v1/sigma/**"],
            ),
        ]
    )
    assert _get(stack.gateway_url, CUSTOMER, BILLING_KEY).headers["X-Cache"] == "MISS"
    assert _get(stack.gateway_url, CUSTOMER, BILLING_KEY).headers["X-Cache"] == "HIT"
    refused = _get(stack.gateway_url, CUSTOMER, ANALYTICS_KEY)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "route_not_allowed"


def test_stripe_account_and_version_partition(stack: Stack) -> None:
    stack.start_gateway()
    url = stack.gateway_url
    variants: list[dict[str, str]] = [
        {},
        {"Stripe-Account": "acct_1Nabcdefghij"},
        {"Stripe-Account": "acct_2Nabcdefghij"},
        {"Stripe-Version": "2024-06-20"},
        {"Stripe-Context": "acct_1Nabcdefghij"},
    ]
    for headers in variants:
        assert _get(url, CUSTOMER, **headers).headers["X-Cache"] == "MISS"
    for headers in variants:
        assert _get(url, CUSTOMER, **headers).headers["X-Cache"] == "HIT"
    assert stack.upstreams["api"].count("GET", CUSTOMER) == len(variants)


def test_expand_forms_share_one_entry(stack: Stack) -> None:
    stack.start_gateway()
    url = stack.gateway_url
    assert _get(url, CUSTOMER + "?expand[]=a&expand[]=b").headers["X-Cache"] == "MISS"
    for query in ("expand[0]=b&expand[1]=a", "expand%5B%5D=a&expand%5B%5D=b"):
        assert _get(url, f"{CUSTOMER}?{query}").headers["X-Cache"] == "HIT"
    assert _get(url, CUSTOMER + "?expand[]=a").headers["X-Cache"] == "MISS"


def test_a_write_evicts_every_variant_before_answering(stack: Stack) -> None:
    stack.start_gateway()
    url = stack.gateway_url
    for headers in ({}, {"Stripe-Version": "2024-06-20"}):
        _get(url, CUSTOMER, **headers)
        _get(url, CUSTOMER + "?expand[]=x", **headers)
    _get(url, CUSTOMER, ANALYTICS_KEY)  # refused (403): not an eviction
    client = _client(stack)
    client.v1.customers.update("cus_1Nabcdefghij", {"description": "new"})
    assert _get(url, CUSTOMER).headers["X-Cache"] == "MISS"
    assert (
        _get(url, CUSTOMER + "?expand[]=x", **{"Stripe-Version": "2024-06-20"}).headers["X-Cache"]
        == "MISS"
    )
    # a nested write (/cancel, /sources/...) evicts the object too
    _get(url, CUSTOMER)
    requests.post(url + CUSTOMER + "/sources/src_1Nabcdefghij", auth=(BILLING_KEY, ""), timeout=5)
    assert _get(url, CUSTOMER).headers["X-Cache"] == "MISS"


def test_failed_write_does_not_evict(stack: Stack) -> None:
    stack.start_gateway()
    url = stack.gateway_url
    _get(url, CUSTOMER)
    stack.upstreams["api"].fail_with = 500
    requests.post(url + CUSTOMER, auth=(BILLING_KEY, ""), data={"a": "b"}, timeout=5)
    stack.upstreams["api"].fail_with = None
    assert _get(url, CUSTOMER).headers["X-Cache"] == "HIT"


def _concurrent(stack: Stack, path: str, n: int) -> list[tuple[int, str, bytes]]:
    async def one(session: aiohttp.ClientSession) -> tuple[int, str, bytes]:
        async with session.get(
            stack.gateway_url + path, headers={"Authorization": f"Bearer {BILLING_KEY}"}
        ) as r:
            return r.status, r.headers.get("X-Cache", ""), await r.read()

    async def run() -> list[tuple[int, str, bytes]]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            return list(await asyncio.gather(*(one(session) for _ in range(n))))

    return stack.loop.run(run())


def test_concurrent_identical_misses_make_one_upstream_request(stack: Stack) -> None:
    stack.start_gateway(upstream={"read_timeout": 10.0})
    # the upstream answers after 2 s: every connection arrives while the leader waits
    results = _concurrent(stack, CUSTOMER + "?delay=2", 100)
    assert stack.upstreams["api"].count("GET", CUSTOMER) == 1
    assert all(status == 200 for status, _, _ in results)
    assert len({body for _, _, body in results}) == 1
    kinds = sorted(kind for _, kind, _ in results)
    assert kinds.count("MISS") == 1 and kinds.count("COALESCED") == 99


def test_leader_failure_reaches_every_waiter_and_the_next_request_retries(stack: Stack) -> None:
    stack.start_gateway(upstream={"read_timeout": 10.0})
    stack.upstreams["api"].fail_with = 500
    results = _concurrent(stack, CUSTOMER + "?delay=2", 50)
    assert stack.upstreams["api"].count("GET", CUSTOMER) == 1
    assert {status for status, _, _ in results} == {500}
    assert len({body for _, _, body in results}) == 1
    stack.upstreams["api"].fail_with = None
    assert _get(stack.gateway_url, CUSTOMER).status_code == 200
    assert stack.upstreams["api"].count("GET", CUSTOMER) == 2


def test_unreachable_leader_fails_every_waiter_with_502(stack: Stack) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stack.start_gateway(upstream={"api": f"http://127.0.0.1:{port}"})
    results = _concurrent(stack, CUSTOMER, 20)
    assert {status for status, _, _ in results} == {502}


def test_stale_on_error(stack: Stack) -> None:
    stack.start_gateway(plugins={"cache": {"default_ttl": 0.3, "stale_if_error": 30}})
    url = stack.gateway_url
    fresh = _get(url, CUSTOMER)
    time.sleep(0.4)
    stack.upstreams["api"].fail_with = 503
    stale = _get(url, CUSTOMER)
    assert stale.status_code == 200
    assert stale.headers["X-Cache"] == "STALE"
    assert "Revalidation Failed" in stale.headers["Warning"]
    assert stale.json() == fresh.json()
    stack.upstreams["api"].fail_with = None
    assert _get(url, CUSTOMER).headers["X-Cache"] == "MISS"


def test_stale_is_off_by_default(stack: Stack) -> None:
    stack.start_gateway(plugins={"cache": {"default_ttl": 0.2}})
    _get(stack.gateway_url, CUSTOMER)
    time.sleep(0.3)
    stack.upstreams["api"].fail_with = 503
    assert _get(stack.gateway_url, CUSTOMER).status_code == 503


def test_entries_expire(stack: Stack) -> None:
    stack.start_gateway(plugins={"cache": {"default_ttl": 1.5}})  # slack for the HIT
    assert _get(stack.gateway_url, CUSTOMER).headers["X-Cache"] == "MISS"
    assert _get(stack.gateway_url, CUSTOMER).headers["X-Cache"] == "HIT"
    time.sleep(1.6)
    assert _get(stack.gateway_url, CUSTOMER).headers["X-Cache"] == "MISS"


def test_ttl_rules() -> None:
    settings = validate_settings(
        CacheSettings,
        {
            "default_ttl": 30,
            "final_ttl": 3600,
            "routes": [{"route": "GET /v1/climate/**", "ttl": 300}],
        },
    )
    now = time.time()
    assert settings.ttl_for("GET", "/v1/customers/cus_1", {"object": "customer"}) == 30
    assert settings.ttl_for("GET", "/v1/climate/products/x", {"object": "climate.product"}) == 300
    done = {"object": "scheduled_query_run", "status": "completed"}
    assert settings.ttl_for("GET", "/v1/sigma/scheduled_query_runs/sqr_1", done) == 3600
    running = {"object": "reporting.report_run", "status": "pending"}
    assert settings.ttl_for("GET", "/v1/reporting/report_runs/frr_1", running) == 1
    calc = {"object": "tax.calculation", "expires_at": int(now + 60)}
    assert 55 < settings.ttl_for("GET", "/v1/tax/calculations/taxcalc_1", calc) <= 60
    for kind in ("tax.transaction", "forwarding.request", "identity.verification_report"):
        assert settings.ttl_for("GET", "/x", {"object": kind}) == 3600


#: (object, state the cache sees): transitional objects Stripe changes on its own, final
#: ones that never change, and the rest
_STATES: list[tuple[dict[str, Any], str | None]] = [
    ({"object": "reporting.report_run", "status": "pending"}, "transitional"),
    ({"object": "reporting.report_run", "status": "succeeded"}, "final"),
    ({"object": "reporting.report_run", "status": "failed"}, None),
    ({"object": "scheduled_query_run", "status": "running"}, "transitional"),
    ({"object": "scheduled_query_run", "status": "completed"}, "final"),
    ({"object": "identity.verification_session", "status": "processing"}, "transitional"),
    ({"object": "identity.verification_session", "status": "requires_input"}, "transitional"),
    ({"object": "identity.verification_session", "status": "verified"}, None),
    (
        {
            "object": "identity.verification_session",
            "status": "verified",
            "redaction": {"status": "processing"},
        },
        "transitional",
    ),
    ({"object": "identity.verification_report"}, "final"),
    ({"object": "crypto.onramp_session", "status": "initialized"}, "transitional"),
    ({"object": "crypto.onramp_session", "status": "fulfillment_processing"}, "transitional"),
    ({"object": "crypto.onramp_session", "status": "fulfillment_complete"}, None),
    ({"object": "climate.order", "status": "confirmed"}, "transitional"),
    ({"object": "climate.order", "status": "delivered"}, None),
    ({"object": "financial_connections.account", "status": "active"}, None),
    (
        {
            "object": "financial_connections.account",
            "status": "active",
            "balance_refresh": {"status": "pending"},
        },
        "transitional",
    ),
    (
        {
            "object": "financial_connections.session",
            "accounts": {"data": [{"transaction_refresh": {"status": "pending"}}]},
        },
        "transitional",
    ),
    ({"object": "financial_connections.session", "accounts": {"data": []}}, None),
    ({"object": "financial_connections.transaction", "status": "pending"}, "transitional"),
    ({"object": "tax.settings", "status": "pending"}, "transitional"),
    ({"object": "tax.settings", "status": "active"}, None),
    ({"object": "tax.registration", "status": "scheduled"}, "transitional"),
    ({"object": "tax.calculation"}, "final"),
    ({"object": "forwarding.request"}, "final"),
    ({"object": "customer", "status": "pending"}, None),
    ({"status": "pending"}, None),
]


@pytest.mark.parametrize(("obj", "state"), _STATES)
def test_objects_stripe_changes_on_its_own_are_transitional(
    obj: dict[str, Any], state: str | None
) -> None:
    settings = validate_settings(
        CacheSettings,
        {"default_ttl": 30, "final_ttl": 3600, "transitional_ttl": 2},
    )
    assert state_of(obj) == state
    expected = {"transitional": 2, "final": 3600, None: 30}[state]
    assert settings.ttl_for("GET", "/v1/x/obj_1234567890", obj) == expected


def test_transitional_ttl_is_never_longer_than_the_route_or_default() -> None:
    pending = {"object": "reporting.report_run", "status": "pending"}
    short = validate_settings(CacheSettings, {"default_ttl": 0.5})
    assert short.ttl_for("GET", "/v1/reporting/report_runs/frr_1", pending) == 0.5
    routed = validate_settings(
        CacheSettings, {"routes": [{"route": "GET /v1/reporting/**", "ttl": 0.25}]}
    )
    assert routed.ttl_for("GET", "/v1/reporting/report_runs/frr_1", pending) == 0.25
    off = validate_settings(CacheSettings, {"transitional_ttl": 0})
    assert off.ttl_for("GET", "/v1/reporting/report_runs/frr_1", pending) == 0


def _sandbox_gateway(stack: Stack, report_delay: float, **cache: Any) -> tuple[Any, str]:
    from sandbox.app import Sandbox, create_sandbox_app
    from sandbox.core import SandboxSettings
    from tests.helpers import start_app

    sandbox = Sandbox(settings=SandboxSettings(report_delay=report_delay, seed=7))
    served = stack.loop.run(start_app(create_sandbox_app(sandbox)))
    stack._runners.append(served.runner)
    stack.start_gateway(upstream={"api": served.url, "files": served.url}, plugins={"cache": cache})
    return sandbox, served.url


def _create_report_run(client: stripe.StripeClient) -> Any:
    kind = client.v1.reporting.report_types.retrieve("balance.summary.1")
    interval = {
        "interval_start": kind.data_available_end - 86400,
        "interval_end": kind.data_available_end,
    }
    return client.v1.reporting.report_runs.create(
        {"report_type": "balance.summary.1", "parameters": interval}
    )


def _poll(condition: Any, deadline: float, pause: float = 0.05) -> Any:
    """The first truthy answer of ``condition()``, or its last one at the deadline."""
    end = time.monotonic() + deadline
    while True:
        got = condition()
        if got or time.monotonic() > end:
            return got
        time.sleep(pause)


def test_a_report_run_polled_through_the_gateway_succeeds_soon_after_the_sandbox(
    stack: Stack,
) -> None:
    # The run stays pending until the test finishes it (the sandbox's control route), and
    # a pending copy may be served for transitional_ttl only, never default_ttl (an hour
    # here): no step depends on how fast the machine is. Every hit says its Age, which
    # must stay within transitional_ttl; the old behaviour (a pending run cached for
    # default_ttl) serves it ever older and never shows the run succeeded.
    ttl = 2.0
    _, sandbox_url = _sandbox_gateway(
        stack, report_delay=3600.0, default_ttl=3600.0, transitional_ttl=ttl
    )
    client = _client(stack)
    run = _create_report_run(client)
    assert run.status == "pending"
    pending_ages: list[int] = []

    def retrieve() -> Any:
        got = client.v1.reporting.report_runs.retrieve(run.id)
        headers = got.last_response.headers
        if got.status == "pending" and headers["X-Cache"] == "HIT":
            pending_ages.append(int(headers["Age"]))
            assert pending_ages[-1] <= ttl, "a pending copy served older than transitional_ttl"
        return got

    # the pending run is cached: a hit (it stays pending however long this takes)
    first = retrieve()
    assert first.status == "pending"
    assert _poll(lambda: retrieve().last_response.headers["X-Cache"] == "HIT", deadline=30)
    assert pending_ages, "a pending run should be cached for transitional_ttl"
    direct = stripe.StripeClient(
        "sk_test_billingupstream000000001",
        base_addresses={"api": sandbox_url},
        max_network_retries=0,
    )
    # to the sandbox itself: a write through the gateway would invalidate the cached copy
    finished = direct.raw_request("post", f"/v1/sandbox/reporting/report_runs/{run.id}/succeed")
    assert direct.deserialize(finished, api_mode="V1").status == "succeeded"
    assert direct.v1.reporting.report_runs.retrieve(run.id).status == "succeeded"
    # the gateway shows it once the pending copy is older than transitional_ttl
    seen = _poll(lambda: retrieve().status == "succeeded", deadline=60)
    assert seen, "the gateway still serves the pending run"
    # a succeeded run is final: cached, and a hit from then on
    again = client.v1.reporting.report_runs.retrieve(run.id)
    assert again.status == "succeeded"
    assert (
        client.v1.reporting.report_runs.retrieve(run.id).last_response.headers["X-Cache"] == "HIT"
    )


def test_transitional_ttl_zero_never_caches_a_pending_run(stack: Stack) -> None:
    _sandbox_gateway(stack, report_delay=3600.0, transitional_ttl=0)
    client = _client(stack)
    run = _create_report_run(client)
    for _ in range(3):
        got = client.v1.reporting.report_runs.retrieve(run.id)
        assert got.status == "pending"
        assert got.last_response.headers["X-Cache"] == "MISS"


@pytest.mark.parametrize(
    ("table", "path"),
    [
        ({"bogus": 1}, "bogus"),
        ({"default_ttl": 0}, "default_ttl"),
        ({"default_ttl": "30"}, "default_ttl"),
        ({"transitional_ttl": -1}, "transitional_ttl"),
        ({"transitional_ttl": "1"}, "transitional_ttl"),
        ({"backend": "memcached"}, "backend"),
        ({"backend": "redis"}, "backend"),
        ({"backend": "redis", "redis_url": "redis://:pw@host:6379"}, "redis_url"),
        ({"backend": "redis", "redis_url": "http://x"}, "redis_url"),
        ({"backend": "redis", "redis_url_env": "NOPE_NOT_SET"}, "redis_url_env"),
        ({"routes": [{"route": "GET v1/x", "ttl": 1}]}, "routes[0].route"),
        ({"routes": [{"route": "GET /v1/x"}]}, "routes[0].ttl"),
        ({"routes": [{"path": "/v1/x", "ttl": 1}]}, "routes[0].path"),
        ({"max_entry_bytes": True}, "max_entry_bytes"),
    ],
)
def test_bad_settings_stop_startup(stack: Stack, table: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        stack.start_gateway(plugins={"cache": table})
    assert info.value.path == f"plugins.cache.{path}"


#: gateway URL -> its cache plugin, for the Redis tests
_PLUGINS: dict[str, Any] = {}


def _redis_gateway(stack: Stack, redis: RedisServer, **extra: Any) -> str:
    # a generous timeout: on a loaded CI machine the default 50 ms (connect included) can
    # pass, and a timed-out lookup is a miss, which these tests would take for a bug
    settings = {"backend": "redis", "redis_url": redis.url, "redis_timeout": 5.0, **extra}
    url = stack.start_gateway(plugins={"cache": settings})
    assert stack.app is not None
    _PLUGINS[url] = stack.app[GENERATIONS].current.host.pm.get_plugin("cache")
    return url


def _miss_then_stored(url: str) -> None:
    """A miss, then wait for its answer to be in Redis: the store is written after the
    response has gone (a request right after it would wait on it: COALESCED; another
    instance would miss)."""
    plugin = _PLUGINS[url]
    before = plugin.counts["stored"]
    assert _get(url, CUSTOMER).headers["X-Cache"] == "MISS"
    deadline = time.monotonic() + 5
    while plugin.counts["stored"] == before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert plugin.counts["stored"] == before + 1


def test_two_instances_share_hits_and_evictions_through_redis(
    stack: Stack, redis_server: RedisServer
) -> None:
    one = _redis_gateway(stack, redis_server)
    two = _redis_gateway(stack, redis_server)
    _miss_then_stored(one)
    assert _get(two, CUSTOMER).headers["X-Cache"] == "HIT"
    _client(stack, url=two).v1.customers.update("cus_1Nabcdefghij", {"description": "x"})
    _miss_then_stored(one)
    assert _get(two, CUSTOMER).headers["X-Cache"] == "HIT"
    assert stack.upstreams["api"].count("GET", CUSTOMER) == 2


def test_redis_outage_degrades_to_misses(stack: Stack, redis_server: RedisServer) -> None:
    url = _redis_gateway(stack, redis_server, redis_breaker=0.2)
    _miss_then_stored(url)
    assert _get(url, CUSTOMER).headers["X-Cache"] == "HIT"
    redis_server.kill()
    statuses = []
    for _ in range(5):
        response = _get(url, CUSTOMER)
        statuses.append((response.status_code, response.headers["X-Cache"]))
    assert statuses == [(200, "MISS")] * 5
    update = requests.post(url + CUSTOMER, auth=(BILLING_KEY, ""), data={"a": "b"}, timeout=5)
    assert update.status_code == 200
    # logged once per interval
    assert stack.error_events("cache_backend_unavailable")  # written: waits for the first
    assert (
        len(stack.error_events("cache_backend_unavailable", 2, timeout=0.3)) == 1
    )  # and only once
    assert stack.upstreams["api"].count("GET", CUSTOMER) == 6


def test_an_entry_this_gateway_did_not_write_is_a_miss_not_an_error(
    stack: Stack, redis_server: RedisServer
) -> None:
    import redis

    url = _redis_gateway(stack, redis_server, redis_breaker=0.2)
    _miss_then_stored(url)
    client = redis.Redis.from_url(redis_server.url)
    entries = [key for key in client.scan_iter("*") if b":e:" in key]
    assert entries
    for key in entries:
        client.set(key, b"not an entry")
    response = _get(url, CUSTOMER)
    assert (response.status_code, response.headers["X-Cache"]) == (200, "MISS")
    (event,) = stack.error_events("cache_backend_unavailable")
    assert event["call"] == "get" and "JSONDecodeError" in event["error"]
    client.close()


def test_retrieve_after_an_update_sees_the_update(stack: Stack) -> None:
    # a stateful upstream (the sandbox), so a stale cached copy would show
    from sandbox.app import Sandbox, create_sandbox_app
    from tests.helpers import start_app

    served = stack.loop.run(start_app(create_sandbox_app(Sandbox())))
    try:
        stack.start_gateway(upstream={"api": served.url})
        client = _client(stack)
        hook = client.v1.webhook_endpoints.create(
            {"url": "https://example.com/a", "enabled_events": ["*"], "description": "old"}
        )
        assert client.v1.webhook_endpoints.retrieve(hook.id).description == "old"
        cached = client.v1.webhook_endpoints.retrieve(hook.id)
        assert cached.last_response.headers["X-Cache"] == "HIT"
        client.v1.webhook_endpoints.update(hook.id, {"description": "new"})
        after = client.v1.webhook_endpoints.retrieve(hook.id)
        assert after.description == "new"
        assert after.last_response.headers["X-Cache"] == "MISS"
        client.v1.webhook_endpoints.delete(hook.id)
        with pytest.raises(stripe.InvalidRequestError):
            client.v1.webhook_endpoints.retrieve(hook.id)
    finally:
        stack.loop.run(served.runner.cleanup())


# ------------------------------------------------------------------ keys from what goes up


class ForwardedKeys:
    """Records, for each request sent upstream, the cache key the plugin used and the key
    computed again from the headers and path actually sent."""

    name = "forwarded_keys"

    def __init__(self) -> None:
        self.pairs: list[tuple[str, str]] = []

    @hookimpl
    def gateway_upstream_headers(self, ctx: RequestContext, headers: CIMultiDict[str]) -> None:
        state = ctx.state.get("cache")
        if state is None:
            return
        raw_path, _, query = ctx.request.raw_path.partition("?")
        again = cache_key(
            credential=headers.get("Authorization", "").removeprefix("Bearer "),
            account=headers.get("Stripe-Account"),
            context=headers.get("Stripe-Context"),
            version=headers.get("Stripe-Version"),
            path=raw_path,
            query_string=query,
        )
        self.pairs.append((state.key, again))


FORWARDED_KEYS = ForwardedKeys()

_VARIANT_HEADERS = st.lists(
    st.tuples(
        st.sampled_from(
            ["Stripe-Version", "stripe-version", "Stripe-Account", "STRIPE-CONTEXT", "X-Other"]
        ),
        st.sampled_from(["2024-06-20", "acct_1Nabcdefghij", "acct_2Nabcdefghij"]),
    ),
    max_size=3,
)


@given(
    headers=_VARIANT_HEADERS,
    connection=st.lists(
        st.sampled_from(["keep-alive", "Stripe-Version", "Stripe-Account", "X-Other"]),
        max_size=2,
    ),
    query=st.sampled_from(["", "?expand[]=a", "?a=1%26b=2", "?a=1&b=2", "?expand%5B%5D=a"]),
)
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_the_cache_key_is_the_key_of_what_goes_upstream(
    stack: Stack, headers: list[tuple[str, str]], connection: list[str], query: str
) -> None:
    if stack.app is None:
        stack.start_gateway(
            plugins={"load": ["tests.plugins.test_cache:FORWARDED_KEYS"]},
            teams=[team("billing", BILLING_KEY, upstream_env="BILLING_STRIPE_KEY")],
        )
    FORWARDED_KEYS.pairs.clear()
    lines = [
        f"GET {CUSTOMER}{query} HTTP/1.1",
        "Host: gateway",
        f"Authorization: Bearer {BILLING_KEY}",
    ]
    lines += [f"{name}: {value}" for name, value in headers]
    if connection:
        lines.append("Connection: " + ", ".join(connection))
    response = raw_request(stack.gateway_url, ("\r\n".join(lines) + "\r\n\r\n").encode())
    if response.status == 400:  # refused (a repeated or Connection-named Stripe header)
        assert FORWARDED_KEYS.pairs == []
        return
    assert response.status == 200
    for used, again in FORWARDED_KEYS.pairs:
        assert used == again


def test_a_connection_named_version_never_keys_an_entry_for_others(stack: Stack) -> None:
    # `Connection: Stripe-Version` used to drop the header on the way up while the entry
    # was stored under the client's version, and served to whoever sent that version
    stack.start_gateway(
        teams=[
            team("a", BILLING_KEY, upstream_env="BILLING_STRIPE_KEY"),
            team("b", ANALYTICS_KEY, upstream_env="BILLING_STRIPE_KEY"),
        ]
    )
    poisoned = raw_request(
        stack.gateway_url,
        (
            f"GET {CUSTOMER} HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {BILLING_KEY}\r\n"
            "Stripe-Version: 2020-08-27\r\nConnection: close, Stripe-Version\r\n\r\n"
        ).encode(),
    )
    assert poisoned.status == 400
    answer = _get(stack.gateway_url, CUSTOMER, ANALYTICS_KEY, **{"Stripe-Version": "2020-08-27"})
    assert answer.headers["X-Cache"] == "MISS"
    assert stack.upstreams["api"].last().headers["Stripe-Version"] == "2020-08-27"


def test_an_encoded_ampersand_is_another_query(stack: Stack) -> None:
    stack.start_gateway()
    url = stack.gateway_url
    assert _get(url, CUSTOMER + "?a=1%26b=2").headers["X-Cache"] == "MISS"
    assert _get(url, CUSTOMER + "?a=1&b=2").headers["X-Cache"] == "MISS"
    assert stack.upstreams["api"].count("GET", CUSTOMER) == 2


# ------------------------------------------------------------------ without a server


async def test_cache_status_audit_field_metric_and_purge_route_without_a_server() -> None:
    path = "/v1/customers/cus_1234567890abcdef"
    body = b'{"id": "cus_1234567890abcdef", "object": "customer"}'
    async with PluginTest(CachePlugin) as t:
        first = t.context("GET", path, team="billing")
        assert await t.request(first) is None  # a miss goes upstream
        await t.finish(first, body=body)
        assert t.audit_fields(first) == {"cache": "MISS"}
        again = t.context("GET", path, team="billing")
        hit = await t.request(again)
        assert hit is not None and hit.headers["X-Cache"] == "HIT"
        await t.finish(again)
        assert t.audit_fields(again) == {"cache": "HIT"}
        assert t.metric("stripe_gateway_cache_requests_total", {"result": "hit"}) == 1.0
        other_team = t.context("GET", path, team="analytics")  # another credential
        assert await t.request(other_team) is None
        purged = await t.admin("POST", "/admin/cache/purge", data={"object_id": path[14:]})
        assert purged.status == 200
        assert t.metric("stripe_gateway_cache_evictions_total", {"reason": "purge"}) == 1.0


async def test_objects_changed_elsewhere_are_purged_in_every_variant() -> None:
    path = "/v1/customers/cus_1234567890abcdef"
    body = b'{"id": "cus_1234567890abcdef", "object": "customer"}'
    async with PluginTest(CachePlugin) as t:
        for team in ("billing", "analytics"):  # two credentials: two cached variants
            ctx = t.context("GET", path, team=team)
            assert await t.request(ctx) is None
            await t.finish(ctx, body=body)
        await t.host.each(
            "gateway_objects_changed", object_ids=["cus_1234567890abcdef"], source="test"
        )
        assert t.metric("stripe_gateway_cache_evictions_total", {"reason": "changed"}) == 2.0
        for team in ("billing", "analytics"):
            assert await t.request(t.context("GET", path, team=team)) is None  # misses


async def test_memory_backend_hooks_answer_without_a_coroutine() -> None:
    """With the memory store, a miss, the store of its answer and a hit are decided at
    once (the hooks return no awaitable); a no-store request is a bypass, also at once."""
    path = "/v1/customers/cus_1234567890abcdef"
    body = b'{"id": "cus_1234567890abcdef", "object": "customer"}'
    async with PluginTest(CachePlugin) as t:
        cache = t.plugin("cache")
        miss = t.context("GET", path, team="billing")
        assert cache.gateway_request(miss) is None
        miss.status = 200
        assert cache.gateway_upstream_response(miss, CIMultiDict()) is None
        miss.response_body = body
        miss.response_headers = CIMultiDict({"Content-Type": "application/json"})
        assert cache.gateway_request_finished(miss) is None
        assert cache.counts["stored"] == 1
        hit = cache.gateway_request(t.context("GET", path, team="billing"))
        assert hit is not None and not asyncio.iscoroutine(hit)
        assert hit.headers["X-Cache"] == "HIT" and hit.body == body
        bypass = t.context("GET", path, {"Cache-Control": "no-store"}, team="billing")
        assert cache.gateway_request(bypass) is None
        assert t.audit_fields(bypass) == {"cache": "BYPASS"}


def test_settings_parsed_twice_compare_equal() -> None:
    """A reload with the same settings keeps the memory store: the prepared TTL rules
    compare by value."""
    table = {"routes": [{"route": "GET /v1/climate/**", "ttl": 300}], "default_ttl": 10}
    first, second = CacheSettings.model_validate(table), CacheSettings.model_validate(table)
    assert first == second
    assert first.policy == second.policy
    assert first != CacheSettings.model_validate({**table, "default_ttl": 11})


# ------------------------------------------------------------------ adversaries, as properties

_TEAMS = ("billing", "analytics")  # two upstream credentials
_ACCOUNTS = (None, "acct_1Nabcdefghijklmn", "acct_1Nopqrstuvwxyzab")
_VERSIONS = (None, "2024-06-20", "2025-01-27.acacia")
_IDS = ("cus_1Nabcdefghij", "cus_1Nklmnopqrst", "pi_1Nabcdefghijkl")
_QUERIES = ("", "expand[]=customer", "expand[0]=customer", "expand[]=a&expand[]=b")
_request_strategy = st.tuples(
    st.sampled_from(_TEAMS),
    st.sampled_from(_ACCOUNTS),
    st.sampled_from(_VERSIONS),
    st.sampled_from(_IDS),
    st.sampled_from(_QUERIES),
)


def _answer_for(team: str, account: str | None, version: str | None, oid: str, query: str) -> bytes:
    """An answer naming everything that partitions the cache (the expand forms are one)."""
    expand = sorted(set(query.replace("expand[]=", "").replace("expand[0]=", "").split("&")))
    return orjson.dumps({"id": oid, "object": "x", "who": [team, account, version, expand]})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests_=st.lists(_request_strategy, min_size=1, max_size=25))
async def test_a_hit_is_only_ever_the_answer_to_the_same_request(
    requests_: list[tuple[str, str | None, str | None, str, str]],
) -> None:
    """Whatever the order of requests (teams with their own credentials, accounts,
    versions, objects, expand forms; the same parts over and over, so the plugin's memo of
    keys is exercised), a hit answers with what Stripe answered to that same request: never
    another team's, account's or version's answer."""
    async with PluginTest(CachePlugin) as t:
        hits = 0
        for team_name, account, version, oid, query in requests_:
            headers = {}
            if account is not None:
                headers["Stripe-Account"] = account
            if version is not None:
                headers["Stripe-Version"] = version
            path = f"/v1/customers/{oid}" + (f"?{query}" if query else "")
            ctx = t.context("GET", path, headers, team=team_name)
            expected = _answer_for(team_name, account, version, oid, query)
            answer = await t.request(ctx)
            if answer is None:
                await t.finish(ctx, body=expected)
                continue
            hits += 1
            assert answer.headers["X-Cache"] == "HIT"
            assert answer.body == expected, (team_name, account, version, path)
            await t.finish(ctx)
        assert hits == t.plugin("cache").counts["hit"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=st.one_of(
        st.from_regex(r"(sk|rk|gw)_(test|live)_[A-Za-z0-9]{8,30}", fullmatch=True),
        st.just(ANALYTICS_KEY + "x"),
        st.just(""),
    ),
    scheme=st.sampled_from(["Bearer", "bearer", "Basic"]),
)
async def test_a_cached_answer_never_answers_a_request_auth_refuses(key: str, scheme: str) -> None:
    """The answer is cached (for billing's upstream key); a request without a team's key,
    for the same path and with the same upstream credential in its own header, is refused
    by auth, never served from the cache."""
    path = "/v1/customers/cus_1Nabcdefghij"
    body = b'{"id": "cus_1Nabcdefghij", "object": "customer"}'
    async with PluginTest(CachePlugin, builtins=("auth",)) as t:
        first = t.context("GET", path, {"Authorization": f"Bearer {BILLING_KEY}"})
        assert await t.request(first) is None
        await t.finish(first, body=body)
        again = t.context("GET", path, {"Authorization": f"Bearer {BILLING_KEY}"})
        hit = await t.request(again)
        assert hit is not None and hit.headers["X-Cache"] == "HIT"
        # the upstream credential itself, or anything else that is not a team's key
        for presented in (key, "sk_test_billing"):
            ctx = t.context("GET", path, {"Authorization": f"{scheme} {presented}"})
            refused = await t.request(ctx)
            assert refused is not None and refused.status == 401
            assert "X-Cache" not in refused.headers


_KIND_NAMES = [
    "customer",
    "reporting.report_run",
    "scheduled_query_run",
    "identity.verification_session",
    "tax.calculation",
    "tax.settings",
    "financial_connections.session",
    "financial_connections.account",
    "climate.order",
]
_STATUS_NAMES = st.sampled_from(
    ["pending", "running", "completed", "succeeded", "processing", "open", "requires_input"]
)
_nested = st.fixed_dictionaries({}, optional={"status": _STATUS_NAMES})
_objects = st.fixed_dictionaries(
    {},
    optional={
        "object": st.one_of(st.sampled_from(_KIND_NAMES), st.integers(), st.just([1])),
        "status": _STATUS_NAMES,
        "expires_at": st.integers(min_value=0, max_value=2**40),
        "redaction": st.one_of(_nested, st.none()),
        "balance_refresh": _nested,
        "accounts": st.fixed_dictionaries(
            {
                "data": st.lists(
                    st.fixed_dictionaries(
                        {}, optional={"ownership_refresh": _nested, "transaction_refresh": _nested}
                    ),
                    max_size=3,
                )
            }
        ),
    },
)


@settings(max_examples=300, deadline=None)
@given(obj=_objects)
def test_the_ttl_of_an_object_without_a_state_is_found_without_looking_for_one(
    obj: dict[str, Any],
) -> None:
    """ttl_for's shortcut (an object of a type with no states and no refresh or redaction
    field has no state) gives what the whole state_of walk gives."""
    settings = validate_settings(
        CacheSettings, {"default_ttl": 30, "transitional_ttl": 2, "final_ttl": 3600}
    )
    policy = settings.policy
    state = state_of(obj)
    if state == "final":
        expires = obj.get("expires_at")
        expected = 3600.0
        if isinstance(expires, int) and expires > 0:
            expected = min(expected, expires - time.time())
        assert abs(policy.ttl_for("GET", "/v1/x/y_1", obj) - expected) < 60
        return
    expected = 2.0 if state == "transitional" else 30.0
    assert policy.ttl_for("GET", "/v1/x/y_1", obj) == expected


async def test_a_waiter_gets_the_leaders_answer_and_a_lone_leader_makes_no_future() -> None:
    path = "/v1/customers/cus_1Nabcdefghij"
    body = b'{"id": "cus_1Nabcdefghij", "object": "customer"}'
    async with PluginTest(CachePlugin) as t:
        cache = t.plugin("cache")
        alone = t.context("GET", path, team="billing")
        assert await t.request(alone) is None
        (flight,) = cache._flights.values()
        await t.finish(alone, body=body)
        assert flight._done is None and not cache._flights  # nobody waited: no future
        other = "/v1/customers/cus_1Nklmnopqrst"
        leader = t.context("GET", other, team="billing")
        assert await t.request(leader) is None
        stranger = t.context("GET", other, team="analytics")  # another credential
        assert await t.request(stranger) is None  # leads its own flight, waits for none
        waiting = asyncio.ensure_future(t.request(t.context("GET", other, team="billing")))
        await asyncio.sleep(0)
        assert not waiting.done()  # waits for the leader
        await t.finish(leader, body=body)
        answer = await asyncio.wait_for(waiting, 10)
        assert answer is not None and answer.headers["X-Cache"] == "COALESCED"
        assert answer.body == body
        await t.finish(stranger, body=b'{"id": "cus_1Nklmnopqrst", "object": "customer"}')
        assert not cache._flights


def test_the_key_memo_is_bounded_by_every_part_of_the_request() -> None:
    """The memo of request parts -> cache key keeps only short parts, all of them counted:
    a client sending 8 KB Stripe-Account, -Context or -Version headers (limited only by the
    header size) gets its key computed each time, never 4096 such entries kept."""
    plugin = CachePlugin()
    short = ("sk_test_x", "acct_1", None, "2024-06-20", "/v1/customers/cus_1")
    assert plugin._key(short) == plugin._key(short) and short in plugin._keys
    for index in (1, 2, 3):
        long = list(short)
        long[index] = "a" * 8000
        parts = (long[0], long[1], long[2], long[3], long[4])
        key = plugin._key(parts)
        assert parts not in plugin._keys
        assert key != plugin._key(short)  # and still a key of its own
