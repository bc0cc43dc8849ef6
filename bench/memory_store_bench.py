"""Memory held by the ``memory`` cache store under distinct retrieves and writes, and the
cost of a put and a hit, in one process without a gateway (a few seconds)::

    .venv/bin/python bench/memory_store_bench.py

The store has the plugin's defaults (``max_entries`` 10000, ``max_bytes`` 64 MiB,
tombstones kept an hour). It is first filled to ``max_entries``; then each step stores
that many more distinct objects (about 1 KB each) and evicts as many other distinct
objects (the writes), and prints the process's RSS and the sizes of the store's tables.
With bounded bookkeeping the RSS plateaus after the fill; the index and tombstone counts
stay at or below ``max_entries``. Linux only (RSS from ``/proc/self/status``).
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from gateway.stores.cachestore import Entry, MemoryStore

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a store call: the memory store never waits, so one step finishes it."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    raise AssertionError("the memory store awaited something")


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def entry(now: float) -> Entry:
    return Entry(
        status=200,
        headers=(("Content-Type", "application/json"), ("Request-Id", "req_0123456789abcd")),
        body=b"x" * 1000,
        stored_at=now,
        fresh_until=now + 30,
        stale_until=now + 30,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-entries", type=int, default=10_000)
    parser.add_argument("--steps", type=int, nargs="+", default=[50_000, 200_000])
    args = parser.parse_args()
    store = MemoryStore(
        max_bytes=64 * 1024 * 1024, max_entries=args.max_entries, tombstone_seconds=3600
    )
    counter = 0

    def fill(n: int) -> float:
        """Store n distinct objects and evict n others; seconds per put."""
        nonlocal counter
        spent = 0.0
        for _ in range(n):
            counter += 1
            now = time.time()
            t0 = time.perf_counter()
            run(store.put(f"key{counter:012d}", entry(now), [f"cus_{counter:014d}"], now - 1))
            spent += time.perf_counter() - t0
            run(store.evict([f"ch_{counter:015d}"]))
        return spent / n

    def report(label: str) -> None:
        gc.collect()
        print(
            f"{label:<28} RSS {rss_mib():7.1f} MiB  entries {len(store):6d}  "
            f"index {len(store._index):7d}  tombstones {len(store._tombstones):7d}"
        )

    report("start")
    fill(args.max_entries)
    report(f"after {args.max_entries} (fill)")
    total = 0
    for step in args.steps:
        per_put = fill(step - total)
        total = step
        report(f"after {step} more")
    print(f"put  {per_put * 1e6:6.2f} us (distinct keys, each dropping the least recent)")
    keys = [f"key{counter - i:012d}" for i in range(1000)]
    t0 = time.perf_counter()
    for _ in range(100):
        for key in keys:
            run(store.get(key))
    print(f"hit  {(time.perf_counter() - t0) / 100_000 * 1e6:6.2f} us")


if __name__ == "__main__":
    main()
