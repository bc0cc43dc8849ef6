"""Where cached answers live: in this process (``memory``) or shared in Redis (``redis``).

Both stores keep, per object id, the keys of every cached variant of that object (all
credentials, versions and expansions), so one write can evict them all, and a tombstone
time per evicted object, so an answer fetched before a write finished is never stored
after it (a retrieve right after an update always sees the update).
"""

from __future__ import annotations

import hashlib
import heapq
import math
import operator
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple, Protocol

import cachetools
import orjson

from gateway.stores.resp import Reply, ReplyError, RespConnection, bulk, encode_command

__all__ = ["CacheStore", "Entry", "MemoryStore", "RedisStore", "StoreUnavailable"]


class StoreUnavailable(Exception):
    """The store could not answer (Redis down, timed out, or its circuit is open)."""


class _EntryFields(NamedTuple):
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    #: time.time() when stored
    stored_at: float
    #: time.time() until which the entry is fresh
    fresh_until: float
    #: time.time() until which it may be served stale on upstream errors
    stale_until: float
    #: bytes it counts for in a store's bound (body, headers and a fixed overhead),
    #: computed once: the LRU asks on every put and every drop
    size: int


class Entry(_EntryFields):
    """A cached answer: immutable, made by keyword (``size`` is computed). A named tuple
    rather than a frozen dataclass: one is made for every answer stored, and a frozen
    dataclass sets each field through ``object.__setattr__`` (twice as slow)."""

    __slots__ = ()

    def __new__(
        cls,
        *,
        status: int,
        headers: tuple[tuple[str, str], ...],
        body: bytes,
        stored_at: float,
        fresh_until: float,
        stale_until: float,
    ) -> Entry:
        size = len(body) + 64
        for k, v in headers:
            size += len(k) + len(v)
        return tuple.__new__(
            cls, (status, headers, body, stored_at, fresh_until, stale_until, size)
        )

    def encode(self) -> bytes:
        head = orjson.dumps(
            [self.status, self.headers, self.stored_at, self.fresh_until, self.stale_until]
        )
        return head + b"\n" + self.body

    @classmethod
    def decode(cls, data: bytes) -> Entry:
        head, _, body = data.partition(b"\n")
        status, headers, stored_at, fresh_until, stale_until = orjson.loads(head)
        return cls(
            status=int(status),
            headers=tuple((str(k), str(v)) for k, v in headers),
            body=body,
            stored_at=float(stored_at),
            fresh_until=float(fresh_until),
            stale_until=float(stale_until),
        )


class CacheStore(Protocol):
    async def get(self, key: str) -> Entry | None: ...

    async def put(self, key: str, entry: Entry, object_ids: list[str], started: float) -> bool:
        """Store unless one of ``object_ids`` was evicted at or after ``started``."""
        ...

    async def evict(self, object_ids: list[str]) -> int:
        """Drop every variant of these objects; returns how many entries went."""
        ...

    async def close(self) -> None: ...


class _Lru(cachetools.LRUCache[str, Entry]):
    """An LRU by total bytes that tells its owner about every key that leaves it.

    cachetools removes items through ``__delitem__`` on every path (``popitem`` when the
    bytes overflow, ``pop``, ``del``) except ``clear``, which the owner handles itself.
    """

    def __init__(self, maxsize: int, on_delete: Callable[[str], None]) -> None:
        super().__init__(maxsize=maxsize, getsizeof=_entry_size)
        self._on_delete = on_delete

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self._on_delete(key)

    def get(self, key: str, default: Entry | None = None) -> Entry | None:  # type: ignore[override]
        """The entry under ``key``, made the most recently used: one Python call fewer on
        a hit than ``Cache.get`` (which asks ``in`` first, then reads)."""
        try:
            return self[key]
        except KeyError:
            return default

    def peek(self, key: str) -> Entry | None:
        """The entry under ``key`` without making it the most recently used."""
        try:
            return cachetools.Cache.__getitem__(self, key)
        except KeyError:
            return None


#: an entry's size for the LRU (a C call, not a Python function)
_entry_size: Callable[[Entry], int] = operator.attrgetter("size")


#: expired entries reclaimed (at most) per put; each put adds one to reclaim, so a
#: backlog drains and no single put pays for a mass expiry
_SWEEP_BUDGET = 8
#: tombstones kept at least, however small ``max_entries``
_MIN_TOMBSTONES = 1024


class MemoryStore:
    """Per-process store: LRU by total bytes, with an entry-count bound.

    Everything it keeps is bounded: the object index holds only keys that are in the
    store; entries past their ``stale_until`` go when read or, a few per put, in order of
    expiry (so an entry never read again does not wait for the LRU); tombstones go when
    older than ``tombstone_seconds``, and there are at most ``max(max_entries, 1024)``
    of them. When more objects than that are evicted within ``tombstone_seconds``, the
    oldest tombstones are dropped and no answer fetched before the newest dropped one's
    time is stored (a few misses more, never a stale answer after a write).

    ``clock`` is the wall clock the entries' times are in (``time.time``; tests pass their
    own).
    """

    def __init__(
        self,
        *,
        max_bytes: int,
        max_entries: int,
        tombstone_seconds: float,
        on_drop: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._entries = _Lru(max_bytes, self._unlink)
        self._max_bytes = max_bytes
        self._max_entries = max_entries
        #: object id -> keys of its entries in the store (never an empty set)
        self._index: dict[str, set[str]] = {}
        #: key -> the object ids it is listed under in ``_index``
        self._objects: dict[str, tuple[str, ...]] = {}
        #: (stale_until, key) per put; items of keys since replaced or gone are skipped
        self._expiry: list[tuple[float, str]] = []
        #: object id -> time of its eviction, oldest first
        self._tombstones: OrderedDict[str, float] = OrderedDict()
        self._max_tombstones = max(max_entries, _MIN_TOMBSTONES)
        #: no answer fetched at or before this time is stored (tombstones dropped early)
        self._tombstone_floor = -math.inf
        self._tombstone_seconds = tombstone_seconds
        #: told how many entries were dropped to make room (for metrics)
        self._on_drop = on_drop
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> Entry | None:
        return self.get_now(key)

    def get_now(self, key: str) -> Entry | None:
        """:meth:`get`, synchronously (nothing here waits): the cache plugin's hit path
        makes no coroutine for it."""
        entry = self._entries.get(key)
        if entry is not None and entry.stale_until < self._clock():
            self._entries.pop(key, None)
            return None
        return entry

    async def put(self, key: str, entry: Entry, object_ids: list[str], started: float) -> bool:
        return self.put_now(key, entry, object_ids, started)

    def put_now(self, key: str, entry: Entry, object_ids: list[str], started: float) -> bool:
        """:meth:`put`, synchronously."""
        now = self._clock()
        tombstones = self._tombstones
        if tombstones:
            self._prune_tombstones(now)
            for object_id in object_ids:
                evicted = tombstones.get(object_id)
                if evicted is not None and evicted >= started:
                    return False
        if started <= self._tombstone_floor:
            return False
        if entry.size > self._max_bytes:
            return False
        expiry = self._expiry
        if expiry and expiry[0][0] < now:
            self._sweep(now)
        # (the LRU's len() and ``in`` are Python calls; ``_objects`` holds the same keys
        # as the LRU between calls, in a plain dict: asked instead)
        entries = self._entries
        objects = self._objects
        before = len(objects)
        expected = before if key in objects else before + 1
        entries[key] = entry  # the LRU drops the least recent entries past max_bytes
        # the LRU now holds key, which _objects does only if it stayed (link comes next)
        count = len(objects) if key in objects else len(objects) + 1
        while count > self._max_entries:
            entries.popitem()
            count -= 1
        if count < expected and self._on_drop is not None:
            self._on_drop(expected - count)
        # the new entry is the most recent: neither bound above drops it (the LRU makes
        # room for it first; max_entries >= 1)
        self._link(key, tuple(object_ids))
        heapq.heappush(expiry, (entry.stale_until, key))
        if len(expiry) > 2 * count + 64:
            self._rebuild_expiry()
        return True

    async def evict(self, object_ids: list[str]) -> int:
        now = self._clock()
        count = 0
        for object_id in object_ids:
            self._tombstones[object_id] = now
            self._tombstones.move_to_end(object_id)
            for key in self._index.pop(object_id, set()):
                if self._entries.pop(key, None) is not None:
                    count += 1
        self._prune_tombstones(now)
        return count

    async def close(self) -> None:
        self._entries.clear()  # does not go through __delitem__: drop the rest here
        self._index.clear()
        self._objects.clear()
        self._expiry.clear()
        self._tombstones.clear()

    def _link(self, key: str, object_ids: tuple[str, ...]) -> None:
        """List ``key`` under each of ``object_ids`` (and no longer under others)."""
        old = self._objects.get(key)
        if old == object_ids:
            return
        if old is not None:
            self._unlink(key)
        self._objects[key] = object_ids
        for object_id in object_ids:
            self._index.setdefault(object_id, set()).add(key)

    def _unlink(self, key: str) -> None:
        """``key`` left the store: take it out of the index (called by the LRU)."""
        for object_id in self._objects.pop(key, ()):
            keys = self._index.get(object_id)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._index[object_id]

    def _sweep(self, now: float) -> None:
        """Drop up to ``_SWEEP_BUDGET`` entries that expired, soonest expiry first."""
        expiry = self._expiry
        for _ in range(_SWEEP_BUDGET):
            if not expiry or expiry[0][0] >= now:
                return
            _, key = heapq.heappop(expiry)
            entry = self._entries.peek(key)
            if entry is not None and entry.stale_until < now:
                del self._entries[key]

    def _rebuild_expiry(self) -> None:
        """Rebuild the expiry heap from the entries, without the items of keys replaced or
        gone (amortized: it at least halves the heap, whose every item was one push)."""
        entries = self._entries
        expiry: list[tuple[float, str]] = []
        for key in entries:
            entry = entries.peek(key)
            if entry is not None:
                expiry.append((entry.stale_until, key))
        heapq.heapify(expiry)
        self._expiry = expiry

    def _prune_tombstones(self, now: float) -> None:
        """Drop tombstones older than ``tombstone_seconds``, then the oldest past the cap."""
        tombstones = self._tombstones
        horizon = now - self._tombstone_seconds
        while tombstones:
            evicted = tombstones[next(iter(tombstones))]
            if evicted >= horizon and len(tombstones) <= self._max_tombstones:
                return
            tombstones.popitem(last=False)
            if evicted >= horizon:  # still needed: refuse what it would have refused
                self._tombstone_floor = max(self._tombstone_floor, evicted)


#: members of an object's index checked per put, at random: those whose entry is gone
#: (expired, or dropped by Redis' maxmemory policy) leave the index. A put adds at most one
#: member, so an index holds at most about 4/3 of its live entries (exactly them while it
#: has at most this many members), however long the object stays busy.
_PRUNE_SAMPLE = 4

# Store only when no tombstone of the object is newer than the fetch's start, and record
# the key under each object id (pruning a few dead members), all in one round trip.
_PUT_SOURCE = f"""
local started = tonumber(ARGV[3])
for i = 3, #KEYS, 2 do
  local evicted = redis.call('GET', KEYS[i + 1])
  if evicted and tonumber(evicted) >= started then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
for i = 3, #KEYS, 2 do
  redis.call('SADD', KEYS[i], KEYS[1])
  for _, key in ipairs(redis.call('SRANDMEMBER', KEYS[i], {_PRUNE_SAMPLE})) do
    if redis.call('EXISTS', key) == 0 then redis.call('SREM', KEYS[i], key) end
  end
  if redis.call('PTTL', KEYS[i]) < tonumber(ARGV[2]) then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
  end
end
return 1
"""

# Tombstone each object, then delete every key listed under it and the list itself.
_EVICT_SOURCE = """
local count = 0
for i = 1, #KEYS, 2 do
  redis.call('SET', KEYS[i + 1], ARGV[1], 'PX', ARGV[2])
  local members = redis.call('SMEMBERS', KEYS[i])
  for _, key in ipairs(members) do count = count + redis.call('DEL', key) end
  redis.call('DEL', KEYS[i])
end
return count
"""


class RedisStore:
    """A store shared by every gateway instance that uses the same Redis.

    Redis trouble never fails a request: the caller gets :class:`StoreUnavailable` and
    treats it as a miss. After a failure the store stops asking Redis for
    ``breaker_seconds`` (a circuit breaker), so an outage does not add a timeout to every
    request; ``on_error`` is told about each failure and ``on_recover`` of the first success
    after one (for logs, counters and the breaker gauge).

    Calls go through one pipelined connection (:mod:`gateway.stores.resp`): a hit costs one
    ``GET`` framed by hand, not a pool checkout and redis-py's general machinery, and a
    call that times out does not hold a connection others wait for. The scripts are
    called by their SHA-1 and sent in full only when Redis does not have them yet.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        timeout: float,
        breaker_seconds: float,
        tombstone_seconds: float,
        on_error: Callable[[str, BaseException], None],
        on_recover: Callable[[], None] = lambda: None,
    ) -> None:
        self._conn = RespConnection(url, connect_timeout=timeout)
        self._timeout = timeout
        self._prefix = prefix
        self._breaker_seconds = breaker_seconds
        self._tombstone_ms = int(tombstone_seconds * 1000)
        self._open_until = 0.0
        self._failing = False
        self._on_error = on_error
        self._on_recover = on_recover

    def _entry_key(self, key: str) -> str:
        return f"{self._prefix}:e:{key}"

    def _object_keys(self, object_id: str) -> tuple[str, str]:
        return f"{self._prefix}:i:{object_id}", f"{self._prefix}:t:{object_id}"

    async def _call(
        self, what: str, payload: bytes | tuple[bytes, bytes], script: _Script | None = None
    ) -> Reply:
        """Send one framed command, or a script call (:func:`_script_call`)."""
        if self._open_until and time.monotonic() < self._open_until:
            raise StoreUnavailable("circuit open")
        try:
            if isinstance(payload, bytes):
                reply = await self._conn.call(payload, self._timeout)
            else:
                assert script is not None, "a script call names its script"
                head, body = payload
                reply = await self._conn.call(head + script.evalsha + body, self._timeout)
                if isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT"):
                    reply = await self._conn.call(head + script.eval + body, self._timeout)
            if isinstance(reply, Exception):
                raise reply
        except Exception as exc:  # connection refused or lost, timeouts, error replies
            self._fail(what, exc)
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        if self._failing:
            self._failing = False
            self._on_recover()
        return reply

    def _fail(self, what: str, exc: BaseException) -> None:
        """Open the circuit for ``breaker_seconds`` and tell ``on_error``."""
        self._open_until = time.monotonic() + self._breaker_seconds
        self._failing = True
        self._on_error(what, exc)

    async def get(self, key: str) -> Entry | None:
        data = await self._call("get", encode_command("GET", self._entry_key(key)))
        if data is None:
            return None
        try:
            if not isinstance(data, bytes):
                raise TypeError(f"unexpected reply to GET: {type(data).__name__}")
            return Entry.decode(data)
        except (TypeError, ValueError) as exc:  # not an entry this gateway wrote
            self._fail("get", exc)
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def put(self, key: str, entry: Entry, object_ids: list[str], started: float) -> bool:
        ttl_ms = max(1, int((entry.stale_until - time.time()) * 1000))
        keys = [self._entry_key(key), ""]
        for object_id in object_ids:
            keys.extend(self._object_keys(object_id))
        args = (entry.encode(), ttl_ms, int(started * 1000))
        stored = await self._call("put", _script_call(keys, args), _PUT)
        return stored == 1

    async def evict(self, object_ids: list[str]) -> int:
        keys: list[str] = []
        for object_id in object_ids:
            keys.extend(self._object_keys(object_id))
        now_ms = int(time.time() * 1000)
        count = await self._call("evict", _script_call(keys, (now_ms, self._tombstone_ms)), _EVICT)
        return count if isinstance(count, int) else 0

    async def ping(self) -> bool:
        try:
            return await self._call("ping", encode_command("PING")) == b"PONG"
        except StoreUnavailable:
            return False

    async def close(self) -> None:
        await self._conn.close()


class _Script:
    """A Lua script, framed for ``EVALSHA`` (and ``EVAL`` when Redis lacks it)."""

    def __init__(self, source: str) -> None:
        self.evalsha = bulk("EVALSHA") + bulk(hashlib.sha1(source.encode()).hexdigest())
        self.eval = bulk("EVAL") + bulk(source)


def _script_call(keys: list[str], args: tuple[bytes | int, ...]) -> tuple[bytes, bytes]:
    """The array header and the arguments (numkeys, keys, args) of a script call; the
    script's own two arguments (``EVALSHA sha`` or ``EVAL source``) go between them."""
    head = b"*%d\r\n" % (3 + len(keys) + len(args))
    body = bulk(len(keys)) + b"".join(bulk(k) for k in keys) + b"".join(bulk(a) for a in args)
    return head, body


_PUT = _Script(_PUT_SOURCE)
_EVICT = _Script(_EVICT_SOURCE)
