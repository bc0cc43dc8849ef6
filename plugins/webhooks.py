"""Webhook ingress: one Stripe endpoint for every team; verify, store, route, re-sign, deliver.

Settings (``[plugins.webhooks]``): :class:`~gateway.webhooks.settings.WebhooksSettings`,
listed in ``docs/configuration.md``. With no source and no subscription the plugin does
nothing. The signature scheme is in :mod:`gateway.webhooks.events`, the store in
:mod:`gateway.webhooks.store`.

**Ingress.** Each source (a Stripe account's webhook endpoint) is a public route on the main
listener (``gateway_public_routes``): ``POST <path>``, no gateway key. The
``Stripe-Signature`` header is checked as Stripe specifies (:func:`verify`): ``t=`` and one
or more ``v1=`` HMAC-SHA256 signatures of ``"<t>.<raw body>"``; any ``v1`` matching any of
the source's secrets (several while Stripe rolls a secret), compared in constant time; the
timestamp no older than ``tolerance`` seconds; the body at most ``max_body_bytes``. A bad
or missing signature, a stale timestamp, an oversized body or a body that is not an event
(``object`` ``"event"``, or ``"v2.core.event"`` for thin events) gets 400 and nothing is
stored or delivered; so do ambiguous headers, before the body is read
(:func:`~gateway.headers.listener_problem`: a ``Stripe-Signature``, ``Content-Type`` or
``Content-Length`` header sent twice, ``Connection`` naming one; code ``invalid_header``,
as the proxy answers, and the connection closed). A
verified event is committed to the store with one pending delivery per matching
subscription *before* the 2xx goes back, so an acknowledged event is never lost:
``backend = "sqlite"`` (:class:`~gateway.webhooks.store.SqliteStore`: WAL, fsync'd; the
processes of one host) or ``"redis"`` (:class:`~gateway.webhooks.redisstore.RedisStore`:
one queue for every instance, as durable as that Redis's persistence); if it cannot be
stored the answer is 503 and Stripe sends it again. An event id seen before is acknowledged
and not stored again (Stripe delivers at least once), by whichever instance gets it. Then
every plugin hears that the event's object changed (``gateway_objects_changed``): the
``cache`` plugin purges it.

**Delivery.** Each subscription (a team's endpoint) gets the events whose type matches one
of its globs (``invoice.*``), from its sources, with its ``livemode`` and connected
``accounts`` filters; the body byte for byte, re-signed in Stripe's scheme with the
subscription's own secret, so ``stripe.Webhook.construct_event(body, header, secret)``
verifies it. A non-2xx answer, a timeout or a connection failure is retried after
``retry_delays[n]`` seconds (with ``jitter``); after the last, the delivery is dead-lettered.
At most ``max_concurrency`` attempts per subscription run at once; after
``breaker_failures`` failures in a row a subscription's circuit opens for
``breaker_seconds`` (then one attempt probes it), so a dead subscriber holds up nobody
else. Delivery is at least once: deliveries are claimed with leases in the store, so each
is sent by one process at a time; one cut off by a killed process is sent again, by any
process sharing the store, once its lease expires (the subscription's ``timeout`` plus
``lease_seconds``).

**Operations** (admin listener): ``GET /admin/webhooks/subscriptions``,
``POST /admin/webhooks/subscriptions/<name>/pause`` and ``.../resume`` (kept in the
store: a restart keeps a subscription paused), ``GET /admin/webhooks/events``,
``GET /admin/webhooks/deliveries`` (``subscription``, ``status``, ``event_id``, ``limit``),
``GET /admin/webhooks/dead_letters``, ``POST /admin/webhooks/replay`` (``subscription``,
and ``event_id``, or ``since`` and ``until`` in Unix seconds: every event received in
``[since, until)`` that was routed to the subscription); ``stripe-gateway webhooks ...`` calls
them from the command line (:mod:`gateway.serve.webhooks_cli`). Metrics:
``webhook_events_received{source}``, ``webhook_events_rejected{source,reason}``,
``webhook_deliveries{subscription,outcome}`` (``delivered``, ``retry``, ``dead``),
``webhook_queue_depth{subscription}`` and ``webhook_oldest_pending_seconds{subscription}``.

**Audit.** Each request to a source is one ``webhook_received`` line in the audit file
(``gateway_audit_event``, written by the ``audit`` plugin next to its request lines):
request id, source, event id, type, account, livemode, ``outcome`` (``accepted``,
``duplicate``, ``rejected`` with its ``reason``, ``failed``), the number of deliveries
queued, status, duration and client. Each delivery attempt is one ``webhook_delivery``
line there (subscription, team, event id, attempt, status, error, outcome, duration). The
gateway log has them too, as ``public_request`` (event id, type, source, duplicate or the
rejection reason) and ``webhook_delivery`` lines at info level. Like every log line they
pass through the redaction processors; the body, the ``Stripe-Signature`` header and the
secrets are never in them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import secrets
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from gateway import (
    ConfigError,
    GatewayConfig,
    GatewayMetrics,
    PluginHost,
    StripeErrorResponse,
)
from gateway.errors import CLOSE
from gateway.headers import listener_problem
from gateway.hookspecs import hookimpl
from gateway.keys import PUBLIC_AUDIT, REQUEST_ID
from gateway.serve.admin import admin_error, form_value
from gateway.webhooks.events import Rejected, describe, sign, verify
from gateway.webhooks.redisstore import RedisStore
from gateway.webhooks.settings import SourceSettings, SubscriptionSettings, WebhooksSettings
from gateway.webhooks.store import Claimed, EventRecord, SqliteStore, WebhookStore

__all__ = [
    "SourceSettings",
    "SubscriptionSettings",
    "WebhooksPlugin",
    "WebhooksSettings",
    "sign",
    "verify",
]

_USER_AGENT = "stripe-gateway-webhooks/1"
_JSON = "application/json"
#: the request headers the ingress reads (with :data:`~gateway.headers.SINGLE`'s): each may
#: be sent once, and ``Connection`` may not name one
_READS = frozenset({"stripe-signature", "content-type", "content-length"})
_OUTCOMES = ("delivered", "retry", "dead")


# --------------------------------------------------------------------------- delivery


@dataclass
class _Subscriber:
    """One subscription's dispatcher: claims due deliveries and runs their attempts."""

    settings: SubscriptionSettings
    wake: asyncio.Event
    #: attempts running, by event id and claim (a delivery claimed again, its lease
    #: having expired, while its earlier attempt still runs, is two attempts)
    in_flight: dict[tuple[str, int], asyncio.Task[None]]
    failures: int = 0
    open_until: float = 0.0
    paused: bool = False
    task: asyncio.Task[None] | None = None
    #: prepared once (not per attempt): the signing secret, the attempt's timeout, and the
    #: subscription's metric children (``outcomes``: by ``delivered``, ``retry``, ``dead``)
    secret: str = ""
    timeout: aiohttp.ClientTimeout | None = None
    depth: Any = None
    oldest: Any = None
    outcomes: dict[str, Any] = field(default_factory=dict)

    def room(self, breaker_failures: int) -> int:
        if self.failures >= breaker_failures:  # half-open: one probe at a time
            return 0 if self.in_flight else 1
        return self.settings.max_concurrency - len(self.in_flight)


class WebhooksPlugin:
    """Built-in plugin ``webhooks``."""

    name = "webhooks"
    settings_model = WebhooksSettings

    def __init__(self) -> None:
        self.settings = WebhooksSettings()
        #: per subscription: its team's stripe_accounts, when the team has them
        self._scopes: dict[str, frozenset[str]] = {}
        self.store: WebhookStore | None = None
        self._host: PluginHost | None = None
        self._session: aiohttp.ClientSession | None = None
        self._subscribers: dict[str, _Subscriber] = {}
        self._pruner: asyncio.Task[None] | None = None
        self._owner = secrets.token_hex(8)
        self._received: Any = None
        #: per source: its secrets and its ``webhook_events_received`` child (prepared once)
        self._secrets: dict[str, tuple[str, ...]] = {}
        self._received_by: dict[str, Any] = {}
        self._rejected: Any = None
        self._deliveries: Any = None
        self._depth: Any = None
        self._oldest: Any = None

    @property
    def enabled(self) -> bool:
        return bool(self.settings.sources or self.settings.subscriptions)

    def _wants(self, sub: SubscriptionSettings, event: EventRecord) -> bool:
        """``sub.wants(event)``, within its team's ``stripe_accounts`` when it has them (the
        platform's own events included, as the team may act on the platform account)."""
        scope = self._scopes.get(sub.name)
        if scope is not None and event.account is not None and event.account not in scope:
            return False
        return sub.wants(event)

    # ------------------------------------------------------------------ lifecycle

    @hookimpl
    def gateway_configure(self, config: GatewayConfig, settings: WebhooksSettings) -> None:
        teams = {team.name: team for team in config.teams}
        scopes: dict[str, frozenset[str]] = {}
        for i, sub in enumerate(settings.subscriptions):
            team = teams.get(sub.team)
            if team is None:
                raise ConfigError(
                    f"subscriptions.{i}.team", f"no team named {sub.team!r} in [[teams]]"
                )
            if team.stripe_accounts is not None:
                # a team limited to some connected accounts never gets another's events
                allowed = frozenset(team.stripe_accounts)
                outside = sorted(set(sub.accounts or ()) - allowed)
                if outside:
                    raise ConfigError(
                        f"subscriptions.{i}.accounts",
                        f"{', '.join(outside)} not in team {sub.team!r}'s stripe_accounts",
                    )
                scopes[sub.name] = allowed
        self.settings = settings
        self._scopes = scopes

    @hookimpl
    async def gateway_startup(self, host: PluginHost, metrics: GatewayMetrics) -> None:
        self._host = host
        self._received = metrics.counter(
            "webhook_events_received", "Verified webhook events received.", ("source",)
        )
        self._rejected = metrics.counter(
            "webhook_events_rejected",
            "Webhook requests refused (invalid_header, no_signature, bad_signature, "
            "stale, too_large, invalid_event, store_unavailable).",
            ("source", "reason"),
        )
        self._deliveries = metrics.counter(
            "webhook_deliveries",
            "Delivery attempts by outcome: delivered, retry, dead.",
            ("subscription", "outcome"),
        )
        self._depth = metrics.gauge(
            "webhook_queue_depth", "Deliveries pending, per subscription.", ("subscription",)
        )
        self._oldest = metrics.gauge(
            "webhook_oldest_pending_seconds",
            "Age of the oldest pending delivery, per subscription.",
            ("subscription",),
        )
        if not self.enabled:
            return
        self.store = self._open_store()
        await self.store.open()
        self._session = aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
        )
        loop = asyncio.get_running_loop()
        self._pruner = loop.create_task(self._prune_hourly())
        for source in self.settings.sources:
            self._secrets[source.name] = source.secrets
            self._received_by[source.name] = self._received.labels(source.name)
        for sub in self.settings.subscriptions:
            subscriber = _Subscriber(
                sub,
                asyncio.Event(),
                {},
                secret=sub.secret,
                timeout=aiohttp.ClientTimeout(total=sub.timeout),
                depth=self._depth.labels(sub.name),
                oldest=self._oldest.labels(sub.name),
                outcomes={o: self._deliveries.labels(sub.name, o) for o in _OUTCOMES},
            )
            subscriber.task = loop.create_task(self._dispatch(subscriber))
            self._subscribers[sub.name] = subscriber

    def _open_store(self) -> WebhookStore:
        settings = self.settings
        if settings.backend == "redis":
            assert settings.url is not None  # resolved at validation
            return RedisStore(
                settings.url,
                prefix=settings.key_prefix,
                timeout=settings.redis_timeout,
                log=self._host.log if self._host is not None else None,
                require_durable=settings.require_durable_redis,
            )
        return SqliteStore(settings.sqlite_path)

    async def _prune_hourly(self) -> None:
        assert self.store is not None and self._host is not None
        while True:
            before = time.time() - self.settings.retention_days * 86400
            try:
                pruned = await self.store.prune(before)
                if pruned:
                    self._host.log.info("webhook_events_pruned", events=pruned)
            except Exception:
                self._host.log.exception("webhook_store_failed", call="prune")
            await asyncio.sleep(3600)

    @hookimpl
    async def gateway_shutdown(self, app: web.Application) -> None:
        tasks = [] if self._pruner is None else [self._pruner]
        for subscriber in self._subscribers.values():
            if subscriber.task is not None:
                tasks.append(subscriber.task)
            tasks.extend(subscriber.in_flight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._subscribers.clear()
        if self.store is not None:
            with contextlib.suppress(Exception):
                await self.store.release(self._owner)  # another process may send them now
            await self.store.close()
            self.store = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------------ ingress

    @hookimpl
    def gateway_public_routes(self) -> list[web.RouteDef]:
        return [web.post(s.path, partial(self._receive, s)) for s in self.settings.sources]

    async def _receive(self, source: SourceSettings, request: web.Request) -> web.Response:
        """The source's route: :meth:`_ingest`, then one ``webhook_received`` audit line
        (``gateway_audit_event``) whatever the outcome."""
        line: dict[str, Any] = {
            "request_id": request[REQUEST_ID],
            "source": source.name,
            "event_id": None,
            "type": None,
            "account": None,
            "livemode": None,
        }
        started = time.monotonic()
        status = 500
        try:
            response = await self._ingest(source, request, line)
            status = response.status
            return response
        except StripeErrorResponse as exc:
            status = exc.status
            raise
        finally:
            line.setdefault("outcome", "failed")
            line.update(
                status=status,
                duration_ms=round((time.monotonic() - started) * 1000, 3),
                client=request.remote,
            )
            await self._audit("webhook_received", line)

    async def _audit(self, event: str, fields: dict[str, Any]) -> None:
        host = self._host
        if host is not None and "gateway_audit_event" in host.implemented:
            await host.each("gateway_audit_event", event=event, fields=fields)

    async def _ingest(
        self, source: SourceSettings, request: web.Request, line: dict[str, Any]
    ) -> web.Response:
        audit = request[PUBLIC_AUDIT]
        audit["webhook_source"] = source.name
        try:
            event = await self._verified(source, request)
        except Rejected as exc:
            audit["webhook_rejected"] = exc.reason
            line.update(outcome="rejected", reason=exc.reason)
            self._rejected.labels(source.name, exc.reason).inc()
            if exc.reason == "invalid_header":  # the proxy's answer: its code, and closed
                raise StripeErrorResponse(
                    400, exc.message, code="invalid_header", headers=dict(CLOSE)
                ) from None
            raise StripeErrorResponse(400, exc.message, code=f"webhook_{exc.reason}") from None
        audit.update(webhook_event=event.id, webhook_type=event.type)
        line.update(
            event_id=event.id, type=event.type, account=event.account, livemode=event.livemode
        )
        wanted = [s.name for s in self.settings.subscriptions if self._wants(s, event)]
        assert self.store is not None
        try:
            new = await self.store.record(event, wanted, time.time())
        except Exception as exc:  # not acknowledged: Stripe sends it again
            audit["webhook_rejected"] = "store_unavailable"
            line.update(outcome="rejected", reason="store_unavailable")
            self._rejected.labels(source.name, "store_unavailable").inc()
            assert self._host is not None
            self._host.log.error(
                "webhook_store_failed", event_id=event.id, error=f"{type(exc).__name__}: {exc}"
            )
            raise StripeErrorResponse(
                503,
                "The event could not be stored; send it again.",
                type="api_error",
                code="webhook_store_unavailable",
                should_retry=True,
            ) from None
        self._received_by[source.name].inc()
        audit.update(webhook_duplicate=not new, webhook_deliveries=len(wanted) if new else 0)
        line.update(
            outcome="accepted" if new else "duplicate", deliveries=len(wanted) if new else 0
        )
        if new:
            for name in wanted:
                self._subscribers[name].wake.set()
        if event.object_id is not None:  # a duplicate too: it may follow a crash before this
            assert self._host is not None
            await self._host.each(
                "gateway_objects_changed", object_ids=[event.object_id], source=self.name
            )
        return web.Response(
            body=orjson.dumps({"received": True, "duplicate": not new}),
            content_type=_JSON,
            headers={"Request-Id": request[REQUEST_ID]},
        )

    async def _verified(self, source: SourceSettings, request: web.Request) -> EventRecord:
        problem = listener_problem(request.version, request.headers, _READS)
        if problem is not None:
            # Stripe sends each once. With two Stripe-Signature headers, which one counts
            # would be a guess (only the first was checked), so none does: a valid one
            # beside another is refused too, before the body is read
            raise Rejected("invalid_header", problem)
        cap = source.max_body_bytes
        too_large = Rejected("too_large", f"The body is larger than {cap} bytes.")
        if request.content_length is not None and request.content_length > cap:
            raise too_large
        if request.content_length is not None:  # one read (a short body fails to verify)
            try:
                body = await request.content.readexactly(request.content_length)
            except asyncio.IncompleteReadError as exc:
                body = exc.partial
        else:  # chunked: read up to the cap
            buffer = bytearray()
            async for chunk in request.content.iter_chunked(64 * 1024):
                buffer += chunk
                if len(buffer) > cap:
                    raise too_large
            body = bytes(buffer)
        header = request.headers.get("Stripe-Signature", "")
        secrets_ = self._secrets.get(source.name) or source.secrets
        reason = verify(body, header, secrets_, source.tolerance, time.time())
        if reason == "no_signature":
            raise Rejected(reason, "No Stripe-Signature header with t= and v1= was found.")
        if reason == "bad_signature":
            raise Rejected(reason, "No signature matches the body with this source's secrets.")
        if reason == "stale":
            raise Rejected(reason, "The signature's timestamp is outside the tolerance.")
        return describe(source.name, body)

    # ------------------------------------------------------------------ delivery

    async def _dispatch(self, subscriber: _Subscriber) -> None:
        """Claim due deliveries while there is room; sleep until the next is due, an event
        arrives, an attempt ends, or ``poll_seconds`` pass."""
        assert self.store is not None and self._host is not None
        name = subscriber.settings.name
        settings = self.settings
        lease = subscriber.settings.timeout + settings.lease_seconds
        while True:
            subscriber.wake.clear()
            now = time.time()
            wait = settings.poll_seconds
            room = subscriber.room(settings.breaker_failures) if now >= subscriber.open_until else 0
            try:
                due = await self.store.claim(name, self._owner, now, room, now + lease)
            except Exception:
                self._host.log.exception("webhook_store_failed", subscription=name)
                await asyncio.sleep(wait)
                continue
            subscriber.paused = due.paused
            subscriber.depth.set(due.pending)
            subscriber.oldest.set(0.0 if due.oldest is None else max(0.0, now - due.oldest))
            for claimed in due.claimed:
                task = asyncio.get_running_loop().create_task(self._attempt(subscriber, claimed))
                subscriber.in_flight[claimed.event_id, claimed.claim] = task
            if due.paused:
                pass  # until resumed (which wakes it), or another process resumed it
            elif now < subscriber.open_until:
                wait = min(wait, subscriber.open_until - now)
            elif room > len(due.claimed) and due.next_at is not None:
                wait = min(wait, max(0.005, due.next_at - now))
            elif room and len(due.claimed) == room:
                wait = 0.0  # there may be more due
            if wait > 0:  # (not asyncio.wait_for: on 3.11 it can swallow a cancellation)
                timer = asyncio.get_running_loop().call_later(wait, subscriber.wake.set)
                try:
                    await subscriber.wake.wait()
                finally:
                    timer.cancel()

    async def _attempt(self, subscriber: _Subscriber, claimed: Claimed) -> None:
        assert self.store is not None and self._session is not None and self._host is not None
        sub = subscriber.settings
        attempt = claimed.attempts + 1
        status: int | None = None
        error: str | None = None
        try:
            started = time.monotonic()
            headers = {
                "Content-Type": "application/json; charset=utf-8",
                "Stripe-Signature": sign(claimed.body, subscriber.secret, int(time.time())),
                "User-Agent": _USER_AGENT,
            }
            try:
                async with self._session.post(
                    sub.url,
                    data=claimed.body,
                    headers=headers,
                    timeout=subscriber.timeout,
                    allow_redirects=False,
                ) as response:
                    status = response.status
                    with contextlib.suppress(Exception):
                        await response.content.read(64 * 1024)
                if not 200 <= status < 300:
                    error = f"HTTP {status}"
            except TimeoutError:
                error = "timeout"
            except aiohttp.ClientError as exc:
                error = f"{type(exc).__name__}: {exc}"
            now = time.time()
            if error is None:
                outcome, next_at = "delivered", now
                subscriber.failures = 0
            else:
                subscriber.failures += 1
                if subscriber.failures >= self.settings.breaker_failures:
                    subscriber.open_until = time.time() + self.settings.breaker_seconds
                    if subscriber.failures == self.settings.breaker_failures:
                        self._host.log.warning(
                            "webhook_circuit_open",
                            subscription=sub.name,
                            failures=subscriber.failures,
                            seconds=self.settings.breaker_seconds,
                        )
                if attempt > len(sub.retry_delays):
                    outcome, next_at = "dead", now
                else:
                    delay = sub.retry_delays[attempt - 1]
                    delay *= 1 + random.uniform(-sub.jitter, sub.jitter)
                    outcome, next_at = "retry", now + delay
            current = await self.store.finish(
                claimed.event_id,
                sub.name,
                owner=self._owner,
                claim=claimed.claim,
                status="pending" if outcome == "retry" else outcome,
                attempts=attempt,
                next_at=next_at,
                last_status=status,
                last_error=error,
                now=now,
            )
            if not current:  # its lease ran out and it was claimed again, or replayed
                self._host.log.warning(
                    "webhook_delivery_superseded",
                    subscription=sub.name,
                    event_id=claimed.event_id,
                    attempt=attempt,
                    outcome=outcome,
                )
            subscriber.outcomes[outcome].inc()
            line = {
                "subscription": sub.name,
                "team": sub.team,
                "event_id": claimed.event_id,
                "attempt": attempt,
                "status": status,
                "error": error,
                "outcome": outcome,
                "duration_ms": round((time.monotonic() - started) * 1000, 3),
            }
            self._host.log.info("webhook_delivery", **line)
            await self._audit("webhook_delivery", line)
        except asyncio.CancelledError:
            raise
        except Exception:
            self._host.log.exception(
                "webhook_delivery_failed", subscription=sub.name, event_id=claimed.event_id
            )
        finally:
            subscriber.in_flight.pop((claimed.event_id, claimed.claim), None)
            subscriber.wake.set()

    # ------------------------------------------------------------------ admin

    @hookimpl
    def gateway_admin_routes(self) -> list[web.RouteDef]:
        if not self.enabled:
            return []
        return [
            web.get("/admin/webhooks/subscriptions", self._subscriptions_route),
            web.post("/admin/webhooks/subscriptions/{name}/pause", self._pause_route),
            web.post("/admin/webhooks/subscriptions/{name}/resume", self._pause_route),
            web.get("/admin/webhooks/events", self._events_route),
            web.get("/admin/webhooks/deliveries", self._deliveries_route),
            web.get("/admin/webhooks/dead_letters", self._deliveries_route),
            web.post("/admin/webhooks/replay", self._replay_route),
        ]

    async def _subscriptions_route(self, request: web.Request) -> web.Response:
        now = time.time()
        data = []
        for name, subscriber in self._subscribers.items():
            sub = subscriber.settings
            data.append(
                {
                    "name": name,
                    "team": sub.team,
                    "url": sub.url,
                    "events": sub.events,
                    "paused": subscriber.paused,
                    "circuit_open": now < subscriber.open_until,
                    "failures_in_a_row": subscriber.failures,
                    "in_flight": len(subscriber.in_flight),
                }
            )
        return _json({"object": "list", "data": data})

    async def _pause_route(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        subscriber = self._subscribers.get(name)
        if subscriber is None:
            return admin_error(404, f"No subscription named {name!r}.")
        paused = request.path.endswith("/pause")
        assert self.store is not None
        await self.store.set_paused(name, paused)
        subscriber.paused = paused
        subscriber.wake.set()
        return _json({"object": "webhook_subscription", "name": name, "paused": paused})

    async def _events_route(self, request: web.Request) -> web.Response:
        limit = _limit(request)
        if isinstance(limit, web.Response):
            return limit
        assert self.store is not None
        return _json({"object": "list", "data": await self.store.events(limit)})

    async def _deliveries_route(self, request: web.Request) -> web.Response:
        limit = _limit(request)
        if isinstance(limit, web.Response):
            return limit
        query = request.query
        status = "dead" if request.path.endswith("/dead_letters") else query.get("status")
        assert self.store is not None
        rows = await self.store.deliveries(
            subscription=query.get("subscription"),
            status=status,
            event_id=query.get("event_id"),
            limit=limit,
        )
        return _json({"object": "list", "data": rows})

    async def _replay_route(self, request: web.Request) -> web.Response:
        """``subscription`` and either ``event_id`` (one event) or ``since`` and ``until``
        (Unix seconds: every event received in ``[since, until)`` that was routed to it)."""
        name = await form_value(request, "subscription")
        event_id = await form_value(request, "event_id")
        since_text = await form_value(request, "since")
        until_text = await form_value(request, "until")
        ranged = since_text is not None or until_text is not None
        if not name or (not event_id and not ranged):
            return admin_error(
                400,
                "Give subscription, and event_id or since and until.",
                code="parameter_missing",
            )
        if event_id and ranged:
            return admin_error(
                400, "Give event_id or since and until, not both.", code="parameter_invalid"
            )
        subscriber = self._subscribers.get(name)
        if subscriber is None:
            return admin_error(404, f"No subscription named {name!r}.")
        assert self.store is not None
        now = time.time()
        if event_id:
            if not await self.store.replay(event_id, name, now):
                return admin_error(404, f"No event {event_id!r} is stored.")
            subscriber.wake.set()
            return _json(
                {
                    "object": "webhook_replay",
                    "event_id": event_id,
                    "subscription": name,
                    "queued": True,
                }
            )
        bounds = _time_range(since_text, until_text)
        if isinstance(bounds, web.Response):
            return bounds
        since, until = bounds
        count = await self.store.replay_range(name, since, until, now)
        if count:
            subscriber.wake.set()
        return _json(
            {
                "object": "webhook_replay",
                "subscription": name,
                "since": since,
                "until": until,
                "count": count,
            }
        )


def _time_range(since: str | None, until: str | None) -> tuple[float, float] | web.Response:
    """``since`` and ``until`` as Unix seconds, ``since < until``; else a 400."""
    values = []
    for key, text in (("since", since), ("until", until)):
        if text is None:
            return admin_error(
                400, f"Give since and until (Unix seconds); {key} is missing.",
                code="parameter_missing",
            )  # fmt: skip
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0:
            return admin_error(
                400, f"{key} must be a number of Unix seconds.", code="parameter_invalid"
            )
        values.append(value)
    if values[0] >= values[1]:
        return admin_error(400, "since must be before until.", code="parameter_invalid")
    return values[0], values[1]


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type=_JSON)


def _limit(request: web.Request) -> int | web.Response:
    text = request.query.get("limit", "100")
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        return admin_error(400, "limit must be a number from 1 to 1000.", code="parameter_invalid")
    return int(text)
