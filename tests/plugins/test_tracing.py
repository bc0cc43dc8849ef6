"""The tracing plugin: spans read back from the OpenTelemetry SDK's in-memory exporter
after real traffic (the stripe SDK, plain HTTP) through a gateway in front of the fake
Stripe; the OTLP export itself against a local collector; trace headers never reach
Stripe."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import stripe
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.host import PluginHost
from gateway.keys import GENERATIONS
from gateway.pathwords import PATH_WORDS
from plugins.tracing import TracingPlugin, route_template
from tests.helpers import BILLING_KEY, ENVIRON, Stack, start_app

CUSTOMER = "cus_1Ntracing00001"
#: the exporter of the test running now (one test at a time per process; a fresh one
#: each test, as a gateway's shutdown shuts its exporter down)
EXPORTER: dict[str, InMemorySpanExporter] = {}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


class MemoryTracing(TracingPlugin):
    """The tracing plugin exporting to the test's :data:`EXPORTER`."""

    def __init__(self) -> None:
        super().__init__(exporter=EXPORTER["now"])


LOAD = {"load": [f"{__name__}:MemoryTracing"]}


@pytest.fixture(autouse=True)
def _fresh_exporter() -> Iterator[None]:
    EXPORTER["now"] = InMemorySpanExporter()
    yield
    EXPORTER.clear()


def _start(stack: Stack, tracing: dict[str, Any] | None = None, **plugins: Any) -> str:
    return stack.start_gateway(plugins={**LOAD, "tracing": tracing or {}, **plugins})


def _plugin(stack: Stack) -> TracingPlugin:
    assert stack.app is not None
    plugin = stack.app[GENERATIONS].current.host.pm.get_plugin("tracing")
    assert isinstance(plugin, TracingPlugin)
    return plugin


def _spans(stack: Stack, servers: int) -> list[ReadableSpan]:
    """Every span finished so far, once ``servers`` server spans have ended (a request's
    span ends just after its response)."""
    deadline = time.monotonic() + 30
    while True:
        provider = _plugin(stack).provider
        assert provider is not None
        provider.force_flush()
        spans = list(EXPORTER["now"].get_finished_spans())
        if sum(1 for s in spans if s.kind == SpanKind.SERVER) >= servers:
            return spans
        assert time.monotonic() < deadline, f"{len(spans)} spans: {[s.name for s in spans]}"
        time.sleep(0.02)


def _children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def _client(stack: Stack) -> stripe.StripeClient:
    return stripe.StripeClient(
        BILLING_KEY, base_addresses={"api": stack.gateway_url}, max_network_retries=0
    )


# --------------------------------------------------------------------------- spans


def test_a_server_span_per_request_with_team_route_status_cache_and_rate_limit(
    stack: Stack,
) -> None:
    _start(stack, rate_limit={"teams": {"billing": {"read": {"rate": 0.01, "burst": 2}}}})
    client = _client(stack)
    client.v1.customers.retrieve(CUSTOMER)  # miss
    client.v1.customers.retrieve(CUSTOMER)  # hit
    client.v1.customers.list()
    with pytest.raises(stripe.RateLimitError):
        client.v1.customers.list()
    spans = _spans(stack, 4)
    servers = [s for s in spans if s.kind == SpanKind.SERVER]
    assert [s.name for s in servers] == [
        "GET /v1/customers/{id}",
        "GET /v1/customers/{id}",
        "GET /v1/customers",
        "GET /v1/customers",
    ]
    miss, hit, listed, refused = (dict(s.attributes or {}) for s in servers)
    assert miss["stripe_gateway.team"] == "billing"
    assert miss["http.route"] == "/v1/customers/{id}"
    assert miss["http.response.status_code"] == 200
    assert miss["stripe_gateway.cache"] == "MISS" and hit["stripe_gateway.cache"] == "HIT"
    assert miss["stripe_gateway.rate_limit"] == "allow"
    assert "stripe_gateway.rate_limit" not in hit  # a hit spends no budget
    assert listed["stripe_gateway.cache"] == "BYPASS"
    assert refused["http.response.status_code"] == 429
    assert refused["stripe_gateway.rate_limit"] == "deny"
    assert miss["stripe_gateway.upstream_request_id"].startswith("req_")
    assert hit["stripe_gateway.attempts"] == 0 and miss["stripe_gateway.attempts"] == 1
    # no secret, no query string, no id outside the route's {id}
    for span in spans:
        text = repr(dict(span.attributes or {}))
        assert BILLING_KEY not in text and "sk_test" not in text
    # children: the plugins' phase for each, an upstream attempt for those that went
    miss_span, hit_span = servers[0], servers[1]
    assert sorted(c.name for c in _children(spans, miss_span)) == [
        "plugins gateway_request",
        "stripe api attempt",
    ]
    assert [c.name for c in _children(spans, hit_span)] == ["plugins gateway_request"]
    (attempt,) = (c for c in _children(spans, miss_span) if c.kind == SpanKind.CLIENT)
    assert dict(attempt.attributes or {})["http.response.status_code"] == 200
    assert miss_span.start_time is not None and attempt.start_time is not None
    assert miss_span.end_time is not None and attempt.end_time is not None
    assert miss_span.start_time <= attempt.start_time <= attempt.end_time <= miss_span.end_time
    assert all(s.context is not None for s in spans)
    assert len({s.context.trace_id for s in servers if s.context is not None}) == 4


def test_each_upstream_attempt_is_a_child_span(stack: Stack) -> None:
    _start(stack)
    response = requests.get(
        stack.gateway_url + "/v1/test_faults/reset_before", auth=(BILLING_KEY, ""), timeout=10
    )
    assert response.status_code == 502
    spans = _spans(stack, 1)
    (server,) = (s for s in spans if s.kind == SpanKind.SERVER)
    attempts = [c for c in _children(spans, server) if c.kind == SpanKind.CLIENT]
    assert len(attempts) == 2  # a GET is tried once more after a disconnect
    for attempt in attempts:
        assert attempt.status.status_code == StatusCode.ERROR
        assert dict(attempt.attributes or {})["error.type"]
    attributes = dict(server.attributes or {})
    assert attributes["stripe_gateway.attempts"] == 2
    assert attributes["http.response.status_code"] == 502
    assert attributes["error.type"] == "upstream_unreachable"
    assert server.status.status_code == StatusCode.ERROR
    assert server.name == "GET /v1/{id}/{id}"  # not a path of Stripe's: no word kept


def test_refused_requests_have_their_span_too(stack: Stack) -> None:
    _start(stack)
    response = requests.get(stack.gateway_url + "/v1/customers", timeout=10)  # no key
    assert response.status_code == 401
    (server,) = _spans(stack, 1)
    attributes = dict(server.attributes or {})
    assert attributes["http.response.status_code"] == 401
    assert "stripe_gateway.team" not in attributes


def test_an_incoming_traceparent_continues_the_callers_trace(stack: Stack) -> None:
    _start(stack)
    headers = {
        "Authorization": f"Bearer {BILLING_KEY}",
        "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01",
        "tracestate": "vendor=opaque",
    }
    requests.get(stack.gateway_url + f"/v1/customers/{CUSTOMER}", headers=headers, timeout=10)
    spans = _spans(stack, 1)
    (server,) = (s for s in spans if s.kind == SpanKind.SERVER)
    assert server.context is not None and server.parent is not None
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert format(server.parent.span_id, "016x") == PARENT_ID
    assert server.parent.is_remote
    assert all(
        s.context is not None and s.context.trace_id == server.context.trace_id for s in spans
    )
    # ... and Stripe sees none of it
    received = stack.upstreams["api"].last().headers
    assert "traceparent" not in received and "tracestate" not in received


def test_an_untrusted_or_malformed_traceparent_starts_a_new_trace(stack: Stack) -> None:
    _start(stack, {"trust_incoming": False})
    headers = {
        "Authorization": f"Bearer {BILLING_KEY}",
        "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01",
    }
    requests.get(stack.gateway_url + "/v1/customers", headers=headers, timeout=10)
    (server,) = (s for s in _spans(stack, 1) if s.kind == SpanKind.SERVER)
    assert server.parent is None
    assert server.context is not None and format(server.context.trace_id, "032x") != TRACE_ID


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_a_callers_sampled_flag_does_not_lift_the_sample_ratio(stack: Stack, ratio: float) -> None:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    _start(stack, {"sample_ratio": ratio})
    provider = _plugin(stack).provider
    assert provider is not None
    for flags in ("01", "00"):
        parent = TraceContextTextMapPropagator().extract(
            {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-{flags}"}
        )
        result = provider.sampler.should_sample(parent, int(TRACE_ID, 16), "GET /v1/customers")
        assert result.decision.is_sampled() is (ratio == 1.0 and flags == "01")


_TRACE_NAMES = st.sampled_from(
    ["traceparent", "tracestate", "baggage", "b3", "x-b3-traceid", "x-b3-sampled", "uber-trace-id"]
)
_VALUES = st.sampled_from(
    [f"00-{TRACE_ID}-{PARENT_ID}-01", "vendor=opaque,other=x", "user=alice", "1", "garbage!"]
)


def _casings(name: str) -> st.SearchStrategy[str]:
    return st.lists(st.booleans(), min_size=len(name), max_size=len(name)).map(
        lambda upper: "".join(c.upper() if u else c for c, u in zip(name, upper, strict=True))
    )


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    headers=st.lists(
        st.tuples(_TRACE_NAMES.flatmap(_casings), _VALUES),
        min_size=1,
        max_size=5,
        unique_by=lambda h: h[0].lower(),
    )
)
def test_stripe_never_sees_trace_headers_whatever_their_casing(
    traced_gateway: Stack, headers: list[tuple[str, str]]
) -> None:
    api = traced_gateway.upstreams["api"]
    before = len(api.received)
    response = requests.get(
        traced_gateway.gateway_url + "/v1/customers",
        headers={"Authorization": f"Bearer {BILLING_KEY}", **dict(headers)},
        timeout=10,
    )
    assert response.status_code == 200
    assert len(api.received) == before + 1
    sent = {name.lower() for name in api.last().headers}
    assert not sent & {name.lower() for name, _ in headers}


@pytest.fixture
def traced_gateway(stack: Stack) -> Stack:
    _start(stack, cache={"default_ttl": 0.001})
    return stack


# --------------------------------------------------------------------------- route names


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/v1/customers", "/v1/customers"),
        ("/v1/customers/cus_1Nabcdefghij", "/v1/customers/{id}"),
        (
            "/v1/customers/cus_1Nabcdefghij/sources/card_1Nabcdefghij",
            "/v1/customers/{id}/sources/{id}",
        ),
        ("/v1/financial_connections/accounts", "/v1/financial_connections/accounts"),
        ("/v1/customers/alice@example.com", "/v1/customers/{id}"),
        ("/v1/customers/ALICE", "/v1/customers/{id}"),
        ("/v2/billing/meter_event_stream", "/v2/billing/meter_event_stream"),
        ("/v1/a/b/c/d/e/f/g/h/i/j", "/v1/{id}/{id}/{id}/{id}/{id}/{id}/{id}/..."),
        # custom ids that look like words are ids all the same
        ("/v1/coupons/summer_sale", "/v1/coupons/{id}"),
        ("/v1/customers/cus_ijatvhkn", "/v1/customers/{id}"),
        ("/v1/reporting/report_runs/frr_1Nabc", "/v1/reporting/report_runs/{id}"),
        ("/v1/payment_intents/pi_123/confirm", "/v1/payment_intents/{id}/confirm"),
        ("/v1/customers/search", "/v1/customers/search"),
    ],
)
def test_span_names_are_bounded_route_templates(path: str, template: str) -> None:
    assert route_template(path) == template


@settings(max_examples=300, deadline=None)
@given(segments=st.lists(st.text(max_size=20).filter(lambda s: "/" not in s), max_size=12))
def test_a_route_template_holds_only_stripes_path_words(segments: list[str]) -> None:
    """Whatever path a client sends, its span name is made of Stripe's fixed path words,
    ``{id}`` and ``...``: a bounded set, with no id, e-mail or other value of the client's."""
    path = "/" + "/".join(segments)
    parts = route_template(path).split("/")[1:]
    assert len(parts) <= 9
    for i, part in enumerate(parts):
        assert part in PATH_WORDS or part in ("{id}", "...") or (i == 0 and part == "oauth")
        if part not in ("{id}", "..."):
            assert part == segments[i]


# --------------------------------------------------------------------------- OTLP and config


def test_spans_are_exported_over_otlp_to_the_configured_endpoint(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    received: list[tuple[dict[str, str], bytes]] = []
    arrived = threading.Event()

    async def collect(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        arrived.set()
        return web.Response(body=b"", content_type="application/x-protobuf")

    collector = web.Application()
    collector.router.add_post("/v1/traces", collect)
    served = stack.loop.run(start_app(collector))
    try:
        monkeypatch.setenv("OTLP_TEST_HEADERS", "Authorization=Bearer collector-token")
        stack.start_gateway(
            plugins={
                "load": ["plugins.tracing:TracingPlugin"],
                "tracing": {
                    "endpoint": served.url + "/v1/traces",
                    "headers_env": "OTLP_TEST_HEADERS",
                    "service_name": "gateway-under-test",
                },
            }
        )
        _client(stack).v1.customers.retrieve(CUSTOMER)
        provider = _plugin(stack).provider
        assert provider is not None
        deadline = time.monotonic() + 30
        while "GET /v1/customers/{id}" not in _exported(received):
            provider.force_flush()  # the server span ends just after the answer
            assert time.monotonic() < deadline, f"exported: {_exported(received)}"
            arrived.wait(0.1)
    finally:
        stack.close()
        stack.loop.run(served.runner.cleanup())
    assert _exported(received) >= {
        "GET /v1/customers/{id}",
        "plugins gateway_request",
        "stripe api attempt",
    }
    for headers, body in received:
        assert headers["Authorization"] == "Bearer collector-token"
        assert headers["Content-Type"] == "application/x-protobuf"
        for resource_spans in ExportTraceServiceRequest.FromString(body).resource_spans:
            attributes = resource_spans.resource.attributes
            service = {a.key: a.value.string_value for a in attributes}
            assert service["service.name"] == "gateway-under-test"


def _exported(received: list[tuple[dict[str, str], bytes]]) -> set[str]:
    """The names of the spans in the OTLP requests ``received``."""
    return {
        span.name
        for _, body in list(received)
        for resource_spans in ExportTraceServiceRequest.FromString(body).resource_spans
        for scope in resource_spans.scope_spans
        for span in scope.spans
    }


def _host(tracing: dict[str, Any]) -> PluginHost:
    data = {
        "teams": [],
        "plugins": {"load": ["plugins.tracing:TracingPlugin"], "tracing": tracing},
    }
    return PluginHost(parse_config(data, environ=ENVIRON))


def test_tracing_settings_are_checked_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"^plugins\.tracing\.endpoint: .*required"):
        _host({})
    with pytest.raises(ConfigError, match=r"^plugins\.tracing\.endpoint: must be an http"):
        _host({"endpoint": "collector:4318"})
    with pytest.raises(ConfigError, match=r"^plugins\.tracing\.sample_ratio"):
        _host({"endpoint": "http://127.0.0.1:4318/v1/traces", "sample_ratio": 2})
    monkeypatch.delenv("NO_SUCH_OTLP_HEADERS", raising=False)
    with pytest.raises(ConfigError, match=r"^plugins\.tracing\.headers_env: .*not set"):
        _host(
            {"endpoint": "http://127.0.0.1:4318/v1/traces", "headers_env": "NO_SUCH_OTLP_HEADERS"}
        )
    monkeypatch.setenv("BAD_OTLP_HEADERS", "no-equals-sign")
    with pytest.raises(ConfigError, match=r"^plugins\.tracing\.headers_env: .*name=value"):
        _host({"endpoint": "http://127.0.0.1:4318/v1/traces", "headers_env": "BAD_OTLP_HEADERS"})


def test_tracing_is_off_unless_loaded(stack: Stack) -> None:
    stack.start_gateway()
    assert stack.app is not None
    assert stack.app[GENERATIONS].current.host.pm.get_plugin("tracing") is None


def test_the_settings_table_of_the_docs_lists_every_key() -> None:
    from pathlib import Path

    from plugins.tracing import TracingSettings

    page = (Path(__file__).resolve().parents[2] / "docs" / "plugins" / "tracing.md").read_text()
    keys = re.findall(r"^\| `(\w+)` \|", page, re.M)
    assert keys == list(TracingSettings.model_fields)
