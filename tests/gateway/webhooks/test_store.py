"""The webhooks plugin's stores, SQLite and Redis, against the same tests: durable records,
duplicates, leases across processes, replay (of one event and of a time range), prune."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.webhooks.redisstore import RedisStore
from gateway.webhooks.store import EventRecord, SqliteStore, WebhookStore

#: ``make()``: a new store on the test's file or Redis (two calls: two processes' stores)
MakeStore = Callable[[], WebhookStore]


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> MakeStore:
    if request.param == "sqlite":
        path = str(tmp_path / "hooks.sqlite3")
        return lambda: SqliteStore(path)
    url = request.getfixturevalue("redis_server").url
    prefix = f"test:{secrets.token_hex(4)}"
    return lambda: RedisStore(url, prefix=prefix, timeout=5.0)


def _event(n: int) -> EventRecord:
    return EventRecord(
        id=f"evt_{n}",
        source="main",
        type="invoice.paid",
        object="event",
        livemode=False,
        account=None,
        object_id="in_1",
        body=b'{"id": "evt_%d"}' % n,
    )


async def test_two_stores_on_one_file_never_claim_the_same_delivery(make_store: MakeStore) -> None:
    first, second = make_store(), make_store()
    await first.open()
    await second.open()
    try:
        for n in range(40):
            assert await first.record(_event(n), ["billing"], now=100.0)
        assert not await second.record(_event(0), ["billing"], now=100.0)  # a duplicate
        got = await asyncio.gather(
            *(
                store.claim("billing", owner, now=200.0, limit=7, lease_until=260.0)
                for store, owner in [(first, "a"), (second, "b")] * 4
            )
        )
        claimed = [c.event_id for due in got for c in due.claimed]
        assert len(claimed) == len(set(claimed)) == 40
        assert got[-1].pending == 40
        # a lease that has not expired keeps the deliveries from everyone
        again = await first.claim("billing", "c", now=250.0, limit=100, lease_until=300.0)
        assert again.claimed == [] and again.next_at == 260.0
        # one released by its owner (a graceful stop) may be claimed at once
        await second.release("b")
        mine = await first.claim("billing", "c", now=250.0, limit=100, lease_until=300.0)
        assert {c.event_id for c in mine.claimed} == {
            c.event_id for due in got[1::2] for c in due.claimed
        }
        # after a kill the leases expire: the rest can be claimed then
        late = await second.claim("billing", "d", now=261.0, limit=100, lease_until=400.0)
        assert len(late.claimed) + len(mine.claimed) == 40
    finally:
        await first.close()
        await second.close()


async def test_a_finished_delivery_is_never_claimed_again(make_store: MakeStore) -> None:
    store = make_store()
    await store.open()
    try:
        await store.record(_event(1), ["billing", "ops"], now=1.0)
        (claimed,) = (await store.claim("billing", "a", now=2.0, limit=5, lease_until=9.0)).claimed
        assert claimed.body == b'{"id": "evt_1"}' and claimed.attempts == 0
        await store.finish(
            "evt_1",
            "billing",
            status="delivered",
            attempts=1,
            next_at=2.0,
            last_status=200,
            last_error=None,
            now=2.0,
        )
        after = await store.claim("billing", "a", now=100.0, limit=5, lease_until=200.0)
        assert after.claimed == [] and after.pending == 0
        assert (await store.claim("ops", "a", now=2.0, limit=5, lease_until=9.0)).pending == 1
        assert await store.replay("evt_1", "billing", now=3.0)
        assert not await store.replay("evt_404", "billing", now=3.0)
        # an event goes only to the subscriptions it was routed to
        assert not await store.replay("evt_1", "payments", now=3.0)
        (replayed,) = (await store.claim("billing", "a", now=3.0, limit=5, lease_until=9.0)).claimed
        assert replayed.attempts == 0
    finally:
        await store.close()


async def test_prune_forgets_old_settled_events_and_keeps_pending_ones(
    make_store: MakeStore,
) -> None:
    store = make_store()
    await store.open()
    try:
        for n in (1, 2, 3):
            await store.record(_event(n), ["billing"], now=float(n))
        for n, status in ((1, "delivered"), (2, "dead")):
            await store.finish(
                f"evt_{n}",
                "billing",
                status=status,
                attempts=1,
                next_at=5.0,
                last_status=None,
                last_error=None,
                now=5.0,
            )
        assert await store.prune(before=10.0) == 2  # evt_3 is still pending
        assert [e["id"] for e in await store.events(10)] == ["evt_3"]
        assert [d["event_id"] for d in await store.deliveries()] == ["evt_3"]
        assert await store.record(_event(1), ["billing"], now=11.0)  # forgotten: new again
    finally:
        await store.close()
