"""The cache: serve retrieves of one object from cache, safely partitioned, coalesced, and
evicted on every successful write through the gateway.

Settings (``[plugins.cache]``, all optional): :class:`CacheSettings`, listed in
``docs/configuration.md``.

What is cached, how the key is made: :mod:`gateway.cachekeys`. Answers carrying a
``client_secret`` or ``secret`` are never stored, nor compressed ones.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict
from pydantic import Field, PrivateAttr

from gateway.cachekeys import cache_key, is_cacheable_retrieve, object_ids_in
from gateway.cachestore import CacheStore, Entry, MemoryStore, RedisStore, StoreUnavailable
from gateway.config import GatewayConfig
from gateway.context import RequestContext
from gateway.errors import error_response
from gateway.globs import RouteRule, parse_rule
from gateway.hookspecs import hookimpl
from gateway.metrics import METRICS, GatewayMetrics
from gateway.settings import RedisSettings, RouteText, Settings

__all__ = ["CachePlugin", "CacheRoute", "CacheSettings"]

#: headers of a stored answer that are replayed on a hit
_KEPT = ("Content-Type", "Request-Id", "Stripe-Version", "Cache-Control")
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
_SECRETS = (b'"client_secret"', b'"secret"')


def _is_final(obj: dict[str, Any]) -> bool:
    kind = obj.get("object")
    status = obj.get("status")
    return (
        (kind == "scheduled_query_run" and status == "completed")
        or (kind == "reporting.report_run" and status == "succeeded")
        or kind
        in (
            "tax.calculation",
            "tax.transaction",
            "forwarding.request",
            "identity.verification_report",
        )
    )


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

    _rules: tuple[tuple[RouteRule, float], ...] = PrivateAttr(())

    def model_post_init(self, context: Any, /) -> None:
        self._rules = tuple((parse_rule(r.route), r.ttl) for r in self.routes)

    def ttl_for(self, method: str, path: str, obj: dict[str, Any] | None) -> float:
        now = time.time()
        if obj is not None and self.final_ttl > 0 and _is_final(obj):
            ttl = self.final_ttl
            expires = obj.get("expires_at")
            if isinstance(expires, int | float) and expires > 0:
                ttl = min(ttl, expires - now)
            return ttl
        for rule, ttl in self._rules:
            if rule.matches(method, path):
                return ttl
        return self.default_ttl


@dataclass
class _Flight:
    """An upstream fetch that identical concurrent misses wait for."""

    done: asyncio.Future[Entry | web.Response | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass
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
        self._read_timeout = 80.0
        self._log: Any = None
        self._last_error_log = 0.0
        self._metrics: GatewayMetrics | None = None
        self._served: Any = None
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
        self._read_timeout = config.upstream.read_timeout

    @hookimpl
    def gateway_startup(self, app: web.Application) -> None:
        from gateway.app import HOST

        self._log = app[HOST].log
        metrics = self._metrics = app[METRICS]
        self._served = metrics.cache_served_bytes
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
            )
        else:
            self.store = MemoryStore(
                max_bytes=s.max_bytes,
                max_entries=s.max_entries,
                tombstone_seconds=keep,
                on_drop=metrics.cache_evictions.labels("capacity").inc,
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
        if self.store is not None and not self._store_handed_over:
            await self.store.close()

    @hookimpl
    async def gateway_ready(self, app: web.Application) -> dict[str, bool] | None:
        if isinstance(self.store, RedisStore):
            return {"cache_redis": await self.store.ping()}
        return None

    async def purge(self, object_ids: list[str]) -> int:
        """Drop every cached variant of these objects (the admin endpoint); raises
        :class:`StoreUnavailable` when the store cannot be reached."""
        assert self.store is not None, "the store opens at start-up"
        count = await self.store.evict(object_ids)
        self.counts["evicted"] += count
        if self._metrics is not None:
            self._metrics.cache_evictions.labels("purge").inc(count)
        return count

    def _store_error(self, what: str, exc: BaseException) -> None:
        self.counts["errors"] += 1
        if self._metrics is not None:
            self._metrics.cache_backend_errors.inc()
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

    # ------------------------------------------------------------------ requests

    @hookimpl
    async def gateway_request(self, ctx: RequestContext) -> web.StreamResponse | None:
        request = ctx.request
        if not is_cacheable_retrieve(request.method, request.path):
            if request.method != "GET" and object_ids_in(request.path):
                ctx.state["cache.writes"] = True
            ctx.cache_status = "BYPASS"
            return None
        directives = {
            d.strip().lower() for d in request.headers.get("Cache-Control", "").split(",")
        }
        if "no-store" in directives:
            ctx.cache_status = "BYPASS"
            self.counts["bypass"] += 1
            return None
        headers = request.headers
        key = cache_key(
            credential=ctx.upstream_key or headers.get("Authorization") or "",
            account=headers.get("Stripe-Account"),
            context=headers.get("Stripe-Context"),
            version=headers.get("Stripe-Version"),
            # as sent upstream: the raw path, and the raw query (decoded once, by
            # normal_query; `a=1%26b=2` and `a=1&b=2` are different requests)
            path=request.raw_path.partition("?")[0],
            query_string=request.rel_url.raw_query_string,
        )
        state = _State(key=key, started=time.time())
        ctx.state["cache"] = state
        if "no-cache" not in directives:
            entry = await self._get(key)
            if entry is not None:
                if entry.fresh_until > time.time():
                    ctx.cache_status = "HIT"
                    self.counts["hit"] += 1
                    return self._response(entry, "HIT")
                state.stale = entry
            flight = self._flights.get(key)
            if flight is not None:
                return await self._wait(ctx, flight)
        flight = _Flight()
        self._flights[key] = flight
        state.leader = flight
        ctx.cache_status = "MISS"
        # another plugin (the audit log) may want a copy of larger bodies
        ctx.capture_limit = max(ctx.capture_limit, self.settings.max_entry_bytes)
        self.counts["miss"] += 1
        return None

    async def _get(self, key: str) -> Entry | None:
        assert self.store is not None
        try:
            return await self.store.get(key)
        except StoreUnavailable:
            return None

    async def _wait(self, ctx: RequestContext, flight: _Flight) -> web.StreamResponse | None:
        try:
            result = await asyncio.wait_for(asyncio.shield(flight.done), self._read_timeout + 5)
        except TimeoutError:
            result = None
        if isinstance(result, Entry):
            ctx.cache_status = "COALESCED"
            self.counts["coalesced"] += 1
            return self._response(result, "COALESCED")
        if isinstance(result, web.Response):  # the leader failed: so does every waiter
            ctx.cache_status = "COALESCED"
            self.counts["coalesced"] += 1
            response = web.Response(
                status=result.status, body=result.body, headers=_kept(result.headers)
            )
            response.headers["X-Cache"] = "COALESCED"
            return response
        # the leader's answer could not be shared (too large, secret): fetch our own
        ctx.cache_status = "MISS"
        return None

    def _response(self, entry: Entry, status: str) -> web.Response:
        if self._served is not None:
            self._served.inc(len(entry.body))
        response = web.Response(
            status=entry.status, body=entry.body, headers=CIMultiDict(entry.headers)
        )
        response.headers["X-Cache"] = status
        response.headers["Age"] = str(max(0, int(time.time() - entry.stored_at)))
        return response

    @hookimpl
    async def gateway_upstream_response(
        self, ctx: RequestContext, headers: CIMultiDict[str]
    ) -> web.StreamResponse | None:
        if ctx.state.get("cache.writes") and 200 <= ctx.status < 300:
            # a successful write: evict every variant before the client sees the answer
            assert self.store is not None
            try:
                evicted = await self.store.evict(object_ids_in(ctx.path))
                self.counts["evicted"] += evicted
                if evicted and self._metrics is not None:
                    self._metrics.cache_evictions.labels("write").inc(evicted)
            except StoreUnavailable:
                ctx.audit["cache_evict_failed"] = True
            return None
        state: _State | None = ctx.state.get("cache")
        if state is None:
            return None
        failed = ctx.status >= 500 or ctx.error in ("upstream_timeout", "upstream_unreachable")
        if failed and state.stale is not None and state.stale.stale_until > time.time():
            ctx.cache_status = "STALE"
            self.counts["stale"] += 1
            state.store = False
            response = self._response(state.stale, "STALE")
            response.headers["Warning"] = '111 - "Revalidation Failed"'
            return response
        return None

    @hookimpl
    def gateway_response_headers(self, ctx: RequestContext, headers: CIMultiDict[str]) -> None:
        if ctx.cache_status is not None and "X-Cache" not in headers:
            headers["X-Cache"] = ctx.cache_status

    @hookimpl
    async def gateway_request_finished(self, ctx: RequestContext) -> None:
        state: _State | None = ctx.state.get("cache")
        if state is None or state.leader is None:
            return
        flight = state.leader
        result: Entry | web.Response | None = None
        try:
            entry = self._entry_for(ctx, state)
            if entry is not None:
                result = entry
                assert self.store is not None
                object_ids = object_ids_in(ctx.path)
                try:
                    if await self.store.put(state.key, entry, object_ids, state.started):
                        self.counts["stored"] += 1
                        if self._metrics is not None:
                            self._metrics.cache_stored_bytes.inc(len(entry.body))
                except StoreUnavailable:
                    pass
            elif self._upstream_failed(ctx):
                result = self._failure(ctx)
            # otherwise (an answer too large or secret to share, the leader's client gone,
            # a refusal of the leader alone): the waiters fetch their own
        finally:
            if self._flights.get(state.key) is flight:
                del self._flights[state.key]
            if not flight.done.done():
                flight.done.set_result(result)

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
        if any(marker in body for marker in _SECRETS):
            return None
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        ttl = self.settings.ttl_for(ctx.method, ctx.path, obj if isinstance(obj, dict) else None)
        if ttl <= 0:
            return None
        now = time.time()
        return Entry(
            status=ctx.status,
            headers=tuple((k, v) for k, v in headers.items() if k in _KEPT),
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
