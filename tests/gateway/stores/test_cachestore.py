"""The memory cache store's bookkeeping stays bounded: its object index lists only keys in
the store, expired entries are reclaimed, tombstones age out and are capped, on a
hand-driven clock. (The Redis store is covered through the cache plugin's tests.)"""

from __future__ import annotations

import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.stores.cachestore import Entry, MemoryStore

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
