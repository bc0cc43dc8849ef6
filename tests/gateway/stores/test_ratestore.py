"""The GCRA limiters: the in-process one on a hand-driven clock, the Redis one against a
real redis-server."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator

import pytest
import redis

from gateway.stores.ratestore import Bucket, Limit, LimiterUnavailable, MemoryLimiter, RedisLimiter
from tests.conftest import RedisServer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def bucket(key: str, rate: float, burst: int, name: str = "read") -> Bucket:
    return key, Limit(name=name, rate=rate, burst=burst)


# ------------------------------------------------------------------ memory


def test_a_burst_passes_then_the_rate_holds() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock=clock)
    b = [bucket("t", rate=2, burst=3)]
    remaining = [limiter.decide_now(b, shadow=False).verdicts[0].remaining for _ in range(3)]
    assert remaining == [2, 1, 0]
    refused = limiter.decide_now(b, shadow=False)
    assert not refused.allowed
    assert refused.binding.retry_after == pytest.approx(0.5)
    assert refused.binding.reset == pytest.approx(1.5)  # three intervals until full
    clock.now += 0.5
    assert limiter.decide_now(b, shadow=False).allowed
    assert not limiter.decide_now(b, shadow=False).allowed


def test_no_window_boundary_lets_twice_the_burst_through() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock=clock)
    b = [bucket("t", rate=5, burst=5)]
    clock.now = 1000.999
    assert sum(limiter.decide_now(b, shadow=False).allowed for _ in range(5)) == 5
    clock.now = 1001.0  # a fixed one-second window would start afresh here
    assert sum(limiter.decide_now(b, shadow=False).allowed for _ in range(5)) == 0


def test_sustained_load_gets_burst_plus_rate_times_time() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock=clock)
    b = [bucket("t", rate=10, burst=4)]
    allowed = 0
    for _ in range(10_000):  # one attempt per millisecond for 10 s
        allowed += limiter.decide_now(b, shadow=False).allowed
        clock.now += 0.001
    assert allowed in (4 + 100 - 1, 4 + 100, 4 + 100 + 1)


def test_one_refusal_charges_no_bucket() -> None:
    limiter = MemoryLimiter(clock=Clock())
    team, account = bucket("team", 1, 5), bucket("account", 1, 1, "account")
    assert limiter.decide_now([team, account], shadow=False).allowed
    refused = limiter.decide_now([team, account], shadow=False)
    assert not refused.allowed
    assert refused.binding.limit.name == "account"
    assert [v.allowed for v in refused.verdicts] == [True, False]
    assert limiter.decide_now([team], shadow=False).verdicts[0].remaining == 3  # charged once


def test_shadow_charges_the_buckets_that_allow() -> None:
    limiter = MemoryLimiter(clock=Clock())
    team, account = bucket("team", 1, 5), bucket("account", 1, 1, "account")
    limiter.decide_now([team, account], shadow=True)
    assert not limiter.decide_now([team, account], shadow=True).allowed
    # the request went upstream anyway: the team bucket paid for both
    assert limiter.decide_now([team], shadow=False).verdicts[0].remaining == 2


def test_share_scales_rate_and_burst() -> None:
    clock = Clock()
    limiter = MemoryLimiter(share=0.5, clock=clock)
    b = [bucket("t", rate=10, burst=4)]
    assert sum(limiter.decide_now(b, shadow=False).allowed for _ in range(10)) == 2
    verdict = limiter.decide_now(b, shadow=False).verdicts[0]
    assert verdict.limit.rate == 5 and verdict.limit.burst == 2
    assert verdict.retry_after == pytest.approx(0.2)


def test_full_buckets_are_forgotten() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock=clock)
    for i in range(100):
        limiter.decide_now([bucket(f"t{i}", rate=1, burst=1)], shadow=False)
    assert len(limiter) == 100
    clock.now += 11
    limiter.decide_now([bucket("t0", rate=1, burst=1)], shadow=False)
    assert len(limiter) == 1


# ------------------------------------------------------------------ redis


@pytest.fixture
def errors() -> list[BaseException]:
    return []


@pytest.fixture
def sync_redis(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


def _limiter(server: RedisServer, errors: list[BaseException], **kwargs: float) -> RedisLimiter:
    return RedisLimiter(
        server.url,
        prefix="test:rl",
        # generous: a first call (connect, script load) timing out on a busy machine
        # would be taken for a bug
        timeout=kwargs.get("timeout", 1.0),
        breaker_seconds=kwargs.get("breaker", 0.3),
        on_error=errors.append,
    )


async def test_redis_burst_remaining_and_refusal(
    redis_server: RedisServer, errors: list[BaseException], sync_redis: redis.Redis
) -> None:
    limiter = _limiter(redis_server, errors)
    try:
        b = [bucket("t:billing:read", rate=0.5, burst=3)]
        remaining = [(await limiter.decide(b, shadow=False)).verdicts[0].remaining for _ in "abc"]
        assert remaining == [2, 1, 0]
        refused = await limiter.decide(b, shadow=False)
        assert not refused.allowed
        assert 1.9 < refused.binding.retry_after <= 2.0
        assert 5.9 < refused.binding.reset <= 6.0
        # the key expires by itself when the bucket is full again
        assert sync_redis.keys("*") == [b"test:rl:t:billing:read"]
        assert 5800 < sync_redis.pttl("test:rl:t:billing:read") <= 6001
    finally:
        await limiter.close()
    assert errors == []


async def test_redis_decisions_are_all_or_nothing_and_shared(
    redis_server: RedisServer, errors: list[BaseException]
) -> None:
    one, two = _limiter(redis_server, errors), _limiter(redis_server, errors)
    try:
        team, account = bucket("team", 0.5, 5), bucket("account", 0.5, 2, "account")
        assert (await one.decide([team, account], shadow=False)).allowed
        assert (await two.decide([team, account], shadow=False)).allowed
        refused = await one.decide([team, account], shadow=False)
        assert [v.allowed for v in refused.verdicts] == [True, False]
        assert (await two.decide([team], shadow=False)).verdicts[0].remaining == 2
        shadowed = await two.decide([team, account], shadow=True)
        assert not shadowed.allowed
        assert (await one.decide([team], shadow=False)).verdicts[0].remaining == 0
    finally:
        await one.close()
        await two.close()


async def test_redis_rate_over_real_time(
    redis_server: RedisServer, errors: list[BaseException]
) -> None:
    limiter = _limiter(redis_server, errors)
    try:
        b = [bucket("smooth", rate=100, burst=1)]
        allowed = 0
        started = time.monotonic()
        while time.monotonic() - started < 0.5:
            allowed += (await limiter.decide(b, shadow=False)).allowed
        elapsed = time.monotonic() - started
        # never more than the rate lets through; on a loaded machine the loop may ask too
        # slowly to use all of it (burst 1: a stall loses the tokens), so the lower bound
        # only says that it refills
        assert 5 <= allowed <= 1 + 100 * elapsed + 2
    finally:
        await limiter.close()


async def test_redis_outage_opens_the_circuit(
    redis_server: RedisServer, errors: list[BaseException]
) -> None:
    limiter = _limiter(redis_server, errors, breaker=2.0)
    recovered: list[bool] = []
    limiter._on_recover = lambda: recovered.append(True)
    b = [bucket("t", rate=0.01, burst=1)]  # no refill while the test runs
    try:
        await limiter.decide(b, shadow=False)
        redis_server.process.send_signal(signal.SIGSTOP)  # hung, not gone: a timeout
        try:
            started = time.monotonic()
            with pytest.raises(LimiterUnavailable):
                await limiter.decide(b, shadow=False)
            assert time.monotonic() - started >= 0.9  # it waited for the timeout
            assert len(errors) == 1
            started = time.monotonic()
            for _ in range(100):  # the circuit is open: no waiting, no new errors
                with pytest.raises(LimiterUnavailable, match="circuit open"):
                    await limiter.decide(b, shadow=False)
            assert time.monotonic() - started < 1.0  # any wait would be the 1 s timeout
            assert len(errors) == 1
            assert 0 < limiter.retry_in() <= 2.0
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        await asyncio.sleep(limiter.retry_in() + 0.05)
        assert not (await limiter.decide(b, shadow=False)).allowed  # the same bucket, still
        assert recovered == [True]
        redis_server.kill()
        with pytest.raises(LimiterUnavailable):
            await limiter.decide(b, shadow=False)
        assert len(errors) == 2
    finally:
        await limiter.close()
