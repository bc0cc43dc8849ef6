"""Token leases: the Redis rate limiter without a round trip for most requests.

:class:`~gateway.stores.ratestore.RedisLimiter` asks Redis for every request (one Lua
script call). :class:`LeasedRedisLimiter` has each gateway instance *reserve* a few units
of a shared bucket in Redis and hand them out locally, syncing in the background, without
ever letting more through than the GCRA bound.

Redis holds, next to each bucket's TAT (``{prefix}:{key}``), a hash of reservations
(``{prefix}:res:{key}``: bucket keys start with ``t:`` or ``a:``, so it is never another
bucket's key): field = a limiter's random id, value = ``units:expires_us`` (units that
limiter holds and has not reported as used, and when Redis drops them, on its own clock).
One script call, per bucket, drops expired reservations, applies the caller's report of
the units it handed out since its last report (the TAT is charged for them *then*: later
than the use, so conservatively), decides the request itself (cost 1; a background sync
costs 0) counting every reservation as used, and grants the caller at most an eighth of
the free room (so near the limit leases shrink to nothing and every request asks Redis,
exactly as without leases), up to ``lease`` units held at once.

Why it never lets more through: at every moment, for every bucket, the TAT's debt plus
every instance's reserved units is at most ``burst`` intervals (each script call keeps it
so: a grant is at most the free room). A unit is out of the free room from its grant until
the report that charges it to the TAT, after which the TAT refills it at the rate, like
any request. So a unit handed out locally was taken from the room at its grant, never
twice, and admissions over any span ``t``, summed over every instance, stay within
``burst + rate * t``. A reservation its holder did not report or give back in time (a
crash, a shutdown with calls in flight, a Redis hiccup that opened the holder's circuit,
a stalled event loop) is charged as used when Redis drops it, since some of it may have
been handed out: the hash outlives its latest reservation by the time a full bucket takes
to refill, so the script always sees an expired one. Its holder's late report charges
those units again; that only ever lets fewer through. In the normal course an instance
stops using a lease ``lease_seconds / 2`` after the call that granted it was sent, Redis
keeps it ``lease_seconds`` after it ran, and the sweeper reports and gives back expired
leases every ``lease_seconds / 4``, so nothing is charged twice. A request asked of
Redis does not spend a unit its own instance holds: those may have been handed out
locally after the call was sent, and are reported by a later call.

No lease is taken on a bucket's first request on an instance: a bucket seen once (a
one-off credential, a team that calls now and then) costs one script call, as without
leases, and leaves nothing to give back.

The price: another instance's reserved units make a bucket refuse slightly early
(under-admission, bounded by the reservations, for at most ``lease_seconds``, or until
refilled when a holder vanished), and the
``RateLimit-Remaining`` of a locally decided request is this instance's estimate.

Several calls for one bucket may be in flight at once (pipelined on one connection).
Each records the bucket's count of units handed out when it is sent and reports the units
since the last report; its reply says how many units this instance still holds, and the
units handed out since then are taken off. A failed call's report is sent again by the
next one (reporting twice only charges more: safe).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import secrets
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.stores.ratestore import (
    Bucket,
    Decision,
    Limit,
    LimiterUnavailable,
    RedisLimiter,
    Verdict,
    _verdict,
)
from gateway.stores.resp import ReplyError, bulk

__all__ = ["LeasedRedisLimiter"]

_MICRO = 1_000_000
_new_tuple = tuple.__new__

# KEYS: per bucket, its TAT key, then its reservations key. ARGV[1]: "1" to charge the
# buckets that allow even when another refuses (shadow); ARGV[2]: the request's cost (1, or
# 0 for a sync); ARGV[3]: "1" to give this instance's reservation back; ARGV[4]: this
# instance's id; ARGV[5]: how long (µs) Redis keeps a reservation; then per bucket:
# interval (µs), burst, units used since the last report, units to hold after the call.
# Returns per bucket: allowed, debt (µs, reservations counted as used), wait (µs), units
# this instance holds after the call, free units left, units granted by this call.
_LEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local shadow = ARGV[1] == '1'
local cost = tonumber(ARGV[2])
local release = ARGV[3] == '1'
local id = ARGV[4]
local lease_us = tonumber(ARGV[5])
local n = #KEYS / 2
local all = true
local s = {}
for i = 1, n do
  local a = 5 + 4 * (i - 1)
  local b = {interval = tonumber(ARGV[a + 1]), burst = tonumber(ARGV[a + 2]),
             want = tonumber(ARGV[a + 4])}
  local used = tonumber(ARGV[a + 3])
  local tat = tonumber(redis.call('GET', KEYS[2 * i - 1])) or now
  if tat < now then tat = now end
  b.tat0 = tat
  local others, own, last = 0, 0, 0
  local fields = redis.call('HGETALL', KEYS[2 * i])
  b.had = #fields > 0
  for j = 1, #fields, 2 do
    local units, exp = string.match(fields[j + 1], '^(%d+):(%d+)$')
    units = tonumber(units)
    exp = tonumber(exp)
    if units == nil or exp == nil then
      redis.call('HDEL', KEYS[2 * i], fields[j])
    elseif exp <= now then
      -- its holder did not report or release it in time (a crash, a Redis hiccup that
      -- opened its circuit, a stalled loop): some of it may have been handed out, so it
      -- is charged as used; a late report charges those units again (only ever fewer pass)
      redis.call('HDEL', KEYS[2 * i], fields[j])
      tat = tat + units * b.interval
    elseif fields[j] == id then
      own = units
    else
      others = others + units
      if exp > last then last = exp end
    end
  end
  if used > 0 then
    tat = tat + used * b.interval
    own = math.max(0, own - used)
  end
  if release then own = 0 end
  -- every reservation counts as used, this instance's too: units it holds may have been
  -- handed out since this call was sent (they are reported by a later call)
  local allow_at = tat + (others + own + cost - b.burst) * b.interval
  b.ok = allow_at - now <= 1
  if not b.ok then all = false end
  b.wait = allow_at - now
  b.tat, b.own, b.others, b.last = tat, own, others, last
  s[i] = b
end
local charge = all or shadow
local out = {}
for i = 1, n do
  local b = s[i]
  local interval = b.interval
  local tat, own = b.tat, b.own
  if b.ok and charge then tat = tat + cost * interval end
  local room = now + 1 + b.burst * interval - tat - (b.others + own) * interval
  local free = math.floor(room / interval)
  if free < 0 then free = 0 end
  local k = 0
  if all and b.want > own then k = math.min(b.want - own, math.floor(free / 8)) end
  own = own + k
  free = free - k
  if tat > b.tat0 then
    local ttl = math.ceil((tat - now) / 1000) + 1
    redis.call('SET', KEYS[2 * i - 1], string.format('%.0f', tat), 'PX', ttl)
  end
  if own > 0 then
    local exp = now + lease_us
    redis.call('HSET', KEYS[2 * i], id, string.format('%.0f:%.0f', own, exp))
    if b.last > exp then exp = b.last end
    -- kept until a charge at the latest expiry would have refilled (debt plus reservations
    -- is at most burst intervals), so an expired reservation is seen and charged
    redis.call('PEXPIRE', KEYS[2 * i], math.ceil((exp - now + b.burst * interval) / 1000) + 1)
  elseif b.had then
    redis.call('HDEL', KEYS[2 * i], id)
  end
  out[6 * i - 5] = b.ok and 1 or 0
  out[6 * i - 4] = tat + (b.others + own) * interval - now
  out[6 * i - 3] = b.ok and 0 or b.wait
  out[6 * i - 2] = own
  out[6 * i - 1] = free
  out[6 * i] = k
end
return out
"""


@dataclass(slots=True, eq=False)
class _Lease:
    """This instance's part of one shared bucket."""

    #: the bucket's limit (a release sends it: the script charges reports by its interval)
    limit: Limit
    #: units that may still be handed out locally (until ``expires``)
    left: int = 0
    #: units handed out locally, ever (a counter calls record when they are sent)
    handed: int = 0
    #: the value of ``handed`` up to which units were sent in a report
    reported: int = 0
    #: the time (limiter's clock) after which the lease is not used any more
    expires: float = 0.0
    #: units Redis held for this instance after the last reply (a sync starts when
    #: ``left`` falls to half of it: a small grant must not delay the next one)
    size: int = 0
    #: free units Redis reported with the last reply (for RateLimit-Remaining)
    free: int = 0
    #: the (reported from, reported to) ranges of the calls in flight
    pending: list[tuple[int, int]] = field(default_factory=list)
    #: a release is on its way (a reply to a call sent before it grants nothing usable:
    #: the release, run after it, gives that grant back)
    releasing: bool = False


class LeasedRedisLimiter(RedisLimiter):
    """A :class:`RedisLimiter` that reserves up to ``lease`` units of each shared bucket
    and hands them out without a round trip (see the module docstring).

    :meth:`decide_local` answers synchronously when every bucket has a valid leased unit;
    :meth:`decide` asks Redis (and takes a lease). Background syncs and the sweeper run as
    tasks outside any request's context (no request's trace holds them); their failures
    go to ``on_error`` and open the circuit like any other. While the circuit is open,
    leased units still valid are handed out (Redis holds them for this instance)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        timeout: float,
        breaker_seconds: float,
        on_error: Callable[[BaseException], None],
        on_recover: Callable[[], None] = lambda: None,
        lease: int = 32,
        lease_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            url,
            prefix=prefix,
            timeout=timeout,
            breaker_seconds=breaker_seconds,
            on_error=on_error,
            on_recover=on_recover,
        )
        if lease < 1 or lease_seconds <= 0:
            raise ValueError("lease must be at least 1 and lease_seconds more than 0")
        self._lease = lease
        #: the clock of lease expiry (tests move it on; the circuit keeps time.monotonic)
        self._clock = clock
        self._lease_seconds = lease_seconds
        self._use_for = lease_seconds / 2
        self._id = secrets.token_hex(8)
        self._instance = bulk(self._id) + bulk(round(lease_seconds * _MICRO))
        sha = hashlib.sha1(_LEASE.encode()).hexdigest()
        self._lease_evalsha = bulk("EVALSHA") + bulk(sha)
        self._lease_eval = bulk("EVAL") + bulk(_LEASE)
        self._want = bulk(lease)
        self._leases: dict[str, _Lease] = {}
        #: each bucket's keys and arguments, framed once
        self._lease_framed: dict[Bucket, tuple[bytes, bytes, bytes]] = {}
        #: the bucket sets with a background sync in flight (one each)
        self._syncing: set[tuple[str, ...]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def instance_id(self) -> str:
        """This limiter's field in the reservation hashes."""
        return self._id

    def lease_of(self, key: str) -> tuple[int, float] | None:
        """(units left, seconds until it is not used any more) of a bucket's lease."""
        lease = self._leases.get(key)
        if lease is None:
            return None
        return lease.left, lease.expires - self._clock()

    # ------------------------------------------------------------------ local decisions

    def decide_local(self, buckets: Sequence[Bucket]) -> Decision | None:
        """An allowed decision from this instance's leases, when every bucket has a valid
        unit left (one is taken from each); None when Redis has to decide."""
        leases = self._leases
        now = self._clock()
        for key, _ in buckets:
            lease = leases.get(key)
            if lease is None or lease.left <= 0 or lease.expires <= now:
                return None
        verdicts: list[Verdict] = []
        low = False
        for key, limit in buckets:
            lease = leases[key]
            lease.left -= 1
            lease.handed += 1
            if lease.left * 2 <= lease.size:
                low = True
            remaining = min(limit.burst, lease.free + lease.left)
            reset = (limit.burst - remaining) * limit.interval
            verdicts.append(_new_tuple(Verdict, (limit, True, remaining, reset, 0.0)))
        if low:
            self._sync_soon(buckets)
        return Decision(True, tuple(verdicts))

    def _sync_soon(self, buckets: Sequence[Bucket]) -> None:
        """One background sync per bucket set at a time (single-flight)."""
        keys = tuple(key for key, _ in buckets)
        if keys in self._syncing or self._closed or self.retry_in() > 0:
            return
        self._syncing.add(keys)
        self._spawn(self._sync(keys, tuple(buckets)))

    async def _sync(self, keys: tuple[str, ...], buckets: Sequence[Bucket]) -> None:
        try:
            await self._call(buckets, shadow=False, cost=0, release=False)
        except LimiterUnavailable:
            pass  # on_error heard of it; the units stay counted for the next report
        finally:
            self._syncing.discard(keys)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        # a fresh context: a background call belongs to no request (nor to its trace)
        task = asyncio.get_running_loop().create_task(coro, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ Redis

    async def decide(self, buckets: Sequence[Bucket], *, shadow: bool) -> Decision:
        return await self._call(buckets, shadow=shadow, cost=1, release=False)

    def _lease_frame(self, bucket: Bucket) -> tuple[bytes, bytes, bytes]:
        framed = self._lease_framed.get(bucket)
        if framed is None:
            if len(self._lease_framed) >= 8192:
                self._lease_framed.clear()
            key, limit = bucket
            framed = self._lease_framed[bucket] = (
                bulk(f"{self._prefix}:{key}"),
                bulk(f"{self._prefix}:res:{key}"),
                bulk(repr(limit.interval * _MICRO)) + bulk(limit.burst),
            )
        return framed

    async def _call(
        self, buckets: Sequence[Bucket], *, shadow: bool, cost: int, release: bool
    ) -> Decision:
        if self._open_until and time.monotonic() < self._open_until:
            raise LimiterUnavailable("circuit open")
        n = len(buckets)
        leases: list[_Lease] = []
        ranges: list[tuple[int, int]] = []
        args: list[bytes] = []
        keys: list[bytes] = []
        want = _ZERO if release or self._closed else self._want
        for bucket in buckets:
            key_bytes, res_bytes, limit_args = self._lease_frame(bucket)
            lease = self._leases.get(bucket[0])
            bucket_want = want
            if lease is None:
                # no lease on a bucket's first request here: a bucket seen once (a one-off
                # credential, a team that calls now and then) costs one call, not a
                # reservation to give back; one that follows soon after takes one
                bucket_want = _ZERO
                lease = self._leases[bucket[0]] = _Lease(bucket[1])
                if self._sweeper is None and not self._closed:  # it also forgets idle ones
                    self._sweeper = asyncio.get_running_loop().create_task(
                        self._sweep_forever(), context=contextvars.Context()
                    )
            sent = (lease.reported, lease.handed)
            lease.reported = lease.handed
            lease.pending.append(sent)
            leases.append(lease)
            ranges.append(sent)
            keys += (key_bytes, res_bytes)
            args += (limit_args, bulk(sent[1] - sent[0]), bucket_want)
        head = b"*%d\r\n" % (8 + 6 * n)
        body = b"".join(
            (
                bulk(2 * n),
                *keys,
                _SHADOW if shadow else _ENFORCE,
                _COST[cost],
                _ENFORCE if not release else _SHADOW,
                self._instance,
                *args,
            )
        )
        sent_at = self._clock()
        try:
            reply = await self._conn.call(head + self._lease_evalsha + body, self._timeout)
            if isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT"):
                reply = await self._conn.call(head + self._lease_eval + body, self._timeout)
            if isinstance(reply, Exception):
                raise reply
            if not isinstance(reply, list) or len(reply) != 6 * n:
                raise ValueError(f"unexpected reply from the script: {reply!r}")
            values = [_int(value) for value in reply]
        except BaseException as exc:
            for lease, sent in zip(leases, ranges, strict=True):
                lease.pending.remove(sent)
                lease.reported = min(lease.reported, sent[0])  # sent again next time
            if not isinstance(exc, Exception):  # cancelled
                raise
            raise self._failed(exc) from exc
        self._succeeded()
        verdicts: list[Verdict] = []
        for i, ((_, limit), lease, sent) in enumerate(zip(buckets, leases, ranges, strict=True)):
            allowed, debt, wait, own, free, _granted = values[6 * i : 6 * i + 6]
            lease.pending.remove(sent)
            # units handed out after the earliest report Redis may not have applied yet:
            # a call still in flight, or one that failed (its report is sent again, so
            # ``reported`` went back): the units it carried may still count as held
            base = min([sent[1], lease.reported, *(start for start, _ in lease.pending)])
            lease.left = max(0, own - (lease.handed - base))
            lease.free = free
            lease.size = own
            lease.expires = sent_at + self._use_for if own > 0 else 0.0
            if lease.releasing and not release:
                lease.left, lease.expires = 0, 0.0
            if allowed:
                remaining = min(limit.burst, free + lease.left)
                reset = (limit.burst - remaining) * limit.interval
                verdicts.append(Verdict(limit, True, remaining, reset, 0.0))
            else:
                verdicts.append(_verdict(limit, False, debt / _MICRO, wait / _MICRO))
        return Decision(all(v.allowed for v in verdicts), tuple(verdicts))

    # ------------------------------------------------------------------ giving back

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._lease_seconds / 4)
            await self.sweep()

    async def sweep(self) -> None:
        """Report and give back every lease past its time; forget idle ones."""
        now = self._clock()
        due: list[Bucket] = []
        for key, lease in list(self._leases.items()):
            if lease.expires > now or lease.pending:
                continue  # in use, or a call in flight would race the release
            if lease.size or lease.handed > lease.reported:
                # marked now, not when the release is sent (a turn of the loop later): a
                # request's call sent in between is answered first, and its grant must not
                # be handed out, since the release then gives it back
                lease.releasing = True
                due.append((key, lease.limit))
            else:
                del self._leases[key]
        if due:
            await asyncio.gather(*(self._release(bucket) for bucket in due))

    async def _release(self, bucket: Bucket) -> None:
        # on failure on_error heard of it, and Redis drops the reservation by itself
        # (charging it as used)
        try:
            with contextlib.suppress(LimiterUnavailable):
                await self._call((bucket,), shadow=True, cost=0, release=True)
        finally:
            lease = self._leases.get(bucket[0])
            if lease is not None:
                lease.releasing = False

    async def close(self) -> None:
        """Give every reservation back (best effort, within the timeout), then close."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for lease in self._leases.values():
            lease.expires = 0.0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2 * self._timeout):
                await self.sweep()
        await super().close()


_ENFORCE = bulk(0)
_SHADOW = bulk(1)
_ZERO = bulk(0)
_COST = (bulk(0), bulk(1))


def _int(value: object) -> int:
    if not isinstance(value, int):
        raise ValueError(f"unexpected value from the script: {value!r}")
    return value
