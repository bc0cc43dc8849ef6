"""The webhooks plugin's stores, SQLite and Redis, against the same tests: durable records,
duplicates, leases across processes, replay (of one event and of a time range), prune."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import ConfigError
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
        assert await store.finish(
            "evt_1",
            "billing",
            owner="a",
            claim=claimed.claim,
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
        due = await store.claim("billing", "a", now=4.0, limit=10, lease_until=9.0)
        claims = {c.event_id: c.claim for c in due.claimed}
        for n, status in ((1, "delivered"), (2, "dead")):
            await store.finish(
                f"evt_{n}",
                "billing",
                owner="a",
                claim=claims[f"evt_{n}"],
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


def _routed(n: int, account: str | None) -> EventRecord:
    event = _event(n)
    return EventRecord(**{**event.__dict__, "account": account})


async def test_replay_range_queues_only_the_events_in_range_routed_to_the_subscription(
    make_store: MakeStore,
) -> None:
    store = make_store()
    await store.open()
    try:
        # evt_1..evt_6 received at 10..60; evt_3 went to ops only, the others to both
        for n in range(1, 7):
            subs = ["ops"] if n == 3 else ["billing", "ops"]
            assert await store.record(_event(n), subs, now=n * 10.0)
        claims = {
            (sub, c.event_id): c.claim
            for sub in ("billing", "ops")
            for c in (await store.claim(sub, "a", now=65.0, limit=100, lease_until=70.0)).claimed
        }
        for n in range(1, 7):
            for sub in ["ops"] if n == 3 else ["billing", "ops"]:
                await store.finish(
                    f"evt_{n}",
                    sub,
                    owner="a",
                    claim=claims[sub, f"evt_{n}"],
                    status="delivered" if n % 2 else "dead",
                    attempts=2,
                    next_at=70.0,
                    last_status=500,
                    last_error="HTTP 500",
                    now=70.0,
                )
        # [20, 50): evt_2, evt_3, evt_4; evt_3 was never routed to billing; 50 is excluded
        assert await store.replay_range("billing", since=20.0, until=50.0, now=80.0) == 2
        due = await store.claim("billing", "a", now=80.0, limit=100, lease_until=90.0)
        assert sorted(c.event_id for c in due.claimed) == ["evt_2", "evt_4"]
        assert all(c.attempts == 0 for c in due.claimed)
        assert (await store.claim("ops", "a", now=80.0, limit=100, lease_until=90.0)).claimed == []
        rows = await store.deliveries(subscription="billing", status="pending")
        assert sorted(r["event_id"] for r in rows) == ["evt_2", "evt_4"]
        assert all(r["last_status"] is None and r["last_error"] is None for r in rows)
        # an empty range, a range before everything, a subscription with nothing
        assert await store.replay_range("billing", since=61.0, until=100.0, now=80.0) == 0
        assert await store.replay_range("billing", since=0.0, until=10.0, now=80.0) == 0
        assert await store.replay_range("nobody", since=0.0, until=100.0, now=80.0) == 0
        # the whole range for ops: all six (evt_3 included), in flight or not
        assert await store.replay_range("ops", since=0.0, until=1e12, now=81.0) == 6
        assert (await store.claim("ops", "b", now=81.0, limit=100, lease_until=90.0)).pending == 6
    finally:
        await store.close()


async def test_the_same_event_recorded_at_once_by_two_stores_is_stored_once(
    make_store: MakeStore,
) -> None:
    first, second = make_store(), make_store()
    await first.open()
    await second.open()
    try:
        results = await asyncio.gather(
            *(store.record(_event(n), ["billing"], now=1.0) for n in range(20) for store in
              (first, second, first, second))
        )  # fmt: skip
        assert sum(results) == 20
        due = await second.claim("billing", "a", now=2.0, limit=1000, lease_until=9.0)
        assert sorted(c.event_id for c in due.claimed) == sorted(f"evt_{n}" for n in range(20))
        assert len(await first.deliveries(limit=1000)) == 20
    finally:
        await first.close()
        await second.close()


async def test_pause_is_shared_and_listings_match(make_store: MakeStore) -> None:
    first, second = make_store(), make_store()
    await first.open()
    await second.open()
    try:
        await first.record(_event(1), ["billing", "ops"], now=1.0)
        await first.record(_routed(2, "acct_1"), ["ops"], now=2.0)
        await first.set_paused("billing", True)
        paused = await second.claim("billing", "b", now=3.0, limit=5, lease_until=9.0)
        assert paused.paused and paused.claimed == [] and paused.pending == 1
        assert paused.oldest == 1.0
        await second.set_paused("billing", False)
        (claimed,) = (await first.claim("billing", "a", now=3.0, limit=5, lease_until=9.0)).claimed
        assert claimed.event_id == "evt_1" and claimed.body == b'{"id": "evt_1"}'
        events = await second.events(10)
        assert [e["id"] for e in events] == ["evt_2", "evt_1"]
        assert events[0] == {
            "id": "evt_2",
            "source": "main",
            "type": "invoice.paid",
            "object": "event",
            "livemode": False,
            "account": "acct_1",
            "object_id": "in_1",
            "received": 2.0,
        }
        await first.finish(
            "evt_1",
            "billing",
            owner="a",
            claim=claimed.claim,
            status="pending",
            attempts=1,
            next_at=60.5,
            last_status=503,
            last_error="HTTP 503",
            now=4.25,
        )
        (row,) = await second.deliveries(subscription="billing")
        assert row == {
            "event_id": "evt_1",
            "subscription": "billing",
            "status": "pending",
            "attempts": 1,
            "next_at": 60.5,
            "created": 1.0,
            "updated": 4.25,
            "last_status": 503,
            "last_error": "HTTP 503",
        }
        assert [r["subscription"] for r in await second.deliveries(event_id="evt_1")] == [
            "billing",
            "ops",
        ]
        assert await second.deliveries(event_id="evt_1", status="delivered") == []
        assert [r["event_id"] for r in await second.deliveries(subscription="ops")] == [
            "evt_2",
            "evt_1",
        ]
        assert len(await second.deliveries(limit=2)) == 2
        due = await second.claim("billing", "b", now=10.0, limit=5, lease_until=20.0)
        assert due.claimed == [] and due.next_at == 60.5
    finally:
        await first.close()
        await second.close()


# --------------------------------------------------------------------------- both agree

_SUBS = ("billing", "ops")
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("record"), st.integers(0, 5), st.sets(st.sampled_from(_SUBS))),
        st.tuples(st.just("claim"), st.sampled_from(_SUBS), st.sampled_from("ab")),
        st.tuples(
            st.just("finish"),
            st.integers(0, 5),
            st.sampled_from(_SUBS),
            st.sampled_from(["pending", "delivered", "dead"]),
            st.sampled_from("ab"),
            # the owner's latest claim of the delivery, or its first (a late attempt)
            st.sampled_from(["latest", "first"]),
        ),
        st.tuples(st.just("replay"), st.integers(0, 5), st.sampled_from(_SUBS)),
        st.tuples(
            st.just("replay_range"),
            st.sampled_from(_SUBS),
            st.integers(0, 30),
            st.integers(0, 30),
        ),
        st.tuples(st.just("release"), st.sampled_from("ab")),
        st.tuples(st.just("prune"), st.integers(0, 40)),
        st.tuples(st.just("pause"), st.sampled_from(_SUBS), st.booleans()),
        st.tuples(st.just("tick"), st.integers(1, 5)),
    ),
    max_size=40,
)


async def _apply(store: WebhookStore, ops: list[tuple[Any, ...]]) -> list[Any]:
    """Run ``ops`` on ``store``; what each answered, in a form both stores can match."""
    now, seen = 1.0, []
    #: (owner, event id, subscription): the claims that owner got, in order
    claims: dict[tuple[str, str, str], list[int]] = {}
    await store.open()
    try:
        for op in ops:
            kind = op[0]
            if kind == "tick":
                now += op[1]
            elif kind == "record":
                seen.append(await store.record(_event(op[1]), sorted(op[2]), now))
            elif kind == "claim":
                due = await store.claim(op[1], op[2], now, 100, now + 3)
                for c in due.claimed:
                    claims.setdefault((op[2], c.event_id, op[1]), []).append(c.claim)
                claimed = sorted((c.event_id, c.attempts, c.body, c.claim) for c in due.claimed)
                seen.append((claimed, due.next_at, due.pending, due.oldest, due.paused))
            elif kind == "finish":
                got = claims.get((op[4], f"evt_{op[1]}", op[2]), [0])
                seen.append(await store.finish(
                    f"evt_{op[1]}", op[2], owner=op[4], claim=got[-1 if op[5] == "latest" else 0],
                    status=op[3], attempts=1, next_at=now + 2, last_status=500,
                    last_error="HTTP 500", now=now,
                ))  # fmt: skip
            elif kind == "replay":
                seen.append(await store.replay(f"evt_{op[1]}", op[2], now))
            elif kind == "replay_range":
                seen.append(await store.replay_range(op[1], float(op[2]), float(op[3]), now))
            elif kind == "release":
                await store.release(op[1])
            elif kind == "prune":
                seen.append(await store.prune(float(op[1])))
            else:
                await store.set_paused(op[1], op[2])
            now += 0.5
        rows = await store.deliveries(limit=1000)
        seen.append(sorted(tuple(sorted(r.items())) for r in rows))
        seen.append(sorted(tuple(sorted(e.items())) for e in await store.events(1000)))
        for status in ("pending", "delivered", "dead"):
            seen.append(len(await store.deliveries(status=status, subscription="ops")))
    finally:
        await store.close()
    return seen


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=_OPS)
def test_the_redis_store_answers_as_the_sqlite_store_does(
    ops: list[tuple[Any, ...]], tmp_path: Path, redis_server: Any
) -> None:
    name = secrets.token_hex(4)
    sqlite = SqliteStore(str(tmp_path / f"{name}.sqlite3"))
    redis = RedisStore(redis_server.url, prefix=f"prop:{name}", timeout=5.0)
    assert asyncio.run(_apply(redis, ops)) == asyncio.run(_apply(sqlite, ops))


async def test_a_delivery_whose_event_is_gone_from_redis_is_dead_lettered_not_sent_empty(
    redis_server: Any,
) -> None:
    import redis

    store = RedisStore(redis_server.url, prefix="gone", timeout=5.0)
    try:
        await store.record(_event(1), ["billing"], now=1.0)
        await store.record(_event(2), ["billing"], now=1.0)
        client = redis.Redis.from_url(redis_server.url)
        client.delete("gone:event:evt_1")  # evicted (a Redis without noeviction)
        client.close()
        due = await store.claim("billing", "a", now=2.0, limit=10, lease_until=9.0)
        assert [c.event_id for c in due.claimed] == ["evt_2"] and due.pending == 1
        (dead,) = await store.deliveries(status="dead")
        assert dead["event_id"] == "evt_1"
        assert dead["last_error"] == "the event is missing from Redis"
    finally:
        await store.close()


# --------------------------------------------------------------------------- leases and finish


async def _finish(
    store: WebhookStore, owner: str, claim: int, status: str, now: float, n: int = 1
) -> bool:
    return await store.finish(
        f"evt_{n}",
        "billing",
        owner=owner,
        claim=claim,
        status=status,
        attempts=1,
        next_at=now + 1.0 if status == "pending" else now,
        last_status=200 if status == "delivered" else 500,
        last_error=None if status == "delivered" else "HTTP 500",
        now=now,
    )


async def _status(store: WebhookStore, n: int = 1) -> str:
    (row,) = await store.deliveries(event_id=f"evt_{n}", subscription="billing")
    return str(row["status"])


async def test_a_late_finish_neither_ends_the_next_lease_nor_overwrites_its_outcome(
    make_store: MakeStore,
) -> None:
    """A claims; A's lease expires and B claims; A's late finish changes nothing (C
    cannot claim while B's lease runs), and B's outcome stands whichever lands last."""
    first, second = make_store(), make_store()
    await first.open()
    await second.open()
    try:
        await first.record(_event(1), ["billing"], now=100.0)
        (a,) = (await first.claim("billing", "A", now=100.0, limit=10, lease_until=140.0)).claimed
        (b,) = (await second.claim("billing", "B", now=141.0, limit=10, lease_until=181.0)).claimed
        assert b.event_id == a.event_id and b.claim != a.claim
        # A wakes up: its retry must not end B's lease
        assert not await _finish(first, "A", a.claim, "pending", now=141.5)
        c = await first.claim("billing", "C", now=142.0, limit=10, lease_until=182.0)
        assert c.claimed == [] and c.next_at == 181.0
        assert await _finish(second, "B", b.claim, "delivered", now=150.0)
        # the finishes landing the other way round: A's dead or pending never undoes B's
        assert not await _finish(first, "A", a.claim, "dead", now=151.0)
        assert not await _finish(first, "A", a.claim, "pending", now=151.0)
        assert await _status(first) == "delivered"
        late = await first.claim("billing", "C", now=500.0, limit=10, lease_until=600.0)
        assert late.claimed == [] and late.pending == 0
        # a finish repeated by the current owner lands once
        assert not await _finish(second, "B", b.claim, "dead", now=152.0)
        assert await _status(second) == "delivered"
    finally:
        await first.close()
        await second.close()


async def test_two_claims_by_the_same_owner_are_told_apart(make_store: MakeStore) -> None:
    store = make_store()
    await store.open()
    try:
        await store.record(_event(1), ["billing"], now=1.0)
        (old,) = (await store.claim("billing", "A", now=1.0, limit=10, lease_until=5.0)).claimed
        (new,) = (await store.claim("billing", "A", now=6.0, limit=10, lease_until=20.0)).claimed
        assert new.claim == old.claim + 1
        assert not await _finish(store, "A", old.claim, "dead", now=7.0)
        held = await store.claim("billing", "C", now=8.0, limit=10, lease_until=30.0)
        assert held.claimed == [] and held.next_at == 20.0
        assert await _finish(store, "A", new.claim, "delivered", now=9.0)
        assert await _status(store) == "delivered"
    finally:
        await store.close()


@pytest.mark.parametrize("outcome", ["delivered", "dead", "pending"])
async def test_a_replay_during_an_attempt_is_sent_again_after_that_attempt(
    make_store: MakeStore, outcome: str
) -> None:
    """An operator replays while an attempt is in flight: whatever that attempt's outcome,
    the delivery is queued again (from its first attempt) when it finishes, not before."""
    store = make_store()
    await store.open()
    try:
        await store.record(_event(1), ["billing"], now=1.0)
        await store.record(_event(2), ["billing"], now=1.0)
        due = await store.claim("billing", "A", now=2.0, limit=10, lease_until=30.0)
        claims = {c.event_id: c.claim for c in due.claimed}
        assert await store.replay("evt_1", "billing", now=3.0)
        assert await store.replay_range("billing", since=0.0, until=2.0, now=3.0) == 2
        # the attempts still hold their leases: nobody sends them twice at once
        held = await store.claim("billing", "B", now=4.0, limit=10, lease_until=40.0)
        assert held.claimed == [] and held.pending == 2
        assert await _finish(store, "A", claims["evt_1"], outcome, now=5.0, n=1)
        assert await _finish(store, "A", claims["evt_2"], outcome, now=5.0, n=2)
        rows = await store.deliveries(subscription="billing")
        assert [(r["status"], r["attempts"], r["last_status"]) for r in rows] == [
            ("pending", 0, None)
        ] * 2
        again = await store.claim("billing", "B", now=6.0, limit=10, lease_until=40.0)
        assert sorted((c.event_id, c.attempts) for c in again.claimed) == [
            ("evt_1", 0),
            ("evt_2", 0),
        ]
        # that attempt's outcome is recorded as usual (the replay was honoured once)
        for c in again.claimed:
            n = int(c.event_id.removeprefix("evt_"))
            assert await _finish(store, "B", c.claim, "delivered", now=7.0, n=n)
        assert {await _status(store, 1), await _status(store, 2)} == {"delivered"}
    finally:
        await store.close()


async def test_a_replay_after_the_lease_expired_drops_the_late_attempts_finish(
    make_store: MakeStore,
) -> None:
    store = make_store()
    await store.open()
    try:
        await store.record(_event(1), ["billing"], now=1.0)
        (a,) = (await store.claim("billing", "A", now=2.0, limit=10, lease_until=5.0)).claimed
        assert await store.replay("evt_1", "billing", now=6.0)  # A's lease is over
        assert not await _finish(store, "A", a.claim, "delivered", now=7.0)
        (b,) = (await store.claim("billing", "B", now=8.0, limit=10, lease_until=20.0)).claimed
        assert b.attempts == 0
    finally:
        await store.close()


async def test_a_release_after_a_replay_in_flight_queues_it_once(make_store: MakeStore) -> None:
    store = make_store()
    await store.open()
    try:
        await store.record(_event(1), ["billing"], now=1.0)
        (a,) = (await store.claim("billing", "A", now=2.0, limit=10, lease_until=30.0)).claimed
        assert await store.replay("evt_1", "billing", now=3.0)
        await store.release("A")  # a graceful stop cancelled the attempt
        assert not await _finish(store, "A", a.claim, "delivered", now=4.0)
        (b,) = (await store.claim("billing", "B", now=5.0, limit=10, lease_until=20.0)).claimed
        assert await _finish(store, "B", b.claim, "delivered", now=6.0)
        assert await _status(store) == "delivered"  # not queued again by the old replay
    finally:
        await store.close()


async def test_an_older_sqlite_file_gets_the_new_columns(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE deliveries (event_id TEXT NOT NULL, subscription TEXT NOT NULL,"
        " status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL,"
        " lease_until REAL NOT NULL DEFAULT 0, owner TEXT, created REAL NOT NULL,"
        " updated REAL NOT NULL, last_status INTEGER, last_error TEXT,"
        " PRIMARY KEY (event_id, subscription));"
    )
    db.close()
    store = SqliteStore(str(path))
    await store.open()
    try:
        await store.record(_event(1), ["billing"], now=1.0)
        (a,) = (await store.claim("billing", "A", now=2.0, limit=10, lease_until=30.0)).claimed
        assert a.claim == 1 and await _finish(store, "A", a.claim, "delivered", now=3.0)
    finally:
        await store.close()


# --------------------------------------------------------------------------- Redis durability

_DURABLE = ["--appendonly", "yes", "--appendfsync", "always", "--maxmemory-policy", "noeviction"]


async def _open_logged(url: str, require: bool = False) -> list[dict[str, Any]]:
    store = RedisStore(url, prefix="dur", timeout=5.0, require_durable=require)
    try:
        with structlog.testing.capture_logs() as logs:
            await store.open()
    finally:
        await store.close()
    return [line for line in logs if line["event"].startswith("webhook_redis")]


@pytest.mark.parametrize("redis_server", [_DURABLE], indirect=True)
async def test_a_durable_redis_opens_quietly_even_when_durability_is_required(
    redis_server: Any,
) -> None:
    assert await _open_logged(redis_server.url) == []
    assert await _open_logged(redis_server.url, require=True) == []


async def test_a_redis_without_aof_is_one_error_line_naming_what_to_set(
    redis_server: Any,
) -> None:
    (line,) = await _open_logged(redis_server.url)  # the fixture's default: no persistence
    assert line["log_level"] == "error" and line["event"] == "webhook_redis_not_durable"
    assert line["appendonly"] == "no"
    assert "set appendonly yes, appendfsync always" in line["message"]
    with pytest.raises(ConfigError, match=r"require_durable_redis: .*set appendonly yes"):
        await _open_logged(redis_server.url, require=True)


@pytest.mark.parametrize(
    "redis_server",
    [["--appendonly", "yes", "--appendfsync", "always", "--maxmemory-policy", "allkeys-lru"]],
    indirect=True,
)
async def test_a_redis_that_may_evict_keys_is_an_error_too(redis_server: Any) -> None:
    (line,) = await _open_logged(redis_server.url)
    assert line["log_level"] == "error" and line["maxmemory_policy"] == "allkeys-lru"
    assert "keys may be evicted" in line["message"]
    assert line["message"].endswith("set maxmemory-policy noeviction")
    with pytest.raises(ConfigError, match="maxmemory-policy noeviction"):
        await _open_logged(redis_server.url, require=True)


@pytest.mark.parametrize(
    "redis_server", [["--appendonly", "yes", "--appendfsync", "everysec"]], indirect=True
)
async def test_a_redis_fsyncing_every_second_is_a_warning(redis_server: Any) -> None:
    (line,) = await _open_logged(redis_server.url)
    assert line["log_level"] == "warning" and "appendfsync always" in line["message"]
    assert await _open_logged(redis_server.url, require=True) != []  # still starts


@pytest.mark.parametrize(
    "redis_server", [[*_DURABLE, "--rename-command", "CONFIG", ""]], indirect=True
)
async def test_a_redis_without_config_is_a_warning_that_it_could_not_be_checked(
    redis_server: Any,
) -> None:
    (line,) = await _open_logged(redis_server.url)
    assert line["log_level"] == "warning"
    assert line["event"] == "webhook_redis_durability_unchecked"
    assert "unknown command" in line["error"]
    with pytest.raises(ConfigError, match="cannot check the webhooks Redis's persistence"):
        await _open_logged(redis_server.url, require=True)
    # the store works all the same
    store = RedisStore(redis_server.url, prefix="dur", timeout=5.0)
    try:
        await store.open()
        assert await store.record(_event(1), ["billing"], now=1.0)
    finally:
        await store.close()


async def test_a_redis_that_is_down_at_start_up_is_a_warning(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{s.getsockname()[1]}/0"
        (line,) = await _open_logged(url)
        assert line["event"] == "webhook_redis_durability_unchecked"
        with pytest.raises(ConfigError, match="cannot check"):
            await _open_logged(url, require=True)


# --------------------------------------------------------------------------- group commit


def _stored_ids(path: Path) -> set[str]:
    """The event ids another connection (another process) sees committed in ``path``."""
    db = sqlite3.connect(path)
    try:
        return {row[0] for row in db.execute("SELECT id FROM events")}
    finally:
        db.close()


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ids=st.lists(st.integers(0, 30), min_size=1, max_size=40))
async def test_concurrent_records_are_each_committed_before_they_return(
    tmp_path: Path, ids: list[int]
) -> None:
    """Group commit: however many records arrive at once (duplicates among them), each
    returns only once its event is visible to another connection, and an id is new once."""
    path = tmp_path / f"{secrets.token_hex(4)}.sqlite3"
    store = SqliteStore(str(path))
    await store.open()
    try:

        async def record(n: int) -> bool:
            new = await store.record(_event(n), ["billing"], now=1.0)
            assert f"evt_{n}" in _stored_ids(path)  # committed, not merely queued
            return new

        results = await asyncio.gather(*(record(n) for n in ids))
        news = [n for n, new in zip(ids, results, strict=True) if new]
        assert sorted(news) == sorted(set(ids))  # each id new exactly once
        assert len(await store.deliveries(limit=1000)) == len(set(ids))
    finally:
        await store.close()


async def test_a_failing_write_does_not_take_the_others_in_its_group_commit_down(
    tmp_path: Path,
) -> None:
    path = tmp_path / "hooks.sqlite3"
    store = SqliteStore(str(path))
    await store.open()
    try:
        bad = dataclasses.replace(_event(99), body=object())  # type: ignore[arg-type]
        results = await asyncio.gather(
            *(store.record(e, ["billing"], now=1.0) for e in (_event(0), _event(1), bad)),
            store.record(_event(2), ["billing"], now=1.0),
            return_exceptions=True,
        )
        assert results[:2] == [True, True] and results[3] is True
        assert isinstance(results[2], sqlite3.Error)
        assert _stored_ids(path) == {"evt_0", "evt_1", "evt_2"}
        # the failed one was not stored: it is new when it comes again
        assert await store.record(_event(99), ["billing"], now=2.0)
    finally:
        await store.close()


async def test_a_write_after_close_fails_instead_of_waiting_forever(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "hooks.sqlite3"))
    await store.open()
    await store.close()
    for _ in range(2):  # and again: the failed one left nothing behind
        with pytest.raises(RuntimeError):
            await asyncio.wait_for(store.record(_event(1), ["billing"], now=1.0), 30)


async def test_a_group_commit_that_cannot_begin_fails_every_write_in_it(tmp_path: Path) -> None:
    """Another process holding the write lock past ``busy_timeout`` (10 s): each write of
    the group fails (Stripe gets 503 and sends again), none is stored; later they succeed."""
    path = tmp_path / "hooks.sqlite3"
    store = SqliteStore(str(path))
    await store.open()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        results = await asyncio.gather(
            *(store.record(_event(n), ["billing"], now=1.0) for n in range(4)),
            return_exceptions=True,
        )
        assert all(isinstance(r, sqlite3.OperationalError) for r in results), results
        other.execute("ROLLBACK")
        assert _stored_ids(path) == set()
        again = await asyncio.gather(
            *(store.record(_event(n), ["billing"], now=2.0) for n in range(4))
        )
        assert again == [True] * 4
    finally:
        other.close()
        await store.close()
