"""Token leases of the Redis rate limiter, against a real redis-server: never more than the
GCRA bound across instances, nothing leaked for good, few round trips."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.stores.ratelease import LeasedRedisLimiter
from gateway.stores.ratestore import Bucket, Limit, LimiterUnavailable, RedisLimiter
from tests.conftest import RedisServer

#: one unit per 10^4 s: no test lasts long enough to get one back
NEGLIGIBLE = 1e-4
PREFIX = "test:rl"


def bucket(key: str, rate: float, burst: int, name: str = "read") -> Bucket:
    return key, Limit(name=name, rate=rate, burst=burst)


class Clock:
    """time.monotonic(), plus however far a test moved it on."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


@pytest.fixture
def errors() -> list[BaseException]:
    return []


@pytest.fixture
def sync_redis(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


def _leased(
    server: RedisServer,
    errors: list[BaseException],
    *,
    lease: int = 32,
    lease_seconds: float = 1.0,
    clock: Clock | None = None,
) -> LeasedRedisLimiter:
    return LeasedRedisLimiter(
        server.url,
        prefix=PREFIX,
        timeout=2.0,  # generous: a timeout on a loaded machine would be taken for a bug
        breaker_seconds=0.3,
        on_error=errors.append,
        lease=lease,
        lease_seconds=lease_seconds,
        clock=clock or time.monotonic,
    )


async def _one(limiter: RedisLimiter, buckets: list[Bucket], shadow: bool = False) -> bool:
    """One request's decision, as the plugin makes it: from a lease, else from Redis."""
    decision = limiter.decide_local(buckets)
    if decision is None:
        decision = await limiter.decide(buckets, shadow=shadow)
    return decision.allowed


async def _settle(limiter: LeasedRedisLimiter) -> None:
    """Wait for the background syncs in flight."""
    while limiter._tasks:
        await asyncio.gather(*limiter._tasks)


def _free(client: redis.Redis, key: str, limit: Limit) -> float:
    """The bucket's free room in Redis now (units), reservations counted as used."""
    now_s, now_us = client.time()
    now = now_s * 1_000_000 + now_us
    tat = max(float(client.get(f"{PREFIX}:{key}") or now), now)
    reserved = 0
    for value in client.hgetall(f"{PREFIX}:res:{key}").values():
        units, expires = value.decode().split(":")
        if int(expires) > now:
            reserved += int(units)
    interval = limit.interval * 1_000_000
    return limit.burst - (tat - now) / interval - reserved


def _check_books(limiter: LeasedRedisLimiter, client: redis.Redis) -> None:
    """What an instance may still hand out, plus what it handed out and has not reported,
    is exactly what Redis holds for it (once no call is in flight)."""
    for key, lease in limiter._leases.items():
        if lease.pending:
            continue
        value = client.hget(f"{PREFIX}:res:{key}", limiter.instance_id)
        held = int(value.decode().split(":")[0]) if value is not None else 0
        assert lease.left + (lease.handed - lease.reported) == held, (key, lease, held)


def _evalsha_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_one_instance_lets_exactly_the_burst_through(
    redis_server: RedisServer, errors: list[BaseException]
) -> None:
    burst = 50
    limiter = _leased(redis_server, errors, lease_seconds=60.0)  # no expiry however slow
    b = [bucket("t:billing:read", NEGLIGIBLE, burst)]
    try:
        allowed = 0
        for _ in range(burst + 20):
            allowed += await _one(limiter, b)
            await asyncio.sleep(0)  # background syncs get their turn now and then
        await _settle(limiter)
        assert allowed == burst
        assert sum([await _one(limiter, b) for _ in range(5)]) == 0
    finally:
        await limiter.close()
    assert errors == []


async def test_units_handed_out_while_a_sync_is_in_flight_are_counted(
    redis_server: RedisServer, errors: list[BaseException], sync_redis: redis.Redis
) -> None:
    limiter = _leased(redis_server, errors)
    b = [bucket("t:billing:read", NEGLIGIBLE, 1000)]
    try:
        assert await _one(limiter, b)  # a lease of 32
        for _ in range(40):  # a sync starts at 16 left; these are decided before its reply
            assert limiter.decide_local(b) is not None or await _one(limiter, b)
            if limiter._tasks:
                await asyncio.sleep(0)  # the sync is sent
                assert all(lease.pending for lease in limiter._leases.values())
                for _ in range(3):
                    assert limiter.decide_local(b) is not None
                await _settle(limiter)
                _check_books(limiter, sync_redis)
    finally:
        await limiter.close()
    assert errors == []


async def test_leased_decisions_estimate_remaining_and_refusals_say_when(
    redis_server: RedisServer, errors: list[BaseException]
) -> None:
    limiter = _leased(redis_server, errors)
    b = [bucket("t:billing:read", 0.5, 40)]
    try:
        first = await limiter.decide(b, shadow=False)  # from Redis, no lease yet
        assert first.allowed and first.binding.remaining == 39
        lease = limiter.lease_of("t:billing:read")
        assert lease is not None and lease[0] == 0
        second = await limiter.decide(b, shadow=False)  # seen again: it takes a lease
        assert second.allowed and second.binding.remaining == 38
        lease = limiter.lease_of("t:billing:read")
        assert lease is not None and lease[0] == 4  # an eighth of the 38 units free
        local = limiter.decide_local(b)
        assert local is not None and local.binding.remaining == 37
        assert local.binding.reset == pytest.approx(3 * 2.0)
        while await _one(limiter, b):
            pass
        refused = await limiter.decide(b, shadow=False)
        assert not refused.allowed and 0 < refused.binding.retry_after <= 2.0
    finally:
        await limiter.close()
    assert errors == []


# ------------------------------------------------------------------ the bound, many instances


async def test_another_instances_reservation_counts_as_used(
    redis_server: RedisServer, errors: list[BaseException]
) -> None:
    burst = 80
    b = [bucket("a:both", NEGLIGIBLE, burst, "account")]
    # one holds its lease however long the draining below takes on a busy machine
    one = _leased(redis_server, errors, lease_seconds=60.0)
    two = _leased(redis_server, errors)
    try:
        assert await _one(one, b) and await _one(one, b)  # the second takes a lease
        held = one.lease_of("a:both")
        assert held is not None and held[0] == 9  # an eighth of the 78 units free
        drained = 0
        while await _one(two, b):
            drained += 1
            await _settle(two)  # its syncs too are granted only what the other does not hold
        for _ in range(3):  # nor are the syncs of a drained bucket
            two._sync_soon(b)
            await _settle(two)
        assert sum([await _one(two, b) for _ in range(10)]) == 0
        assert drained == burst - 2 - 9  # the other's 9 are not there to take
        assert sum([await _one(one, b) for _ in range(20)]) == 9  # but they are its own
    finally:
        await one.close()
        await two.close()
    assert errors == []


@dataclass
class _Redis:
    """The server, kept out of hypothesis's report of a failing example."""

    server: RedisServer = field(repr=False)
    client: redis.Redis = field(repr=False)


@pytest.fixture
def shared(redis_server: RedisServer, sync_redis: redis.Redis) -> _Redis:
    return _Redis(redis_server, sync_redis)


_STEPS = st.lists(
    st.tuples(
        st.sampled_from(["decide", "decide", "decide", "settle", "expire", "close"]),
        st.integers(0, 2),
        st.integers(1, 30),
    ),
    min_size=1,
    max_size=40,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=_STEPS,
    burst=st.integers(1, 80),
    lease=st.integers(1, 40),
    instances=st.integers(2, 3),
)
def test_instances_together_never_pass_more_than_the_burst_and_leak_nothing(
    shared: _Redis, steps: list[tuple[str, int, int]], burst: int, lease: int, instances: int
) -> None:
    shared.client.flushall()
    limit = Limit(name="account", rate=NEGLIGIBLE, burst=burst)
    b = [("a:shared", limit)]

    async def run() -> int:
        clock = Clock()
        errors: list[BaseException] = []
        limiters = [
            _leased(shared.server, errors, lease=lease, lease_seconds=30.0, clock=clock)
            for _ in range(instances)
        ]
        closed = [False] * instances
        allowed = 0
        try:
            for op, which, times in steps:
                limiter = limiters[which % instances]
                if closed[which % instances]:
                    continue
                if op == "decide":  # a few requests at once, as concurrent requests come
                    answers = await asyncio.gather(*(_one(limiter, b) for _ in range(times)))
                    allowed += sum(answers)
                elif op == "settle":
                    await _settle(limiter)
                    _check_books(limiter, shared.client)
                elif op == "expire":  # its leases' time is up: the next sweep gives them back
                    clock.offset += 15.0
                    await _settle(limiter)
                    await limiter.sweep()
                else:
                    await limiter.close()
                    closed[which % instances] = True
                assert allowed <= burst
        finally:
            for limiter, done in zip(limiters, closed, strict=True):
                if not done:
                    await limiter.close()
        assert errors == []
        return allowed

    allowed = asyncio.run(run())
    assert allowed <= burst
    # every instance gave back what it held: the room not spent is free again
    assert math.floor(_free(shared.client, "a:shared", limit) + 1e-3) == burst - allowed
    assert shared.client.keys(f"{PREFIX}:res:*") == []


async def test_two_instances_hammering_with_refill_stay_within_the_bound(
    redis_server: RedisServer, errors: list[BaseException]
) -> None:
    rate, burst = 200.0, 10
    b = [bucket("a:hammered", rate, burst, "account")]
    one, two = _leased(redis_server, errors), _leased(redis_server, errors)
    allowed = 0

    async def worker(limiter: LeasedRedisLimiter, deadline: float) -> None:
        nonlocal allowed
        while time.monotonic() < deadline:
            allowed += await _one(limiter, b)
            await asyncio.sleep(0)

    try:
        started = time.monotonic()
        deadline = started + 1.0
        await asyncio.gather(*(worker(x, deadline) for x in (one, two) for _ in range(4)))
        await _settle(one)
        await _settle(two)
        elapsed = time.monotonic() - started
    finally:
        await one.close()
        await two.close()
    assert 0 < allowed <= burst + rate * elapsed
    assert errors == []


@pytest.mark.parametrize(("lease", "most"), [(32, 200 // 4), (0, 200)])
async def test_leases_save_round_trips(
    redis_server: RedisServer,
    errors: list[BaseException],
    sync_redis: redis.Redis,
    lease: int,
    most: int,
) -> None:
    if lease:
        limiter: RedisLimiter = _leased(redis_server, errors, lease=lease)
    else:
        limiter = RedisLimiter(
            redis_server.url,
            prefix=PREFIX,
            timeout=2.0,
            breaker_seconds=0.3,
            on_error=errors.append,
        )
    sync_redis.script_load("return 1")  # (loads nothing the limiter uses: it loads its own)
    b = [bucket("t:billing:read", 1e4, 1000), bucket("a:x", 1e4, 1000, "account")]
    try:
        assert await _one(limiter, b)  # the first may need EVAL (NOSCRIPT): not counted
        before = _evalsha_calls(sync_redis)
        for _ in range(200):
            assert await _one(limiter, b)
            await asyncio.sleep(0)
        calls = _evalsha_calls(sync_redis) - before
    finally:
        await limiter.close()
    if lease:
        assert calls <= most
    else:
        assert calls == most
    assert errors == []


# ------------------------------------------------------------------ giving back


async def test_an_idle_instances_lease_goes_back_and_another_gets_the_room(
    redis_server: RedisServer, errors: list[BaseException], sync_redis: redis.Redis
) -> None:
    burst = 80
    b = [bucket("a:idle", NEGLIGIBLE, burst, "account")]
    a, other = _leased(redis_server, errors, lease_seconds=0.3), _leased(redis_server, errors)
    try:
        assert await _one(a, b) and await _one(a, b)
        assert sync_redis.hget(f"{PREFIX}:res:a:idle", a.instance_id) is not None  # it holds 9
        deadline = time.monotonic() + 30
        while sync_redis.hget(f"{PREFIX}:res:a:idle", a.instance_id) is not None:
            assert time.monotonic() < deadline, "the sweeper never gave the lease back"
            await asyncio.sleep(0.02)
        allowed = 0
        while await _one(other, b):
            allowed += 1
        assert allowed == burst - 2  # given back in time: nothing of it is charged
    finally:
        await a.close()
        await other.close()
    assert errors == []


def _expired(client: redis.Redis, key: str, instance: str) -> bool:
    """Whether ``instance``'s reservation of ``key`` is past its time on Redis's clock."""
    value = client.hget(f"{PREFIX}:res:{key}", instance)
    if value is None:
        return True
    now_s, now_us = client.time()
    return int(value.decode().split(":")[1]) <= now_s * 1_000_000 + now_us


async def test_a_crashed_instances_reservation_is_charged_when_it_expires(
    redis_server: RedisServer, errors: list[BaseException], sync_redis: redis.Redis
) -> None:
    """An instance that vanished may have handed out any of what it held: Redis drops the
    reservation at its time and charges it as used, so the others never get it again
    (with a real rate it comes back by refilling, like any request)."""
    burst = 80
    b = [bucket("a:crash", NEGLIGIBLE, burst, "account")]
    a, other = _leased(redis_server, errors, lease_seconds=0.3), _leased(redis_server, errors)
    try:
        assert await _one(a, b) and await _one(a, b)
        held = a.lease_of("a:crash")
        assert held is not None and held[0] == 9  # an eighth of 78
        assert a._sweeper is not None
        a._sweeper.cancel()  # it crashed: no sweeper, no close
        deadline = time.monotonic() + 30
        while not _expired(sync_redis, "a:crash", a.instance_id):
            assert time.monotonic() < deadline, "Redis kept the reservation"
            await asyncio.sleep(0.02)
        allowed = 0
        while await _one(other, b):
            allowed += 1
        assert allowed == burst - 2 - 9
        assert sync_redis.hget(f"{PREFIX}:res:a:crash", a.instance_id) is None
    finally:
        await other.close()
        await RedisLimiter.close(a)  # (only its connection: it gives nothing back)
    assert errors == []


async def test_a_reservation_its_holder_could_not_report_is_charged_when_it_expires(
    redis_server: RedisServer, sync_redis: redis.Redis
) -> None:
    """A short Redis stall times a sync out and opens the holder's circuit for longer than
    Redis keeps its reservation. The holder still hands out its valid units, but cannot
    report them (nor give the lease back) before Redis drops it; another instance must not
    get those units again: all together never pass more than the burst."""
    burst = 200
    b = [bucket("a:hiccup", NEGLIGIBLE, burst, "account")]
    errors: list[BaseException] = []
    a = LeasedRedisLimiter(
        redis_server.url,
        prefix=PREFIX,
        timeout=5.0,  # slack for the first calls on a busy machine; 0.5 s for the stall below
        breaker_seconds=60.0,  # open far longer than lease_seconds
        on_error=errors.append,
        lease=32,
        lease_seconds=1.0,
    )
    other = _leased(redis_server, [])
    allowed = 0
    try:
        allowed += await _one(a, b) + await _one(a, b)  # the second takes a lease
        held = a.lease_of("a:hiccup")
        assert held is not None and held[0] == 24  # an eighth of 198
        a._timeout = 0.5  # shorter than the lease
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            with pytest.raises(LimiterUnavailable):  # Redis runs it later; nobody listens
                await a._call(b, shadow=False, cost=0, release=False)
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        assert a.retry_in() > 0 and len(errors) == 1
        while a.decide_local(b) is not None:  # still valid: handed out, never reported
            allowed += 1
        await a.sweep()  # nothing to give back yet, or refused by the open circuit
        deadline = time.monotonic() + 30
        while not _expired(sync_redis, "a:hiccup", a.instance_id):
            assert time.monotonic() < deadline, "Redis kept the reservation"
            await asyncio.sleep(0.02)
        while await _one(other, b):
            allowed += 1
            await _settle(other)
        assert allowed <= burst
        assert allowed >= burst - 32  # under-admission is bounded by one reservation
    finally:
        await other.close()
        await a.close()


async def test_a_killed_redis_leaves_the_leased_units_usable(
    redis_server: RedisServer, errors: list[BaseException]
) -> None:
    b = [bucket("a:killed", NEGLIGIBLE, 100, "account")]
    limiter = _leased(redis_server, errors, lease_seconds=30.0)
    try:
        assert await _one(limiter, b) and await _one(limiter, b)
        lease = limiter.lease_of("a:killed")
        assert lease is not None and lease[0] == 12  # an eighth of 98
        redis_server.kill()
        local = 0
        while (decision := limiter.decide_local(b)) is not None:
            assert decision.allowed
            local += 1
            await asyncio.sleep(0)  # the background sync runs, and fails
        assert local == 12
        await _settle(limiter)
        assert len(errors) >= 1  # the sync's failure went to on_error
    finally:
        await limiter.close()  # gives nothing back (Redis is gone), raises nothing


async def test_a_failed_report_keeps_its_units_off_the_lease(
    redis_server: RedisServer, errors: list[BaseException], sync_redis: redis.Redis
) -> None:
    """A call fails (here: it timed out while redis-server was stopped) while a later one
    is in flight: the later one's reply must not give the instance back the units the failed
    one reported. Those units count as unreported (sent again next time), so what the
    instance may still hand out plus what it must report never exceeds what Redis holds
    for it: no unit is handed out twice."""
    limiter = LeasedRedisLimiter(
        redis_server.url,
        prefix=PREFIX,
        timeout=5.0,
        breaker_seconds=0.3,
        on_error=errors.append,
        lease=32,
    )
    b = [bucket("t:billing:read", NEGLIGIBLE, 1000)]
    try:
        assert await _one(limiter, b) and await _one(limiter, b)  # a lease
        await _settle(limiter)
        for _ in range(3):
            assert limiter.decide_local(b) is not None
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            limiter._timeout = 0.2  # this call times out; Redis still runs it later
            first = asyncio.ensure_future(limiter._call(b, shadow=False, cost=0, release=False))
            await asyncio.sleep(0)  # sent
            limiter._timeout = 30.0
            for _ in range(2):
                assert limiter.decide_local(b) is not None
            later = asyncio.ensure_future(limiter._call(b, shadow=False, cost=0, release=False))
            await asyncio.sleep(0)  # sent, before the first one fails
            with pytest.raises(LimiterUnavailable):
                await first
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        await later
        _check_books(limiter, sync_redis)
    finally:
        await limiter.close()
    assert len(errors) == 1 and isinstance(errors[0], TimeoutError)


async def test_a_grant_answered_just_before_a_release_is_not_handed_out(
    redis_server: RedisServer, errors: list[BaseException], sync_redis: redis.Redis
) -> None:
    """The sweeper marks a lease as being given back at once, not when its release is sent
    a turn of the loop later: a request's call sent in between is answered first and may
    carry a grant, which the release then gives back, so none of it may be handed out."""
    clock = Clock()
    limiter = _leased(redis_server, errors, clock=clock)
    b = [bucket("t:billing:read", NEGLIGIBLE, 1000)]
    try:
        assert await _one(limiter, b) and await _one(limiter, b)  # a lease
        clock.offset += 10  # past its time here (Redis keeps it for a while yet)

        async def request() -> tuple[bool, bool]:
            decision = await limiter.decide(b, shadow=False)
            # at once, in the same step: the release's reply is not read yet
            return decision.allowed, limiter.decide_local(b) is None

        sweep = asyncio.ensure_future(limiter.sweep())
        asked = asyncio.ensure_future(request())
        await asyncio.sleep(0)  # the sweep has marked the lease; the request is sent
        assert limiter._leases["t:billing:read"].releasing
        allowed, nothing_local = await asked
        assert allowed
        assert nothing_local  # its grant is not handed out
        await sweep
        assert limiter.decide_local(b) is None
        assert sync_redis.hget(f"{PREFIX}:res:t:billing:read", limiter.instance_id) is None
        assert not limiter._leases["t:billing:read"].releasing
    finally:
        await limiter.close()
    assert errors == []
