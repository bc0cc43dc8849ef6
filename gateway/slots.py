"""Who may hold an upstream connection now: the pool's gate and each team's in-flight count.

aiohttp's connector waits for a free pooled connection for as long as it takes (its
``ClientTimeout`` has no separate pool-wait value). :class:`UpstreamSlots` is a gate the
size of the pool (``[upstream] max_connections``), taken before a request goes upstream and
waited for at most ``pool_timeout`` seconds, so the connector itself never has to queue.
It also counts each team's requests upstream, for ``[[teams]] max_in_flight``.

One object serves every config generation of an app (a reload hands it on), since the pool
it guards is shared too. Counts are per process.

Taking a free slot is synchronous (:meth:`UpstreamSlots.try_take`): the request path awaits
only when it has to wait (:meth:`UpstreamSlots.take`); waiters are served first come,
first served, and a slot given back goes straight to the first waiter still waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

__all__ = ["PoolExhausted", "TeamBusy", "UpstreamSlots"]


class PoolExhausted(Exception):
    """No pooled connection came free within the wait allowed."""


class TeamBusy(Exception):
    """The team already has its ``max_in_flight`` requests upstream."""


class UpstreamSlots:
    def __init__(self, size: int) -> None:
        #: False: the pool is unbounded (``max_connections = 0``)
        self._bounded = size > 0
        #: pool slots free now
        self._free = size
        #: requests waiting for a pool slot, first come first served
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._teams: dict[str, int] = {}

    def in_flight(self, team: str) -> int:
        """The team's requests holding a slot now."""
        return self._teams.get(team, 0)

    def try_take(self, team: str | None, cap: int | None) -> bool:
        """Take a slot if the pool has one free and nobody waits for one (True); refuse at
        once when ``team`` is at its ``cap`` (:class:`TeamBusy`). False: nothing was taken
        (call :meth:`take`, which waits)."""
        if self._bounded and (self._free <= 0 or self._waiters):
            if team is not None and cap is not None and self._teams.get(team, 0) >= cap:
                raise TeamBusy()
            return False
        self._count(team, cap)
        if self._bounded:
            self._free -= 1
        return True

    async def take(self, team: str | None, cap: int | None, wait: float) -> None:
        """Take a slot: refuse at once when ``team`` is at its ``cap`` (:class:`TeamBusy`),
        wait at most ``wait`` seconds for the pool (:class:`PoolExhausted`). Every slot
        taken must be given back with :meth:`give` with the same ``team``."""
        if self.try_take(team, cap):
            return
        self._count(team, cap)  # counted while it waits, so waiters cannot pass the cap
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(wait):
                await waiter
        except BaseException as exc:  # timed out, or cancelled while waiting
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot as it gave up: pass it on
            else:
                waiter.cancel()
                self._remove(waiter)
            self._drop(team)
            if isinstance(exc, TimeoutError):
                raise PoolExhausted() from None
            raise

    def give(self, team: str | None) -> None:
        """Give back a slot taken with :meth:`take` or :meth:`try_take`."""
        self._drop(team)
        if self._bounded:
            self._release()

    def _count(self, team: str | None, cap: int | None) -> None:
        if team is not None:
            held = self._teams.get(team, 0)
            if cap is not None and held >= cap:
                raise TeamBusy()
            self._teams[team] = held + 1

    def _release(self) -> None:
        """A slot came free: hand it to the first waiter still waiting, else keep it."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot is the waiter's now
                return
        self._free += 1

    def _remove(self, waiter: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def _drop(self, team: str | None) -> None:
        if team is not None:
            left = self._teams[team] - 1
            if left:
                self._teams[team] = left
            else:
                del self._teams[team]
