"""Where cached answers live: in this process (``memory``) or shared in Redis (``redis``).

Both stores keep, per object id, the keys of every cached variant of that object (all
credentials, versions and expansions), so one write can evict them all, and a tombstone
time per evicted object, so an answer fetched before a write finished is never stored
after it (a retrieve right after an update always sees the update).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import cachetools
import orjson

__all__ = ["CacheStore", "Entry", "MemoryStore", "RedisStore", "StoreUnavailable"]


class StoreUnavailable(Exception):
    """The store could not answer (Redis down, timed out, or its circuit is open)."""


@dataclass(frozen=True, slots=True)
class Entry:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    #: time.time() when stored
    stored_at: float
    #: time.time() until which the entry is fresh
    fresh_until: float
    #: time.time() until which it may be served stale on upstream errors
    stale_until: float

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

    @property
    def size(self) -> int:
        return len(self.body) + sum(len(k) + len(v) for k, v in self.headers) + 64


class CacheStore(Protocol):
    async def get(self, key: str) -> Entry | None: ...

    async def put(self, key: str, entry: Entry, object_ids: list[str], started: float) -> bool:
        """Store unless one of ``object_ids`` was evicted at or after ``started``."""
        ...

    async def evict(self, object_ids: list[str]) -> int:
        """Drop every variant of these objects; returns how many entries went."""
        ...

    async def close(self) -> None: ...


class MemoryStore:
    """Per-process store: LRU by total bytes, with an entry-count bound."""

    def __init__(self, *, max_bytes: int, max_entries: int, tombstone_seconds: float) -> None:
        self._entries: cachetools.LRUCache[str, Entry] = cachetools.LRUCache(
            maxsize=max_bytes, getsizeof=lambda e: e.size
        )
        self._max_entries = max_entries
        self._index: dict[str, set[str]] = {}
        self._tombstones: dict[str, float] = {}
        self._tombstone_seconds = tombstone_seconds

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> Entry | None:
        entry = self._entries.get(key)
        if entry is not None and entry.stale_until < time.time():
            self._entries.pop(key, None)
            return None
        return entry

    async def put(self, key: str, entry: Entry, object_ids: list[str], started: float) -> bool:
        now = time.time()
        for object_id in object_ids:
            evicted = self._tombstones.get(object_id)
            if evicted is not None:
                if evicted >= started:
                    return False
                if evicted < now - self._tombstone_seconds:
                    del self._tombstones[object_id]
        if entry.size > self._entries.maxsize:
            return False
        self._entries[key] = entry
        while len(self._entries) > self._max_entries:
            self._entries.popitem()
        for object_id in object_ids:
            self._index.setdefault(object_id, set()).add(key)
        return True

    async def evict(self, object_ids: list[str]) -> int:
        now = time.time()
        count = 0
        for object_id in object_ids:
            self._tombstones[object_id] = now
            for key in self._index.pop(object_id, set()):
                if self._entries.pop(key, None) is not None:
                    count += 1
        return count

    async def close(self) -> None:
        self._entries.clear()
        self._index.clear()


# Store only when no tombstone of the object is newer than the fetch's start, and record
# the key under each object id, all in one round trip.
_PUT = """
local started = tonumber(ARGV[3])
for i = 3, #KEYS, 2 do
  local evicted = redis.call('GET', KEYS[i + 1])
  if evicted and tonumber(evicted) >= started then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
for i = 3, #KEYS, 2 do
  redis.call('SADD', KEYS[i], KEYS[1])
  if redis.call('PTTL', KEYS[i]) < tonumber(ARGV[2]) then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
  end
end
return 1
"""

# Tombstone each object, then delete every key listed under it and the list itself.
_EVICT = """
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
    request; ``on_error`` is told about each failure (for logs and counters).
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
    ) -> None:
        import redis.asyncio as aioredis

        self._redis: Any = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self._prefix = prefix
        self._breaker_seconds = breaker_seconds
        self._tombstone_ms = int(tombstone_seconds * 1000)
        self._open_until = 0.0
        self._on_error = on_error
        self._put = self._redis.register_script(_PUT)
        self._evict = self._redis.register_script(_EVICT)

    def _entry_key(self, key: str) -> str:
        return f"{self._prefix}:e:{key}"

    def _object_keys(self, object_id: str) -> tuple[str, str]:
        return f"{self._prefix}:i:{object_id}", f"{self._prefix}:t:{object_id}"

    async def _call(self, what: str, make: Callable[[], Awaitable[Any]]) -> Any:
        if time.monotonic() < self._open_until:
            raise StoreUnavailable("circuit open")
        try:
            return await make()
        except Exception as exc:  # redis errors, timeouts, connection refused
            self._open_until = time.monotonic() + self._breaker_seconds
            self._on_error(what, exc)
            raise StoreUnavailable(str(exc)) from exc

    async def get(self, key: str) -> Entry | None:
        data = await self._call("get", lambda: self._redis.get(self._entry_key(key)))
        if data is None:
            return None
        return Entry.decode(data)

    async def put(self, key: str, entry: Entry, object_ids: list[str], started: float) -> bool:
        ttl_ms = max(1, int((entry.stale_until - time.time()) * 1000))
        keys = [self._entry_key(key), ""]
        for object_id in object_ids:
            keys.extend(self._object_keys(object_id))
        stored = await self._call(
            "put",
            lambda: self._put(keys=keys, args=[entry.encode(), ttl_ms, int(started * 1000)]),
        )
        return bool(stored)

    async def evict(self, object_ids: list[str]) -> int:
        keys: list[str] = []
        for object_id in object_ids:
            keys.extend(self._object_keys(object_id))
        now_ms = int(time.time() * 1000)
        count = await self._call(
            "evict", lambda: self._evict(keys=keys, args=[now_ms, self._tombstone_ms])
        )
        return int(count)

    async def ping(self) -> bool:
        try:
            return bool(await self._call("ping", self._redis.ping))
        except StoreUnavailable:
            return False

    async def close(self) -> None:
        await self._redis.aclose()
