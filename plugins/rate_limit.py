"""Rate limits: share one Stripe account's request budget out between teams, on one
gateway instance or many.

Every request that would go to Stripe counts against two kinds of bucket: its team's own
limit (``read`` for GET/HEAD, ``write`` for the other methods, or the first per-route
override that matches) and the budget of the upstream credential it is sent with, shared
by every team that uses that credential. It passes only when every bucket has room, and
then is charged to all of them; a team within its own limit is refused only when the
account budget is spent. The algorithm is GCRA (:mod:`gateway.stores.ratestore`): smooth, no
window boundary to exploit.

The decision is made in ``gateway_request`` *after* every other plugin (``trylast``), so
cache hits and coalesced waiters, which never reach Stripe, never spend budget. A refusal
is Stripe's own 429 (``invalid_request_error``, code ``rate_limit``), so the SDKs raise
``RateLimitError``; it carries ``Retry-After``, and every limited response (allowed or not)
carries ``RateLimit-Limit``, ``RateLimit-Remaining`` and ``RateLimit-Reset`` (IETF draft
semantics: the burst, the requests left at once, seconds until the bucket is full). A 429
from Stripe itself passes through unchanged. The audit line's ``rate_limit`` field (this
plugin's ``gateway_audit_fields``) records the decision: ``allow``, ``deny`` or
``shadow_deny``, prefixed ``fallback_`` when the in-process limiter stood in for Redis, or
``unavailable_deny`` / ``unavailable_allow`` (shadow) when Redis failed and the policy is
``deny``.

Settings (``[plugins.rate_limit]``, all optional; with none, nothing is limited):
:class:`RateLimitSettings`, listed in ``docs/configuration.md``. A team listed in ``teams``
takes its limits key by key over ``default``; a route limit (first match) replaces
read/write.

``burst`` defaults to one second's worth of the rate (at least 1). Credentials appear in
bucket keys only as digests; never in keys, logs or messages. Besides ``rate_limit``, the
audit line gets ``rate_limit_name`` (the limit that decided: ``read``, ``write``,
``route '...'`` or ``account``) and ``rate_limit_remaining``. ``counts`` holds the number of
decisions of each kind and of Redis failures. The admin listener's ``GET /admin/teams``
shows each team's limits and levels (``gateway_admin_team``); the metrics
``stripe_gateway_rate_limit_decisions``, ``_rate_limit_fallbacks`` and
``_rate_limit_backend_errors`` count decisions and Redis failures.

With the Redis backend each instance reserves up to ``lease`` units of a shared bucket
(at most an eighth of its free room) and hands them out without a round trip
(:mod:`gateway.stores.ratelease`); ``lease = 0`` asks Redis for every request. Leases
never let more through than the limit, across every instance together; the price is
that ``RateLimit-Remaining`` is this instance's estimate, and another instance's reserved
units can make a bucket refuse slightly early (by at most those units, for at most
``lease_seconds``, or until refilled when their instance vanished: a reservation Redis
drops unreported is charged as used). No lease is taken on a bucket's first request.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any, Literal

from aiohttp import web
from multidict import CIMultiDict
from pydantic import BeforeValidator, Field, PrivateAttr

from gateway.config import GatewayConfig, TeamConfig
from gateway.context import RequestContext
from gateway.errors import ConfigError, StripeErrorResponse
from gateway.globs import RouteRule, parse_rule
from gateway.hookspecs import hookimpl
from gateway.host import PluginHost
from gateway.metrics import GatewayMetrics
from gateway.settings import RedisSettings, RouteText, Settings
from gateway.stores.ratelease import LeasedRedisLimiter
from gateway.stores.ratestore import (
    Bucket,
    Decision,
    Limit,
    LimiterUnavailable,
    MemoryLimiter,
    RedisLimiter,
    Verdict,
)

__all__ = [
    "DECISION",
    "Rate",
    "RateLimitPlugin",
    "RateLimitSettings",
    "RouteRate",
    "TeamLimits",
    "TeamRateLimits",
]

_READS = frozenset({"GET", "HEAD"})
#: seconds between two log lines about the same kind of trouble
_LOG_INTERVAL = 10.0
#: credentials whose account bucket is remembered (then the memo starts afresh)
_MAX_ACCOUNTS = 4096
#: ``ctx.state`` key of the request's decision (``allow``, ``deny``, ...)
DECISION = "rate_limit.decision"
_NO_TEAM = "-"


@dataclass(frozen=True, slots=True)
class TeamLimits:
    read: Limit | None = None
    write: Limit | None = None
    #: (rule, limit), first match wins and replaces read/write
    routes: tuple[tuple[RouteRule, Limit], ...] = ()
    shadow: bool = False


class Rate(Settings):
    """A rate with a burst allowance."""

    rate: float = Field(gt=0, description="requests per second")
    burst: int | None = Field(
        None,
        ge=1,
        description="requests at once (default: one second's worth of the rate, at least 1)",
    )

    def limit(self, name: str) -> Limit:
        burst = self.burst if self.burst is not None else max(1, math.ceil(self.rate))
        return Limit(name=name, rate=self.rate, burst=burst)


class RouteRate(Rate):
    """A per-route limit (its own bucket per team)."""

    route: RouteText = Field(description='"METHOD /path/glob" the limit applies to')


def _rate_or_unlimited(value: Any) -> Any:
    if value == "unlimited":
        return None
    if not isinstance(value, dict):
        raise ValueError('must be a table { rate = 10, burst = 20 } or "unlimited"')
    return value


#: a team's read or write limit; ``"unlimited"`` is ``None``
_TeamRate = Annotated[Rate | None, BeforeValidator(_rate_or_unlimited)]


class TeamRateLimits(Settings):
    """One team's limits."""

    read: _TeamRate = Field(
        None,
        description='GET/HEAD: { rate = 10, burst = 20 } or "unlimited" (unlimited)',
        examples=[{"rate": 20, "burst": 40}],
    )
    write: _TeamRate = Field(
        None,
        description='other methods: { rate = 10, burst = 20 } or "unlimited" (unlimited)',
        examples=[{"rate": 10, "burst": 20}],
    )
    routes: list[RouteRate] = Field(
        default_factory=list,
        description="per-route limits, first match replaces read/write: "
        '[{ route = "POST /v1/files", rate = 1, burst = 5 }]',
    )
    shadow: bool = Field(False, description="compute and count this team's decisions only")

    def resolved(self) -> TeamLimits:
        return TeamLimits(
            read=self.read.limit("read") if self.read else None,
            write=self.write.limit("write") if self.write else None,
            routes=tuple(
                (rule, r.limit(f"route '{rule.text}'"))
                for r in self.routes
                for rule in (parse_rule(r.route),)
            ),
            shadow=self.shadow,
        )


class RateLimitSettings(RedisSettings):
    """Shares one Stripe account's request budget out between teams; with no limit set (the
    default) nothing is limited. Each request that would reach Stripe counts against its
    team's limit (read = GET/HEAD, write = the other methods, or the first matching route)
    and against the budget of the upstream key it is sent with, shared by every team using
    that key. Smooth (GCRA): at most burst + rate x t requests in any t seconds. Cache hits
    never count; a 429 from Stripe passes through unchanged. Refusals are Stripe-shaped 429s
    (code "rate_limit", Retry-After). Stripe allows about 100 requests per second in live
    mode and 25 in test mode: keep some headroom."""

    shadow: bool = Field(False, description="compute, log and count every decision, refuse nothing")
    account: Rate | None = Field(
        None,
        description="budget per upstream Stripe key, all teams together",
        examples=[{"rate": 90, "burst": 20}],
    )
    account_test: Rate | None = Field(
        None,
        description="the same for test-mode keys (sk_test_/rk_test_); default: account",
        examples=[{"rate": 20, "burst": 5}],
    )
    default: TeamRateLimits = Field(
        default_factory=TeamRateLimits, description="limits of teams not listed in teams"
    )
    teams: dict[str, TeamRateLimits] = Field(
        default_factory=dict,
        description="a team's limits by team name (a [[teams]] name), key by key over default",
        examples=[{"analytics": {"read": {"rate": 5, "burst": 10}, "shadow": True}}],
    )
    on_redis_error: Literal["allow", "deny"] = Field(
        "allow",
        description='"allow": the in-process limiter decides (logged once per interval and '
        'counted); "deny": 429 saying why; never a 5xx',
    )
    fallback_share: float = Field(
        1.0,
        gt=0,
        le=1,
        description="part of each limit one instance enforces on its own while Redis is "
        "unavailable, e.g. 0.5 with two instances",
    )
    key_prefix: str = Field("sgw:rl", min_length=1, description="Redis key prefix")
    lease: int = Field(
        32,
        ge=0,
        description="most units of a shared bucket one instance reserves at once and hands "
        "out without a Redis round trip; at most an eighth of the bucket's free room, so "
        "near the limit every request asks Redis; 0: ask Redis for every request "
        "(redis backend)",
    )
    lease_seconds: float = Field(
        1.0,
        gt=0,
        description="seconds a reservation lives in Redis; an instance stops using it after "
        "half of that and gives back what it did not use (redis backend)",
    )

    _default: TeamLimits = PrivateAttr(default_factory=TeamLimits)
    _teams: dict[str, TeamLimits] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any, /) -> None:
        self._default = self.default.resolved()
        self._teams = {
            name: self.default.model_copy(
                update={key: getattr(limits, key) for key in limits.model_fields_set}
            ).resolved()
            for name, limits in self.teams.items()
        }

    def limits_for(self, team: str) -> TeamLimits:
        return self._teams.get(team, self._default)

    @property
    def account_limit(self) -> Limit | None:
        return self.account.limit("account") if self.account else None

    @property
    def account_test_limit(self) -> Limit | None:
        return self.account_test.limit("account") if self.account_test else None

    @property
    def limits_anything(self) -> bool:
        def some(t: TeamLimits) -> bool:
            return bool(t.read or t.write or t.routes)

        return bool(
            self.account
            or self.account_test
            or some(self._default)
            or any(some(t) for t in self._teams.values())
        )


def credential_digest(credential: str) -> str:
    """The name of a credential's bucket: never the credential itself."""
    return hashlib.sha256(b"stripe-gateway rate limit\x00" + credential.encode()).hexdigest()[:32]


# ------------------------------------------------------------------ the plugin

#: most header sets _allowed_headers keeps (then it starts over)
_MAX_HEADER_SETS = 4096


@dataclass(frozen=True, slots=True)
class _TeamPlan:
    """One team's buckets, prepared at start-up."""

    read: Bucket | None
    write: Bucket | None
    routes: tuple[tuple[RouteRule, Bucket], ...]
    shadow: bool

    def bucket_for(self, method: str, path: str) -> Bucket | None:
        for rule, bucket in self.routes:
            if rule.matches(method, path):
                return bucket
        return self.read if method in _READS else self.write


def _plan(team: str, limits: TeamLimits) -> _TeamPlan:
    def route_key(rule: RouteRule) -> str:
        return hashlib.sha256(rule.text.encode()).hexdigest()[:12]

    return _TeamPlan(
        read=(f"t:{team}:read", limits.read) if limits.read else None,
        write=(f"t:{team}:write", limits.write) if limits.write else None,
        routes=tuple(
            (rule, (f"t:{team}:route:{route_key(rule)}", limit)) for rule, limit in limits.routes
        ),
        shadow=limits.shadow,
    )


class RateLimitPlugin:
    """Built-in plugin ``rate_limit``."""

    name = "rate_limit"
    settings_model = RateLimitSettings

    def __init__(self) -> None:
        self.settings = RateLimitSettings()
        self._plans: dict[str, _TeamPlan] = {}
        self._on = False
        #: the deciding store for the memory backend, the fallback for the redis one
        self.memory = MemoryLimiter()
        self.redis: RedisLimiter | None = None
        #: the buckets went to the plugin that replaced this one on a reload
        self._memory_handed_over = False
        #: the account bucket of each credential seen (its digest is made once)
        self._accounts: dict[str, Bucket] = {}
        #: RateLimit-* headers by (limit, remaining, reset), see _allowed_headers
        self._header_sets: dict[tuple[int, int, int], dict[str, str]] = {}
        self._log: Any = None
        # metrics (registered at start-up), labelled children looked up once
        self._decisions: Any = None
        self._fallbacks: Any = None
        self._backend_errors: Any = None
        self._breaker: Any = None
        self._decision_children: dict[tuple[str, str], Any] = {}
        #: single-process mode: decisions by (team, decision) are counted here on the
        #: request path and added to their metrics when ``/metrics`` is read (:meth:`flush`)
        self._metrics: GatewayMetrics | None = None
        self._deferred = False
        self._pending: dict[tuple[str, str], int] = {}
        self._logged_at: dict[str, float] = {}
        #: decisions by kind (``allow``, ``deny``, ``fallback_allow``, ...) and
        #: ``backend_errors``, for metrics and tests
        self.counts: Counter[str] = Counter()

    # ------------------------------------------------------------------ lifecycle

    @hookimpl
    def gateway_configure(self, config: GatewayConfig, settings: RateLimitSettings) -> None:
        names = {t.name for t in config.teams}
        for name in settings.teams:
            if name not in names:
                raise ConfigError(f"teams.{name}", f"no team named {name!r} in [[teams]]")
        s = self.settings = settings
        self._plans = {t.name: _plan(t.name, s.limits_for(t.name)) for t in config.teams}
        self._on = s.limits_anything

    @hookimpl
    def gateway_startup(self, host: PluginHost, metrics: GatewayMetrics) -> None:
        self._log = host.log
        self._decisions = metrics.counter(
            "rate_limit_decisions",
            "Rate-limit decisions by team and outcome (allow, deny, shadow_deny, "
            "unavailable_deny, unavailable_allow).",
            ("team", "outcome"),
        )
        self._fallbacks = metrics.counter(
            "rate_limit_fallbacks",
            "Decisions made by the in-process limiter because the shared one failed.",
            ("team",),
        )
        self._backend_errors = metrics.counter(
            "rate_limit_backend_errors",
            "Calls to the shared rate-limit store (Redis) that failed.",
        )
        self._metrics = metrics
        self._deferred = not metrics.multiprocess
        if self._deferred:
            metrics.on_flush(self.flush)
        s = self.settings
        self.memory = MemoryLimiter(share=s.fallback_share if s.backend == "redis" else 1.0)
        if s.backend == "redis" and self._on:
            assert s.url is not None
            limiter: Callable[..., RedisLimiter] = (
                partial(LeasedRedisLimiter, lease=s.lease, lease_seconds=s.lease_seconds)
                if s.lease > 0
                else RedisLimiter  # a round trip for every request
            )
            self.redis = limiter(
                s.url,
                prefix=s.key_prefix,
                timeout=s.redis_timeout,
                breaker_seconds=s.redis_breaker,
                on_error=self._backend_error,
                on_recover=self._backend_recovered,
            )
            self._breaker = metrics.redis_breaker("rate_limit")

    @hookimpl
    async def gateway_carry_over(self, previous: object) -> None:
        """On a reload: keep the counters and the in-process buckets (the deciding store of
        the memory backend, the fallback of the redis one) when they are scaled alike, so
        a reload does not hand every team a fresh burst. Buckets are keyed by team and
        credential and store only a time, so changed limits apply to them at once; the
        Redis buckets live in Redis and are found again by the new connection."""
        if not isinstance(previous, RateLimitPlugin):
            return
        self.counts = previous.counts
        if (
            previous.memory is not self.memory
            and not previous._memory_handed_over
            and previous.memory.share == self.memory.share
        ):
            fresh, self.memory = self.memory, previous.memory
            previous._memory_handed_over = True
            await fresh.close()

    @hookimpl
    async def gateway_shutdown(self, app: web.Application) -> None:
        if self._deferred and self._metrics is not None:
            self.flush()
            self._metrics.remove_flush(self.flush)
            self._deferred = False  # a decision made after this counts at once
        if not self._memory_handed_over:
            await self.memory.close()
        if self.redis is not None:
            await self.redis.close()
            self.redis = None

    def _once(self, what: str) -> bool:
        """True at most once per interval for each kind of log line."""
        now = time.monotonic()
        if now - self._logged_at.get(what, -math.inf) < _LOG_INTERVAL:
            return False
        self._logged_at[what] = now
        return True

    @hookimpl
    async def gateway_ready(self, app: web.Application) -> dict[str, bool] | None:
        if self.redis is None:
            return None
        return {"rate_limit_redis": await self.redis.ping()}

    @hookimpl
    def gateway_admin_team(self, team: TeamConfig) -> dict[str, Any]:
        return {"rate_limit": self.team_state(team.name)}

    def team_state(self, team: str) -> dict[str, Any]:
        """A team's limits and, with the memory backend, how full its buckets are now
        (for ``GET /admin/teams``); the redis backend's levels live in Redis, shared."""
        s = self.settings
        plan = self._plans.get(team)
        if not self._on or plan is None:
            return {"limited": False}
        buckets: list[tuple[str, Bucket]] = []
        if plan.read is not None:
            buckets.append(("read", plan.read))
        if plan.write is not None:
            buckets.append(("write", plan.write))
        buckets.extend((f"route '{rule.text}'", bucket) for rule, bucket in plan.routes)
        limits = []
        for name, bucket in buckets:
            limit = bucket[1]
            item: dict[str, Any] = {"name": name, "rate": limit.rate, "burst": limit.burst}
            if s.backend == "memory":
                level = self.memory.peek(bucket)
                item["remaining"] = level.remaining
                item["full_in_s"] = round(level.reset, 3)
            limits.append(item)
        state: dict[str, Any] = {
            "limited": bool(limits),
            "backend": s.backend,
            "shadow": s.shadow or plan.shadow,
            "limits": limits,
        }
        if s.backend == "redis":
            state["levels"] = "shared: kept in Redis by every instance, not read here"
        return state

    def _backend_error(self, exc: BaseException) -> None:
        self.counts["backend_errors"] += 1
        if self._backend_errors is not None:
            self._backend_errors.inc()
        if self._breaker is not None:
            self._breaker.set(1)
        if self._once("backend"):
            self._log.warning(
                "rate_limit_backend_unavailable",
                backend=self.settings.backend,
                policy=self.settings.on_redis_error,
                retry_in_s=self.settings.redis_breaker,
                error=f"{type(exc).__name__}: {exc}",
                failures=self.counts["backend_errors"],
            )

    def _backend_recovered(self) -> None:
        if self._breaker is not None:
            self._breaker.set(0)
        self._logged_at.pop("backend", None)
        self._log.info("rate_limit_backend_recovered", backend=self.settings.backend)

    # ------------------------------------------------------------------ requests

    @hookimpl(trylast=True)
    def gateway_request(self, ctx: RequestContext) -> Awaitable[None] | None:
        if not self._on:
            return None
        buckets: list[Bucket] = []
        shadow = self.settings.shadow
        plan = self._plans.get(ctx.team.name) if ctx.team is not None else None
        if plan is not None:
            shadow = shadow or plan.shadow
            request = ctx.request
            bucket = plan.bucket_for(request.method, request.path)
            if bucket is not None:
                buckets.append(bucket)
        account = self._account_bucket(ctx)
        if account is not None:
            buckets.append(account)
        if not buckets:
            return None
        redis = self.redis
        if redis is None:
            self._apply(ctx, self.memory.decide_now(buckets, shadow=shadow), shadow, "")
            return None
        leased = redis.decide_local(buckets)  # units this instance holds: no round trip
        if leased is not None:
            self._apply(ctx, leased, shadow, "")
            return None
        return self._decide_shared(ctx, buckets, shadow)

    def _account_bucket(self, ctx: RequestContext) -> Bucket | None:
        credential = ctx.credential
        if not credential:
            return None
        bucket = self._accounts.get(credential)
        if bucket is None:
            s = self.settings
            test = s.account_test_limit
            limit = test if test is not None and ctx.livemode is False else s.account_limit
            if limit is None:
                return None
            if len(self._accounts) >= _MAX_ACCOUNTS:
                self._accounts.clear()
            bucket = self._accounts[credential] = (f"a:{credential_digest(credential)}", limit)
        return bucket

    async def _decide_shared(
        self, ctx: RequestContext, buckets: list[Bucket], shadow: bool
    ) -> None:
        assert self.redis is not None
        try:
            decision = await self.redis.decide(buckets, shadow=shadow)
        except LimiterUnavailable:
            if self.settings.on_redis_error == "deny":
                self._unavailable(ctx, shadow)
                return
            decision = self.memory.decide_now(buckets, shadow=shadow)
            self._apply(ctx, decision, shadow, "fallback_")
            return
        self._apply(ctx, decision, shadow, "")

    def _apply(self, ctx: RequestContext, decision: Decision, shadow: bool, source: str) -> None:
        binding = decision.binding
        ctx.audit["rate_limit_name"] = binding.limit.name
        ctx.audit["rate_limit_remaining"] = binding.remaining
        if decision.allowed:
            self._decided(ctx, source + "allow")
            if not shadow:  # shadowed limits are not the client's business yet
                ctx.state[self.name] = self._allowed_headers(binding.limit.burst, binding)
            return
        if shadow:
            self._decided(ctx, source + "shadow_deny")
            if self._once("shadow"):
                self._log.info(
                    "rate_limit_shadow_deny",
                    team=ctx.team.name if ctx.team else None,
                    limit=binding.limit.name,
                    shadow_denials=self.counts["shadow_deny"] + self.counts["fallback_shadow_deny"],
                )
            return
        self._decided(ctx, source + "deny")
        raise self._refusal(ctx, decision, fallback=bool(source))

    def _allowed_headers(self, limit: int, verdict: Verdict) -> dict[str, str]:
        """:func:`_headers`, made once per (limit, remaining, reset): a steady client gets
        the same few sets over and over (read-only once made)."""
        # (_whole_seconds, inline: this runs for every request let through)
        key = (limit, verdict.remaining, math.ceil(verdict.reset - 1e-6))
        values = self._header_sets.get(key)
        if values is None:
            if len(self._header_sets) >= _MAX_HEADER_SETS:
                self._header_sets.clear()
            values = self._header_sets[key] = _headers(limit, verdict)
        return values

    def _decided(self, ctx: RequestContext, decision: str) -> None:
        ctx.state[DECISION] = decision
        self.counts[decision] += 1
        if self._decisions is None:
            return
        team = ctx.team.name if ctx.team is not None else _NO_TEAM
        if self._deferred:
            key = (team, decision)
            pending = self._pending
            pending[key] = pending.get(key, 0) + 1
            return
        self._count(team, decision, 1)

    def _count(self, team: str, decision: str, n: int) -> None:
        """Add ``n`` decisions to the metrics (and the fallbacks among them)."""
        child = self._decision_children.get((team, decision))
        if child is None:
            outcome = decision.removeprefix("fallback_")
            child = self._decision_children[team, decision] = self._decisions.labels(team, outcome)
        child.inc(n)
        if decision.startswith("fallback_"):
            self._fallbacks.labels(team).inc(n)

    def flush(self) -> None:
        """Add the decisions counted since the last flush to the metrics."""
        pending, self._pending = self._pending, {}
        for (team, decision), n in pending.items():
            self._count(team, decision, n)

    @hookimpl
    def gateway_audit_fields(self, ctx: RequestContext) -> dict[str, Any]:
        return {"rate_limit": ctx.state.get(DECISION)}

    def _refusal(
        self, ctx: RequestContext, decision: Decision, *, fallback: bool
    ) -> StripeErrorResponse:
        v = decision.binding
        retry = max(1, _whole_seconds(v.retry_after))
        team = ctx.team.name if ctx.team is not None else None
        if v.limit.name == "account":
            whose = f"team {team!r}" if team else "this request"
            message = (
                f"Too many requests: the Stripe account budget ({v.limit.describe()}), "
                f"shared by every team that uses the same Stripe key as {whose}, is spent"
            )
            if team and all(x.allowed for x in decision.verdicts if x is not v):
                message += f"; team {team!r} is within its own limits"
        else:
            message = (
                f"Too many requests: team {team!r} is over its {v.limit.name} limit of "
                f"{v.limit.describe()}"
            )
        if fallback:
            message += (
                " (this gateway's own limits, used while the shared limit store is unavailable)"
            )
        headers = {"Retry-After": str(retry), **_headers(v.limit.burst, v)}
        return StripeErrorResponse(
            429, f"{message}. Retry after {retry} s.", code="rate_limit", headers=headers
        )

    def _unavailable(self, ctx: RequestContext, shadow: bool) -> None:
        """Redis failed and the policy is ``deny``."""
        if shadow:
            self._decided(ctx, "unavailable_allow")
            return
        self._decided(ctx, "unavailable_deny")
        assert self.redis is not None
        retry = max(1, math.ceil(self.redis.retry_in()))
        team = f" for team {ctx.team.name!r}" if ctx.team is not None else ""
        raise StripeErrorResponse(
            429,
            f"Too many requests: the gateway cannot check rate limits{team} because its "
            "shared limit store (Redis) is unavailable, and it is set to refuse requests "
            f"then (on_redis_error = deny). Nothing was sent to Stripe. Retry after {retry} s.",
            code="rate_limit",
            headers={"Retry-After": str(retry)},
        )

    @hookimpl
    def gateway_response_headers(self, ctx: RequestContext, headers: CIMultiDict[str]) -> None:
        values: dict[str, str] | None = ctx.state.get(self.name)
        if values is None or ctx.status == 429:  # Stripe's own 429 goes out unchanged
            return
        headers.update(values)


def _headers(limit: int, verdict: Verdict) -> dict[str, str]:
    return {
        "RateLimit-Limit": str(limit),
        "RateLimit-Remaining": str(verdict.remaining),
        "RateLimit-Reset": str(_whole_seconds(verdict.reset)),
    }


def _whole_seconds(seconds: float) -> int:
    """Seconds rounded up, ignoring float noise: ``(now + 100.0) - now`` can be 100.00000000001,
    which is 100 s, not 101."""
    return math.ceil(seconds - 1e-6)
