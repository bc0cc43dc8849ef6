"""The rate-limit plugin, with the official SDK through the gateway, a counting upstream
and, for the shared backend, a real redis-server."""

from __future__ import annotations

import asyncio
import io
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import redis
import requests
import stripe
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.errors import ConfigError
from gateway.keys import GENERATIONS
from gateway.stores.ratelease import LeasedRedisLimiter
from gateway.stores.ratestore import Limit, MemoryLimiter
from gateway.testing import PluginTest
from plugins.rate_limit import RateLimitPlugin, _headers, credential_digest
from tests.conftest import RedisServer
from tests.helpers import (
    ANALYTICS_KEY,
    ANALYTICS_UPSTREAM_KEY,
    BILLING_KEY,
    BILLING_UPSTREAM_KEY,
    PASSTHROUGH_KEY,
    Stack,
    team,
)

CUSTOMER = "cus_1Nabcdefghij"
HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")
#: slow enough that no budget comes back while a test runs
#: one token per 100 s: no test lasts long enough, even on a loaded machine, to get one
#: back (at 0.2/s a 5 s stall refilled a bucket and a count was off by one)
SLOW = 0.01


def _client(stack: Stack, key: str = BILLING_KEY, url: str | None = None) -> stripe.StripeClient:
    url = url or stack.gateway_url
    return stripe.StripeClient(
        key, base_addresses={"api": url, "files": url}, max_network_retries=0
    )


def _get(url: str, path: str, key: str = BILLING_KEY) -> requests.Response:
    return requests.get(url + path, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def _limits(response: Any) -> tuple[str, ...]:
    """The RateLimit-* headers of a requests or an SDK response ("" when absent)."""
    return tuple(response.headers.get(name, "") for name in HEADERS)


def _start(stack: Stack, *, team_list: list[dict[str, Any]] | None = None, **table: Any) -> str:
    """A gateway with these ``[plugins.rate_limit]`` settings (and these [[teams]])."""
    if team_list is not None:
        return stack.start_gateway(teams=team_list, plugins={"rate_limit": table})
    return stack.start_gateway(plugins={"rate_limit": table})


def _plugin(stack: Stack) -> RateLimitPlugin:
    """The rate-limit plugin of the gateway started last (its runner is the last one)."""
    app = stack._runners[-1].app
    assert app is not None
    plugin = app[GENERATIONS].current.host.pm.get_plugin("rate_limit")
    assert isinstance(plugin, RateLimitPlugin)
    return plugin


def _decisions(stack: Stack, n: int) -> list[str | None]:
    return [line["rate_limit"] for line in stack.audit_lines(n)]


# ------------------------------------------------------------------ limits


def test_nothing_is_limited_without_settings(stack: Stack) -> None:
    stack.start_gateway()
    for _ in range(30):
        response = _get(stack.gateway_url, "/v1/customers")
        assert response.status_code == 200
        assert _limits(response) == ("", "", "")
    assert set(_decisions(stack, 30)) == {None}


def _about(seconds: list[str], want: list[int], slack: int = 10) -> bool:
    """Whole seconds counted down from ``want`` by at most ``slack`` (time passes)."""
    return len(seconds) == len(want) and all(
        w - slack <= int(s) <= w for s, w in zip(seconds, want, strict=True)
    )


def test_team_over_its_read_limit_gets_rate_limit_error_and_others_go_on(stack: Stack) -> None:
    _start(stack, teams={"billing": {"read": {"rate": SLOW, "burst": 3}}})
    billing = _client(stack)
    seen = [_limits(billing.v1.customers.list().last_response) for _ in range(3)]
    assert [(limit, left) for limit, left, _ in seen] == [("3", "2"), ("3", "1"), ("3", "0")]
    # the seconds to a full bucket shrink while the test runs (slack for a slow machine)
    assert _about([reset for _, _, reset in seen], [100, 200, 300])
    with pytest.raises(stripe.RateLimitError) as refused:
        billing.v1.customers.list()
    error = refused.value
    assert error.http_status == 429
    assert error.json_body is not None
    assert error.json_body["error"]["code"] == "rate_limit"  # type: ignore[index]
    assert "team 'billing'" in str(error.user_message)
    assert "read limit of 0.01 requests per second (burst 3)" in str(error.user_message)
    assert error.json_body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    headers = error.headers or {}
    assert _about([headers["Retry-After"]], [100])
    assert (headers["RateLimit-Limit"], headers["RateLimit-Remaining"]) == ("3", "0")
    assert _about([headers["RateLimit-Reset"]], [300])
    assert stack.upstreams["api"].count("GET", "/v1/customers") == 3
    # another team (no limits of its own) is not affected
    direct = _client(stack, PASSTHROUGH_KEY)
    for _ in range(10):
        assert _limits(direct.v1.customers.list().last_response) == ("", "", "")
    lines = stack.audit_lines(14)
    assert [line["rate_limit"] for line in lines[:4]] == ["allow"] * 3 + ["deny"]
    assert lines[3]["status"] == 429 and lines[3]["error"] == "rate_limit"
    assert lines[3]["rate_limit_name"] == "read" and lines[3]["rate_limit_remaining"] == 0
    assert {line["rate_limit"] for line in lines[4:]} == {None}


def _concurrent(stack: Stack, path: str, n: int, key: str = BILLING_KEY) -> list[int]:
    async def one(session: aiohttp.ClientSession) -> int:
        headers = {"Authorization": f"Bearer {key}"}
        async with session.get(stack.gateway_url + path, headers=headers) as response:
            await response.read()
            return response.status

    async def run() -> list[int]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            return list(await asyncio.gather(*(one(session) for _ in range(n))))

    return stack.loop.run(run())


def test_a_burst_within_the_allowance_passes(stack: Stack) -> None:
    _start(stack, default={"read": {"rate": SLOW, "burst": 20}})
    assert _concurrent(stack, "/v1/customers?delay=0.2", 20) == [200] * 20
    assert _get(stack.gateway_url, "/v1/customers").status_code == 429


def test_reads_and_writes_are_counted_apart(stack: Stack) -> None:
    limit = {"rate": SLOW, "burst": 2}
    _start(stack, default={"read": limit, "write": limit})
    client = _client(stack)
    for _ in range(2):
        client.v1.customers.list()
        client.v1.customers.create({"email": "a@example.com"})
    with pytest.raises(stripe.RateLimitError, match="read limit"):
        client.v1.customers.list()
    with pytest.raises(stripe.RateLimitError, match="write limit"):
        client.v1.customers.update(CUSTOMER, {"description": "x"})


def test_a_route_override_replaces_the_read_or_write_limit(stack: Stack) -> None:
    upload = {"route": "POST /v1/files", "rate": SLOW, "burst": 1}
    _start(stack, teams={"billing": {"write": {"rate": SLOW, "burst": 5}, "routes": [upload]}})
    client = _client(stack)
    created = client.v1.files.create({"purpose": "dispute_evidence", "file": io.BytesIO(b"hi")})
    assert _limits(created.last_response) == ("1", "0", "100")
    with pytest.raises(stripe.RateLimitError, match="route 'POST /v1/files' limit"):
        client.v1.files.create({"purpose": "dispute_evidence", "file": io.BytesIO(b"hi")})
    update = client.v1.customers.update(CUSTOMER, {"description": "x"})
    assert _limits(update.last_response)[:2] == ("5", "4")


def test_the_account_budget_stops_the_sum_of_teams(stack: Stack) -> None:
    teams = [
        team("a", BILLING_KEY, upstream_env="BILLING_STRIPE_KEY"),
        team("b", ANALYTICS_KEY, upstream_env="BILLING_STRIPE_KEY"),
        team("direct", PASSTHROUGH_KEY),
    ]
    _start(
        stack,
        team_list=teams,
        default={"read": {"rate": SLOW, "burst": 10}},
        account={"rate": SLOW, "burst": 4},
    )
    a, b = _client(stack, BILLING_KEY), _client(stack, ANALYTICS_KEY)
    for client in (a, b, a, b):
        client.v1.customers.list()
    for client, name in ((b, "b"), (a, "a")):
        with pytest.raises(stripe.RateLimitError) as refused:
            client.v1.customers.list()
        message = str(refused.value.user_message)
        assert "Stripe account budget" in message and "(0.01 requests per second" in message
        assert f"team {name!r} is within its own limits" in message
        assert (refused.value.headers or {})["RateLimit-Limit"] == "4"
    # a team with its own credential has its own budget
    direct = _client(stack, PASSTHROUGH_KEY)
    for _ in range(4):
        direct.v1.customers.list()
    lines = stack.audit_lines(10)
    assert lines[4]["rate_limit_name"] == "account"
    # the budget's name in the audit line and in Redis is never the key
    assert all(BILLING_UPSTREAM_KEY not in str(line) for line in lines)


def test_test_mode_keys_get_the_test_mode_budget(stack: Stack) -> None:
    _start(
        stack,
        account={"rate": 100, "burst": 100},
        account_test={"rate": SLOW, "burst": 1},
    )
    assert _limits(_get(stack.gateway_url, "/v1/customers")) == ("1", "0", "100")
    assert _get(stack.gateway_url, "/v1/customers").status_code == 429


def test_cache_hits_and_coalesced_waiters_never_spend_budget(stack: Stack) -> None:
    _start(stack, default={"read": {"rate": SLOW, "burst": 2}})
    client = _client(stack)
    kinds = []
    for _ in range(5):
        response = client.v1.customers.retrieve(CUSTOMER).last_response
        assert response is not None
        kinds.append((response.headers["X-Cache"], response.headers.get("RateLimit-Remaining")))
    assert kinds == [("MISS", "1")] + [("HIT", None)] * 4
    # 20 identical concurrent misses: one leader spends one request, the rest wait for it
    assert _concurrent(stack, "/v1/customers/cus_2Nabcdefghij?delay=0.3", 20) == [200] * 20
    with pytest.raises(stripe.RateLimitError):
        client.v1.customers.list()
    assert _plugin(stack).counts == Counter({"allow": 2, "deny": 1})


def test_stripes_own_429_passes_through_unchanged(stack: Stack) -> None:
    _start(stack, default={"read": {"rate": SLOW, "burst": 5}})
    stack.upstreams["api"].fail_with = 429
    response = _get(stack.gateway_url, "/v1/customers")
    assert response.status_code == 429
    assert response.json() == {
        "error": {"type": "api_error", "message": "The fake upstream is failing."}
    }
    assert response.headers["Request-Id"].startswith("req_fake")
    assert _limits(response) == ("", "", "")
    with pytest.raises(stripe.RateLimitError):
        _client(stack).v1.customers.list()
    assert _decisions(stack, 2) == ["allow", "allow"]


@pytest.mark.parametrize("where", ["global", "team"])
def test_shadow_mode_counts_and_logs_but_refuses_nothing(stack: Stack, where: str) -> None:
    limits: dict[str, Any] = {"read": {"rate": SLOW, "burst": 2}}
    if where == "global":
        _start(stack, shadow=True, default=limits)
    else:
        _start(stack, default=limits, teams={"billing": {"shadow": True}})
    for _ in range(5):
        response = _get(stack.gateway_url, "/v1/customers")
        assert response.status_code == 200
        assert _limits(response) == ("", "", "")  # not the client's business yet
    assert _decisions(stack, 5) == ["allow", "allow"] + ["shadow_deny"] * 3
    assert _plugin(stack).counts == Counter({"allow": 2, "shadow_deny": 3})
    assert stack.error_events("rate_limit_shadow_deny")  # written: waits for the first
    assert len(stack.error_events("rate_limit_shadow_deny", 2, timeout=0.3)) == 1  # and only once
    if where == "team":  # the other teams are enforced
        _get(stack.gateway_url, "/v1/customers", PASSTHROUGH_KEY)
        _get(stack.gateway_url, "/v1/customers", PASSTHROUGH_KEY)
        assert _get(stack.gateway_url, "/v1/customers", PASSTHROUGH_KEY).status_code == 429


@pytest.mark.parametrize(
    ("table", "path"),
    [
        ({"bogus": 1}, "bogus"),
        ({"backend": "memcached"}, "backend"),
        ({"backend": "redis"}, "backend"),
        ({"backend": "redis", "redis_url": "redis://:pw@host:6379"}, "redis_url"),
        ({"backend": "redis", "redis_url_env": "NOPE_NOT_SET"}, "redis_url_env"),
        ({"redis_url": "redis://127.0.0.1:6379"}, "backend"),
        ({"on_redis_error": "maybe"}, "on_redis_error"),
        ({"shadow": "yes"}, "shadow"),
        ({"fallback_share": 2}, "fallback_share"),
        ({"lease": -1}, "lease"),
        ({"lease": 1.5}, "lease"),
        ({"lease_seconds": 0}, "lease_seconds"),
        ({"account": 90}, "account"),
        ({"account": "unlimited"}, "account"),
        ({"account": {"burst": 5}}, "account.rate"),
        ({"account": {"rate": 0}}, "account.rate"),
        ({"account": {"rate": 10, "burst": 0}}, "account.burst"),
        ({"account": {"rate": 10, "burst": 1.5}}, "account.burst"),
        ({"account": {"rate": 10, "per": "minute"}}, "account.per"),
        ({"default": {"read": 10}}, "default.read"),
        ({"default": {"reads": {"rate": 1}}}, "default.reads"),
        ({"default": {"routes": [{"route": "/v1/files", "rate": 1}]}}, "default.routes[0].route"),
        ({"default": {"routes": [{"rate": 1}]}}, "default.routes[0].route"),
        ({"teams": {"nobody": {"read": {"rate": 1}}}}, "teams.nobody"),
        ({"teams": {"billing": {"write": {"rate": True}}}}, "teams.billing.write.rate"),
        ({"teams": {"billing": {"shadow": 1}}}, "teams.billing.shadow"),
    ],
)
def test_bad_settings_stop_startup(stack: Stack, table: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        _start(stack, **table)
    assert info.value.path == f"plugins.rate_limit.{path}"


def test_a_listed_team_inherits_what_it_does_not_set(stack: Stack) -> None:
    _start(
        stack,
        default={"read": {"rate": SLOW, "burst": 1}, "write": {"rate": SLOW, "burst": 1}},
        teams={"billing": {"read": "unlimited"}},
    )
    for _ in range(5):
        assert _get(stack.gateway_url, "/v1/customers").status_code == 200
    client = _client(stack)
    client.v1.customers.create()
    with pytest.raises(stripe.RateLimitError, match="write limit"):
        client.v1.customers.create()


def test_without_auth_the_account_budget_still_holds(stack: Stack) -> None:
    stack.start_gateway(
        plugins={"disable": ["auth"], "rate_limit": {"account": {"rate": SLOW, "burst": 2}}}
    )
    for _ in range(2):
        assert _get(stack.gateway_url, "/v1/customers", PASSTHROUGH_KEY).status_code == 200
    refused = _get(stack.gateway_url, "/v1/customers", PASSTHROUGH_KEY)
    assert refused.status_code == 429
    assert "same Stripe key as this request" in refused.json()["error"]["message"]
    # another key is another account
    assert _get(stack.gateway_url, "/v1/customers", "sk_test_other0000000001").status_code == 200


# ------------------------------------------------------------------ redis


def _redis(stack: Stack, server: RedisServer, **table: Any) -> str:
    # a generous timeout unless the test sets one: on a loaded CI machine the default can
    # pass, and the fallback limiter would then decide instead of Redis
    table = {"redis_timeout": 5.0, **table}
    return _start(stack, backend="redis", redis_url=server.url, **table)


def test_two_instances_sharing_redis_let_through_the_configured_rate(
    stack: Stack, redis_server: RedisServer
) -> None:
    rate, burst, window = 40.0, 10, 5.0
    table = {"default": {"read": {"rate": rate, "burst": burst}}, "redis_timeout": 5.0}
    urls, plugins = [], []
    for _ in range(2):
        urls.append(_redis(stack, redis_server, **table))
        plugins.append(_plugin(stack))
    statuses: dict[str, Counter[int]] = {url: Counter() for url in urls}
    times: list[float] = []

    async def worker(session: aiohttp.ClientSession, url: str, deadline: float) -> None:
        headers = {"Authorization": f"Bearer {BILLING_KEY}"}
        while time.monotonic() < deadline:
            times.append(time.monotonic())
            async with session.get(url + "/v1/customers", headers=headers) as response:
                await response.read()
                statuses[url][response.status] += 1
            await asyncio.sleep(0.02)

    async def run() -> None:
        deadline = time.monotonic() + window
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(worker(session, url, deadline) for url in urls for _ in "abcd"))

    stack.loop.run(run())
    elapsed = max(times) - min(times)
    allowed = sum(counts[200] for counts in statuses.values())
    expected = burst + rate * elapsed
    # never more than the bucket lets through; a stalled loop may ask too slowly to use it all
    assert 0.7 * expected <= allowed <= 1.02 * expected + 2, (allowed, expected, statuses)
    for counts in statuses.values():  # both took part; nothing but 200 and 429
        assert counts[200] > 0 and counts[429] > 0 and set(counts) == {200, 429}
    assert [plugin.counts["backend_errors"] for plugin in plugins] == [0, 0]
    assert stack.upstreams["api"].count("GET", "/v1/customers") == allowed


def test_redis_keys_expire_by_themselves_and_name_no_key(
    stack: Stack, redis_server: RedisServer
) -> None:
    _redis(
        stack,
        redis_server,
        default={"read": {"rate": SLOW, "burst": 5}},
        account={"rate": SLOW, "burst": 5},
    )
    assert _get(stack.gateway_url, "/v1/customers").status_code == 200
    assert _get(stack.gateway_url, "/v1/customers", ANALYTICS_KEY).status_code == 403
    client = redis.Redis.from_url(redis_server.url)
    try:
        keys = sorted(k.decode() for k in client.keys("*"))
        assert len(keys) == 2 and keys[1] == "sgw:rl:t:billing:read"
        assert keys[0].startswith("sgw:rl:a:") and len(keys[0]) == len("sgw:rl:a:") + 32
        for key in keys:
            assert 90_000 < client.pttl(key) <= 100_001  # one token: 1 / SLOW seconds
            assert BILLING_UPSTREAM_KEY not in key and ANALYTICS_UPSTREAM_KEY not in key
    finally:
        client.close()


def test_killing_redis_falls_back_to_this_instances_limits(
    stack: Stack, redis_server: RedisServer
) -> None:
    _redis(
        stack,
        redis_server,
        default={"read": {"rate": SLOW, "burst": 6}},
        redis_breaker=0.2,
        fallback_share=0.5,  # two instances: each enforces half of every limit alone
    )
    url = stack.gateway_url
    assert _limits(_get(url, "/v1/customers")) == ("6", "5", "100")
    redis_server.kill()
    responses = []
    for _ in range(6):
        responses.append(_get(url, "/v1/customers"))
        time.sleep(0.05)  # past the breaker now and then: Redis is asked again, and fails
    assert [r.status_code for r in responses] == [200, 200, 200, 429, 429, 429]
    assert _limits(responses[0]) == ("3", "2", "200")  # half the burst, half the rate
    with pytest.raises(stripe.RateLimitError, match="shared limit store is unavailable"):
        _client(stack).v1.customers.list()
    assert _decisions(stack, 8)[1:] == ["fallback_allow"] * 3 + ["fallback_deny"] * 4
    plugin = _plugin(stack)
    assert plugin.counts["backend_errors"] >= 2
    # once per interval
    assert stack.error_events("rate_limit_backend_unavailable")  # written: waits for the first
    assert (
        len(stack.error_events("rate_limit_backend_unavailable", 2, timeout=0.3)) == 1
    )  # and only once


def test_killing_redis_with_the_deny_policy_refuses_with_a_reason(
    stack: Stack, redis_server: RedisServer
) -> None:
    _redis(
        stack,
        redis_server,
        default={"read": {"rate": 100}},
        on_redis_error="deny",
        redis_breaker=3.0,
        lease=0,  # every request asks Redis (with a lease: see the test below)
    )
    client = _client(stack)
    client.v1.customers.list()
    redis_server.kill()
    for _ in range(3):
        with pytest.raises(stripe.RateLimitError) as refused:
            client.v1.customers.list()
        assert "Redis" in str(refused.value.user_message)
        assert "on_redis_error = deny" in str(refused.value.user_message)
        assert 1 <= int((refused.value.headers or {})["Retry-After"]) <= 3
    assert _decisions(stack, 4)[1:] == ["unavailable_deny"] * 3
    assert stack.upstreams["api"].count("GET", "/v1/customers") == 1


def test_a_hung_redis_costs_one_timeout_not_one_per_request(
    stack: Stack, redis_server: RedisServer
) -> None:
    _redis(
        stack,
        redis_server,
        default={"read": {"rate": 100}},
        redis_timeout=1.0,  # slack for the first call (connect, script load) on a busy machine
        redis_breaker=600.0,
        lease=0,  # every request asks Redis: the first after the hang waits for the timeout
    )
    url = stack.gateway_url
    assert _get(url, "/v1/customers").status_code == 200
    plugin = _plugin(stack)
    assert plugin.counts["backend_errors"] == 0  # answered by Redis
    redis_server.process.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        assert _get(url, "/v1/customers").status_code == 200
        assert time.monotonic() - started >= 0.9  # it waited for the timeout
        started = time.monotonic()
        for _ in range(10):
            assert _get(url, "/v1/customers").status_code == 200
        # one wait per request would be 10 s or more; the bound is far from both
        assert time.monotonic() - started < 5.0
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    assert plugin.counts["backend_errors"] == 1  # one timeout, then the open circuit
    assert _decisions(stack, 12) == ["allow"] + ["fallback_allow"] * 11


@pytest.mark.parametrize("policy", ["allow", "deny"])
def test_killing_redis_while_a_lease_is_held_spends_it_then_applies_the_policy(
    stack: Stack, redis_server: RedisServer, policy: str
) -> None:
    _redis(
        stack,
        redis_server,
        default={"read": {"rate": SLOW, "burst": 100}},
        on_redis_error=policy,
        redis_breaker=30.0,
        lease_seconds=60.0,  # the lease stays valid however slow the machine is
    )
    url = stack.gateway_url
    assert _get(url, "/v1/customers").status_code == 200  # from Redis, no lease yet
    assert _get(url, "/v1/customers").status_code == 200  # from Redis: a lease of 12
    redis_server.kill()
    statuses = [_get(url, "/v1/customers").status_code for _ in range(15)]
    # the 12 leased units pass (Redis holds them for this instance); then the policy
    assert statuses == [200] * 12 + ([200] * 3 if policy == "allow" else [429] * 3)
    after = "fallback_allow" if policy == "allow" else "unavailable_deny"
    assert _decisions(stack, 17) == ["allow"] * 14 + [after] * 3
    plugin = _plugin(stack)
    assert plugin.counts["backend_errors"] >= 1  # the background sync failed, and said so
    assert stack.error_events("rate_limit_backend_unavailable")  # written: waits for the first
    assert (
        len(stack.error_events("rate_limit_backend_unavailable", 2, timeout=0.3)) == 1
    )  # and only once


# ------------------------------------------------------------------ without a server


async def test_decision_audit_field_metric_and_team_state_without_a_server() -> None:
    settings = {"rate_limit": {"teams": {"billing": {"read": {"rate": 0.001, "burst": 2}}}}}
    async with PluginTest(RateLimitPlugin, settings=settings) as t:
        decisions, statuses = [], []
        for _ in range(3):
            ctx = t.context("GET", "/v1/customers", team="billing")
            answer = await t.request(ctx)
            statuses.append(answer.status if answer is not None else None)
            await t.finish(ctx, status=statuses[-1] or 200)
            decisions.append(t.audit_fields(ctx)["rate_limit"])
        assert decisions == ["allow", "allow", "deny"] and statuses == [None, None, 429]
        deny = {"team": "billing", "outcome": "deny"}
        assert t.metric("stripe_gateway_rate_limit_decisions_total", deny) == 1.0
        state = t.admin_team("billing")["rate_limit"]
        assert state["limited"] is True and state["limits"][0]["remaining"] == 0
        assert t.admin_team("analytics")["rate_limit"]["limited"] is False


@given(now=st.floats(min_value=1.0, max_value=1e9), interval=st.sampled_from([1.0, 10.0, 100.0]))
@example(now=2047.3, interval=100.0)  # now + interval crosses a power of two: rounded up
def test_a_fresh_buckets_reset_is_its_interval_in_whole_seconds(
    now: float, interval: float
) -> None:
    """``(now + interval) - now`` is not always ``interval`` in floats (it is a little more
    when the sum crosses a power of two, as a monotonic clock near 2048 s does): the header
    must be."""
    limiter = MemoryLimiter(clock=lambda: now)
    limit = Limit(name="read", rate=1 / interval, burst=1)
    verdict = limiter.decide_now([("k", limit)], shadow=False).binding
    assert _headers(1, verdict)["RateLimit-Reset"] == str(int(interval))


# ------------------------------------------------------------------ leases, in process


def _evalsha_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def _redis_settings(server: RedisServer, **table: Any) -> dict[str, Any]:
    return {"backend": "redis", "redis_url": server.url, "redis_timeout": 2.0, **table}


@pytest.mark.parametrize(("lease", "calls"), [(None, range(200 // 4 + 1)), (0, range(200, 201))])
async def test_a_lease_saves_round_trips_and_lease_0_asks_redis_every_time(
    redis_server: RedisServer, lease: int | None, calls: range
) -> None:
    table = _redis_settings(
        redis_server,
        default={"read": {"rate": 10_000, "burst": 1000}},
        account={"rate": 10_000, "burst": 1000},
    )
    if lease is not None:
        table["lease"] = lease
    client = redis.Redis.from_url(redis_server.url)
    try:
        async with PluginTest(RateLimitPlugin, settings={"rate_limit": table}) as t:
            first = t.context("GET", "/v1/customers", team="billing")
            assert await t.request(first) is None  # the script may be loaded (EVAL) here
            before = _evalsha_calls(client)
            for _ in range(200):
                ctx = t.context("GET", "/v1/customers", team="billing")
                assert await t.request(ctx) is None
                assert t.audit_fields(ctx)["rate_limit"] == "allow"
                await asyncio.sleep(0)  # the background syncs get their turn
            assert _evalsha_calls(client) - before in calls
    finally:
        client.close()


@dataclass
class _Shared:
    """The server, kept out of hypothesis's report of a failing example."""

    server: RedisServer = field(repr=False)


@pytest.fixture
def shared_redis(redis_server: RedisServer) -> _Shared:
    return _Shared(redis_server)


_REQUESTS = st.lists(
    st.tuples(st.sampled_from(["billing", "analytics"]), st.sampled_from(["GET", "POST"])),
    min_size=1,
    max_size=60,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(requests_=_REQUESTS)
def test_a_teams_requests_only_spend_leases_of_their_own_buckets(
    shared_redis: _Shared, requests_: list[tuple[str, str]]
) -> None:
    """Two teams, two upstream credentials: a request takes leased units only from the
    buckets it counts against (its team's read or write limit, its credential's budget)."""
    flush = redis.Redis.from_url(shared_redis.server.url)
    flush.flushall()
    flush.close()
    limit = {"rate": SLOW, "burst": 400}
    table = _redis_settings(
        shared_redis.server, default={"read": limit, "write": limit}, account=limit, lease=8
    )
    credentials = {"billing": "sk_test_billing", "analytics": "sk_test_analytics"}

    async def run() -> None:
        async with PluginTest(RateLimitPlugin, settings={"rate_limit": table}) as t:
            plugin: RateLimitPlugin = t.plugin("rate_limit")
            limiter = plugin.redis
            assert isinstance(limiter, LeasedRedisLimiter)
            for team_name, method in requests_:
                own = {
                    f"t:{team_name}:{'read' if method == 'GET' else 'write'}",
                    f"a:{credential_digest(credentials[team_name])}",
                }
                before = {key: lease.handed for key, lease in limiter._leases.items()}
                ctx = t.context(method, "/v1/customers", team=team_name)
                assert await t.request(ctx) is None
                spent = {
                    key
                    for key, lease in limiter._leases.items()
                    if lease.handed != before.get(key, 0)
                }
                assert spent <= own, (team_name, method, spent)
                if t.audit_fields(ctx)["rate_limit"] == "allow" and spent:
                    assert spent == own  # all or nothing: a leased decision takes from each
                await asyncio.sleep(0)

    asyncio.run(run())
