"""Where rate-limit budgets live: in this process (``memory``) or shared in Redis (``redis``).

Both stores run the same algorithm, GCRA (the generic cell rate algorithm, a token bucket
kept as one number per bucket): a bucket remembers its *theoretical arrival time* (TAT),
the moment it would be full again. A request is let through when, after adding one
emission interval ``1/rate`` to the TAT, the bucket is no more than ``burst`` intervals
in debt. There is no window, so nothing lets 2x through at a boundary: over any span
``t`` at most ``burst + rate * t`` requests pass.

One decision covers every bucket a request counts against (its team's limit and its
Stripe account's budget) and is all or nothing: when one bucket refuses, none is charged.
In *shadow* mode the request goes upstream anyway, so the buckets that would have let it
through are charged and only the refusing ones are left as they were.

The Redis store makes each decision with one Lua script (one round trip), takes the time
from Redis (``TIME``), so the gateways' clocks do not matter, and gives every bucket an
expiry at the moment it is full again, so idle buckets vanish by themselves. With token
leases (:mod:`gateway.stores.ratelease`) each instance reserves a few units of a bucket at
once and hands them out without a round trip, within the same bound.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from gateway.stores.resp import Reply, ReplyError, RespConnection, bulk, encode_command

__all__ = [
    "Bucket",
    "Decision",
    "Limit",
    "LimiterUnavailable",
    "MemoryLimiter",
    "RateStore",
    "RedisLimiter",
    "Verdict",
]

#: a bucket to charge: (key, limit); keys never hold a secret (credentials are digests)
Bucket = tuple[str, "Limit"]

_MICRO = 1_000_000
#: a request this close (seconds) to its turn passes: float sums of intervals are not exact
_SLACK = 1e-6


class LimiterUnavailable(Exception):
    """The shared store could not decide (Redis down, timed out, or its circuit is open)."""


@dataclass(frozen=True, slots=True)
class Limit:
    """A rate (requests per second) with a burst allowance (requests at once)."""

    #: what the limit is, for messages and the audit line: ``read``, ``account``, ...
    name: str
    rate: float
    burst: int
    #: seconds between requests at the steady rate
    interval: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "interval", 1.0 / self.rate)

    def describe(self) -> str:
        return f"{self.rate:g} requests per second (burst {self.burst})"


class Verdict(NamedTuple):
    """One bucket's answer."""

    limit: Limit
    allowed: bool
    #: requests that could still pass at once after this decision
    remaining: int
    #: seconds until the bucket is full again
    reset: float
    #: seconds until this request would pass (0 when it passed)
    retry_after: float


@dataclass(slots=True)
class Decision:
    allowed: bool
    verdicts: tuple[Verdict, ...]

    @property
    def binding(self) -> Verdict:
        """The verdict to report: the refusal with the longest wait, else the bucket
        closest to empty (the IETF draft's rule for several limits)."""
        verdicts = self.verdicts
        best = verdicts[0]
        if self.allowed:
            for v in verdicts:
                if v.remaining < best.remaining:
                    best = v
            return best
        best = max((v for v in verdicts if not v.allowed), key=_wait)
        return best


_new_tuple = tuple.__new__


def _wait(verdict: Verdict) -> float:
    return verdict.retry_after


def _verdict(limit: Limit, allowed: bool, debt: float, retry_after: float) -> Verdict:
    """``debt``: seconds from now to the bucket's TAT after the decision."""
    remaining = int(limit.burst - debt / limit.interval + 1e-6)  # >= 0: int() is floor
    return Verdict(limit, allowed, max(0, remaining), max(0.0, debt), retry_after)


class RateStore(Protocol):
    async def decide(self, buckets: Sequence[Bucket], *, shadow: bool) -> Decision:
        """Charge one request to every bucket, or to none (see the module docstring)."""
        ...

    async def close(self) -> None: ...


class MemoryLimiter:
    """Per-process buckets. ``share`` scales every limit (rate and burst) down, for use as
    one instance's part of a limit that several instances enforce together."""

    def __init__(self, *, share: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._tats: dict[str, float] = {}
        self._share = share
        self._scaled: dict[Limit, Limit] = {}
        self._clock = clock
        self._next_sweep = clock() + 10.0

    def __len__(self) -> int:
        return len(self._tats)

    @property
    def share(self) -> float:
        """The part of every limit this limiter enforces."""
        return self._share

    def decide_now(self, buckets: Sequence[Bucket], *, shadow: bool) -> Decision:
        """The decision, synchronously (nothing here waits)."""
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
        tats = self._tats
        scale = self._share != 1.0
        verdicts: list[Verdict] = []
        charges: list[tuple[str, float]] = []
        allowed = True
        for key, limit in buckets:
            if scale:
                limit = self._scale(limit)
            interval = limit.interval
            tat = tats.get(key, now)
            if tat < now:
                tat = now
            new_tat = tat + interval
            allow_at = new_tat - limit.burst * interval
            if allow_at - now > _SLACK:
                allowed = False
                verdicts.append(_verdict(limit, False, tat - now, allow_at - now))
            else:
                charges.append((key, new_tat))
                # _verdict(limit, True, debt, 0.0), inline: this runs for every request (and
                # made by tuple.__new__: a named tuple's own __new__ is a Python function)
                debt = new_tat - now
                remaining = int(limit.burst - debt / interval + 1e-6)
                verdicts.append(
                    _new_tuple(Verdict, (limit, True, remaining if remaining > 0 else 0, debt, 0.0))
                )
        if allowed or shadow:
            for key, new_tat in charges:
                tats[key] = new_tat
        return Decision(allowed, tuple(verdicts))

    async def decide(self, buckets: Sequence[Bucket], *, shadow: bool) -> Decision:
        return self.decide_now(buckets, shadow=shadow)

    def peek(self, bucket: Bucket) -> Verdict:
        """The bucket's level now, charging nothing (``allowed``: a request would pass)."""
        key, limit = bucket
        if self._share != 1.0:
            limit = self._scale(limit)
        now = self._clock()
        tat = max(self._tats.get(key, now), now)
        allow_at = tat + limit.interval - limit.burst * limit.interval
        allowed = allow_at - now <= _SLACK
        return _verdict(limit, allowed, tat - now, 0.0 if allowed else allow_at - now)

    def _scale(self, limit: Limit) -> Limit:
        scaled = self._scaled.get(limit)
        if scaled is None:
            burst = max(1, math.floor(limit.burst * self._share))
            scaled = Limit(name=limit.name, rate=limit.rate * self._share, burst=burst)
            self._scaled[limit] = scaled
        return scaled

    def _sweep(self, now: float) -> None:
        """Forget full buckets (a TAT in the past is the same as no entry)."""
        self._tats = {key: tat for key, tat in self._tats.items() if tat > now}
        self._next_sweep = now + 10.0

    async def close(self) -> None:
        self._tats.clear()


# KEYS: the buckets. ARGV[1]: "1" to charge the buckets that allow even when another one
# refuses (shadow mode). ARGV[2i], ARGV[2i+1]: emission interval (µs) and burst of KEYS[i].
# Returns, per bucket: allowed (0/1), debt after the decision (µs), wait until allowed (µs).
# Times are whole µs; a request within 1 µs of its turn passes (TATs are stored rounded).
_DECIDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local all = true
local tats = {}
local out = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i])
  local burst = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - burst * interval
  if allow_at - now > 1 then
    all = false
    tats[i] = false
    out[3 * i - 2] = 0
    out[3 * i - 1] = tat - now
    out[3 * i] = allow_at - now
  else
    tats[i] = new_tat
    out[3 * i - 2] = 1
    out[3 * i - 1] = new_tat - now
    out[3 * i] = 0
  end
end
if all or ARGV[1] == '1' then
  for i = 1, #KEYS do
    if tats[i] then
      local ttl = math.ceil((tats[i] - now) / 1000) + 1
      redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', ttl)
    end
  end
end
return out
"""


class RedisLimiter:
    """Buckets shared by every gateway instance that uses the same Redis.

    Any Redis trouble raises :class:`LimiterUnavailable` (the caller applies its policy).
    After a failure the limiter stops asking Redis for ``breaker_seconds`` (a circuit
    breaker), so an outage costs one timeout, not one per request; ``on_error`` hears of
    each failure and ``on_recover`` of the first success after one (for logs, counters).
    Decisions go through one pipelined connection (:mod:`gateway.stores.resp`); the script is
    called by its SHA-1 and sent in full only when Redis does not have it yet.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        timeout: float,
        breaker_seconds: float,
        on_error: Callable[[BaseException], None],
        on_recover: Callable[[], None] = lambda: None,
    ) -> None:
        self._conn = RespConnection(url, connect_timeout=timeout)
        self._prefix = prefix
        self._timeout = timeout
        self._breaker_seconds = breaker_seconds
        self._open_until = 0.0
        self._failing = False
        self._on_error = on_error
        self._on_recover = on_recover
        self._evalsha = bulk("EVALSHA") + bulk(hashlib.sha1(_DECIDE.encode()).hexdigest())
        self._eval = bulk("EVAL") + bulk(_DECIDE)
        #: each bucket's key and arguments, framed once
        self._framed: dict[Bucket, tuple[bytes, bytes]] = {}

    def retry_in(self) -> float:
        """Seconds until the circuit closes again (0 when it is closed)."""
        return max(0.0, self._open_until - time.monotonic())

    def _frame(self, bucket: Bucket) -> tuple[bytes, bytes]:
        framed = self._framed.get(bucket)
        if framed is None:
            if len(self._framed) >= 8192:
                self._framed.clear()
            key, limit = bucket
            interval = bulk(repr(limit.interval * _MICRO))
            framed = self._framed[bucket] = (
                bulk(f"{self._prefix}:{key}"),
                interval + bulk(limit.burst),
            )
        return framed

    async def decide(self, buckets: Sequence[Bucket], *, shadow: bool) -> Decision:
        if self._open_until and time.monotonic() < self._open_until:
            raise LimiterUnavailable("circuit open")
        framed = [self._frame(bucket) for bucket in buckets]
        head = b"*%d\r\n" % (4 + 3 * len(buckets))  # EVALSHA sha n keys... shadow args...
        body = b"".join(
            (
                bulk(len(buckets)),
                *(key for key, _ in framed),
                _SHADOW if shadow else _ENFORCE,
                *(limit for _, limit in framed),
            )
        )
        try:
            reply = await self._conn.call(head + self._evalsha + body, self._timeout)
            if isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT"):
                reply = await self._conn.call(head + self._eval + body, self._timeout)
            if isinstance(reply, Exception):
                raise reply
            if not isinstance(reply, list) or len(reply) != 3 * len(buckets):
                raise ValueError(f"unexpected reply from the script: {reply!r}")
            verdicts = tuple(
                _verdict(limit, reply[3 * i] == 1, _us(reply[3 * i + 1]), _us(reply[3 * i + 2]))
                for i, (_, limit) in enumerate(buckets)
            )
        except Exception as exc:  # connection refused or lost, timeouts, error replies
            raise self._failed(exc) from exc
        if self._failing:
            self._succeeded()
        return Decision(all(v.allowed for v in verdicts), verdicts)

    def decide_local(self, buckets: Sequence[Bucket]) -> Decision | None:
        """A decision made without asking Redis, or None (always, here: see
        :class:`gateway.stores.ratelease.LeasedRedisLimiter`)."""
        return None

    def _failed(self, exc: Exception) -> LimiterUnavailable:
        """Open the circuit, tell ``on_error``; the exception for the caller to raise."""
        self._open_until = time.monotonic() + self._breaker_seconds
        self._failing = True
        self._on_error(exc)
        return LimiterUnavailable(f"{type(exc).__name__}: {exc}")

    def _succeeded(self) -> None:
        """A call succeeded: the first after a failure tells ``on_recover``."""
        if self._failing:
            self._failing = False
            self._on_recover()

    async def ping(self) -> bool:
        """Whether Redis answers now (for readiness checks; the circuit is left alone)."""
        try:
            return await self._conn.call(encode_command("PING"), self._timeout) == b"PONG"
        except Exception:
            return False

    async def close(self) -> None:
        await self._conn.close()


_ENFORCE = bulk(0)
_SHADOW = bulk(1)


def _us(value: Reply) -> float:
    """Microseconds from the script, in seconds."""
    if not isinstance(value, int):
        raise ValueError(f"unexpected value from the script: {value!r}")
    return value / _MICRO
