"""The cache: serve retrieves of one object from cache, safely partitioned, coalesced, and
evicted on every successful write through the gateway.

Settings (``[plugins.cache]``, all optional): :class:`CacheSettings`, listed in
``docs/configuration.md``.

What is cached, how the key is made: :mod:`gateway.stores.cachekeys`. Answers carrying a
``client_secret`` or ``secret`` are never stored, nor compressed ones.

What else the plugin brings: the ``X-Cache`` response header and the audit line's ``cache``
field (HIT, MISS, BYPASS, COALESCED, STALE); the admin listener's ``POST
/admin/cache/purge`` (``object_id``: drop every cached variant of that object, in every
worker process); the metrics ``stripe_gateway_cache_requests``, ``_cache_evictions``,
``_cache_stored_bytes``, ``_cache_served_bytes`` and ``_cache_backend_errors``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import hdrs, web
from multidict import CIMultiDict, istr
from pydantic import Field, PrivateAttr

from gateway.config import GatewayConfig
from gateway.context import OBJECT_ID, RequestContext
from gateway.errors import error_response
from gateway.globs import RouteRule, parse_rule
from gateway.hookspecs import hookimpl
from gateway.host import PluginHost
from gateway.metrics import GatewayMetrics
from gateway.serve.admin import admin_error, fan_out, form_value
from gateway.settings import RedisSettings, RouteText, Settings
from gateway.spans import span
from gateway.stores.cachekeys import cache_key, is_cacheable_retrieve, object_ids_in
from gateway.stores.cachestore import CacheStore, Entry, MemoryStore, RedisStore, StoreUnavailable

__all__ = ["STATUS", "CachePlugin", "CacheRoute", "CacheSettings", "TtlPolicy", "state_of"]

#: headers of a stored answer that are replayed on a hit
_KEPT = frozenset({"Content-Type", "Request-Id", "Stripe-Version", "Cache-Control"})
#: the leader's failures that its waiters share (see gateway/proxy.py)
_UPSTREAM_ERRORS = frozenset(
    {
        "upstream_timeout",
        "upstream_unreachable",
        "upstream_broken_body",
        "upstream_timeout_mid_body",
    }
)
#: markers of secrets in a body: such answers are never stored
_SECRET, _CLIENT_SECRET = b'"secret"', b'"client_secret"'
#: the outcome of a coalesced wait, on its span (see plugins/tracing.py)
_WAIT = "stripe_gateway.cache.wait"
#: ``ctx.state`` key of the request's cache status: HIT, MISS, BYPASS, COALESCED, STALE
STATUS = "cache.status"
#: the memo of cache keys: at most this many, each of a request target and credential of
#: at most this many characters together (its size stays within a few MB)
_MEMO_KEYS = 4096
_MEMO_SIZE = 512
# header names as istr: multidict looks them up without case-folding them first
_ACCOUNT, _CONTEXT, _VERSION = (
    istr("Stripe-Account"),
    istr("Stripe-Context"),
    istr("Stripe-Version"),
)


#: objects whose ``status`` Stripe changes on its own: type -> (transitional states, final
#: states). A transitional object is cached for at most ``transitional_ttl``, a final one
#: for ``final_ttl``; a type or state not listed gets ``default_ttl`` (or its route's TTL).
_STATUS_STATES: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "reporting.report_run": (frozenset({"pending"}), frozenset({"succeeded"})),
    "scheduled_query_run": (frozenset({"pending", "running"}), frozenset({"completed"})),
    "identity.verification_session": (frozenset({"processing", "requires_input"}), frozenset()),
    "crypto.onramp_session": (
        frozenset({"initialized", "requires_payment", "fulfillment_processing"}),
        frozenset(),
    ),
    "climate.order": (frozenset({"open", "awaiting_funds", "confirmed"}), frozenset()),
    "financial_connections.transaction": (frozenset({"pending"}), frozenset()),
    "tax.settings": (frozenset({"pending"}), frozenset()),
    "tax.registration": (frozenset({"scheduled"}), frozenset()),
}
#: objects final whatever their fields say
_ALWAYS_FINAL = frozenset(
    {"tax.calculation", "tax.transaction", "forwarding.request", "identity.verification_report"}
)
#: sub-objects whose ``status`` Stripe changes on its own (a Financial Connections account's
#: refreshes, a verification session's redaction): ``pending`` or ``processing`` there make
#: the whole object transitional
_NESTED = ("balance_refresh", "ownership_refresh", "transaction_refresh", "redaction")
_NESTED_TRANSITIONAL = frozenset({"pending", "processing"})
#: the object types state_of looks at; any other object without a _NESTED field has no state
_KINDS = _ALWAYS_FINAL | _STATUS_STATES.keys() | {"financial_connections.session"}


def _nested_transitional(obj: dict[str, Any]) -> bool:
    for name in _NESTED:
        inner = obj.get(name)
        if isinstance(inner, dict) and inner.get("status") in _NESTED_TRANSITIONAL:
            return True
    return False


def state_of(obj: dict[str, Any]) -> str | None:
    """``"transitional"`` (Stripe will change the object on its own, soon), ``"final"``
    (it never changes again) or ``None`` (anything else), by the object's type and state."""
    kind = obj.get("object")
    if not isinstance(kind, str):
        return None
    if kind in _ALWAYS_FINAL:
        return "final"
    states = _STATUS_STATES.get(kind)
    if states is not None:
        status = obj.get("status")
        if status in states[0]:
            return "transitional"
        if status in states[1]:
            return "final"
    if kind == "financial_connections.session":
        accounts = obj.get("accounts")
        data = accounts.get("data") if isinstance(accounts, dict) else None
        if isinstance(data, list) and any(
            isinstance(a, dict) and _nested_transitional(a) for a in data
        ):
            return "transitional"
        return None
    if _nested_transitional(obj):
        return "transitional"
    return None


class CacheRoute(Settings):
    """A TTL for the requests of one route."""

    route: RouteText = Field(description='"METHOD /path/glob", e.g. "GET /v1/climate/**"')
    ttl: float = Field(ge=0, description="seconds an answer of this route stays fresh")


class CacheSettings(RedisSettings):
    """Serves retrieves of one object (GET /v1/<resource>/<id>) from cache; partitioned by
    upstream key, Stripe-Account, Stripe-Context, Stripe-Version, path and query; evicted on
    every successful write to the object through the gateway. Lists, searches, balance, file
    contents, events and answers carrying a client_secret or secret are never cached."""

    default_ttl: float = Field(30.0, gt=0, description="seconds an answer stays fresh")
    transitional_ttl: float = Field(
        1.0,
        ge=0,
        description="seconds for objects in a state Stripe changes on its own (0: not cached): "
        "pending report runs, pending or running scheduled query runs, processing or "
        "requires_input verification sessions, initialized, requires_payment or "
        "fulfillment_processing onramp sessions, open, awaiting_funds or confirmed climate "
        "orders, pending tax settings, scheduled tax registrations, pending Financial "
        "Connections transactions, and objects with a pending refresh or a processing "
        "redaction; never longer than default_ttl or the route's TTL",
    )
    final_ttl: float = Field(
        3600.0,
        gt=0,
        description="seconds for objects that never change once final: completed scheduled "
        "query runs, succeeded report runs, tax calculations and transactions, forwarding "
        "requests, verification reports; capped by the object's expires_at",
    )
    routes: list[CacheRoute] = Field(
        default_factory=list,
        description="per-route TTLs, first match wins",
        examples=[[{"route": "GET /v1/climate/**", "ttl": 300}]],
    )
    stale_if_error: float = Field(
        0.0,
        ge=0,
        description="seconds past expiry an answer may still be served while Stripe fails (0: off)",
    )
    max_entry_bytes: int = Field(262144, gt=0, description="larger answers are not cached")
    max_entries: int = Field(10000, gt=0, description="most entries of the memory backend")
    max_bytes: int = Field(64 * 1024 * 1024, gt=0, description="most bytes of the memory backend")
    key_prefix: str = Field("sgw:cache", min_length=1, description="Redis key prefix")

    _policy: TtlPolicy = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        self._policy = TtlPolicy(
            rules=tuple((parse_rule(r.route), r.ttl) for r in self.routes),
            default_ttl=self.default_ttl,
            transitional_ttl=self.transitional_ttl,
            final_ttl=self.final_ttl,
        )

    @property
    def policy(self) -> TtlPolicy:
        """The TTL rules, prepared: a plain object (a pydantic private attribute costs a
        ``__getattr__`` call on every read, so the request path holds this instead)."""
        return self._policy

    def ttl_for(self, method: str, path: str, obj: dict[str, Any] | None) -> float:
        """:meth:`TtlPolicy.ttl_for` of these settings."""
        return self._policy.ttl_for(method, path, obj)


@dataclass(frozen=True, slots=True)
class TtlPolicy:
    """How long an answer stays fresh, from :class:`CacheSettings`, prepared at start-up
    (compared by value: a reload with the same settings keeps the memory store)."""

    rules: tuple[tuple[RouteRule, float], ...]
    default_ttl: float
    transitional_ttl: float
    final_ttl: float

    def ttl_for(self, method: str, path: str, obj: dict[str, Any] | None) -> float:
        """Seconds an answer (``obj``, its parsed body) stays fresh: ``transitional_ttl``
        for an object Stripe will change on its own (or its route's TTL, if shorter),
        ``final_ttl`` (capped by ``expires_at``) for one that never changes again, else its
        route's TTL or ``default_ttl``."""
        state = None
        if obj is not None:
            kind = obj.get("object")
            # most objects (customers, payment intents, ...): no state, known at once
            if (isinstance(kind, str) and kind in _KINDS) or not obj.keys().isdisjoint(_NESTED):
                state = state_of(obj)
        if state == "final":
            ttl = self.final_ttl
            expires = obj.get("expires_at") if obj is not None else None
            if isinstance(expires, int | float) and expires > 0:
                ttl = min(ttl, expires - time.time())
            return ttl
        route_ttl = self.default_ttl
        for rule, ttl in self.rules:
            if rule.matches(method, path):
                route_ttl = ttl
                break
        if state == "transitional":
            return min(self.transitional_ttl, route_ttl)
        return route_ttl


class _Flight:
    """An upstream fetch that identical concurrent misses wait for. Its future is made by
    the first waiter (most fetches have none: no future to make and resolve for them)."""

    __slots__ = ("_done",)

    def __init__(self) -> None:
        self._done: asyncio.Future[Entry | web.Response | None] | None = None

    @property
    def done(self) -> asyncio.Future[Entry | web.Response | None]:
        """The future waiters await; made by the first waiter, at once (in ``_found``,
        while the flight is still in the air, so that its landing resolves it)."""
        done = self._done
        if done is None:
            done = self._done = asyncio.get_running_loop().create_future()
        return done

    def expect_waiter(self) -> None:
        """A request is about to wait for this flight: make the future it will await."""
        self.done  # noqa: B018 - the property makes it

    def land(self, result: Entry | web.Response | None) -> None:
        """Hand ``result`` to the waiters, if any came."""
        done = self._done
        if done is not None and not done.done():
            done.set_result(result)


@dataclass(slots=True)
class _State:
    key: str
    started: float
    leader: _Flight | None = None
    stale: Entry | None = None
    store: bool = True


class CachePlugin:
    """Built-in plugin ``cache``."""

    name = "cache"
    settings_model = CacheSettings

    def __init__(self) -> None:
        self.settings = CacheSettings()
        self.store: CacheStore | None = None
        self._flights: dict[str, _Flight] = {}
        #: request parts -> their cache key (see _key)
        self._keys: dict[tuple[str, str | None, str | None, str | None, str], str] = {}
        self._read_timeout = 80.0
        self._max_entry_bytes = self.settings.max_entry_bytes
        self._policy = self.settings.policy
        self._log: Any = None
        self._last_error_log = 0.0
        # metrics (registered at start-up): served and stored bytes, backend errors,
        # evictions and outcomes by label (children looked up once)
        self._served: Any = None
        self._stored: Any = None
        self._backend_errors: Any = None
        self._evictions: Any = None
        self._requests: Any = None
        self._breaker: Any = None
        self._outcomes: dict[str, Any] = {}
        #: single-process mode: outcomes and byte counts are kept here, on the request
        #: path, and added to their metrics when ``/metrics`` is read (:meth:`flush`)
        self._metrics: GatewayMetrics | None = None
        self._deferred = False
        self._pending: dict[str, int] = {}
        self._pending_served = 0
        self._pending_stored = 0
        #: the store went to the plugin that replaced this one on a reload: not ours to close
        self._store_handed_over = False
        #: counters, for metrics and tests
        self.counts: dict[str, int] = {
            k: 0
            for k in ("hit", "miss", "bypass", "coalesced", "stale", "stored", "evicted", "errors")
        }

    # ------------------------------------------------------------------ lifecycle

    @hookimpl
    def gateway_configure(self, config: GatewayConfig, settings: CacheSettings) -> None:
        self.settings = settings
        self._policy = settings.policy
        self._max_entry_bytes = settings.max_entry_bytes
        self._read_timeout = config.upstream.read_timeout

    @hookimpl
    def gateway_startup(self, host: PluginHost, metrics: GatewayMetrics) -> None:
        self._log = host.log
        self._requests = metrics.counter(
            "cache_requests", "Cache outcomes: hit, miss, bypass, coalesced, stale.", ("result",)
        )
        self._evictions = metrics.counter(
            "cache_evictions",
            "Cached answers removed: after a write, by an admin purge, for an object changed "
            "outside the gateway (a webhook event), or for room.",
            ("reason",),
        )
        self._stored = metrics.counter(
            "cache_stored_bytes", "Bytes of answer bodies stored in the cache."
        )
        self._served = metrics.counter(
            "cache_served_bytes", "Bytes of answer bodies served from the cache."
        )
        self._backend_errors = metrics.counter(
            "cache_backend_errors",
            "Cache store calls that failed (Redis down, timed out, circuit open).",
        )
        self._metrics = metrics
        self._deferred = not metrics.multiprocess
        if self._deferred:
            metrics.on_flush(self.flush)
        s = self.settings
        keep = max(s.final_ttl, s.default_ttl, *(r.ttl for r in s.routes)) + s.stale_if_error
        if s.backend == "redis":
            assert s.url is not None
            self.store = RedisStore(
                s.url,
                prefix=s.key_prefix,
                timeout=s.redis_timeout,
                breaker_seconds=s.redis_breaker,
                tombstone_seconds=self._read_timeout + 5,
                on_error=self._store_error,
                on_recover=self._store_recovered,
            )
            self._breaker = metrics.redis_breaker("cache")
        else:
            self.store = MemoryStore(
                max_bytes=s.max_bytes,
                max_entries=s.max_entries,
                tombstone_seconds=keep,
                on_drop=self._evictions.labels("capacity").inc,
            )

    @hookimpl
    async def gateway_carry_over(self, previous: object) -> None:
        """On a reload: keep the counters, and the memory store's entries when the cache
        settings did not change (a Redis store holds nothing in the process: the new one
        finds the same entries)."""
        if not isinstance(previous, CachePlugin):
            return
        self.counts = previous.counts
        if (
            self.settings.backend == "memory"
            and previous.settings == self.settings
            and previous.store is not None
            and not previous._store_handed_over
        ):
            fresh, self.store = self.store, previous.store
            previous._store_handed_over = True
            if fresh is not None:
                await fresh.close()

    @hookimpl
    async def gateway_shutdown(self, app: web.Application) -> None:
        if self._deferred and self._metrics is not None:
            self.flush()
            self._metrics.remove_flush(self.flush)
            self._deferred = False  # a request finishing after this counts at once
        if self.store is not None and not self._store_handed_over:
            await self.store.close()

    def flush(self) -> None:
        """Add the outcomes and byte counts kept since the last flush to the metrics."""
        pending, self._pending = self._pending, {}
        for status, n in pending.items():
            self._outcome(status).inc(n)
        served, self._pending_served = self._pending_served, 0
        if served and self._served is not None:
            self._served.inc(served)
        stored, self._pending_stored = self._pending_stored, 0
        if stored and self._stored is not None:
            self._stored.inc(stored)

    def _outcome(self, status: str) -> Any:
        """The ``cache_requests`` child of ``status`` (looked up once)."""
        counter = self._outcomes.get(status)
        if counter is None:
            counter = self._outcomes[status] = self._requests.labels(status.lower())
        return counter

    @hookimpl
    async def gateway_ready(self, app: web.Application) -> dict[str, bool] | None:
        if isinstance(self.store, RedisStore):
            return {"cache_redis": await self.store.ping()}
        return None

    async def purge(self, object_ids: list[str]) -> int:
        """Drop every cached variant of these objects (in this process's store); raises
        :class:`StoreUnavailable` when the store cannot be reached."""
        assert self.store is not None, "the store opens at start-up"
        count = await self.store.evict(object_ids)
        self.counts["evicted"] += count
        if self._evictions is not None:
            self._evictions.labels("purge").inc(count)
        return count

    @hookimpl
    async def gateway_objects_changed(self, object_ids: list[str], source: str) -> None:
        """Objects changed outside the gateway (a webhook event): purge every cached
        variant of each, as a write through the gateway does."""
        if self.store is None or not object_ids:
            return
        evicted = await self.store.evict(list(object_ids))
        self.counts["evicted"] += evicted
        if evicted and self._evictions is not None:
            self._evictions.labels("changed").inc(evicted)

    # ------------------------------------------------------------------ admin

    @hookimpl
    def gateway_admin_routes(self) -> list[web.RouteDef]:
        return [web.post("/admin/cache/purge", self._purge_route)]

    async def _purge_route(self, request: web.Request) -> web.Response:
        """``POST /admin/cache/purge`` with ``object_id``: purge it here, and in every other
        worker process (a memory store is per process)."""
        object_id = await form_value(request, "object_id")
        if object_id is None:
            return admin_error(
                400, "Missing object_id (form field or JSON key).", code="parameter_missing"
            )
        if not OBJECT_ID.match(object_id):
            return admin_error(
                400,
                "object_id must be a Stripe object id such as cus_1234567890abcdef.",
                code="parameter_invalid",
            )
        try:
            purged = await self.purge([object_id])
        except Exception as exc:
            return admin_error(
                503,
                f"The cache store could not be purged ({type(exc).__name__}).",
                code="cache_unavailable",
            )
        answer: dict[str, Any] = {"object": "cache_purge", "object_id": object_id}
        answer["purged"] = purged
        peers = await fan_out(request, {"object_id": object_id})
        if peers:
            # a worker of `serve --workers N`: every other worker purged its own memory too
            reached = [peer for peer in peers.values() if peer.error is None]
            answer["purged"] += sum(int(peer.body.get("purged", 0)) for peer in reached)
            answer["workers"] = 1 + len(reached)
            failed = {name: peer.error for name, peer in peers.items() if peer.error}
            if failed:  # those workers' memory may still serve the object: not a success
                listed = ", ".join(f"{name} ({error})" for name, error in sorted(failed.items()))
                return admin_error(
                    502,
                    f"Purged {answer['purged']} cached answers of {object_id} on "
                    f"{answer['workers']} workers, but {len(failed)} could not be reached: "
                    f"{listed}. Retry the purge.",
                    code="purge_incomplete",
                    type="api_error",
                )
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    def _store_error(self, what: str, exc: BaseException) -> None:
        self.counts["errors"] += 1
        if self._breaker is not None:
            self._breaker.set(1)
        if self._backend_errors is not None:
            self._backend_errors.inc()
        now = time.monotonic()
        if now - self._last_error_log >= 10.0:  # once per interval, not once per request
            self._last_error_log = now
            self._log.warning(
                "cache_backend_unavailable",
                backend=self.settings.backend,
                call=what,
                error=f"{type(exc).__name__}: {exc}",
                failures=self.counts["errors"],
            )

    def _store_recovered(self) -> None:
        if self._breaker is not None:
            self._breaker.set(0)

    # ------------------------------------------------------------------ requests

    @hookimpl
    def gateway_request(
        self, ctx: RequestContext
    ) -> web.StreamResponse | Awaitable[web.StreamResponse | None] | None:
        """A hit from the memory store is answered at once (no coroutine); the Redis store
        and a wait for an identical request in flight return an awaitable."""
        request = ctx.request
        method, path = request.method, request.path
        if not is_cacheable_retrieve(method, path):
            if method != "GET" and object_ids_in(path):
                ctx.state["cache.writes"] = True
            ctx.state[STATUS] = "BYPASS"
            return None
        headers = request.headers
        no_cache = False
        control = headers.get(hdrs.CACHE_CONTROL)
        if control:
            directives = {d.strip().lower() for d in control.split(",")}
            if "no-store" in directives:
                ctx.state[STATUS] = "BYPASS"
                self.counts["bypass"] += 1
                return None
            no_cache = "no-cache" in directives
        # what the key is made of, as sent upstream: the raw path and query (decoded once,
        # by normal_query; `a=1%26b=2` and `a=1&b=2` are different requests)
        parts = (
            ctx.credential or "",
            headers.get(_ACCOUNT),
            headers.get(_CONTEXT),
            headers.get(_VERSION),
            request.raw_path,
        )
        # the digest of parts already seen (cache_key is a function of them alone)
        key = self._keys.get(parts)
        if key is None:
            key = self._key(parts)
        if no_cache:
            self._lead(ctx, self._state(ctx, key))
            return None
        store = self.store
        if isinstance(store, MemoryStore):
            return self._found(ctx, key, store.get_now(key))
        return self._get_then(ctx, key)

    def _key(self, parts: tuple[str, str | None, str | None, str | None, str]) -> str:
        """:func:`cache_key` of a request's parts, remembered for the next request with the
        same parts (the same credential, headers and target) when they are short."""
        credential, account, context, version, target = parts
        raw_path, _, query_string = target.partition("?")
        key = cache_key(
            credential=credential,
            account=account,
            context=context,
            version=version,
            path=raw_path,
            query_string=query_string,
        )
        # every part counts against the bound: Stripe-Account, -Context and -Version are
        # limited only by the header size, and a memo of 4096 long ones would be large
        size = len(target) + len(credential)
        size += len(account or "") + len(context or "") + len(version or "")
        if size <= _MEMO_SIZE:
            keys = self._keys
            if len(keys) >= _MEMO_KEYS:
                keys.clear()
            keys[parts] = key
        return key

    @staticmethod
    def _state(ctx: RequestContext, key: str) -> _State:
        """The request goes upstream (or waits for one that does): its cache state, from
        now (a hit needs none)."""
        state = ctx.state["cache"] = _State(key=key, started=time.time())
        return state

    async def _get_then(self, ctx: RequestContext, key: str) -> web.StreamResponse | None:
        """The lookup in a store that must be awaited (Redis)."""
        assert self.store is not None
        try:
            entry = await self.store.get(key)
        except StoreUnavailable:
            entry = None
        answer = self._found(ctx, key, entry)
        if answer is None or isinstance(answer, web.StreamResponse):
            return answer
        return await answer

    def _found(
        self, ctx: RequestContext, key: str, entry: Entry | None
    ) -> web.StreamResponse | Awaitable[web.StreamResponse | None] | None:
        """After the lookup: a fresh entry's answer, a wait for the same request in
        flight, or the lead of a new flight (``None``: the request goes upstream)."""
        if entry is not None and entry.fresh_until > time.time():
            ctx.state[STATUS] = "HIT"
            self.counts["hit"] += 1
            return self._response(entry, "HIT")
        # (taken after the lookup, before any fetch: a write that ends after this time
        # still keeps the fetched answer out of the store)
        state = self._state(ctx, key)
        state.stale = entry
        flight = self._flights.get(key)
        if flight is not None:
            flight.expect_waiter()  # its future made now, while the flight is in the air
            return self._wait(ctx, flight)
        self._lead(ctx, state)
        return None

    def _lead(self, ctx: RequestContext, state: _State) -> None:
        """This request fetches the answer; identical ones wait for it."""
        flight = _Flight()
        self._flights[state.key] = flight
        state.leader = flight
        ctx.state[STATUS] = "MISS"
        # another plugin (the audit log) may want a copy of larger bodies
        if ctx.capture_limit < self._max_entry_bytes:
            ctx.capture_limit = self._max_entry_bytes
        self.counts["miss"] += 1

    async def _wait(self, ctx: RequestContext, flight: _Flight) -> web.StreamResponse | None:
        with span("cache coalesced wait") as traced:  # a no-op unless the request is traced
            try:
                result = await asyncio.wait_for(asyncio.shield(flight.done), self._read_timeout + 5)
            except TimeoutError:
                result = None
                traced.set_attribute(_WAIT, "timeout")
            else:
                shared = "answer" if isinstance(result, Entry) else "leader_failed"
                traced.set_attribute(_WAIT, shared if result is not None else "not_shared")
        if isinstance(result, Entry):
            ctx.state[STATUS] = "COALESCED"
            self.counts["coalesced"] += 1
            return self._response(result, "COALESCED")
        if isinstance(result, web.Response):  # the leader failed: so does every waiter
            ctx.state[STATUS] = "COALESCED"
            self.counts["coalesced"] += 1
            response = web.Response(
                status=result.status, body=result.body, headers=_kept(result.headers)
            )
            response.headers["X-Cache"] = "COALESCED"
            return response
        # the leader's answer could not be shared (too large, secret): fetch our own
        ctx.state[STATUS] = "MISS"
        return None

    def _response(self, entry: Entry, status: str) -> web.Response:
        if self._deferred:
            self._pending_served += len(entry.body)
        elif self._served is not None:
            self._served.inc(len(entry.body))
        age = int(time.time() - entry.stored_at)
        # one header list, made into the response's CIMultiDict once
        headers = [*entry.headers, ("X-Cache", status), ("Age", str(age if age > 0 else 0))]
        return web.Response(status=entry.status, body=entry.body, headers=headers)

    @hookimpl
    def gateway_upstream_response(
        self, ctx: RequestContext, headers: CIMultiDict[str]
    ) -> web.StreamResponse | Awaitable[None] | None:
        """A successful write evicts (awaited); a failure with a stale entry is answered
        with it; anything else returns ``None`` at once."""
        if ctx.state.get("cache.writes") and 200 <= ctx.status < 300:
            # a successful write: evict every variant before the client sees the answer
            return self._evict_written(ctx)
        state: _State | None = ctx.state.get("cache")
        if state is None or state.stale is None:
            return None
        failed = ctx.status >= 500 or ctx.error in ("upstream_timeout", "upstream_unreachable")
        if failed and state.stale.stale_until > time.time():
            ctx.state[STATUS] = "STALE"
            self.counts["stale"] += 1
            state.store = False
            response = self._response(state.stale, "STALE")
            response.headers["Warning"] = '111 - "Revalidation Failed"'
            return response
        return None

    async def _evict_written(self, ctx: RequestContext) -> None:
        assert self.store is not None
        try:
            evicted = await self.store.evict(object_ids_in(ctx.path))
            self.counts["evicted"] += evicted
            if evicted and self._evictions is not None:
                self._evictions.labels("write").inc(evicted)
        except StoreUnavailable:
            ctx.audit["cache_evict_failed"] = True

    @hookimpl
    def gateway_response_headers(self, ctx: RequestContext, headers: CIMultiDict[str]) -> None:
        status = ctx.state.get(STATUS)
        if status is not None and "X-Cache" not in headers:
            headers["X-Cache"] = status

    @hookimpl
    def gateway_audit_fields(self, ctx: RequestContext) -> dict[str, Any]:
        return {"cache": ctx.state.get(STATUS)}

    @hookimpl
    def gateway_request_finished(self, ctx: RequestContext) -> Awaitable[None] | None:
        """Count the outcome; a leader stores its answer (at once in the memory store,
        awaited in Redis) and hands it to its waiters."""
        status = ctx.state.get(STATUS)
        if status is not None:
            if self._deferred:
                pending = self._pending
                pending[status] = pending.get(status, 0) + 1
            elif self._requests is not None:
                self._outcome(status).inc()
        state: _State | None = ctx.state.get("cache")
        if state is None or state.leader is None:
            return None
        result: Entry | web.Response | None = None
        try:
            entry = self._entry_for(ctx, state)
            if entry is not None:
                result = entry
                store = self.store
                assert store is not None
                if not isinstance(store, MemoryStore):
                    return self._store_then_land(ctx, state, entry)
                if store.put_now(state.key, entry, object_ids_in(ctx.path), state.started):
                    self._count_stored(entry)
            elif self._upstream_failed(ctx):
                result = self._failure(ctx)
            # otherwise (an answer too large or secret to share, the leader's client gone,
            # a refusal of the leader alone): the waiters fetch their own
        except BaseException:
            self._land(state, result)
            raise
        self._land(state, result)
        return None

    async def _store_then_land(self, ctx: RequestContext, state: _State, entry: Entry) -> None:
        """Store in a store that must be awaited (Redis), then hand the entry to the waiters."""
        assert self.store is not None
        try:
            if await self.store.put(state.key, entry, object_ids_in(ctx.path), state.started):
                self._count_stored(entry)
        except StoreUnavailable:
            pass
        finally:
            self._land(state, entry)

    def _count_stored(self, entry: Entry) -> None:
        self.counts["stored"] += 1
        if self._deferred:
            self._pending_stored += len(entry.body)
        elif self._stored is not None:
            self._stored.inc(len(entry.body))

    def _land(self, state: _State, result: Entry | web.Response | None) -> None:
        """The leader is done: its flight ends, and its waiters get ``result``."""
        flight = state.leader
        assert flight is not None
        if self._flights.get(state.key) is flight:
            del self._flights[state.key]
        flight.land(result)

    def _entry_for(self, ctx: RequestContext, state: _State) -> Entry | None:
        body = ctx.response_body
        headers = ctx.response_headers
        if not state.store or ctx.status != 200 or body is None or headers is None:
            return None
        if len(body) > self.settings.max_entry_bytes:
            return None
        if ctx.error is not None or "Content-Encoding" in headers:
            return None
        if not headers.get("Content-Type", "").startswith("application/json"):
            return None
        # (find, not ``in``: ``in`` on bytes formats a TypeError before it searches)
        if body.find(_SECRET) >= 0 or body.find(_CLIENT_SECRET) >= 0:
            return None
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        ttl = self._policy.ttl_for(ctx.method, ctx.path, obj if isinstance(obj, dict) else None)
        if ttl <= 0:
            return None
        now = time.time()
        return Entry(
            status=ctx.status,
            headers=tuple([(k, v) for k, v in headers.items() if k in _KEPT]),
            body=body,
            stored_at=now,
            fresh_until=now + ttl,
            stale_until=now + ttl + self.settings.stale_if_error,
        )

    @staticmethod
    def _upstream_failed(ctx: RequestContext) -> bool:
        """Stripe (or the way to it) failed the leader's fetch: its waiters share that."""
        if ctx.error in _UPSTREAM_ERRORS:
            return True
        return ctx.upstream_request_id is not None and ctx.status >= 400 and ctx.error is None

    def _failure(self, ctx: RequestContext) -> web.Response:
        if ctx.response_body is not None and ctx.response_headers is not None:
            return web.Response(
                status=ctx.status, body=ctx.response_body, headers=_kept(ctx.response_headers)
            )
        return error_response(
            502,
            "The request this one was coalesced with failed before Stripe's answer was complete.",
            request_id=ctx.request_id,
            type="api_error",
            should_retry=True,
        )


def _kept(headers: Any) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k in (*_KEPT, "Stripe-Should-Retry"))
