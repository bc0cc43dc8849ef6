"""The gateway's Prometheus metrics: one :class:`GatewayMetrics` per app, shown on the admin
listener's ``/metrics``.

The ``metrics`` plugin (:mod:`plugins.metrics`) counts every request from its
:class:`~gateway.context.RequestContext` when it is finished; other plugins count what the
context does not carry (cache evictions and bytes, rate-limit backend errors, idempotency
keys injected, redaction fail-closed events) on the same object, which they find under
:data:`METRICS` on the app.

**One process.** Each app has its own :class:`~prometheus_client.CollectorRegistry`, so
several apps (tests) in one process never share a count.

**Several worker processes.** When the environment variable ``PROMETHEUS_MULTIPROC_DIR``
names a directory, prometheus-client's multiprocess mode is on: every process writes its
values to files there, and ``/metrics`` in any process shows the sum over all of them
(:func:`exposition`). Gauges add up the live processes only (``livesum``); a supervisor
calls :func:`mark_process_dead` for a worker that exited. The directory must be fresh
(empty) when the first process starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    multiprocess,
    values,
)

__all__ = [
    "CONTENT_TYPE_LATEST",
    "METRICS",
    "MULTIPROC_ENV",
    "GatewayMetrics",
    "exposition",
    "mark_process_dead",
    "multiprocess_dir",
]

#: the environment variable that turns multiprocess mode on
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "stripe_gateway"

#: latency buckets (seconds): Stripe answers in 0.1-2 s as a rule, reads may take up to 80 s
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 80.0)


def multiprocess_dir() -> str | None:
    """The multiprocess directory, when multiprocess mode is on."""
    return os.environ.get(MULTIPROC_ENV) or None


def _use_multiprocess_values() -> None:
    """prometheus-client picks its value class when it is first imported; a process that
    imported it before ``PROMETHEUS_MULTIPROC_DIR`` was set (a supervisor that forks its
    workers afterwards) would keep per-process values, so pick again."""
    if values.ValueClass is values.MutexValue:
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


@dataclass(frozen=True, eq=False)
class GatewayMetrics:
    """Every metric the gateway exports. Build with :meth:`create`."""

    #: the registry ``/metrics`` shows in single-process mode
    registry: CollectorRegistry
    #: True when values go to ``PROMETHEUS_MULTIPROC_DIR``
    multiprocess: bool
    requests: Counter
    outcomes: Counter
    request_duration: Histogram
    upstream_duration: Histogram
    upstream_errors: Counter
    in_flight: Gauge
    cache_requests: Counter
    cache_evictions: Counter
    cache_stored_bytes: Counter
    cache_served_bytes: Counter
    cache_backend_errors: Counter
    rate_limit_decisions: Counter
    rate_limit_fallbacks: Counter
    rate_limit_backend_errors: Counter
    idempotency_keys_injected: Counter
    upstream_retries: Counter
    redaction_fail_closed: Counter
    connections_closed: Counter

    @classmethod
    def create(cls) -> GatewayMetrics:
        multi = multiprocess_dir() is not None
        if multi:
            _use_multiprocess_values()
        registry = CollectorRegistry(auto_describe=True)
        if not multi:  # process metrics are per process: meaningless once summed
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
        r = registry
        return cls(
            registry=registry,
            multiprocess=multi,
            requests=Counter(
                f"{PREFIX}_requests",
                "Requests finished, by team, method, route family and status class.",
                ("team", "method", "family", "status"),
                registry=r,
            ),
            outcomes=Counter(
                f"{PREFIX}_request_outcomes",
                "Requests finished, by team and how they ended (ok, upstream_error, "
                "client_closed, body_timeout, drain_timeout).",
                ("team", "outcome"),
                registry=r,
            ),
            request_duration=Histogram(
                f"{PREFIX}_request_duration_seconds",
                "Time from a request's arrival to the end of its response.",
                ("family",),
                buckets=LATENCY_BUCKETS,
                registry=r,
            ),
            upstream_duration=Histogram(
                f"{PREFIX}_upstream_duration_seconds",
                "Time from sending a request to Stripe to the end of Stripe's answer "
                "(all attempts).",
                ("upstream",),
                buckets=LATENCY_BUCKETS,
                registry=r,
            ),
            upstream_errors=Counter(
                f"{PREFIX}_upstream_errors",
                "Upstream attempts that failed without a usable answer, by kind.",
                ("upstream", "kind"),
                registry=r,
            ),
            in_flight=Gauge(
                f"{PREFIX}_requests_in_flight",
                "Requests accepted and not yet finished.",
                registry=r,
                multiprocess_mode="livesum",
            ),
            cache_requests=Counter(
                f"{PREFIX}_cache_requests",
                "Cache outcomes: hit, miss, bypass, coalesced, stale.",
                ("result",),
                registry=r,
            ),
            cache_evictions=Counter(
                f"{PREFIX}_cache_evictions",
                "Cached answers removed: after a write, by an admin purge, or for room.",
                ("reason",),
                registry=r,
            ),
            cache_stored_bytes=Counter(
                f"{PREFIX}_cache_stored_bytes",
                "Bytes of answer bodies stored in the cache.",
                registry=r,
            ),
            cache_served_bytes=Counter(
                f"{PREFIX}_cache_served_bytes",
                "Bytes of answer bodies served from the cache.",
                registry=r,
            ),
            cache_backend_errors=Counter(
                f"{PREFIX}_cache_backend_errors",
                "Cache store calls that failed (Redis down, timed out, circuit open).",
                registry=r,
            ),
            rate_limit_decisions=Counter(
                f"{PREFIX}_rate_limit_decisions",
                "Rate-limit decisions by team and outcome (allow, deny, shadow_deny, "
                "unavailable_deny, unavailable_allow).",
                ("team", "outcome"),
                registry=r,
            ),
            rate_limit_fallbacks=Counter(
                f"{PREFIX}_rate_limit_fallbacks",
                "Decisions made by the in-process limiter because the shared one failed.",
                ("team",),
                registry=r,
            ),
            rate_limit_backend_errors=Counter(
                f"{PREFIX}_rate_limit_backend_errors",
                "Calls to the shared rate-limit store (Redis) that failed.",
                registry=r,
            ),
            idempotency_keys_injected=Counter(
                f"{PREFIX}_idempotency_keys_injected",
                "Idempotency-Key headers the gateway added to requests that had none.",
                registry=r,
            ),
            upstream_retries=Counter(
                f"{PREFIX}_upstream_retries",
                "Requests sent to Stripe again with the same Idempotency-Key.",
                ("upstream",),
                registry=r,
            ),
            redaction_fail_closed=Counter(
                f"{PREFIX}_redaction_fail_closed",
                "Log lines in which a value could not be redacted and was replaced whole.",
                registry=r,
            ),
            connections_closed=Counter(
                f"{PREFIX}_connections_closed",
                "Client connections the gateway closed itself: header_timeout (headers too "
                "slow), max_connections (over the cap).",
                ("reason",),
                registry=r,
            ),
        )


METRICS = web.AppKey("metrics", GatewayMetrics)


def exposition(metrics: GatewayMetrics) -> bytes:
    """The text ``/metrics`` answers: this app's registry, or in multiprocess mode the sum
    over every process writing to the directory. Reads files: call it off the event loop."""
    if metrics.multiprocess:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(metrics.registry)


def mark_process_dead(pid: int, directory: str | None = None) -> None:
    """For a supervisor: a worker exited, so its live gauges (in-flight requests) no
    longer count. Its counters and histograms still do. ``directory`` defaults to
    ``PROMETHEUS_MULTIPROC_DIR``."""
    multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
