"""Spans for timed work inside a request that no hook sees: a Redis call, a cache miss
waiting behind an identical request in flight.

The core depends on no tracing library. A tracing plugin (``plugins.tracing``) sets
:data:`TRACER`, for the task serving one request, to an object with the
:class:`Tracer` interface; the instrumented code asks ``TRACER.get()`` and, when it is
``None`` (no tracing plugin loaded, or this request not sampled), does nothing more. That
lookup is the whole cost of the instrumentation when tracing is off, so it can sit on the
hot path (every Redis call) where a pluggy hook call could not.

What is instrumented (the names are the tracing plugin's span names):

* ``redis <COMMAND>``, a client span per command sent to Redis (``redis GET``,
  ``redis EVALSHA``), in :meth:`gateway.stores.resp.RespConnection.call`: the cache's and
  the rate limiter's calls;
* ``cache coalesced wait``, in the cache plugin: a miss waiting for the answer of an
  identical request already on its way to Stripe.

Only work in the task of a proxied request (and tasks it starts) is traced: background
work (webhook delivery workers, the hourly pruner, start-up and readiness checks) and the
plugins' own routes (the webhook ingress) run with ``TRACER`` unset, so they make no
spans, and no stream of one-span root traces.

Attributes must never carry keys, ids, query strings or bodies: the instrumented code
passes only names it chose (a Redis command's name, an outcome word) and the server's
address.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from types import TracebackType
from typing import Protocol

__all__ = ["TRACER", "AttributeValue", "Span", "Tracer", "span"]

#: what a span attribute may hold
AttributeValue = str | bool | int | float


class Span(Protocol):
    """One span, started by :meth:`Tracer.start_span`."""

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        """Record ``key`` = ``value`` on the span."""

    def end(self, error: str | None = None) -> None:
        """End the span; ``error`` (an exception's type name, never its message) marks it
        failed."""


class Tracer(Protocol):
    """What a tracing plugin puts in :data:`TRACER` for a request it traces."""

    def start_span(
        self,
        name: str,
        *,
        client: bool = False,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> Span:
        """Start a span named ``name`` as a child of the request's current span (its
        plugins' phase while that runs, else the request's own span). ``client``: the span
        is a call to another service (kind ``CLIENT``). Must not raise."""


#: the tracer of the request this task serves; ``None`` when it is not traced
TRACER: ContextVar[Tracer | None] = ContextVar("stripe_gateway_tracer", default=None)


class _NoSpan:
    """The span of work that is not traced: does nothing."""

    __slots__ = ()

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        pass

    def end(self, error: str | None = None) -> None:
        pass


_NO_SPAN = _NoSpan()


class span:  # lower-case like contextlib.suppress: used as `with span("name") as s:`
    """``with span("cache coalesced wait") as s:``: a span around the block when the
    request is traced (ended when the block ends, failed with the exception's type when
    it raises), a no-op one otherwise; ``s.set_attribute(...)`` records an outcome."""

    __slots__ = ("_name", "_span")

    def __init__(self, name: str) -> None:
        self._name = name
        self._span: Span = _NO_SPAN

    def __enter__(self) -> Span:
        tracer = TRACER.get()
        if tracer is not None:
            self._span = tracer.start_span(self._name)
        return self._span

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._span.end(None if kind is None else kind.__name__)
