"""The ``webhooks`` plugin's durable store: received events and their deliveries.

:class:`WebhookStore` is what the plugin needs of a store; this module's
:class:`SqliteStore` keeps them in one file, :class:`~gateway.webhooks.redisstore.RedisStore`
in a Redis that several gateway instances share.

One SQLite file (WAL, ``synchronous=FULL``): a received event and one delivery row per
matching subscription are written in one transaction, committed (fsync'd) before the
event is acknowledged. Every call runs on one dedicated thread, so the event loop never
waits on the disk. Writes that arrive while the thread is busy (the events and attempt
outcomes of concurrent requests, and the dispatchers' claims) are committed together in
one transaction when it is free (group commit: one fsync and one thread hop for the lot);
each call still returns only once its own rows are committed.

Deliveries are claimed with a lease (``lease_until``, ``owner``): a dispatcher takes due
rows whose lease has expired in one ``UPDATE ... RETURNING``, so several processes (the
workers of ``serve --workers N``, or a reload's two generations) sharing the file never
send the same delivery at once; a process killed mid-attempt leaves a lease that expires,
and the delivery is sent again (at least once). Each claim is numbered (``claims``), and
an attempt's outcome is recorded only by the claim that holds the delivery now: an attempt
that outlived its lease (claimed again by another process, or by this one) changes nothing
when it ends. A replay of a delivery whose attempt is in flight marks it (``replay``): that
attempt's end queues it again instead of recording an outcome, so the replay is never lost
and never sent alongside the attempt. Times are Unix seconds (wall clock): they outlive the
process.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

__all__ = ["Claimed", "Due", "EventRecord", "SqliteStore", "WebhookStore"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    type TEXT NOT NULL,
    object TEXT NOT NULL,
    livemode INTEGER,
    account TEXT,
    object_id TEXT,
    received REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_received ON events (received);
CREATE TABLE IF NOT EXISTS deliveries (
    event_id TEXT NOT NULL,
    subscription TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    lease_until REAL NOT NULL DEFAULT 0,
    owner TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    claims INTEGER NOT NULL DEFAULT 0,
    replay INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (event_id, subscription)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (subscription, status, next_at);
CREATE TABLE IF NOT EXISTS paused (subscription TEXT PRIMARY KEY);
"""

#: columns added since the first schema (added to an older file when it is opened)
_ADDED_COLUMNS = {
    "claims": "claims INTEGER NOT NULL DEFAULT 0",
    "replay": "replay INTEGER NOT NULL DEFAULT 0",
}

#: a replay: the delivery from its first attempt again, due now; one whose lease is live (an
#: attempt in flight) keeps its lease, marked ``replay``: its finish queues it again instead
#: of recording the attempt's outcome. Parameters: now, now, now, now (then a WHERE clause)
_REQUEUE = (
    "UPDATE deliveries SET status = 'pending', attempts = 0, next_at = ?1, created = ?1,"
    " updated = ?1, last_status = NULL, last_error = NULL,"
    " replay = (owner IS NOT NULL AND lease_until > ?1),"
    " lease_until = CASE WHEN owner IS NOT NULL AND lease_until > ?1 THEN lease_until ELSE 0 END,"
    " owner = CASE WHEN owner IS NOT NULL AND lease_until > ?1 THEN owner ELSE NULL END"
)

_DELIVERY_COLUMNS = (
    "event_id, subscription, status, attempts, next_at, created, updated, last_status, last_error"
)


@dataclass(frozen=True)
class EventRecord:
    """A verified event, as stored."""

    id: str
    source: str
    type: str
    object: str
    livemode: bool | None
    account: str | None
    object_id: str | None
    body: bytes


@dataclass(frozen=True)
class Claimed:
    """A delivery this process has leased: send ``body`` now, then
    :meth:`~WebhookStore.finish` it with the same owner and ``claim``."""

    event_id: str
    attempts: int
    body: bytes
    #: which claim of the delivery this is (1, 2, ...): tells a late attempt's finish
    #: from the current one's, even when both are by the same owner
    claim: int


@dataclass(frozen=True)
class Due:
    """What one :meth:`SqliteStore.claim` found for a subscription."""

    claimed: list[Claimed]
    #: when the next pending delivery not claimed now may be claimed (``None``: none)
    next_at: float | None
    #: pending deliveries, and when the oldest was created
    pending: int
    oldest: float | None
    paused: bool


class WebhookStore(Protocol):
    """What the ``webhooks`` plugin needs of a store (times are Unix seconds).

    Every delivery is one (event id, subscription) pair, created when the event is recorded
    and only for the subscriptions it was routed to then; its ``status`` is ``pending``,
    ``delivered`` or ``dead``. A pending delivery is due when ``now`` has reached both its
    ``next_at`` and its lease's end."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def record(self, event: EventRecord, subscriptions: list[str], now: float) -> bool:
        """Store ``event`` and a pending delivery to each of ``subscriptions``, durably
        (returns once the store has it), atomically; ``False`` (and nothing written) when
        an event with its id is stored already."""
        ...

    async def claim(
        self, subscription: str, owner: str, now: float, limit: int, lease_until: float
    ) -> Due:
        """Lease up to ``limit`` due deliveries of ``subscription`` to ``owner`` until
        ``lease_until`` (none when paused); nobody else claims them before then."""
        ...

    async def finish(
        self,
        event_id: str,
        subscription: str,
        *,
        owner: str,
        claim: int,
        status: str,
        attempts: int,
        next_at: float,
        last_status: int | None,
        last_error: str | None,
        now: float,
    ) -> bool:
        """Record an attempt's outcome: ``status`` is ``pending`` (retry at ``next_at``),
        ``delivered`` or ``dead``; the lease is released. Only the delivery's current claim
        (``owner`` and :attr:`Claimed.claim`) may finish it: a late attempt whose lease
        expired and was claimed again, or that a replay queued afresh, changes nothing and
        gets ``False``. A delivery replayed while this attempt was in flight is queued
        again (from its first attempt) instead of taking this outcome."""
        ...

    async def release(self, owner: str) -> None:
        """Give up ``owner``'s leases (at shutdown: another process may send them now)."""
        ...

    async def prune(self, before: float) -> int:
        """Forget the events received before ``before`` whose deliveries are all over,
        with those deliveries; returns how many events went."""
        ...

    async def set_paused(self, subscription: str, paused: bool) -> None:
        """Pause or resume ``subscription`` for every process sharing the store."""
        ...

    async def replay(self, event_id: str, subscription: str, now: float) -> bool:
        """Queue ``event_id`` for ``subscription`` again, from its first attempt; ``False``
        when the event was never routed to that subscription. One with an attempt in
        flight (a live lease) is queued again when that attempt finishes."""
        ...

    async def replay_range(self, subscription: str, since: float, until: float, now: float) -> int:
        """:meth:`replay` every stored event received in ``[since, until)`` that was routed
        to ``subscription``; returns how many were queued."""
        ...

    async def events(self, limit: int) -> list[dict[str, Any]]:
        """The most recently received events (newest first), without their bodies."""
        ...

    async def deliveries(
        self,
        *,
        subscription: str | None = None,
        status: str | None = None,
        event_id: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Deliveries, the most recently changed first, filtered by what is given."""
        ...


class SqliteStore:
    """The store on ``path``; :meth:`open` before use, :meth:`close` after."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="webhooks-sqlite")
        self._db: sqlite3.Connection | None = None
        #: writes waiting for the next group commit, with their callers' futures
        self._queued: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._writing = False

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in a write transaction shared with the writes queued meanwhile (group
        commit); returns once that transaction is committed, with ``fn``'s result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queued.append((fn, future))
        if not self._writing:
            self._writing = True
            self._commit_queued(loop)
        return await future

    def _commit_queued(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hand the queued writes to the thread as one batch; when it is done, answer each
        caller and start the next batch (the writes queued while this one was on disk)."""
        batch, self._queued = self._queued, []
        try:
            done = loop.run_in_executor(self._executor, partial(self._commit, batch))
        except RuntimeError as exc:  # the store is closed: nothing written
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            self._writing = False
            return

        def answer(done: asyncio.Future[list[tuple[bool, Any]]]) -> None:
            try:
                results = done.result()
            except BaseException as exc:  # the executor is gone (closing): nothing written
                results = [(False, exc)] * len(batch)
            for (_, future), (ok, value) in zip(batch, results, strict=True):
                if future.done():  # the caller gave up; its write stands (or not) anyway
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
            if self._queued:
                self._commit_queued(loop)
            else:
                self._writing = False

        done.add_done_callback(answer)

    def _commit(
        self, batch: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]]
    ) -> list[tuple[bool, Any]]:
        """On the thread: ``batch`` in one transaction, each result ``(True, value)`` or
        ``(False, exception)``. When one of the writes raises, the transaction is rolled
        back and each write is tried again in its own, so a failing write never takes the
        others down with it; when the transaction itself cannot begin or commit (locked
        past ``busy_timeout``, disk full), nothing is written and every write fails."""
        db = self._db
        if db is None:
            return [(False, RuntimeError("the store is closed"))] * len(batch)
        try:
            db.execute("BEGIN IMMEDIATE")
        except Exception as exc:
            return [(False, exc)] * len(batch)
        try:
            values = [fn(db) for fn, _ in batch]
        except BaseException as exc:
            db.execute("ROLLBACK")
            if len(batch) == 1 or not isinstance(exc, Exception):
                if isinstance(exc, Exception):
                    return [(False, exc)]
                raise
            return [self._commit([item])[0] for item in batch]  # one at a time
        try:
            db.execute("COMMIT")
        except Exception as exc:
            with contextlib.suppress(sqlite3.Error):  # (SQLite may have rolled back already)
                db.execute("ROLLBACK")
            return [(False, exc)] * len(batch)
        return [(True, value) for value in values]

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            assert self._db is not None, "open() first"
            return fn(self._db)

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def open(self) -> None:
        def connect() -> None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA busy_timeout = 10000")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            db.executescript(_SCHEMA)
            have = {row[1] for row in db.execute("PRAGMA table_info(deliveries)")}
            for name, column in _ADDED_COLUMNS.items():
                if name not in have:  # a file from an older version
                    db.execute(f"ALTER TABLE deliveries ADD COLUMN {column}")
            self._db = db

        await asyncio.get_running_loop().run_in_executor(self._executor, connect)

    async def close(self) -> None:
        while self._writing:  # let the group commit under way (and any queued) finish
            await asyncio.sleep(0.001)

        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._executor, close)
        self._executor.shutdown(wait=True)

    # ----------------------------------------------------------------- ingress

    async def record(self, event: EventRecord, subscriptions: list[str], now: float) -> bool:
        """Store ``event`` and a pending delivery to each of ``subscriptions``, durably;
        ``False`` (and nothing written) when an event with its id is stored already."""

        def record(db: sqlite3.Connection) -> bool:  # in a transaction (_write)
            cursor = db.execute(
                "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    event.id,
                    event.source,
                    event.type,
                    event.object,
                    None if event.livemode is None else int(event.livemode),
                    event.account,
                    event.object_id,
                    now,
                    event.body,
                ),
            )
            new = cursor.rowcount == 1
            if new:
                db.executemany(
                    "INSERT INTO deliveries (event_id, subscription, status, next_at, "
                    "created, updated) VALUES (?, ?, 'pending', ?, ?, ?)",
                    [(event.id, name, now, now, now) for name in subscriptions],
                )
            return new

        return await self._write(record)

    # ----------------------------------------------------------------- delivery

    async def claim(
        self, subscription: str, owner: str, now: float, limit: int, lease_until: float
    ) -> Due:
        """Lease up to ``limit`` due deliveries of ``subscription`` (none when paused)."""

        def claim(db: sqlite3.Connection) -> Due:
            paused = (
                db.execute(
                    "SELECT 1 FROM paused WHERE subscription = ?", (subscription,)
                ).fetchone()
                is not None
            )
            claimed: list[Claimed] = []
            if limit > 0 and not paused:
                rows = db.execute(
                    "UPDATE deliveries SET lease_until = ?, owner = ?, claims = claims + 1,"
                    " replay = 0 WHERE rowid IN ("
                    " SELECT rowid FROM deliveries WHERE subscription = ? AND status = 'pending'"
                    " AND next_at <= ? AND lease_until <= ? ORDER BY next_at LIMIT ?"
                    ") RETURNING event_id, attempts, claims",
                    (lease_until, owner, subscription, now, now, limit),
                ).fetchall()
                for event_id, attempts, claims in rows:
                    body = db.execute(
                        "SELECT body FROM events WHERE id = ?", (event_id,)
                    ).fetchone()
                    claimed.append(Claimed(event_id, attempts, bytes(body[0]), claims))
            next_at, pending, oldest = db.execute(
                "SELECT MIN(MAX(next_at, lease_until)), COUNT(*), MIN(created) FROM deliveries"
                " WHERE subscription = ? AND status = 'pending'",
                (subscription,),
            ).fetchone()
            return Due(claimed, next_at, pending, oldest, paused)

        return await self._write(claim)  # a write (the leases): group-committed

    async def finish(
        self,
        event_id: str,
        subscription: str,
        *,
        owner: str,
        claim: int,
        status: str,
        attempts: int,
        next_at: float,
        last_status: int | None,
        last_error: str | None,
        now: float,
    ) -> bool:
        """Record an attempt's outcome (``pending``: retry at ``next_at``, ``delivered``,
        ``dead``) and release the lease, when ``owner``'s ``claim`` is the delivery's
        current one (else nothing changes: ``False``); a delivery replayed meanwhile is
        queued again instead (one statement: atomic for every process on the file)."""
        if status not in ("pending", "delivered", "dead"):
            raise ValueError(f"not a delivery status: {status!r}")

        row = (status, attempts, next_at, last_status, last_error, now)
        key = (event_id, subscription, owner, claim)

        def finish(db: sqlite3.Connection) -> bool:  # in a transaction (_write)
            cursor = db.execute(
                "UPDATE deliveries SET"
                " status = CASE WHEN replay THEN 'pending' ELSE ? END,"
                " attempts = CASE WHEN replay THEN attempts ELSE ? END,"
                " next_at = CASE WHEN replay THEN next_at ELSE ? END,"
                " last_status = CASE WHEN replay THEN last_status ELSE ? END,"
                " last_error = CASE WHEN replay THEN last_error ELSE ? END,"
                " lease_until = 0, owner = NULL, replay = 0, updated = ?"
                " WHERE event_id = ? AND subscription = ? AND owner = ? AND claims = ?",
                (*row, *key),
            )
            return cursor.rowcount == 1

        return await self._write(finish)

    async def release(self, owner: str) -> None:
        """Give up ``owner``'s leases (at shutdown: another process may send them now)."""

        def release(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE deliveries SET lease_until = 0, owner = NULL, replay = 0"
                " WHERE owner = ? AND status = 'pending'",
                (owner,),
            )

        await self._run(release)

    async def prune(self, before: float) -> int:
        """Forget the events received before ``before`` whose deliveries are all over
        (delivered or dead), with those deliveries; returns how many events went."""

        def prune(db: sqlite3.Connection) -> int:
            db.execute("BEGIN IMMEDIATE")
            try:
                gone = db.execute(
                    "DELETE FROM events WHERE received < ? AND id NOT IN"
                    " (SELECT event_id FROM deliveries WHERE status = 'pending')",
                    (before,),
                ).rowcount
                db.execute("DELETE FROM deliveries WHERE event_id NOT IN (SELECT id FROM events)")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return int(gone)

        return await self._run(prune)

    # ----------------------------------------------------------------- operations

    async def set_paused(self, subscription: str, paused: bool) -> None:
        def set_paused(db: sqlite3.Connection) -> None:
            if paused:
                db.execute("INSERT OR IGNORE INTO paused VALUES (?)", (subscription,))
            else:
                db.execute("DELETE FROM paused WHERE subscription = ?", (subscription,))

        await self._run(set_paused)

    async def replay(self, event_id: str, subscription: str, now: float) -> bool:
        """Queue ``event_id`` for ``subscription`` again, from its first attempt (whatever
        happened to it before; with an attempt in flight, once that attempt finishes);
        ``False`` when the event was never routed to that subscription (a replay never
        reaches a subscription the event did not match)."""

        def replay(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                f"{_REQUEUE} WHERE event_id = ?2 AND subscription = ?3",
                (now, event_id, subscription),
            )
            return cursor.rowcount > 0

        return await self._run(replay)

    async def replay_range(self, subscription: str, since: float, until: float, now: float) -> int:
        """:meth:`replay` every stored event received in ``[since, until)`` that was routed
        to ``subscription`` (the others are left alone); returns how many were queued."""

        def replay_range(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                f"{_REQUEUE} WHERE subscription = ?2 AND event_id IN"
                " (SELECT id FROM events WHERE received >= ?3 AND received < ?4)",
                (now, subscription, since, until),
            )
            return int(cursor.rowcount)

        return await self._run(replay_range)

    async def events(self, limit: int) -> list[dict[str, Any]]:
        """The most recently received events (newest first), without their bodies."""

        def events(db: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = db.execute(
                "SELECT id, source, type, object, livemode, account, object_id, received"
                " FROM events ORDER BY received DESC, rowid DESC LIMIT ?",
                (limit,),
            ).fetchall()
            keys = ("id", "source", "type", "object", "livemode", "account", "object_id")
            out = []
            for row in rows:
                item = dict(zip(keys, row[:7], strict=True))
                item["livemode"] = None if row[4] is None else bool(row[4])
                item["received"] = row[7]
                out.append(item)
            return out

        return await self._run(events)

    async def deliveries(
        self,
        *,
        subscription: str | None = None,
        status: str | None = None,
        event_id: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Deliveries, the most recently changed first, filtered by what is given."""

        def deliveries(db: sqlite3.Connection) -> list[dict[str, Any]]:
            where, args = [], []
            for column, value in (
                ("subscription", subscription),
                ("status", status),
                ("event_id", event_id),
            ):
                if value is not None:
                    where.append(f"{column} = ?")
                    args.append(value)
            clause = f" WHERE {' AND '.join(where)}" if where else ""
            rows = db.execute(
                f"SELECT {_DELIVERY_COLUMNS} FROM deliveries{clause}"
                " ORDER BY updated DESC, rowid DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
            keys = [name.strip() for name in _DELIVERY_COLUMNS.split(",")]
            return [dict(zip(keys, row, strict=True)) for row in rows]

        return await self._run(deliveries)
