"""The ``webhooks`` plugin's store in Redis: one queue that every gateway instance shares.

The same model as :class:`~gateway.webhooks.store.SqliteStore` (a received event, one
delivery per subscription it was routed to, leases), built on hashes, sorted sets and Lua
scripts; every call that changes anything is one script, so it is atomic: Redis runs a
script to its end before any other command. Keys, under ``key_prefix`` (``P``)::

    P:event:<id>               hash: meta (JSON), body, received, subs (space-separated)
    P:received                 zset: event ids by received time (listing, range replay, prune)
    P:delivery:<sub>:<id>      hash: status, attempts, next_at, lease_until, owner, created,
                               updated, last (JSON [last_status, last_error]), claims (how
                               many times claimed), replay ("1": replayed while leased)
    P:due:<sub>                zset: pending deliveries' event ids by max(next_at, lease_until)
    P:created:<sub>            zset: pending deliveries' event ids by creation (oldest pending)
    P:status:<sub>:<status>    zset: deliveries' event ids by last change (listing)
    P:leases:<owner>           set: "<sub> <id>" leased by a process (expires after its leases)
    P:paused                   set: paused subscriptions (shared by every instance)
    P:subscriptions            set: subscriptions that ever had a delivery (listing)

**Why sorted sets and not Streams.** A delivery is due at a time (a retry an hour away, a
lease that expires), is replayed, dead-lettered and listed by state; a sorted set scored by
the time it is next due is exactly that queue, and claiming is one ``ZRANGEBYSCORE`` plus a
re-score to the lease's end, in one script. Stream consumer groups give pending lists and
``XAUTOCLAIM``, but no delayed retries, so the retry schedule would need a sorted set anyway.

**Once, at least once.** ``record`` stores the event and its deliveries only when no event
with its id exists (Stripe's event id, in the body the subscriber gets, is the dedupe key),
in one script, so the same event posted to two instances at once is recorded once.
``claim`` leases due deliveries to one process until ``lease_until``: nobody else claims
them before, so in steady state each delivery is sent once. A process killed while holding
leases leaves them to expire; then any instance claims and sends them (at least once). A
graceful stop gives them back at once (``release``). Lease times are the instances' wall
clocks: keep them in step (NTP); the lease's margin (``lease_seconds``) covers the skew.

**Durable before acknowledged.** ``record`` returns when Redis has answered the script,
and the plugin answers Stripe only then; how durable that is depends on Redis's
persistence: with ``appendonly yes`` and ``appendfsync always`` Redis fsyncs the write
before it answers; with ``everysec`` (the default once AOF is on) a crash of the Redis
host may lose the last second of acknowledged events; without persistence (or with RDB
snapshots only), a restart loses what came since.
Replication to replicas is asynchronous. A call that times out may still have been
applied: an event answered 503 may be stored (Stripe's retry is then a duplicate), and a
claim the caller gave up on leaves leases that expire.

Redis Cluster is not supported (the scripts touch keys they compute). Run the Redis with
``maxmemory-policy noeviction``: an evicted event cannot be delivered (its deliveries are
dead-lettered, "the event is missing from Redis"). :meth:`RedisStore.open` reads these
settings (``CONFIG GET``) and logs an error naming what to set when AOF is off or keys may
be evicted (or refuses to start, with ``require_durable_redis``).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import structlog

from gateway.errors import ConfigError
from gateway.stores.resp import Reply, ReplyError, RespConnection, encode_command
from gateway.webhooks.store import Claimed, Due, EventRecord

__all__ = ["RedisStore"]

#: events scanned per script call by prune and range replay (a script blocks Redis)
_BATCH = 500

_RECORD = """
local p, id, now = ARGV[1], ARGV[2], ARGV[5]
local ev = p .. ':event:' .. id
if redis.call('EXISTS', ev) == 1 then return 0 end
redis.call('HSET', ev, 'meta', ARGV[3], 'body', ARGV[4], 'received', now, 'subs', ARGV[6])
redis.call('ZADD', p .. ':received', now, id)
for sub in string.gmatch(ARGV[6], '%S+') do
  redis.call('HSET', p .. ':delivery:' .. sub .. ':' .. id, 'status', 'pending',
    'attempts', 0, 'next_at', now, 'lease_until', 0, 'owner', '', 'created', now,
    'updated', now, 'last', '[null,null]')
  redis.call('ZADD', p .. ':due:' .. sub, now, id)
  redis.call('ZADD', p .. ':created:' .. sub, now, id)
  redis.call('ZADD', p .. ':status:' .. sub .. ':pending', now, id)
  redis.call('SADD', p .. ':subscriptions', sub)
end
return 1
"""

_CLAIM = """
local p, sub, owner, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local limit, lease = tonumber(ARGV[5]), ARGV[6]
local due = p .. ':due:' .. sub
local paused = redis.call('SISMEMBER', p .. ':paused', sub)
local claimed = {}
if limit > 0 and paused == 0 then
  local ids = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, limit)
  local leases = p .. ':leases:' .. owner
  for _, id in ipairs(ids) do
    local d = p .. ':delivery:' .. sub .. ':' .. id
    local body = redis.call('HGET', p .. ':event:' .. id, 'body')
    if body then
      redis.call('HSET', d, 'lease_until', lease, 'owner', owner, 'replay', 0)
      local claims = redis.call('HINCRBY', d, 'claims', 1)
      redis.call('ZADD', due, lease, id)
      redis.call('SADD', leases, sub .. ' ' .. id)
      claimed[#claimed + 1] = id
      claimed[#claimed + 1] = redis.call('HGET', d, 'attempts')
      claimed[#claimed + 1] = body
      claimed[#claimed + 1] = claims
    else  -- the event is gone (deleted by hand, or evicted: run Redis with noeviction)
      local old = redis.call('HGET', d, 'status') or 'pending'
      redis.call('HSET', d, 'status', 'dead', 'updated', now,
        'last', '[null,"the event is missing from Redis"]')
      redis.call('ZREM', p .. ':status:' .. sub .. ':' .. old, id)
      redis.call('ZADD', p .. ':status:' .. sub .. ':dead', now, id)
      redis.call('ZREM', due, id)
      redis.call('ZREM', p .. ':created:' .. sub, id)
    end
  end
  if #claimed > 0 then
    local ttl = math.ceil(tonumber(lease) - tonumber(now)) + 60
    if redis.call('TTL', leases) < ttl then redis.call('EXPIRE', leases, ttl) end
  end
end
local first = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
local oldest = redis.call('ZRANGE', p .. ':created:' .. sub, 0, 0, 'WITHSCORES')
return {paused, claimed, first[2] or false, redis.call('ZCARD', due), oldest[2] or false}
"""

# ARGV: prefix, subscription, event id, status, attempts, next_at, last, now, owner, claim;
# returns 1, or 0 when owner's claim is not the delivery's current one (nothing changes)
_FINISH = """
local p, sub, id, status, next_at, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[6], ARGV[8]
local owner, claim = ARGV[9], tonumber(ARGV[10])
local d = p .. ':delivery:' .. sub .. ':' .. id
local old = redis.call('HGET', d, 'status')
if not old or owner == '' or redis.call('HGET', d, 'owner') ~= owner then return 0 end
if tonumber(redis.call('HGET', d, 'claims') or '0') ~= claim then return 0 end
redis.call('SREM', p .. ':leases:' .. owner, sub .. ' ' .. id)
if redis.call('HGET', d, 'replay') == '1' then  -- replayed in flight: queued again instead
  redis.call('HSET', d, 'lease_until', 0, 'owner', '', 'replay', 0, 'updated', now)
  redis.call('ZADD', p .. ':status:' .. sub .. ':pending', now, id)
  redis.call('ZADD', p .. ':due:' .. sub, redis.call('HGET', d, 'next_at'), id)
  return 1
end
redis.call('HSET', d, 'status', status, 'attempts', ARGV[5], 'next_at', next_at,
  'lease_until', 0, 'owner', '', 'updated', now, 'last', ARGV[7])
redis.call('ZREM', p .. ':status:' .. sub .. ':' .. old, id)
redis.call('ZADD', p .. ':status:' .. sub .. ':' .. status, now, id)
if status == 'pending' then
  redis.call('ZADD', p .. ':due:' .. sub, next_at, id)
else
  redis.call('ZREM', p .. ':due:' .. sub, id)
  redis.call('ZREM', p .. ':created:' .. sub, id)
end
return 1
"""

_RELEASE = """
local p, owner = ARGV[1], ARGV[2]
local leases = p .. ':leases:' .. owner
local count = 0
for _, member in ipairs(redis.call('SMEMBERS', leases)) do
  local sub, id = string.match(member, '^(%S+) (.*)$')
  local d = p .. ':delivery:' .. sub .. ':' .. id
  if redis.call('HGET', d, 'owner') == owner and redis.call('HGET', d, 'status') == 'pending' then
    redis.call('HSET', d, 'lease_until', 0, 'owner', '', 'replay', 0)
    redis.call('ZADD', p .. ':due:' .. sub, redis.call('HGET', d, 'next_at'), id)
    count = count + 1
  end
end
redis.call('DEL', leases)
return count
"""

# ARGV: prefix, subscription, now, then "one" and an event id, or "range", since, until,
# offset, count; returns {queued, events scanned}. A delivery with a live lease (an attempt
# in flight) keeps it, marked replay: its finish queues it again (see _FINISH).
_REPLAY = """
local p, sub, now = ARGV[1], ARGV[2], ARGV[3]
local function requeue(id)
  local d = p .. ':delivery:' .. sub .. ':' .. id
  local old = redis.call('HGET', d, 'status')
  if not old then return 0 end
  local owner = redis.call('HGET', d, 'owner')
  local leased = owner and owner ~= ''
  if leased and tonumber(redis.call('HGET', d, 'lease_until')) > tonumber(now) then
    redis.call('HSET', d, 'attempts', 0, 'next_at', now, 'created', now, 'updated', now,
      'last', '[null,null]', 'replay', 1)
    redis.call('ZADD', p .. ':status:' .. sub .. ':pending', now, id)
    redis.call('ZADD', p .. ':created:' .. sub, now, id)
    return 1
  end
  if leased then redis.call('SREM', p .. ':leases:' .. owner, sub .. ' ' .. id) end
  redis.call('HSET', d, 'status', 'pending', 'attempts', 0, 'next_at', now, 'lease_until', 0,
    'owner', '', 'created', now, 'updated', now, 'last', '[null,null]', 'replay', 0)
  redis.call('ZREM', p .. ':status:' .. sub .. ':' .. old, id)
  redis.call('ZADD', p .. ':status:' .. sub .. ':pending', now, id)
  redis.call('ZADD', p .. ':due:' .. sub, now, id)
  redis.call('ZADD', p .. ':created:' .. sub, now, id)
  return 1
end
if ARGV[4] == 'one' then return {requeue(ARGV[5]), 1} end
local ids = redis.call('ZRANGEBYSCORE', p .. ':received', ARGV[5], '(' .. ARGV[6],
  'LIMIT', ARGV[7], ARGV[8])
local count = 0
for _, id in ipairs(ids) do count = count + requeue(id) end
return {count, #ids}
"""

# ARGV: prefix, before, offset, count; returns {events gone, events kept, events scanned}
_PRUNE = """
local p = ARGV[1]
local ids = redis.call('ZRANGEBYSCORE', p .. ':received', '-inf', '(' .. ARGV[2],
  'LIMIT', ARGV[3], ARGV[4])
local gone, kept = 0, 0
for _, id in ipairs(ids) do
  local ev = p .. ':event:' .. id
  local subs = redis.call('HGET', ev, 'subs') or ''
  local pending = false
  for sub in string.gmatch(subs, '%S+') do
    if redis.call('HGET', p .. ':delivery:' .. sub .. ':' .. id, 'status') == 'pending' then
      pending = true
    end
  end
  if pending then
    kept = kept + 1
  else
    for sub in string.gmatch(subs, '%S+') do
      local d = p .. ':delivery:' .. sub .. ':' .. id
      local status = redis.call('HGET', d, 'status')
      if status then redis.call('ZREM', p .. ':status:' .. sub .. ':' .. status, id) end
      redis.call('DEL', d)
    end
    redis.call('DEL', ev)
    redis.call('ZREM', p .. ':received', id)
    gone = gone + 1
  end
end
return {gone, kept, #ids}
"""

_EVENTS = """
local p = ARGV[1]
local ids = redis.call('ZREVRANGE', p .. ':received', 0, tonumber(ARGV[2]) - 1, 'WITHSCORES')
local out = {}
for i = 1, #ids, 2 do
  out[#out + 1] = ids[i]
  out[#out + 1] = ids[i + 1]
  out[#out + 1] = redis.call('HGET', p .. ':event:' .. ids[i], 'meta')
end
return out
"""

# ARGV: prefix, limit, then a flag ("1" given, "0" not) and a value for each of
# subscription, status, event_id; returns {sub, id, {field, value, ...}, ...}
_DELIVERIES = """
local p, limit = ARGV[1], tonumber(ARGV[2])
local want_sub, sub_value = ARGV[3] == '1', ARGV[4]
local want_status, status_value = ARGV[5] == '1', ARGV[6]
local want_event, event_value = ARGV[7] == '1', ARGV[8]
local found = {}
if want_event then
  local subs = redis.call('HGET', p .. ':event:' .. event_value, 'subs') or ''
  for sub in string.gmatch(subs, '%S+') do
    if not want_sub or sub == sub_value then
      local d = p .. ':delivery:' .. sub .. ':' .. event_value
      local status = redis.call('HGET', d, 'status')
      if status and (not want_status or status == status_value) then
        found[#found + 1] = {tonumber(redis.call('HGET', d, 'updated')), sub, event_value}
      end
    end
  end
else
  local subs = {sub_value}
  if not want_sub then subs = redis.call('SMEMBERS', p .. ':subscriptions') end
  local statuses = {status_value}
  if not want_status then statuses = {'pending', 'delivered', 'dead'} end
  for _, sub in ipairs(subs) do
    for _, status in ipairs(statuses) do
      local rows = redis.call('ZREVRANGE', p .. ':status:' .. sub .. ':' .. status,
        0, limit - 1, 'WITHSCORES')
      for i = 1, #rows, 2 do
        found[#found + 1] = {tonumber(rows[i + 1]), sub, rows[i]}
      end
    end
  end
end
table.sort(found, function(a, b)
  if a[1] ~= b[1] then return a[1] > b[1] end
  if a[3] ~= b[3] then return a[3] > b[3] end
  return a[2] > b[2]
end)
local out = {}
for i = 1, math.min(limit, #found) do
  local sub, id = found[i][2], found[i][3]
  out[#out + 1] = sub
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGETALL', p .. ':delivery:' .. sub .. ':' .. id)
end
return out
"""


class _Script:
    """A Lua script, called by its SHA-1 and sent in full when Redis does not have it."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


_SCRIPTS = {
    name: _Script(source)
    for name, source in (
        ("record", _RECORD),
        ("claim", _CLAIM),
        ("finish", _FINISH),
        ("release", _RELEASE),
        ("replay", _REPLAY),
        ("prune", _PRUNE),
        ("events", _EVENTS),
        ("deliveries", _DELIVERIES),
    )
}


def _text(value: Reply) -> str:
    if not isinstance(value, bytes):
        raise TypeError(f"unexpected reply from Redis: {type(value).__name__}")
    return value.decode()


def _list(value: Reply) -> list[Reply]:
    if not isinstance(value, list):
        raise TypeError(f"unexpected reply from Redis: {type(value).__name__}")
    return value


def _int(value: Reply) -> int:
    if isinstance(value, int):
        return value
    return int(_text(value))


class RedisStore:
    """The store in the Redis at ``url`` (keys under ``prefix``); every call is one script
    on one pipelined connection (:mod:`gateway.stores.resp`), opened when first needed.

    Failures are exceptions (:class:`OSError`, :class:`TimeoutError`, :class:`ReplyError`):
    the plugin answers an event it could not store with 503, and a dispatcher that could
    not claim tries again at its next poll."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        timeout: float,
        log: Any = None,
        require_durable: bool = False,
    ) -> None:
        self._conn = RespConnection(url, connect_timeout=timeout)
        self._prefix = prefix
        self._timeout = timeout
        self._log = structlog.get_logger("gateway") if log is None else log
        self._require_durable = require_durable

    async def _run(self, name: str, *args: bytes | str | int | float) -> Reply:
        script = _SCRIPTS[name]
        reply = await self._conn.call(
            encode_command("EVALSHA", script.sha, 0, self._prefix, *args), self._timeout
        )
        if isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT"):
            reply = await self._conn.call(
                encode_command("EVAL", script.source, 0, self._prefix, *args), self._timeout
            )
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def open(self) -> None:
        """Check that the Redis keeps what it acknowledges (``CONFIG GET appendonly``,
        ``appendfsync``, ``maxmemory-policy``): one error line (``webhook_redis_not_durable``)
        naming what to set when AOF is off or keys may be evicted, a warning when
        ``appendfsync`` is not ``always``, and a warning when it cannot be checked (CONFIG
        disabled, or Redis down: events are refused with 503 until it is back). With
        ``require_durable`` the first and the last stop start-up (:class:`ConfigError`)."""
        where = "plugins.webhooks.require_durable_redis"
        try:
            aof, fsync, policy = [
                await self._config_get(name)
                for name in ("appendonly", "appendfsync", "maxmemory-policy")
            ]
        except (OSError, TimeoutError, ReplyError, TypeError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            if self._require_durable:
                await self._conn.close()  # start-up stops: nobody else will
                raise ConfigError(
                    where, f"cannot check the webhooks Redis's persistence ({reason})"
                ) from None
            self._log.warning(
                "webhook_redis_durability_unchecked",
                error=reason,
                message="could not read appendonly and maxmemory-policy (CONFIG GET); "
                "make sure this Redis runs with appendonly yes, appendfsync always and "
                "maxmemory-policy noeviction, or acknowledged events may be lost",
            )
            return
        wanted = {"appendonly": "yes", "appendfsync": "always", "maxmemory-policy": "noeviction"}
        found = {"appendonly": aof, "appendfsync": fsync, "maxmemory-policy": policy}
        change = [f"{k} {v}" for k, v in wanted.items() if found[k] != v]
        if aof != "yes" or policy != "noeviction":
            message = (
                "the webhooks Redis can lose acknowledged events ("
                + ("no append-only file" if aof != "yes" else "keys may be evicted")
                + (" and keys may be evicted" if aof != "yes" and policy != "noeviction" else "")
                + f"): set {', '.join(change)}"
            )
            if self._require_durable:
                await self._conn.close()
                raise ConfigError(where, message)
            self._log.error(
                "webhook_redis_not_durable",
                appendonly=aof,
                appendfsync=fsync,
                maxmemory_policy=policy,
                message=message,
            )
        elif fsync != "always":
            self._log.warning(
                "webhook_redis_not_durable",
                appendonly=aof,
                appendfsync=fsync,
                maxmemory_policy=policy,
                message="a crash of the Redis host may lose the last second of acknowledged "
                "events: set appendfsync always",
            )

    async def _config_get(self, name: str) -> str:
        reply = await self._conn.call(encode_command("CONFIG", "GET", name), self._timeout)
        if isinstance(reply, Exception):
            raise reply
        pairs = _list(reply)
        return _text(pairs[1]) if len(pairs) == 2 else ""

    async def close(self) -> None:
        await self._conn.close()

    # ----------------------------------------------------------------- ingress

    async def record(self, event: EventRecord, subscriptions: list[str], now: float) -> bool:
        """Store ``event`` and a pending delivery to each of ``subscriptions`` in one
        script; ``False`` (and nothing written) when an event with its id is stored."""
        meta = orjson.dumps(
            {
                "source": event.source,
                "type": event.type,
                "object": event.object,
                "livemode": event.livemode,
                "account": event.account,
                "object_id": event.object_id,
            }
        )
        subs = " ".join(subscriptions)
        return await self._run("record", event.id, meta, event.body, repr(now), subs) == 1

    # ----------------------------------------------------------------- delivery

    async def claim(
        self, subscription: str, owner: str, now: float, limit: int, lease_until: float
    ) -> Due:
        """Lease up to ``limit`` due deliveries of ``subscription`` (none when paused)."""
        reply = _list(
            await self._run(
                "claim", subscription, owner, repr(now), max(0, limit), repr(lease_until)
            )
        )
        paused, rows, next_at, pending, oldest = reply
        flat = _list(rows)
        claimed = []
        for i in range(0, len(flat), 4):
            body = flat[i + 2]
            if not isinstance(body, bytes):
                raise TypeError(f"unexpected reply from Redis: {type(body).__name__}")
            claimed.append(Claimed(_text(flat[i]), _int(flat[i + 1]), body, _int(flat[i + 3])))
        return Due(
            claimed,
            None if next_at is None else float(_text(next_at)),
            _int(pending),
            None if oldest is None else float(_text(oldest)),
            _int(paused) == 1,
        )

    async def finish(
        self,
        event_id: str,
        subscription: str,
        *,
        owner: str,
        claim: int,
        status: str,
        attempts: int,
        next_at: float,
        last_status: int | None,
        last_error: str | None,
        now: float,
    ) -> bool:
        """Record an attempt's outcome (``pending``: retry at ``next_at``, ``delivered``,
        ``dead``) and release the lease, when ``owner``'s ``claim`` is the delivery's
        current one (else nothing changes: ``False``); a delivery replayed meanwhile is
        queued again instead."""
        if status not in ("pending", "delivered", "dead"):
            raise ValueError(f"not a delivery status: {status!r}")
        last = orjson.dumps([last_status, last_error])
        reply = await self._run(
            "finish",
            subscription,
            event_id,
            status,
            attempts,
            repr(next_at),
            last,
            repr(now),
            owner,
            claim,
        )
        return _int(reply) == 1

    async def release(self, owner: str) -> None:
        """Give up ``owner``'s leases (at shutdown: another process may send them now)."""
        await self._run("release", owner)

    async def prune(self, before: float) -> int:
        """Forget the events received before ``before`` whose deliveries are all over
        (delivered or dead), with those deliveries; returns how many events went. In
        batches: Redis serves other calls between them."""
        gone, offset = 0, 0
        while True:
            reply = _list(await self._run("prune", repr(before), offset, _BATCH))
            gone += _int(reply[0])
            offset += _int(reply[1])  # the kept ones stay in front of the next batch
            if _int(reply[2]) < _BATCH:
                return gone

    # ----------------------------------------------------------------- operations

    async def set_paused(self, subscription: str, paused: bool) -> None:
        command = "SADD" if paused else "SREM"
        reply = await self._conn.call(
            encode_command(command, f"{self._prefix}:paused", subscription), self._timeout
        )
        if isinstance(reply, Exception):
            raise reply

    async def replay(self, event_id: str, subscription: str, now: float) -> bool:
        """Queue ``event_id`` for ``subscription`` again, from its first attempt (whatever
        happened to it before); ``False`` when the event was never routed to that
        subscription (a replay never reaches a subscription the event did not match)."""
        reply = _list(await self._run("replay", subscription, repr(now), "one", event_id))
        return _int(reply[0]) == 1

    async def replay_range(self, subscription: str, since: float, until: float, now: float) -> int:
        """:meth:`replay` every stored event received in ``[since, until)`` that was routed
        to ``subscription`` (the others are left alone); returns how many were queued. In
        batches of events, each atomic."""
        queued, offset = 0, 0
        while True:
            reply = _list(
                await self._run(
                    "replay",
                    subscription,
                    repr(now),
                    "range",
                    repr(since),
                    repr(until),
                    offset,
                    _BATCH,
                )
            )
            queued += _int(reply[0])
            offset += _int(reply[1])
            if _int(reply[1]) < _BATCH:
                return queued

    async def events(self, limit: int) -> list[dict[str, Any]]:
        """The most recently received events (newest first), without their bodies."""
        flat = _list(await self._run("events", limit))
        out = []
        for i in range(0, len(flat), 3):
            meta = flat[i + 2]
            item: dict[str, Any] = {"id": _text(flat[i])}
            item.update(orjson.loads(meta) if isinstance(meta, bytes) else {})
            item["received"] = float(_text(flat[i + 1]))
            out.append(item)
        return out

    async def deliveries(
        self,
        *,
        subscription: str | None = None,
        status: str | None = None,
        event_id: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Deliveries, the most recently changed first, filtered by what is given."""
        args: list[str | int] = [limit]
        for value in (subscription, status, event_id):
            args += ["0", ""] if value is None else ["1", value]
        flat = _list(await self._run("deliveries", *args))
        out = []
        for i in range(0, len(flat), 3):
            pairs = _list(flat[i + 2])
            fields = {_text(pairs[j]): _text(pairs[j + 1]) for j in range(0, len(pairs), 2)}
            if not fields:  # gone between the index and the hash (cannot happen in a script)
                continue
            last_status, last_error = orjson.loads(fields["last"])
            out.append(
                {
                    "event_id": _text(flat[i + 1]),
                    "subscription": _text(flat[i]),
                    "status": fields["status"],
                    "attempts": int(fields["attempts"]),
                    "next_at": float(fields["next_at"]),
                    "created": float(fields["created"]),
                    "updated": float(fields["updated"]),
                    "last_status": last_status,
                    "last_error": last_error,
                }
            )
        return out
