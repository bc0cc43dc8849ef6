"""The gateway's Prometheus metrics: one :class:`GatewayMetrics` per app, shown on the admin
listener's ``/metrics``.

The core counts only what it alone sees (requests in flight, connections it closed); every
other metric belongs to the plugin that counts it (the ``metrics`` plugin counts requests,
``cache`` its hits and evictions, ...), registered on the app's object with
:meth:`GatewayMetrics.counter` and friends. The object is handed to each plugin's
``gateway_startup`` (and is ``app[gateway.keys.METRICS]``).

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

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
    """The app's metrics: its registry, the core's own metrics, and where plugins register
    theirs (:meth:`counter`, :meth:`histogram`, :meth:`gauge`). Build with :meth:`create`.

    A plugin registers its metrics in ``gateway_startup`` (its ``metrics`` argument). A
    name is registered once per app: asking again for the same name (the plugin's next
    generation, after a config reload) returns the same metric, so counts go on.
    """

    #: the registry ``/metrics`` shows in single-process mode
    registry: CollectorRegistry
    #: True when values go to ``PROMETHEUS_MULTIPROC_DIR``
    multiprocess: bool
    in_flight: Gauge
    connections_closed: Counter
    _named: dict[str, tuple[type[Any], tuple[str, ...], Any]] = field(
        default_factory=dict, repr=False
    )
    _flushers: list[Callable[[], None]] = field(default_factory=list, repr=False)

    @classmethod
    def create(cls) -> GatewayMetrics:
        multi = multiprocess_dir() is not None
        if multi:
            _use_multiprocess_values()
        registry = CollectorRegistry(auto_describe=True)
        if not multi:  # process metrics are per process: meaningless once summed
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
        return cls(
            registry=registry,
            multiprocess=multi,
            in_flight=Gauge(
                f"{PREFIX}_requests_in_flight",
                "Requests accepted and not yet finished.",
                registry=registry,
                multiprocess_mode="livesum",
            ),
            connections_closed=Counter(
                f"{PREFIX}_connections_closed",
                "Client connections the gateway closed itself: header_timeout (headers too "
                "slow), max_connections (over the cap).",
                ("reason",),
                registry=registry,
            ),
        )

    def on_flush(self, flush: Callable[[], None]) -> None:
        """Have :meth:`flush` call ``flush``: a plugin that keeps counts of its own on the
        request path (cheaper than a metric's locked update each time) adds them to its
        metrics there. Single-process mode only: in multiprocess mode another process's
        ``/metrics`` could not flush this one's counts."""
        self._flushers.append(flush)

    def remove_flush(self, flush: Callable[[], None]) -> None:
        """Stop calling ``flush`` (a plugin shutting down, after its last flush)."""
        if flush in self._flushers:
            self._flushers.remove(flush)

    def flush(self) -> None:
        """Add every count kept aside (:meth:`on_flush`) to its metric. Call it on the
        event loop's thread (the counts are kept there); :func:`exposition` does, by
        default."""
        for flush in tuple(self._flushers):
            flush()

    def counter(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Counter:
        """The counter ``stripe_gateway_<name>`` (exported as ``..._total``)."""
        metric: Counter = self._get(Counter, name, documentation, labelnames, {})
        return metric

    def histogram(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> Histogram:
        """The histogram ``stripe_gateway_<name>`` (seconds: :data:`LATENCY_BUCKETS`)."""
        metric: Histogram = self._get(
            Histogram, name, documentation, labelnames, {"buckets": buckets}
        )
        return metric

    def gauge(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Gauge:
        """The gauge ``stripe_gateway_<name>``; summed over the live worker processes."""
        metric: Gauge = self._get(
            Gauge, name, documentation, labelnames, {"multiprocess_mode": "livesum"}
        )
        return metric

    def redis_breaker(self, store: str) -> Any:
        """The ``redis_breaker_open`` gauge of ``store`` (``cache``, ``rate_limit``, ...), set
        to 0: a plugin keeping its state in Redis sets it to 1 when a call fails (its circuit
        breaker opens) and back to 0 at the next call that succeeds. Summed over worker
        processes, it counts the workers whose last Redis call failed."""
        gauge = self.gauge(
            "redis_breaker_open",
            "1 while a store's last Redis call failed (its circuit breaker opened), 0 once a "
            "call succeeds again; per store (cache, rate_limit).",
            ("store",),
        )
        child = gauge.labels(store)
        child.set(0)
        return child

    def _get(
        self,
        kind: type[Any],
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        extra: dict[str, Any],
    ) -> Any:
        labels = tuple(labelnames)
        known = self._named.get(name)
        if known is not None:
            if known[0] is not kind or known[1] != labels:
                raise ValueError(
                    f"metric {name!r} is already registered as a {known[0].__name__} "
                    f"with labels {list(known[1])}"
                )
            return known[2]
        metric = kind(f"{PREFIX}_{name}", documentation, labels, registry=self.registry, **extra)
        self._named[name] = (kind, labels, metric)
        return metric


def exposition(metrics: GatewayMetrics, flush: bool = True) -> bytes:
    """The text ``/metrics`` answers: this app's registry, or in multiprocess mode the sum
    over every process writing to the directory. Reads files: the admin listener calls
    it off the event loop, after :meth:`GatewayMetrics.flush` on the loop (``flush=False``:
    the flush must not run on another thread)."""
    if flush:
        metrics.flush()
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
