"""UpstreamSlots: the pool's gate (a free slot taken without waiting, waiters first come
first served, none lost to a timeout or a cancel) and each team's in-flight cap."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.slots import PoolExhausted, TeamBusy, UpstreamSlots


async def test_a_free_slot_is_taken_at_once_and_given_back() -> None:
    slots = UpstreamSlots(1)
    assert slots.try_take("a", None)
    assert slots.in_flight("a") == 1
    assert not slots.try_take("b", None)  # the pool is full: nothing taken
    assert slots.in_flight("b") == 0
    slots.give("a")
    assert slots.in_flight("a") == 0
    assert slots.try_take("b", None)


async def test_team_cap_refuses_at_once_even_when_the_pool_is_full() -> None:
    slots = UpstreamSlots(1)
    assert slots.try_take("a", 1)
    with pytest.raises(TeamBusy):
        slots.try_take("a", 1)
    with pytest.raises(TeamBusy):
        await slots.take("a", 1, wait=5)
    assert slots.in_flight("a") == 1


async def test_waiters_are_served_in_order() -> None:
    slots = UpstreamSlots(1)
    await slots.take("t", None, wait=5)
    order: list[int] = []

    async def wait(i: int) -> None:
        await slots.take("t", None, wait=30)
        order.append(i)

    tasks = [asyncio.create_task(wait(i)) for i in range(3)]
    while len(slots._waiters) < 3:
        await asyncio.sleep(0)
    assert not slots.try_take("u", None)  # no queue jumping while others wait
    for _ in range(3):
        slots.give("t")
        while len(order) < 3 - len(slots._waiters):
            await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    slots.give("t")
    assert slots.try_take("u", None)


async def test_timeout_raises_pool_exhausted_and_uncounts_the_team() -> None:
    slots = UpstreamSlots(1)
    assert slots.try_take("a", None)
    with pytest.raises(PoolExhausted):
        await slots.take("b", None, wait=0.01)
    assert slots.in_flight("b") == 0
    slots.give("a")
    assert slots.try_take("b", None)


async def test_a_cancelled_waiter_loses_no_slot() -> None:
    slots = UpstreamSlots(1)
    assert slots.try_take("a", None)
    task = asyncio.create_task(slots.take("b", None, wait=30))
    while not slots._waiters:
        await asyncio.sleep(0)
    slots.give("a")  # handed to the waiter...
    task.cancel()  # ...which is cancelled before it runs: the slot goes back
    with pytest.raises(asyncio.CancelledError):
        await task
    assert slots.in_flight("b") == 0
    assert slots.try_take("c", None)
    assert not slots.try_take("d", None)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(["take", "give", "cancel"]), max_size=40))
def test_slots_never_exceed_the_pool(steps: list[str]) -> None:
    """Whatever the order of takes, gives and cancels, at most ``size`` slots are held and
    every one given back can be taken again."""

    async def run() -> None:
        size = 2
        slots = UpstreamSlots(size)
        held = 0
        waiting: list[asyncio.Task[None]] = []
        for step in steps:
            if step == "take":
                waiting.append(asyncio.create_task(slots.take("t", None, wait=30)))
            elif step == "give" and held:
                slots.give("t")
                held -= 1
            elif step == "cancel" and waiting:
                waiting.pop(0).cancel()
            for _ in range(3):
                await asyncio.sleep(0)
            done = [t for t in waiting if t.done()]
            for t in done:
                waiting.remove(t)
                if not t.cancelled():
                    held += 1
            assert held <= size
        for t in waiting:
            t.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        for _ in range(held):
            slots.give("t")
        assert slots.in_flight("t") == 0
        assert slots.try_take("x", None) and slots.try_take("y", None)
        assert not slots.try_take("z", None)

    asyncio.run(run())
