"""Group commit: the per-request bookkeeping rows of a worker share one transaction per round.

Every request writes to the bookkeeping database: its replay entries before the handler runs
(:mod:`xds_node.security.replay`) and its audit row before the answer leaves
(:mod:`xds_node.audit.store`). One transaction per request made the commit, not the work, the
cost. Here a request *submits* a job and awaits its result; the jobs that the worker's event loop
has ready when it gets to them share one transaction (a *round*), and each waiter is woken only
once that transaction is committed, with its own result, or with an error when the round failed
(whichever job the database refused: fail closed).

Each kind of job (:class:`Kind`) applies all of its jobs of a round at once (one executemany of
audit rows; one INSERT of every replay entry) and says what each job's result is.

* **SQLite**: a round commits on the loop with ``BEGIN IMMEDIATE`` and *no* lock wait when the
  write lock is free (the common case: an embedded commit costs less than a thread hand-off).
  While another worker holds it, the round waits on the loop in 0.2-2 ms steps (``asyncio.sleep``,
  the loop serving others meanwhile; jobs arriving meanwhile join the round) rather than in
  SQLite's busy handler, whose sleeps grow to 100 ms and would hold the loop; after
  :data:`LOCK_WAIT` a thread takes over. The loop's connection never checkpoints the WAL (an
  fsync); a thread does every :data:`CHECKPOINT_ROUNDS` rounds.
* **PostgreSQL**: a round is one transaction on a thread. A round of jobs that all allow it
  (replay entries) commits with ``synchronous_commit = off``; one holding an audit row waits for
  its WAL flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Engine

log = logging.getLogger(__name__)

#: Every this many rounds a thread checkpoints the WAL (SQLite); the loop's own connection has
#: automatic checkpoints off, as one costs an fsync (tens of ms).
CHECKPOINT_ROUNDS = 500

#: SQLite write lock held by another worker: poll from the loop every 0.2 ms at first, doubling up
#: to 2 ms, for at most LOCK_WAIT seconds before handing the round to a thread.
LOCK_POLL_FIRST = 0.0002
LOCK_POLL_MAX = 0.002
LOCK_WAIT = 1.0


#: Times a round aborted by a deadlock or serialization failure is tried in all (PostgreSQL).
ROUND_ATTEMPTS = 3
_TRANSIENT_SQLSTATES = frozenset({"40P01", "40001"})  # deadlock_detected, serialization_failure


def _transient(exc: BaseException) -> bool:
    """Whether the database aborted the transaction for concurrency alone (nothing was written)."""
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlstate", None) in _TRANSIENT_SQLSTATES


class Db:
    """What a :class:`Kind` gets to write with: driver-level SQL inside the round's transaction,
    over a DBAPI connection (SQLite on the loop) or a SQLAlchemy connection (a thread)."""

    def __init__(self, dialect: Any, *, dbapi: Any = None, conn: Any = None) -> None:
        self.dialect = dialect
        self._dbapi = dbapi
        self._conn = conn
        #: the placeholder of one positional parameter in this dialect's SQL
        self.mark = "?" if dialect.paramstyle == "qmark" else "%s"

    def _run(self, sql: str, params: Any, fetch: bool) -> tuple[list[tuple], int]:
        """(rows, rowcount) of one statement; a list of rows as ``params`` is an executemany."""
        if self._conn is not None:
            result = self._conn.exec_driver_sql(sql, params)
            return ([tuple(r) for r in result.all()] if fetch else []), result.rowcount
        cur = self._dbapi.cursor()
        try:
            if isinstance(params, list):
                cur.executemany(sql, params)
            else:
                cur.execute(sql, params)
            return (cur.fetchall() if fetch else []), cur.rowcount
        finally:
            cur.close()

    def exec_driver_sql(self, sql: str, params: Any) -> None:
        """What :func:`xds_node.db.insert_rows` calls (a list of rows: an executemany)."""
        self._run(sql, params, False)

    def rows(self, sql: str, params: Sequence[Any]) -> list[tuple]:
        """Run one statement with positional ``params`` and fetch every row it returns."""
        return self._run(sql, tuple(params), True)[0]

    def rowcount(self, sql: str, params: Sequence[Any]) -> int:
        return self._run(sql, tuple(params), False)[1]


class Kind(Protocol):
    """One kind of job (audit rows, replay admissions)."""

    #: whether a round made only of such jobs may commit without waiting for durability
    #: (PostgreSQL ``synchronous_commit = off``)
    relaxed: bool

    def apply(self, db: Db, payloads: list[Any]) -> list[Any]:
        """Write every job of the round; return each job's result, in order. Raising fails the
        whole round (every waiter of every kind gets :meth:`failed`)."""
        ...

    def failed(self, error: BaseException, size: int) -> BaseException:
        """The exception a waiter of this kind gets when its round was not committed."""
        ...

    def committed(self, payloads: list[Any]) -> None:
        """After the commit, before the waiters wake (audit sinks)."""
        ...


class _Locked(Exception):
    """Another process holds SQLite's write lock: commit this round on a thread instead."""


@dataclass
class _Batch:
    """Jobs waiting for the next round on one event loop, the task committing them, and (SQLite)
    the loop's own connection for committing without leaving the loop."""

    queue: list[tuple[Kind, Any, asyncio.Future[Any]]] = field(default_factory=list)
    flusher: asyncio.Task[None] | None = None
    conn: Any = None


class GroupCommit:
    """Rounds of jobs on one engine, one queue per event loop (per worker, per test loop)."""

    def __init__(self, engine: Engine, *, on_database_failure: Callable[[], None] | None = None) -> None:
        self.engine = engine
        #: SQLite: try each round on the loop first (no thread hand-off) without ever waiting there.
        self.inline = engine.dialect.name == "sqlite"
        self._pg = engine.dialect.name == "postgresql"
        self._on_failure = on_database_failure
        self._batches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Batch] = weakref.WeakKeyDictionary()
        #: Rounds committed so far by this process (for tests and benches).
        self.rounds = 0
        self._checkpointing = False

    async def submit(self, kind: Kind, payload: Any) -> Any:
        """Queue one job for this loop's next round; return its result once the round committed."""
        loop = asyncio.get_running_loop()
        batch = self._batches.get(loop)
        if batch is None:
            batch = self._batches[loop] = _Batch()
        fut: asyncio.Future[Any] = loop.create_future()
        batch.queue.append((kind, payload, fut))
        if batch.flusher is None:
            batch.flusher = loop.create_task(self._flush(batch))
        return await fut

    async def _flush(self, batch: _Batch) -> None:
        """Commit queued jobs, one transaction per round, until the queue is empty."""
        try:
            while batch.queue:
                items, batch.queue = batch.queue, []
                try:
                    if self.inline:
                        results = await self._commit_inline(batch, items)
                    else:
                        results = await asyncio.to_thread(self._commit, items)
                except BaseException as exc:
                    self._settle(items, None, exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                self.rounds += 1
                self._settle(items, results, None)
                if self.inline and self.rounds % CHECKPOINT_ROUNDS == 0 and not self._checkpointing:
                    # the loop's connection never checkpoints (an fsync stall); a thread does,
                    # while the next rounds go on
                    self._checkpointing = True
                    asyncio.get_running_loop().run_in_executor(None, self._checkpoint)
        finally:
            batch.flusher = None
            for kind, _, fut in batch.queue:  # only if cancelled mid-way: nobody may wait forever
                if not fut.done():
                    fut.set_exception(kind.failed(RuntimeError("group-commit flusher stopped"), 0))
            batch.queue = []

    @staticmethod
    def _by_kind(items: list[tuple[Kind, Any, asyncio.Future[Any]]]) -> list[tuple[Kind, list[int]]]:
        """Each kind of the round with the positions of its jobs, in order of first appearance."""
        by_kind: dict[int, tuple[Kind, list[int]]] = {}
        for i, (kind, _, _) in enumerate(items):
            by_kind.setdefault(id(kind), (kind, []))[1].append(i)
        return list(by_kind.values())

    @classmethod
    def _apply(cls, db: Db, items: list[tuple[Kind, Any, asyncio.Future[Any]]]) -> list[Any]:
        """Every kind's jobs of the round, each kind at once; results in the items' order."""
        results: list[Any] = [None] * len(items)
        for kind, idx in cls._by_kind(items):
            out = kind.apply(db, [items[i][1] for i in idx])
            for i, r in zip(idx, out, strict=True):
                results[i] = r
        return results

    def _commit(self, items: list) -> list[Any]:
        """One round in a transaction on a thread (PostgreSQL; SQLite after a long lock wait).
        A round PostgreSQL aborted as a deadlock victim or serialization failure wrote nothing
        and is run again (kinds take their rows in one order, so this is a second layer only)."""
        for attempt in range(1, ROUND_ATTEMPTS + 1):
            try:
                with self.engine.begin() as conn:
                    if self._pg and all(kind.relaxed for kind, _, _ in items):
                        conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
                    return self._apply(Db(conn.dialect, conn=conn), items)
            except Exception as exc:
                if attempt < ROUND_ATTEMPTS and _transient(exc):
                    log.warning("group-commit round aborted by the database (%s): running it again",
                                type(getattr(exc, "orig", exc)).__name__)
                    continue
                self._failure()
                raise
        raise AssertionError("unreachable")

    async def _commit_inline(self, batch: _Batch, items: list) -> list[Any]:
        """SQLite: commit ``items`` on the loop. While another worker holds the write lock, wait
        on the loop in short steps, taking the jobs that arrive meanwhile into the same round;
        after LOCK_WAIT seconds the round goes to a thread that waits with the connection's own
        busy timeout. ``items`` is extended in place (if the round then fails, the caller settles
        every job it holds; a new list would leave the jobs taken in here waiting forever)."""
        delay, waited = LOCK_POLL_FIRST, 0.0
        while True:
            try:
                return self._commit_on_loop(batch, items)
            except _Locked:
                if waited >= LOCK_WAIT:
                    return await asyncio.to_thread(self._commit, items)
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, LOCK_POLL_MAX)
            if batch.queue:
                items.extend(batch.queue)
                batch.queue = []

    def _commit_on_loop(self, batch: _Batch, items: list) -> list[Any]:
        """SQLite, on the loop: BEGIN IMMEDIATE with no lock wait; raises :class:`_Locked` (nothing
        written) when another connection holds the write lock."""
        if batch.conn is None:
            raw = self.engine.raw_connection()  # kept by this loop (its busy timeout is 0)
            raw.driver_connection.execute("PRAGMA busy_timeout=0")
            raw.driver_connection.execute("PRAGMA wal_autocheckpoint=0")  # see _checkpoint
            batch.conn = raw
        db = batch.conn.driver_connection
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise _Locked from None
            self._drop(batch)
            self._failure()
            raise
        try:
            results = self._apply(Db(self.engine.dialect, dbapi=db), items)
            db.execute("COMMIT")
        except BaseException:
            self._failure()
            try:
                db.execute("ROLLBACK")
            except Exception:
                self._drop(batch)
            raise
        return results

    def _failure(self) -> None:
        if self._on_failure is not None:
            self._on_failure()

    def _checkpoint(self) -> None:
        """Copy the WAL back into the database file (PASSIVE: never waits for readers or writers),
        on a thread; housekeeping, so a failure is only logged."""
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        except Exception:
            log.warning("WAL checkpoint failed; the next one will retry", exc_info=True)
        finally:
            self._checkpointing = False

    @staticmethod
    def _drop(batch: _Batch) -> None:
        conn, batch.conn = batch.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.invalidate()

    @classmethod
    def _settle(cls, items: list[tuple[Kind, Any, asyncio.Future[Any]]], results: list[Any] | None,
                error: BaseException | None) -> None:
        """Wake each waiter of a round with its own result, or its own error when it failed."""
        if error is None:
            assert results is not None
            for kind, idx in cls._by_kind(items):
                kind.committed([items[i][1] for i in idx])
        for i, (kind, _, fut) in enumerate(items):
            if fut.done():  # the request went away (cancelled); its job's fate is the round's
                continue
            if error is None:
                fut.set_result(results[i])  # type: ignore[index]
            else:
                err = kind.failed(error, len(items))
                err.__cause__ = error
                fut.set_exception(err)
