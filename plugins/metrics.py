"""Metrics: count every request from its finished context, for the admin listener's
``/metrics`` (docs/operations.md, "Metrics").

The plugin registers the request metrics on the app's registry (``requests``,
``request_outcomes``, ``request_duration_seconds``, ``upstream_duration_seconds``,
``upstream_errors``, ``upstream_retries``, each prefixed ``stripe_gateway_``) and reads what
the core wrote on the :class:`~gateway.context.RequestContext` (team, status, latencies,
upstream failures and attempts) once, in ``gateway_request_finished``; it adds nothing to
the request path. Other plugins count their own (cache outcomes, rate-limit decisions).
Labels are bounded: the route *family* comes from the path's first segment after the
version (``sigma``, ``tax``, …, ``other``), never the path or an id; unknown methods count
as ``OTHER``; requests that never reached authentication count with team ``-``.

It is on whenever the admin listener is (``[admin] port``): with no listener, nothing
could show what it counted, so it counts nothing. No settings.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Histogram

from gateway.context import OUTCOMES, RequestContext
from gateway.hookspecs import hookimpl
from gateway.host import PluginHost
from gateway.metrics import GatewayMetrics
from gateway.settings import NoSettings

__all__ = ["FAMILIES", "MetricsPlugin", "route_family"]

#: the route families, by the path segment after ``/v1/`` (or ``/v2/``) that names them
FAMILIES: dict[str, str] = {
    "sigma": "sigma",
    "reporting": "reporting",
    "financial_connections": "financial_connections",
    "tax": "tax",
    "tax_rates": "tax",
    "tax_codes": "tax",
    "identity": "identity",
    "crypto": "crypto",
    "climate": "climate",
    "forwarding": "forwarding",
    "webhook_endpoints": "webhook_endpoints",
    "files": "files",
    "file_links": "files",
}
_METHODS = frozenset({"GET", "HEAD", "POST", "DELETE", "PUT", "PATCH", "OPTIONS"})
_STATUS = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
_NO_TEAM = "-"


def route_family(path: str) -> str:
    """The bounded family of ``path``: ``/v1/tax/calculations/taxcalc_1`` -> ``tax``."""
    if path.startswith(("/v1/", "/v2/")):
        return FAMILIES.get(path[4:].partition("/")[0], "other")
    if path.startswith("/oauth/"):
        return "oauth"
    return "other"


class _RequestMetrics:
    """The metrics this plugin registers."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.requests = metrics.counter(
            "requests",
            "Requests finished, by team, method, route family and status class.",
            ("team", "method", "family", "status"),
        )
        self.outcomes = metrics.counter(
            "request_outcomes",
            "Requests finished, by team and how they ended (ok, upstream_error, "
            "client_closed, body_timeout, drain_timeout).",
            ("team", "outcome"),
        )
        self.request_duration = metrics.histogram(
            "request_duration_seconds",
            "Time from a request's arrival to the end of its response.",
            ("family",),
        )
        self.upstream_duration = metrics.histogram(
            "upstream_duration_seconds",
            "Time from sending a request to Stripe to the end of Stripe's answer (all attempts).",
            ("upstream",),
        )
        self.upstream_errors = metrics.counter(
            "upstream_errors",
            "Upstream attempts that failed without a usable answer, by kind.",
            ("upstream", "kind"),
        )
        self.upstream_retries = metrics.counter(
            "upstream_retries",
            "Requests sent to Stripe again with the same Idempotency-Key.",
            ("upstream",),
        )


class MetricsPlugin:
    """Built-in plugin ``metrics``."""

    name = "metrics"
    #: no keys of its own: the metrics endpoint is set up in ``[admin]``
    settings_model = NoSettings

    def __init__(self) -> None:
        self._metrics: _RequestMetrics | None = None
        # labelled children, looked up once: ``labels()`` takes a lock and checks names
        self._requests: dict[tuple[str, str, str, int], Any] = {}
        self._durations: dict[str, Any] = {}
        self._upstream: dict[str | None, Any] = {}
        self._outcomes: dict[tuple[str, str | None], Any] = {}

    @hookimpl
    def gateway_startup(self, host: PluginHost, metrics: GatewayMetrics) -> None:
        if host.config.admin.enabled:
            self._metrics = _RequestMetrics(metrics)

    @hookimpl
    def gateway_request_finished(self, ctx: RequestContext) -> None:
        metrics = self._metrics
        if metrics is None:
            return
        team = ctx.team.name if ctx.team is not None else _NO_TEAM
        request = ctx.request
        method = request.method
        if method not in _METHODS:  # any token is a method to aiohttp: keep labels bounded
            method = "OTHER"
        family = route_family(request.path)
        status = ctx.status // 100
        key = (team, method, family, status)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = metrics.requests.labels(
                team, method, family, _STATUS.get(status, "none")
            )
        child.inc()
        ended = self._outcomes.get((team, ctx.outcome))
        if ended is None:
            outcome = ctx.outcome if ctx.outcome in OUTCOMES else "other"
            ended = self._outcomes[team, ctx.outcome] = metrics.outcomes.labels(team, outcome)
        ended.inc()
        duration = self._durations.get(family)
        if duration is None:
            duration = self._durations[family] = metrics.request_duration.labels(family)
        duration.observe(time.perf_counter() - ctx.started)
        if ctx.attempts:
            self._count_upstream(metrics, ctx)

    def _count_upstream(self, metrics: _RequestMetrics, ctx: RequestContext) -> None:
        name = ctx.upstream_name
        children = self._upstream.get(name)
        if children is None:
            label = name or "none"
            children = self._upstream[name] = (
                metrics.upstream_duration.labels(label),
                metrics.upstream_retries.labels(label),
            )
        histogram: Histogram
        retries: Counter
        histogram, retries = children
        if ctx.upstream_seconds is not None:
            histogram.observe(ctx.upstream_seconds)
        if ctx.attempts > 1:
            retries.inc(ctx.attempts - 1)
        for kind in ctx.upstream_failures:
            metrics.upstream_errors.labels(name or "none", kind).inc()
