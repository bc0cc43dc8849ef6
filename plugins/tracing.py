"""Tracing: OpenTelemetry spans for each request, exported over OTLP (optional; off by
default).

Not one of the default plugins: it needs the ``otel`` extra
(``pip install 'stripe-gateway[otel]'``) and is loaded by name, with its settings
(:class:`TracingSettings`, in ``docs/configuration.md``'s way) in ``[plugins.tracing]``::

    [plugins]
    load = ["plugins.tracing:TracingPlugin"]

    [plugins.tracing]
    endpoint = "http://otel-collector:4318/v1/traces"

Spans, for every request that reaches the plugins:

* one **server span** ``METHOD /route/template`` (ids replaced by ``{id}``: bounded
  names), from the request's arrival to the end of its response and of the plugins' work
  after it (the cache storing the answer in Redis), with the team, the route template,
  the status, the upstream and its ``Request-Id``, the attempts, the outcome, and the
  cache and rate-limit outcomes (the ``cache`` and ``rate_limit`` fields those plugins
  give the audit line); its status is an error for 5xx answers;
* a child ``plugins gateway_request`` span for the request phase of the plugins (the
  cache lookup, a wait coalesced behind another request, the rate-limit decision),
  ending when the request goes upstream or is answered;
* a ``redis <COMMAND>`` client span (``redis GET``, ``redis EVALSHA``) for each call to
  Redis (the cache's and the rate limiter's with their ``redis`` backend): a child of the
  plugins' span during their request phase, of the server span after it (the eviction
  after a write, the store of a fetched answer). Attributes: ``db.system`` and
  ``db.system.name`` (``redis``), ``db.operation`` and ``db.operation.name`` (the
  command), ``db.namespace`` (the database number), ``server.address`` and
  ``server.port``; never the command's arguments (keys hold object ids and team names,
  values Stripe's answers). An error reply, a timeout or a lost connection makes it an
  error, with ``error.type`` the exception's type (never its message). Redis calls
  outside a request (the webhook delivery workers, readiness checks) are not traced;
* a ``cache coalesced wait`` span, a child of the plugins' span, for a miss that waits
  for an identical request already on its way to Stripe, with
  ``stripe_gateway.cache.wait``: ``answer`` (it got the leader's answer),
  ``leader_failed`` (it shares the leader's failure), ``not_shared`` (the leader's answer
  could not be shared: it goes to Stripe itself) or ``timeout``;
* a child ``stripe <upstream> attempt`` client span for each attempt to reach Stripe
  (retries included), from sending the request to Stripe's status and headers, with the
  attempt's status code or failure. They come from a tracer on the upstream client
  (:attr:`gateway.upstream.UpstreamClient.tracers`).

The Redis and wait spans come from the core's instrumentation points
(:mod:`gateway.spans`): the plugin puts the request's :class:`_RequestTrace` in
:data:`gateway.spans.TRACER` for the request's task, for sampled requests only; without
the plugin, or for an unsampled request, that variable stays ``None`` and the
instrumented code does nothing more than read it.

An incoming W3C ``traceparent`` (and ``tracestate``) continues the caller's trace
(``trust_incoming``). Nothing trace-related goes to Stripe: the gateway injects no
context upstream, and the plugin removes the client's trace headers (``traceparent``,
``tracestate``, ``baggage``, B3, Jaeger, ``sentry-trace``) from the upstream request.
Spans are batched and exported from a background thread; an unreachable collector costs
dropped spans, never a request. No key, query string or body goes into a span.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDict
from pydantic import Field, field_validator
from yarl import URL

from gateway.config import GatewayConfig
from gateway.context import RequestContext
from gateway.errors import ConfigError
from gateway.hookspecs import hookimpl
from gateway.host import PluginHost
from gateway.keys import SESSION
from gateway.pathwords import PATH_WORDS
from gateway.settings import Settings
from gateway.spans import TRACER, AttributeValue

try:
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError as exc:  # pragma: no cover - without the extra
    raise ImportError(
        f"the tracing plugin needs the otel extra (pip install 'stripe-gateway[otel]'): {exc}"
    ) from exc

__all__ = ["TRACE_HEADERS", "TracingPlugin", "TracingSettings", "route_template"]

#: request headers that carry a caller's trace: never sent upstream
TRACE_HEADERS = frozenset(
    {
        "traceparent",
        "tracestate",
        "baggage",
        "b3",
        "uber-trace-id",
        "sentry-trace",
        "x-cloud-trace-context",
        "x-amzn-trace-id",
    }
)
#: prefixes of such headers (B3's multi-header form, Jaeger and OpenTracing baggage)
TRACE_HEADER_PREFIXES = ("x-b3-", "uberctx-", "ot-baggage-", "ot-tracer-")
_METHODS = frozenset({"GET", "HEAD", "POST", "DELETE", "PUT", "PATCH", "OPTIONS"})
_MAX_SEGMENTS = 8
_PROPAGATOR = TraceContextTextMapPropagator()


def route_template(path: str) -> str:
    """``path`` with every segment that is not one of the fixed words of Stripe's API paths
    (:data:`gateway.pathwords.PATH_WORDS`) replaced by ``{id}``, the version kept:
    ``/v1/customers/cus_123/sources`` -> ``/v1/customers/{id}/sources``, and a custom id
    that looks like a word too (``/v1/coupons/summer_sale`` -> ``/v1/coupons/{id}``):
    names from a bounded set, whatever the client sends."""
    parts = path.split("/")[1:]
    out = []
    for i, part in enumerate(parts[:_MAX_SEGMENTS]):
        version = i == 0 and part in ("v1", "v2", "oauth")
        out.append(part if version or part in PATH_WORDS else "{id}")
    if len(parts) > _MAX_SEGMENTS:
        out.append("...")
    return "/" + "/".join(out)


class TracingSettings(Settings):
    """`[plugins.tracing]`: OpenTelemetry traces, exported over OTLP/HTTP (the plugin is
    loaded with `[plugins] load = ["plugins.tracing:TracingPlugin"]` and needs the `otel`
    extra)."""

    endpoint: str | None = Field(
        None,
        description="OTLP/HTTP traces endpoint of the collector (required)",
        examples=["http://127.0.0.1:4318/v1/traces"],
    )
    headers_env: str | None = Field(
        None,
        description="environment variable holding headers for the collector, as "
        "`name=value,name2=value2` (a token, say: kept out of the config file)",
        examples=["STRIPE_GATEWAY_OTLP_HEADERS"],
    )
    service_name: str = Field(
        "stripe-gateway", min_length=1, description="the `service.name` of the spans"
    )
    sample_ratio: float = Field(
        1.0,
        ge=0,
        le=1,
        description="share of traces recorded; a caller's unsampled flag is followed, its "
        "sampled flag is subject to this ratio too",
    )
    trust_incoming: bool = Field(
        True, description="continue the caller's trace from its W3C `traceparent` header"
    )
    export_timeout: float = Field(10.0, gt=0, description="seconds per export to the collector")

    @field_validator("endpoint")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s?#]+(/[^\s?#]*)?$", value):
            raise ValueError("must be an http(s) URL, like http://127.0.0.1:4318/v1/traces")
        return value


@dataclass(slots=True)
class _RequestTrace:
    """The spans of one request; the :class:`gateway.spans.Tracer` of its task (in
    :data:`gateway.spans.TRACER`, read by the upstream session's trace config and the
    core's instrumented code, which run in the same task)."""

    tracer: trace.Tracer
    server: Span
    #: the upstream's name (``api``, ``files``, ...), for the attempts' span names
    upstream: str
    #: the plugins' request phase, while it runs
    phase: Span | None = None

    def start_span(
        self,
        name: str,
        *,
        client: bool = False,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> _Span:
        """A child of the plugins' phase while it runs, else of the server span."""
        try:
            span = self.tracer.start_span(
                name,
                context=trace.set_span_in_context(
                    self.phase if self.phase is not None else self.server
                ),
                kind=SpanKind.CLIENT if client else SpanKind.INTERNAL,
                attributes=attributes,
            )
        except Exception:  # never fail the traced work over its span
            span = trace.INVALID_SPAN
        return _Span(span)


class _Span:
    """An OpenTelemetry span behind :class:`gateway.spans.Span`."""

    __slots__ = ("span",)

    def __init__(self, span: Span) -> None:
        self.span = span

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self.span.set_attribute(key, value)

    def end(self, error: str | None = None) -> None:
        if error is not None:
            self.span.set_attribute("error.type", error)
            self.span.set_status(Status(StatusCode.ERROR, error))
        self.span.end()


def _now_ns() -> int:
    return time.time_ns()


def _arrival_ns(ctx: RequestContext) -> int:
    """The request's arrival as a wall-clock timestamp (``ctx.started`` is monotonic)."""
    return time.time_ns() - int((time.perf_counter() - ctx.started) * 1e9)


def _collector_headers(settings: TracingSettings, environ: dict[str, str]) -> dict[str, str]:
    if settings.headers_env is None:
        return {}
    text = environ.get(settings.headers_env, "")
    if not text:
        raise ConfigError(
            "headers_env", f"environment variable {settings.headers_env} is not set or empty"
        )
    headers = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(
                "headers_env",
                f"environment variable {settings.headers_env} must be name=value pairs "
                "separated by commas",
            )
        headers[name.strip()] = value.strip()
    return headers


class _AttemptTracer:
    """Spans for the upstream client's requests (each attempt), as children of the
    server span of the request the task serves. Installed once per client: a request
    started by any generation's plugin finds its own tracer in :data:`gateway.spans.TRACER`."""

    @staticmethod
    def start(method: str, url: URL) -> Span | None:
        current = TRACER.get()
        if not isinstance(current, _RequestTrace):
            return None
        phase = current.phase
        if phase is not None:  # the request left the plugins' phase for Stripe
            phase.end()
            current.phase = None
        return current.tracer.start_span(
            f"stripe {current.upstream} attempt",
            context=trace.set_span_in_context(current.server),
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": method,
                "server.address": url.host or "",
                "server.port": url.port or 0,
                "url.scheme": url.scheme,
                "http.route": route_template(url.path),
            },
        )

    @staticmethod
    def end(span: Span | None, status: int) -> None:
        if span is None:
            return
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    @staticmethod
    def failed(span: Span | None, exc: BaseException) -> None:
        if span is None:
            return
        span.set_attribute("error.type", type(exc).__name__)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        span.end()


class TracingPlugin:
    """Optional plugin ``tracing``: see the module's docstring. ``exporter`` replaces the
    OTLP exporter (tests give the SDK's in-memory one)."""

    name = "tracing"
    settings_model = TracingSettings

    def __init__(self, exporter: SpanExporter | None = None) -> None:
        self.settings = TracingSettings()
        self._exporter = exporter
        self.provider: TracerProvider | None = None
        self._tracer: trace.Tracer | None = None
        self._host: PluginHost | None = None

    @hookimpl
    def gateway_configure(self, config: GatewayConfig, settings: TracingSettings) -> None:
        self.settings = settings
        if self._exporter is None and settings.endpoint is None:
            raise ConfigError("endpoint", "the OTLP endpoint to send spans to is required")
        _collector_headers(settings, dict(os.environ))  # checked at start-up

    @hookimpl
    def gateway_startup(self, app: web.Application, host: PluginHost) -> None:
        s = self.settings
        exporter = self._exporter
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(
                endpoint=s.endpoint,
                headers=_collector_headers(s, dict(os.environ)),
                timeout=s.export_timeout,
            )
        self.exporter = exporter
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": s.service_name}),
            # a caller's sampled flag cannot lift the ratio: a client could otherwise have
            # every one of its requests recorded and exported
            sampler=ParentBased(
                TraceIdRatioBased(s.sample_ratio),
                remote_parent_sampled=TraceIdRatioBased(s.sample_ratio),
            ),
        )
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self.provider.get_tracer("stripe-gateway")
        self._host = host
        session = app.get(SESSION)
        tracers = getattr(session, "tracers", None)
        if isinstance(tracers, list):
            if not any(isinstance(t, _AttemptTracer) for t in tracers):
                tracers.append(_AttemptTracer())
        else:
            host.log.warning(
                "tracing_attempt_spans_unavailable",
                reason="the upstream client takes no tracer; no spans per attempt",
            )

    @hookimpl
    async def gateway_shutdown(self) -> None:
        provider = self.provider
        if provider is not None:
            self.provider = None
            await asyncio.to_thread(provider.shutdown)  # flushes the spans still batched

    # ----------------------------------------------------------------- requests

    def _begin(self, ctx: RequestContext) -> _RequestTrace | None:
        tracer = self._tracer
        if tracer is None:
            return None
        request = ctx.request
        parent = _PROPAGATOR.extract(request.headers) if self.settings.trust_incoming else None
        method = request.method if request.method in _METHODS else "_OTHER"
        route = route_template(request.path)
        server = tracer.start_span(
            f"{method} {route}",
            context=parent,
            kind=SpanKind.SERVER,
            start_time=_arrival_ns(ctx),
            attributes={
                "http.request.method": method,
                "http.route": route,
                "stripe_gateway.request_id": ctx.request_id,
                "stripe_gateway.upstream": ctx.upstream_name or "",
            },
        )
        state = _RequestTrace(tracer, server, ctx.upstream_name or "none")
        ctx.state[self.name] = state
        if server.is_recording():  # an unsampled request's Redis calls pay nothing more
            TRACER.set(state)
        return state

    @hookimpl(tryfirst=True)
    def gateway_authenticate(self, ctx: RequestContext) -> None:
        try:
            self._begin(ctx)
        except Exception as exc:  # never refuse a request over its trace
            self._trace_failed(exc)

    @hookimpl(tryfirst=True)
    def gateway_request(self, ctx: RequestContext) -> None:
        state: _RequestTrace | None = ctx.state.get(self.name)
        if state is None:
            return
        if ctx.team is not None:
            state.server.set_attribute("stripe_gateway.team", ctx.team.name)
        state.phase = state.tracer.start_span(
            "plugins gateway_request", context=trace.set_span_in_context(state.server)
        )

    @hookimpl
    def gateway_upstream_headers(self, ctx: RequestContext, headers: CIMultiDict[str]) -> None:
        """Remove the caller's trace headers from the request to Stripe."""
        for name in [n for n in headers if _is_trace_header(n)]:
            headers.popall(name, None)

    @hookimpl(tryfirst=True)
    def gateway_response_headers(self, ctx: RequestContext) -> None:
        state: _RequestTrace | None = ctx.state.get(self.name)
        if state is not None and state.phase is not None:  # answered by a plugin
            state.phase.end()
            state.phase = None

    @hookimpl(trylast=True)
    def gateway_request_finished(self, ctx: RequestContext) -> None:
        """Last, so that the other plugins' work after the response (the cache storing
        the answer in Redis) is in the request's trace, inside its server span."""
        try:
            state: _RequestTrace | None = ctx.state.get(self.name)
            if state is None:  # stopped before the plugins' request hooks
                state = self._begin(ctx)
                if state is None:
                    return
            self._finish(ctx, state)
        finally:
            TRACER.set(None)

    def _finish(self, ctx: RequestContext, state: _RequestTrace) -> None:
        if state.phase is not None:
            state.phase.end()
            state.phase = None
        server = state.server
        attributes: dict[str, Any] = {
            "http.response.status_code": ctx.status,
            "stripe_gateway.attempts": ctx.attempts,
            "stripe_gateway.outcome": ctx.outcome or "",
        }
        if ctx.team is not None:
            attributes["stripe_gateway.team"] = ctx.team.name
        if ctx.upstream_request_id is not None:
            attributes["stripe_gateway.upstream_request_id"] = ctx.upstream_request_id
        if ctx.error is not None:
            attributes["error.type"] = ctx.error
        if self._host is not None:
            fields = self._host.fields("gateway_audit_fields", ctx=ctx)
            for name in ("cache", "rate_limit"):
                value = fields.get(name)
                if isinstance(value, str | int | float | bool):
                    attributes[f"stripe_gateway.{name}"] = value
        server.set_attributes(attributes)
        if ctx.status >= 500 or ctx.status == 0:
            server.set_status(Status(StatusCode.ERROR, ctx.error or None))
        server.end()

    def _trace_failed(self, exc: Exception) -> None:
        if self._host is not None:
            self._host.log.warning("tracing_failed", error=f"{type(exc).__name__}: {exc}")


def _is_trace_header(name: str) -> bool:
    lowered = name.lower()
    return lowered in TRACE_HEADERS or lowered.startswith(TRACE_HEADER_PREFIXES)
