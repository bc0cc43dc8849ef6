"""The cache stores' bookkeeping stays bounded. The memory store's object index lists only
keys in the store, expired entries are reclaimed, tombstones age out and are capped, on a
hand-driven clock; the Redis store's object indexes shed expired entries, on a real
redis-server. (The Redis store is otherwise covered through the cache plugin's tests.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.stores.cachestore import Entry, MemoryStore, RedisStore
from tests.conftest import RedisServer

T = TypeVar("T")

TOMBSTONE_SECONDS = 5.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a store call: the memory store never waits, so one step finishes it."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    raise AssertionError("the memory store awaited something")


def entry(now: float, ttl: float, size: int = 10) -> Entry:
    return Entry(
        status=200,
        headers=(),
        body=b"x" * size,
        stored_at=now,
        fresh_until=now + ttl,
        stale_until=now + ttl,
    )


def check_invariants(store: MemoryStore, *, max_entries: int, max_bytes: int) -> None:
    entries = store._entries
    for object_id, keys in store._index.items():
        assert keys, f"empty index set for {object_id}"
        assert keys <= set(entries), f"{object_id} lists keys no longer stored"
    # and every stored key is listed under its objects (else a write would not evict it)
    assert set(store._objects) == set(entries)
    for key, object_ids in store._objects.items():
        assert all(key in store._index[object_id] for object_id in object_ids)
    assert len(entries) <= max_entries
    assert entries.currsize <= max_bytes
    assert len(store._tombstones) <= store._max_tombstones
    assert len(store._expiry) <= 2 * max_entries + 64


def check_tombstones_pruned(store: MemoryStore, now: float) -> None:
    assert all(t >= now - TOMBSTONE_SECONDS for t in store._tombstones.values())


KEYS = [f"k{i}" for i in range(8)]
OBJECTS = [f"cus_{i}" for i in range(5)]

operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("put"),
            st.sampled_from(KEYS),
            st.lists(st.sampled_from(OBJECTS), min_size=1, max_size=3, unique=True),
            st.floats(min_value=0.0, max_value=8.0),  # ttl
            st.integers(min_value=0, max_value=300),  # body size
            st.floats(min_value=0.0, max_value=3.0),  # how long ago the fetch started
        ),
        st.tuples(st.just("get"), st.sampled_from(KEYS)),
        st.tuples(
            st.just("evict"),
            st.lists(st.sampled_from(OBJECTS), min_size=1, max_size=3, unique=True),
        ),
        st.tuples(st.just("advance"), st.floats(min_value=0.0, max_value=4.0)),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(
    max_entries=st.integers(min_value=1, max_value=6),
    max_bytes=st.integers(min_value=400, max_value=1200),
    ops=operations,
)
def test_the_memory_store_bookkeeping_stays_consistent_and_bounded(
    max_entries: int, max_bytes: int, ops: list[tuple[Any, ...]]
) -> None:
    clock = Clock()
    store = MemoryStore(
        max_bytes=max_bytes,
        max_entries=max_entries,
        tombstone_seconds=TOMBSTONE_SECONDS,
        clock=clock,
    )
    evicted_at: dict[str, float] = {}
    #: key -> object ids of its last stored entry; None once a write evicted it
    stored: dict[str, list[str] | None] = {}
    for op in ops:
        now = clock.now
        if op[0] == "put":
            _, key, object_ids, ttl, size, ago = op
            started = now - ago
            e = entry(now, ttl, size)
            ok = run(store.put(key, e, object_ids, started))
            # a fetch that started before a recent write is never stored
            if any(
                started <= evicted_at.get(o, -1e9) and evicted_at[o] >= now - TOMBSTONE_SECONDS
                for o in object_ids
            ):
                assert not ok
            if ok:
                stored[key] = object_ids
                assert run(store.get(key)) == e
            check_tombstones_pruned(store, now)
        elif op[0] == "get":
            got = run(store.get(op[1]))
            if stored.get(op[1], "never") is None:
                assert got is None, "an entry survived a write to its object"
            assert got is None or got.stale_until >= now
        elif op[0] == "evict":
            object_ids = op[1]
            run(store.evict(object_ids))
            for o in object_ids:
                evicted_at[o] = now
            for key, ids in stored.items():
                if ids is not None and set(ids) & set(object_ids):
                    stored[key] = None
            check_tombstones_pruned(store, now)
        else:
            clock.now += op[1]
        check_invariants(store, max_entries=max_entries, max_bytes=max_bytes)
    run(store.close())
    assert not store._index and not store._objects and not store._expiry


def test_distinct_retrieves_past_max_entries_leave_a_bounded_index() -> None:
    store = MemoryStore(max_bytes=1 << 30, max_entries=10_000, tombstone_seconds=3600)
    for i in range(50_000):
        now = time.time()
        assert run(store.put(f"key{i}", entry(now, 30), [f"cus_{i}"], now - 1))
    assert len(store) == 10_000
    assert len(store._index) <= 10_000
    for i in range(50_000):
        run(store.evict([f"ch_{i}"]))
    assert len(store._tombstones) <= 10_000


def test_expired_entries_never_read_again_are_reclaimed_by_later_puts() -> None:
    clock = Clock()
    store = MemoryStore(max_bytes=1 << 30, max_entries=10_000, tombstone_seconds=3600, clock=clock)
    for i in range(100):
        run(store.put(f"old{i}", entry(clock.now, 1), [f"cus_{i}"], clock.now))
    clock.now += 2
    for i in range(100):
        run(store.put(f"new{i}", entry(clock.now, 3600), [f"cus_new{i}"], clock.now))
    assert len(store) == 100
    assert len(store._index) == 100
    assert all(key.startswith("new") for key in store._entries)


def test_tombstones_age_out_without_their_objects_being_stored_again() -> None:
    clock = Clock()
    store = MemoryStore(max_bytes=1 << 20, max_entries=100, tombstone_seconds=10, clock=clock)
    for i in range(500):
        run(store.evict([f"cus_{i}"]))
    clock.now += 11
    run(store.evict(["cus_last"]))
    assert list(store._tombstones) == ["cus_last"]


def test_a_write_stays_visible_when_the_tombstone_cap_drops_its_tombstone() -> None:
    clock = Clock()
    store = MemoryStore(max_bytes=1 << 20, max_entries=10, tombstone_seconds=3600, clock=clock)
    started = clock.now  # a retrieve of cus_0 is in flight
    clock.now += 1
    run(store.evict(["cus_0"]))  # meanwhile cus_0 is updated
    for i in range(1, store._max_tombstones + 1):  # and many more objects after it
        clock.now += 0.001
        run(store.evict([f"cus_{i}"]))
    assert "cus_0" not in store._tombstones
    assert len(store._tombstones) == store._max_tombstones
    # the retrieve's answer predates the update: it is not stored
    assert not run(store.put("k", entry(clock.now, 30), ["cus_0"], started))
    # a retrieve that started after the update is
    assert run(store.put("k", entry(clock.now, 30), ["cus_0"], clock.now))


# ---------------------------------------------------------------------------- Redis


class _RedisCheck:
    """A RedisStore on a real redis-server, and a plain client to look at its keys."""

    def __init__(self, server: RedisServer) -> None:
        self.errors: list[str] = []
        self.store = RedisStore(
            server.url,
            prefix="t",
            timeout=5.0,
            breaker_seconds=0.1,
            tombstone_seconds=TOMBSTONE_SECONDS,
            on_error=lambda what, exc: self.errors.append(f"{what}: {exc!r}"),
        )
        self.client = redis.Redis.from_url(server.url)
        self.loop = asyncio.new_event_loop()

    def put(self, key: str, ttl: float, object_id: str = "cus_1") -> None:
        stored = self.loop.run_until_complete(
            self.store.put(key, entry(time.time(), ttl), [object_id], time.time())
        )
        assert stored, self.errors

    def gone(self, key: str) -> None:
        """Wait until the entry ``key`` expired (EXISTS expires it as Redis reads it)."""
        deadline = time.monotonic() + 30
        while self.client.exists(f"t:e:{key}"):
            assert time.monotonic() < deadline, f"{key} did not expire"

    def index(self, object_id: str = "cus_1") -> set[bytes]:
        return set(self.client.smembers(f"t:i:{object_id}"))

    def close(self) -> None:
        self.loop.run_until_complete(self.store.close())
        self.loop.close()
        self.client.close()


@pytest.fixture
def redis_check(redis_server: RedisServer) -> Iterator[_RedisCheck]:
    check = _RedisCheck(redis_server)
    yield check
    check.close()


def test_a_busy_objects_redis_index_lists_only_live_entries(redis_check: _RedisCheck) -> None:
    # Every variant key of an object stayed in its index set until the set's own TTL,
    # which a put extends to its entry's: an object with one long-lived variant and a
    # stream of short-lived ones had a set that grew with every expired variant.
    redis_check.put("anchor", 60.0)
    for i in range(300):
        redis_check.put(f"v{i}", 0.001)
        assert redis_check.index() == {b"t:e:anchor", b"t:e:v%d" % i}
        redis_check.gone(f"v{i}")
    assert redis_check.errors == []


def test_a_redis_index_sheds_a_mass_expiry_and_keeps_its_live_entries(
    redis_check: _RedisCheck,
) -> None:
    live = {f"live{i}" for i in range(3)}
    for key in sorted(live):
        redis_check.put(key, 60.0)
    burst = [f"burst{i}" for i in range(400)]
    for key in burst:
        redis_check.put(key, 0.001)
    for key in burst:
        redis_check.gone(key)
    assert len(redis_check.index()) > len(live)  # what the burst left behind
    # each put checks 4 members at random: at least one of them is dead while any is
    for _ in range(len(burst)):
        redis_check.put("live0", 60.0)
    assert redis_check.index() == {b"t:e:" + key.encode() for key in live}
    # pruning never drops a live entry from the index: an eviction still finds them all
    assert redis_check.loop.run_until_complete(redis_check.store.evict(["cus_1"])) == len(live)
    assert not any(redis_check.client.exists(f"t:e:{key}") for key in live)
    assert redis_check.errors == []
