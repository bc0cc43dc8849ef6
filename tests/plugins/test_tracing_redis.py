"""The tracing plugin's spans for work inside a request: a ``redis <COMMAND>`` span per
Redis call (the cache's and the rate limiter's, with a real redis-server) and a ``cache
coalesced wait`` span, read back from the SDK's in-memory exporter after real traffic
through a gateway in front of the fake Stripe."""

from __future__ import annotations

import asyncio
import builtins
import string
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from gateway.context import RequestContext
from gateway.hookspecs import hookimpl
from gateway.keys import GENERATIONS
from gateway.spans import TRACER
from tests.conftest import RedisServer
from tests.helpers import BILLING_KEY, BILLING_UPSTREAM_KEY, Stack, start_app
from tests.plugins.test_tracing import (
    EXPORTER,
    LOAD,
    _children,
    _client,
    _fresh_exporter,
    _plugin,
    _spans,
)

__all__ = ["_fresh_exporter"]  # the autouse fixture, shared with test_tracing.py

CUSTOMER = "cus_1Ntracingredis1"


def _redis(server: RedisServer) -> dict[str, Any]:
    # a generous timeout: a timed-out call on a loaded machine would be taken for a bug
    return {"backend": "redis", "redis_url": server.url, "redis_timeout": 2.0}


def _start(stack: Stack, **plugins: Any) -> str:
    return stack.start_gateway(plugins={**LOAD, "tracing": {}, **plugins})


def _servers(spans: list[ReadableSpan]) -> list[ReadableSpan]:
    return sorted((s for s in spans if s.kind == SpanKind.SERVER), key=lambda s: s.start_time or 0)


def _phase(spans: list[ReadableSpan], server: ReadableSpan) -> ReadableSpan:
    (phase,) = (c for c in _children(spans, server) if c.name == "plugins gateway_request")
    return phase


def _redis_spans(spans: list[ReadableSpan]) -> list[ReadableSpan]:
    return [s for s in spans if s.name.startswith("redis ")]


def _check_redis_span(span: ReadableSpan, server: RedisServer, command: str) -> None:
    assert span.name == f"redis {command}"
    assert span.kind == SpanKind.CLIENT
    attributes = dict(span.attributes or {})
    error = attributes.pop("error.type", None)
    assert attributes == {
        "db.system": "redis",
        "db.system.name": "redis",
        "db.namespace": "0",
        "server.address": "127.0.0.1",
        "server.port": server.port,
        "db.operation": command,
        "db.operation.name": command,
    }
    if error is None:
        assert span.status.status_code == StatusCode.UNSET
    else:
        assert span.status.status_code == StatusCode.ERROR
        assert span.status.description == error


def _lua_calls(spans: list[ReadableSpan]) -> list[ReadableSpan]:
    """A script call's spans: ``EVALSHA``, and ``EVAL`` after it when Redis did not have
    the script yet (the EVALSHA's span is then an error: NOSCRIPT)."""
    calls = [s for s in spans if s.name in ("redis EVALSHA", "redis EVAL")]
    assert calls and calls[0].name == "redis EVALSHA"
    if len(calls) == 2:
        assert calls[1].name == "redis EVAL"
        assert dict(calls[0].attributes or {})["error.type"] == "ReplyError"
    else:
        assert len(calls) == 1 and calls[0].status.status_code == StatusCode.UNSET
    return calls


# --------------------------------------------------------------------------- Redis calls


def test_a_redis_cache_hit_is_a_redis_get_span_in_the_requests_trace(
    stack: Stack, redis_server: RedisServer
) -> None:
    _start(stack, cache=_redis(redis_server))
    client = _client(stack)
    client.v1.customers.retrieve(CUSTOMER)  # a miss, stored in Redis after the answer
    _spans(stack, 1)  # the server span ends once the answer is stored
    client.v1.customers.retrieve(CUSTOMER)  # a hit
    spans = _spans(stack, 2)
    miss, hit = _servers(spans)
    assert dict(hit.attributes or {})["stripe_gateway.cache"] == "HIT"
    assert hit.context is not None
    # the hit: one GET, in the plugins' phase, in the request's trace
    (get,) = _children(spans, _phase(spans, hit))
    _check_redis_span(get, redis_server, "GET")
    assert get.context is not None and get.context.trace_id == hit.context.trace_id
    # the miss: a GET in the plugins' phase; the store of its answer (a script call),
    # after the answer, a child of the request's span
    (get,) = _children(spans, _phase(spans, miss))
    _check_redis_span(get, redis_server, "GET")
    stored = _lua_calls(_children(spans, miss))
    for span in stored:
        _check_redis_span(span, redis_server, span.name.removeprefix("redis "))
    assert miss.end_time is not None and stored[-1].end_time is not None
    assert stored[-1].end_time <= miss.end_time
    # every Redis span belongs to a request
    assert all(s.parent is not None for s in _redis_spans(spans))


def test_a_redis_rate_limit_decision_is_a_redis_span_in_the_plugins_phase(
    stack: Stack, redis_server: RedisServer
) -> None:
    limits = {"default": {"read": {"rate": 100, "burst": 100}}, "lease": 0}
    _start(stack, disable=["cache"], rate_limit={**_redis(redis_server), **limits})
    client = _client(stack)
    client.v1.customers.list()
    client.v1.customers.list()
    spans = _spans(stack, 2)
    first, second = _servers(spans)
    assert dict(second.attributes or {})["stripe_gateway.rate_limit"] == "allow"
    _lua_calls(_children(spans, _phase(spans, first)))  # EVALSHA, maybe EVAL once
    (decision,) = _children(spans, _phase(spans, second))  # the script is known by now
    _check_redis_span(decision, redis_server, "EVALSHA")
    assert decision.status.status_code == StatusCode.UNSET


def test_a_leased_rate_limit_decision_makes_no_redis_span(
    stack: Stack, redis_server: RedisServer
) -> None:
    """With a lease (the default) the first two requests ask Redis (the second takes a
    lease: none is taken on a bucket's first sighting); the next ones are decided from it,
    and the background syncs belong to no request's trace."""
    limits = {"default": {"read": {"rate": 100, "burst": 100}}}
    _start(stack, disable=["cache"], rate_limit={**_redis(redis_server), **limits})
    client = _client(stack)
    for _ in range(10):  # a lease of 12: a sync starts at 6 left
        client.v1.customers.list()
    spans = _spans(stack, 10)
    servers = _servers(spans)
    assert [dict(s.attributes or {})["stripe_gateway.rate_limit"] for s in servers] == [
        "allow"
    ] * 10
    for server in servers[:2]:
        _lua_calls(_children(spans, _phase(spans, server)))
    for server in servers[2:]:
        assert _children(spans, _phase(spans, server)) == []
    assert all(s.parent is not None for s in _redis_spans(spans))


def test_a_killed_redis_makes_error_spans_and_the_request_is_still_answered(
    stack: Stack, redis_server: RedisServer
) -> None:
    shared = _redis(redis_server)
    _start(
        stack,
        cache=shared,
        # lease 0: the request after the kill asks Redis (with a lease it would not)
        rate_limit={**shared, "default": {"read": {"rate": 100, "burst": 100}}, "lease": 0},
    )
    client = _client(stack)
    client.v1.customers.retrieve(CUSTOMER)
    _spans(stack, 1)
    redis_server.kill()
    customer = client.v1.customers.retrieve("cus_1Ntracingredis2")  # a miss, then allowed
    assert customer.id == "cus_1Ntracingredis2"
    spans = _spans(stack, 2)
    _, outage = _servers(spans)
    attributes = dict(outage.attributes or {})
    assert attributes["http.response.status_code"] == 200
    assert attributes["stripe_gateway.cache"] == "MISS"
    assert attributes["stripe_gateway.rate_limit"] == "fallback_allow"
    failed = _children(spans, _phase(spans, outage))
    assert sorted(s.name for s in failed) == ["redis EVALSHA", "redis GET"]
    for span in failed:
        _check_redis_span(span, redis_server, span.name.removeprefix("redis "))
        error = dict(span.attributes or {})["error.type"]
        assert isinstance(error, str)
        kind = getattr(builtins, error, None)
        assert isinstance(kind, type) and issubclass(kind, OSError), error
        assert span.status.description == error  # the type only, never a message


def test_redis_calls_outside_a_request_make_no_span(
    stack: Stack, redis_server: RedisServer
) -> None:
    _start(stack, cache=_redis(redis_server))
    _client(stack).v1.customers.retrieve(CUSTOMER)
    before = len(_spans(stack, 1))
    assert stack.app is not None
    cache = stack.app[GENERATIONS].current.host.pm.get_plugin("cache")
    assert stack.loop.run(cache.store.ping()) is True  # a readiness check's PING
    provider = _plugin(stack).provider
    assert provider is not None
    provider.force_flush()
    spans = list(EXPORTER["now"].get_finished_spans())
    assert len(spans) == before
    assert "redis PING" not in {s.name for s in spans}


# --------------------------------------------------------------------------- coalesced wait


class _HeldUpstream:
    """Stripe's api host answering retrieves only once the test releases them."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.arrived = 0
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.arrived += 1
        await self.release.wait()
        object_id = request.path.rsplit("/", 1)[-1]
        body: dict[str, Any] = {"id": object_id, "object": "customer"}
        if self.status != 200:
            body = {"error": {"type": "invalid_request_error", "message": "No such customer"}}
        return web.json_response(body, status=self.status, headers={"Request-Id": "req_held000001"})


def _finished(stack: Stack, check: Callable[[list[ReadableSpan]], bool]) -> list[ReadableSpan]:
    provider = _plugin(stack).provider
    assert provider is not None
    deadline = time.monotonic() + 30
    while True:
        provider.force_flush()
        spans = list(EXPORTER["now"].get_finished_spans())
        if check(spans):
            return spans
        assert time.monotonic() < deadline, [s.name for s in spans]
        time.sleep(0.01)


@pytest.mark.parametrize(("status", "outcome"), [(200, "answer"), (404, "leader_failed")])
def test_a_coalesced_wait_is_a_span_on_the_follower(
    stack: Stack, redis_server: RedisServer, status: int, outcome: str
) -> None:
    held = _HeldUpstream(status)
    upstream = web.Application()
    upstream.router.add_get("/v1/customers/{id}", held.handle)
    served = stack.loop.run(start_app(upstream))
    try:
        stack.start_gateway(
            upstream={"api": served.url},
            plugins={**LOAD, "tracing": {}, "cache": _redis(redis_server)},
        )
        url = stack.gateway_url + f"/v1/customers/{CUSTOMER}"

        def get() -> requests.Response:
            return requests.get(url, auth=(BILLING_KEY, ""), timeout=30)

        with ThreadPoolExecutor(2) as pool:
            answers = [pool.submit(get), pool.submit(get)]
            # both looked up Redis (the follower, past its GET, now waits on the leader's
            # flight: nothing runs in between) and the leader is at Stripe
            _finished(stack, lambda spans: sum(s.name == "redis GET" for s in spans) == 2)
            while stack.loop.call(lambda: held.arrived) < 1:
                time.sleep(0.01)
            released = time.time_ns()
            stack.loop.call(held.release.set)
            responses = [a.result(timeout=30) for a in answers]
    finally:
        stack.loop.run(served.runner.cleanup())
    assert sorted(r.headers["X-Cache"] for r in responses) == ["COALESCED", "MISS"]
    assert [r.status_code for r in responses] == [status, status]
    assert held.arrived == 1  # (a 404 is not retried)
    spans = _spans(stack, 2)
    by_cache = {dict(s.attributes or {})["stripe_gateway.cache"]: s for s in _servers(spans)}
    follower, leader = by_cache["COALESCED"], by_cache["MISS"]
    waits = [s for s in spans if s.name == "cache coalesced wait"]
    assert len(waits) == 1
    (wait,) = waits
    assert sorted(s.name for s in _children(spans, _phase(spans, follower))) == [
        "cache coalesced wait",
        "redis GET",
    ]
    assert "cache coalesced wait" not in {s.name for s in _children(spans, _phase(spans, leader))}
    assert dict(wait.attributes or {}) == {"stripe_gateway.cache.wait": outcome}
    assert wait.status.status_code == StatusCode.UNSET
    assert wait.start_time is not None and wait.end_time is not None
    assert wait.start_time < released <= wait.end_time  # it covers the wait


# --------------------------------------------------------------------------- tracing off


class _Probe:
    """Reads the core's tracer variable in the request's task."""

    name = "tracer_probe"

    def __init__(self) -> None:
        self.seen: list[bool] = []

    @hookimpl
    def gateway_request(self, ctx: RequestContext) -> None:
        self.seen.append(TRACER.get() is not None)

    @hookimpl
    def gateway_request_finished(self, ctx: RequestContext) -> None:
        self.seen.append(TRACER.get() is not None)


PROBE = _Probe()


def test_without_tracing_or_for_unsampled_requests_no_tracer_is_set(
    stack: Stack, redis_server: RedisServer
) -> None:
    shared = _redis(redis_server)
    plugins = {"cache": shared, "rate_limit": {**shared, "default": {"read": {"rate": 100}}}}
    probe = [f"{__name__}:PROBE"]
    seen: dict[str, list[bool]] = {}
    for label, tracing in (
        ("off", {"load": probe}),
        ("unsampled", {"load": [*LOAD["load"], *probe], "tracing": {"sample_ratio": 0.0}}),
        ("sampled", {"load": [*LOAD["load"], *probe], "tracing": {}}),
    ):
        PROBE.seen.clear()
        stack.start_gateway(plugins={**plugins, **tracing})  # one more gateway, same Redis
        client = _client(stack)
        client.v1.customers.retrieve(f"cus_1Nprobe{label}")  # a cache miss: GET, script calls
        client.v1.customers.list()  # a rate-limit decision
        deadline = time.monotonic() + 30  # (a request finishes just after its answer)
        while len(PROBE.seen) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        seen[label] = list(PROBE.seen)
    # (the sampled gateway's probe, the control, shows that the probe sees a tracer when set)
    assert seen == {"off": [False] * 4, "unsampled": [False] * 4, "sampled": [True] * 4}


# --------------------------------------------------------------------------- the adversary

_BASE62 = string.ascii_letters + string.digits
_TEXT = st.text(alphabet=_BASE62, min_size=4, max_size=12)
#: Stripe's ids: a prefix, then base62 with a digit or a capital (the shape the cache
#: takes as an object id, so each request makes Redis calls; ids that look like words are
#: covered by tests/plugins/test_tracing.py's route-template property)
_IDS = st.tuples(_TEXT, st.sampled_from(string.ascii_uppercase + string.digits), _TEXT).map("".join)


@dataclass
class _Gateway:
    """The stack, kept out of hypothesis's report of a failing example."""

    stack: Stack = field(repr=False)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(suffix=_IDS, value=_TEXT, account=_TEXT)
def test_no_span_holds_a_key_an_object_id_an_account_or_a_query_string(
    redis_gateway: _Gateway, suffix: str, value: str, account: str
) -> None:
    stack = redis_gateway.stack
    servers = len(_servers(list(EXPORTER["now"].get_finished_spans())))
    customer, stripe_account = f"cus_{suffix}", f"acct_{account}"
    query = f"expand[]=zz{value}"
    headers = {"Authorization": f"Bearer {BILLING_KEY}", "Stripe-Account": stripe_account}
    for _ in range(2):  # a miss, then a hit
        response = requests.get(
            f"{stack.gateway_url}/v1/customers/{customer}?{query}", headers=headers, timeout=10
        )
        assert response.status_code == 200
    spans = _spans(stack, servers + 2)
    assert {"redis GET", "redis EVALSHA"} <= {s.name for s in spans}
    secrets = [BILLING_KEY, BILLING_UPSTREAM_KEY, "sk_test", customer, suffix, stripe_account]
    secrets += [f"zz{value}", "expand"]
    for span in spans:
        text = span.name + repr(dict(span.attributes or {})) + repr(span.status.description)
        text += repr([dict(e.attributes or {}) for e in span.events])
        for secret in secrets:
            assert secret not in text, (secret, span.name)


@pytest.fixture
def redis_gateway(stack: Stack, redis_server: RedisServer) -> _Gateway:
    """Tracing, with the cache and the rate limiter on Redis."""
    shared = _redis(redis_server)
    _start(stack, cache=shared, rate_limit={**shared, "default": {"read": {"rate": 1000}}})
    return _Gateway(stack)
