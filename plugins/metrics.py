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

In a single process, a finished request costs a few dict updates: the counts and the
latencies (already sorted into the histogram's buckets) are kept in plain objects and
added to the metrics when they are read (:meth:`GatewayMetrics.flush`, which ``/metrics``
calls first). With ``serve --workers N`` (multiprocess mode) every request updates the
metrics at once, since any worker's ``/metrics`` shows every worker's values.
"""

from __future__ import annotations

import time
from bisect import bisect_left
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


class _Tally:
    """Observations of one histogram child, sorted into its buckets as they come and
    added to it on :meth:`flush_into` (what ``observe`` would have done one at a time)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, histogram: Histogram) -> None:
        #: the histogram's upper bounds, +Inf last (an observation goes in the first
        #: bucket whose bound it does not exceed, as ``Histogram.observe`` does)
        self.bounds: list[float] = list(histogram._upper_bounds)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def flush_into(self, child: Histogram) -> None:
        counts, total = self.counts, self.total
        if not any(counts):
            return
        self.counts = [0] * len(counts)
        self.total = 0.0
        child._sum.inc(total)
        for bucket, n in zip(child._buckets, counts, strict=True):
            if n:
                bucket.inc(n)


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
        self._registry: GatewayMetrics | None = None
        #: single-process mode: counts are kept here and added to the metrics on flush
        self._deferred = False
        self._requests_pending: dict[tuple[str, str, str, int], int] = {}
        self._outcomes_pending: dict[tuple[str, str | None], int] = {}
        self._durations_pending: dict[str, _Tally] = {}
        self._upstream_pending: dict[str | None, _Tally] = {}

    @hookimpl
    def gateway_startup(self, host: PluginHost, metrics: GatewayMetrics) -> None:
        if host.config.admin.enabled:
            self._metrics = _RequestMetrics(metrics)
            self._registry = metrics
            self._deferred = not metrics.multiprocess
            if self._deferred:
                metrics.on_flush(self.flush)

    @hookimpl
    def gateway_shutdown(self) -> None:
        if self._registry is not None and self._deferred:
            self.flush()
            self._registry.remove_flush(self.flush)

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
        duration = time.perf_counter() - ctx.started
        if self._deferred:
            key = (team, method, family, ctx.status // 100)
            counts = self._requests_pending
            counts[key] = counts.get(key, 0) + 1
            ended = (team, ctx.outcome)
            outcomes = self._outcomes_pending
            outcomes[ended] = outcomes.get(ended, 0) + 1
            tally = self._durations_pending.get(family)
            if tally is None:
                tally = self._durations_pending[family] = _Tally(metrics.request_duration)
            # _Tally.observe, inline (a call saved on every request)
            tally.counts[bisect_left(tally.bounds, duration)] += 1
            tally.total += duration
            if ctx.attempts:
                self._count_upstream(metrics, ctx)
            return
        self._request_child(metrics, (team, method, family, ctx.status // 100)).inc()
        self._outcome_child(metrics, team, ctx.outcome).inc()
        self._duration_child(metrics, family).observe(duration)
        if ctx.attempts:
            self._count_upstream(metrics, ctx)

    def flush(self) -> None:
        """Add the counts kept since the last flush to the metrics."""
        metrics = self._metrics
        if metrics is None:
            return
        counts, self._requests_pending = self._requests_pending, {}
        for key, n in counts.items():
            self._request_child(metrics, key).inc(n)
        outcomes, self._outcomes_pending = self._outcomes_pending, {}
        for (team, outcome), n in outcomes.items():
            self._outcome_child(metrics, team, outcome).inc(n)
        for family, tally in self._durations_pending.items():
            tally.flush_into(self._duration_child(metrics, family))
        for name, tally in self._upstream_pending.items():
            tally.flush_into(self._upstream_children(metrics, name)[0])

    def _request_child(self, metrics: _RequestMetrics, key: tuple[str, str, str, int]) -> Counter:
        child = self._requests.get(key)
        if child is None:
            team, method, family, status = key
            child = self._requests[key] = metrics.requests.labels(
                team, method, family, _STATUS.get(status, "none")
            )
        return child

    def _outcome_child(self, metrics: _RequestMetrics, team: str, ended: str | None) -> Counter:
        child = self._outcomes.get((team, ended))
        if child is None:
            outcome = ended if ended in OUTCOMES else "other"
            child = self._outcomes[team, ended] = metrics.outcomes.labels(team, outcome)
        return child

    def _duration_child(self, metrics: _RequestMetrics, family: str) -> Histogram:
        child = self._durations.get(family)
        if child is None:
            child = self._durations[family] = metrics.request_duration.labels(family)
        return child

    def _upstream_children(
        self, metrics: _RequestMetrics, name: str | None
    ) -> tuple[Histogram, Counter]:
        children = self._upstream.get(name)
        if children is None:
            label = name or "none"
            children = self._upstream[name] = (
                metrics.upstream_duration.labels(label),
                metrics.upstream_retries.labels(label),
            )
        return children

    def _count_upstream(self, metrics: _RequestMetrics, ctx: RequestContext) -> None:
        name = ctx.upstream_name
        seconds = ctx.upstream_seconds
        if (
            self._deferred
            and seconds is not None
            and ctx.attempts == 1
            and not ctx.upstream_failures
        ):
            # the common case: one attempt, one latency
            tally = self._upstream_pending.get(name)
            if tally is None:
                tally = self._upstream_pending[name] = _Tally(metrics.upstream_duration)
            tally.observe(seconds)
            return
        histogram, retries = self._upstream_children(metrics, name)
        if ctx.upstream_seconds is not None:
            histogram.observe(ctx.upstream_seconds)
        if ctx.attempts > 1:
            retries.inc(ctx.attempts - 1)
        for kind in ctx.upstream_failures:
            metrics.upstream_errors.labels(name or "none", kind).inc()
