"""Who may hold an upstream connection now: the pool's gate and each team's in-flight count.

aiohttp's connector waits for a free pooled connection for as long as it takes (its
``ClientTimeout`` has no separate pool-wait value). :class:`UpstreamSlots` is a gate the
size of the pool (``[upstream] max_connections``), taken before a request goes upstream and
waited for at most ``pool_timeout`` seconds, so the connector itself never has to queue.
It also counts each team's requests upstream, for ``[[teams]] max_in_flight``.

One object serves every config generation of an app (a reload hands it on), since the pool
it guards is shared too. Counts are per process.
"""

from __future__ import annotations

import asyncio

__all__ = ["PoolExhausted", "TeamBusy", "UpstreamSlots"]


class PoolExhausted(Exception):
    """No pooled connection came free within the wait allowed."""


class TeamBusy(Exception):
    """The team already has its ``max_in_flight`` requests upstream."""


class UpstreamSlots:
    def __init__(self, size: int) -> None:
        #: None: the pool is unbounded (``max_connections = 0``)
        self._gate = asyncio.Semaphore(size) if size > 0 else None
        self._teams: dict[str, int] = {}

    def in_flight(self, team: str) -> int:
        """The team's requests holding a slot now."""
        return self._teams.get(team, 0)

    async def take(self, team: str | None, cap: int | None, wait: float) -> None:
        """Take a slot: refuse at once when ``team`` is at its ``cap`` (:class:`TeamBusy`),
        wait at most ``wait`` seconds for the pool (:class:`PoolExhausted`). Every slot
        taken must be given back with :meth:`give` with the same ``team``."""
        if team is not None:
            held = self._teams.get(team, 0)
            if cap is not None and held >= cap:
                raise TeamBusy()
            self._teams[team] = held + 1  # counted while it waits, so waiters cannot pass the cap
        gate = self._gate
        if gate is None:
            return
        if not gate.locked():  # free: acquire() returns without suspending
            await gate.acquire()
            return
        try:
            async with asyncio.timeout(wait):
                await gate.acquire()
        except BaseException as exc:  # timed out, or cancelled while waiting
            self._drop(team)
            if isinstance(exc, TimeoutError):
                raise PoolExhausted() from None
            raise

    def give(self, team: str | None) -> None:
        """Give back a slot taken with :meth:`take`."""
        self._drop(team)
        if self._gate is not None:
            self._gate.release()

    def _drop(self, team: str | None) -> None:
        if team is not None:
            left = self._teams[team] - 1
            if left:
                self._teams[team] = left
            else:
                del self._teams[team]
