"""Events: every state change the sandbox makes, kept per account and delivered to webhooks.

Resource modules report a change with :meth:`Account.emit <sandbox.core.Account.emit>`
and schedule timed transitions (a report run finishing) with :meth:`Account.at
<sandbox.core.Account.at>`; the sandbox app gives each account an :class:`EventHub`
as its hooks. An event records the API request that caused it (``request.id`` and
``request.idempotency_key``, both ``null`` for a timed transition), is kept in the account's
:class:`EventLog` (listed by ``GET /v1/events``) and is handed to the
:class:`~sandbox.delivery.Deliverer`, which POSTs it to the matching webhook endpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from sandbox.core import Account, SandboxSettings
from sandbox.delivery import Deliverer

_log = logging.getLogger(__name__)

__all__ = ["EMITTED_EVENT_TYPES", "EventHub", "EventLog", "event_log", "requested"]

#: the event types the sandbox's resources emit, with Stripe's names (from the
#: ``enabled_events`` enum of the API; ``crypto.onramp_session_updated`` is not in it)
EMITTED_EVENT_TYPES: tuple[str, ...] = (
    "climate.order.canceled",
    "climate.order.created",
    "climate.order.delayed",
    "climate.order.delivered",
    "climate.order.product_substituted",
    "climate.product.created",
    "climate.product.pricing_updated",
    "crypto.onramp_session_updated",
    "file.created",
    "financial_connections.account.created",
    "financial_connections.account.deactivated",
    "financial_connections.account.disconnected",
    "financial_connections.account.reactivated",
    "financial_connections.account.refreshed_balance",
    "financial_connections.account.refreshed_ownership",
    "financial_connections.account.refreshed_transactions",
    "identity.verification_session.canceled",
    "identity.verification_session.created",
    "identity.verification_session.processing",
    "identity.verification_session.redacted",
    "identity.verification_session.requires_input",
    "identity.verification_session.verified",
    "reporting.report_run.failed",
    "reporting.report_run.succeeded",
    "reporting.report_type.updated",
    "sigma.scheduled_query_run.created",
    "tax.settings.updated",
)

#: the API request being handled: (Request-Id, Idempotency-Key); None outside requests
_REQUEST: ContextVar[tuple[str, str | None] | None] = ContextVar("sandbox_request", default=None)


@contextlib.contextmanager
def requested(request_id: str, idempotency_key: str | None) -> Iterator[None]:
    """Events emitted inside this block name this request as their cause."""
    token = _REQUEST.set((request_id, idempotency_key))
    try:
        yield
    finally:
        _REQUEST.reset(token)


@dataclass
class EventLog:
    """One account's events, oldest first (bounded by ``settings.max_events``)."""

    events: dict[str, dict[str, Any]] = field(default_factory=dict)


def event_log(account: Account) -> EventLog:
    return account.state("events", EventLog)


class EventHub:
    """The account hooks the sandbox app installs: records events and runs timers.

    Owns every background task (timers here, deliveries in its :class:`Deliverer`);
    :meth:`cancel` stops them all (on reset and when the app is cleaned up).
    """

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self.deliverer = Deliverer(settings)
        self._timers: set[asyncio.Task[None]] = set()

    def emit(
        self,
        account: Account,
        event_type: str,
        obj: dict[str, Any],
        previous: dict[str, Any] | None,
    ) -> None:
        request = _REQUEST.get()
        event: dict[str, Any] = {
            "id": account.ids.new("evt"),
            "object": "event",
            "api_version": self.settings.api_version,
            "created": int(time.time()),
            "data": {"object": copy.deepcopy(obj)},
            "livemode": False,
            "pending_webhooks": 0,
            "request": {
                "id": None if request is None else request[0],
                "idempotency_key": None if request is None else request[1],
            },
            "type": event_type,
        }
        connected = account.key.partition("|")[2]
        if connected:
            event["account"] = connected
        if previous is not None:
            event["data"]["previous_attributes"] = copy.deepcopy(previous)
        log = event_log(account).events
        log[event["id"]] = event
        while len(log) > max(1, self.settings.max_events):
            del log[next(iter(log))]
        self.deliverer.submit(account, event)

    def at(self, account: Account, when: float, fn: Callable[[], object]) -> None:
        loop = self.deliverer.loop
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # a state change made from another thread (tests' hooks)
            running = None
        if running is not None and (loop is None or running is loop):
            self._start(when, fn)
        elif loop is not None:
            loop.call_soon_threadsafe(self._start, when, fn)

    def _start(self, when: float, fn: Callable[[], object]) -> None:
        task = asyncio.get_running_loop().create_task(self._at(when, fn))
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    async def _at(self, when: float, fn: Callable[[], object]) -> None:
        _REQUEST.set(None)  # a timed transition is automatic: no request caused it
        while (left := when - time.time()) > 0:
            await asyncio.sleep(left + 0.001)
        try:
            fn()
        except Exception:
            _log.exception("sandbox: a timed transition failed")

    def cancel(self) -> None:
        """Stop every pending timer and delivery."""
        for task in list(self._timers):
            task.cancel()
        self._timers.clear()
        self.deliverer.cancel()

    async def close(self) -> None:
        """Stop everything and release the delivery client (app cleanup)."""
        self.cancel()
        await self.deliverer.close()
