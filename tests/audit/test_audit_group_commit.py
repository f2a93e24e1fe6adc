"""Group commit of audit rows: concurrent requests share one transaction, and each still fails
closed when that transaction is not committed (on SQLite inline and PostgreSQL in a thread)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from tests.audit.test_audit_fail_closed import TRIGGER, UNTRIGGER
from tests.conftest import _database_url
from xds_node.audit.events import AuditEvent
from xds_node.audit.store import AuditLog, AuditWriteError, audit_events
from xds_node.db import make_engine
from xds_node.soap.fault import SoapFault
from xds_node.transactions import audited

N = 20


class Collect:
    def __init__(self):
        self.events: list[AuditEvent] = []

    def send(self, event):
        self.events.append(event)


@pytest.fixture
def store(backend, tmp_path):
    engine = make_engine(_database_url(backend, tmp_path).replace("postgresql://", "postgresql+psycopg://", 1))
    log = AuditLog(engine, sinks=[Collect()])
    log.create_schema()
    yield log
    engine.dispose()


def _events(n: int) -> list[AuditEvent]:
    return [AuditEvent(transaction="ITI-18", outcome="success", patient_id=f"p{i}^^^&1.2&ISO") for i in range(n)]


def _broken(log: AuditLog) -> None:
    with log.engine.begin() as conn:
        for stmt in TRIGGER[log.engine.dialect.name]:
            conn.execute(text(stmt))


def _mended(log: AuditLog) -> None:
    with log.engine.begin() as conn:
        conn.execute(text(UNTRIGGER[log.engine.dialect.name]))


def test_concurrent_records_share_one_transaction(store):
    events = _events(N)
    before = store.rounds

    async def run():
        return await asyncio.gather(*(store.record_async(e) for e in events))

    assert asyncio.run(run()) == events
    # all N requests were ready before the loop reached the flusher: one commit holds them all
    assert store.rounds - before == 1
    assert {e.event_id for e in store.list(limit=1000)} == {e.event_id for e in events}
    assert store.sinks[0].events == events  # each offered to the sinks once its row is committed


def test_rows_arriving_during_a_flush_go_in_the_next_one(store):
    first, second = _events(N), _events(N)

    async def run():
        a = [asyncio.ensure_future(store.record_async(e)) for e in first]
        await asyncio.sleep(0)  # the first batch is queued; its flusher starts on the next turn
        b = [asyncio.ensure_future(store.record_async(e)) for e in second]
        await asyncio.gather(*a, *b)

    before = store.rounds
    asyncio.run(run())
    assert store.rounds - before <= 2 < 2 * N
    assert len(store.list(limit=1000)) == 2 * N


def test_a_failing_commit_fails_every_waiting_request(store):
    events = _events(N)
    _broken(store)
    try:
        async def run():
            return await asyncio.gather(*(store.record_async(e) for e in events), return_exceptions=True)

        results = asyncio.run(run())
    finally:
        _mended(store)
    assert len(results) == N and all(isinstance(r, AuditWriteError) for r in results)
    assert len({id(r) for r in results}) == N  # each waiter its own error (the cause chained)
    assert all(r.__cause__ is not None for r in results)
    assert store.list(limit=1000) == [] and store.sinks[0].events == []

    # the store writes again: the next requests are committed (nothing left over from the failure)
    async def again():
        await asyncio.gather(*(store.record_async(e) for e in events[:3]))

    asyncio.run(again())
    assert len(store.list(limit=1000)) == 3


def test_audited_requests_fail_closed_together_and_succeed_together(store):
    """The request path: ``audited`` defers the recorder's ``record`` into the group commit."""

    def recorder(event: AuditEvent) -> None:  # the shape of the node's Auditor: builds and records
        store.record(event)

    async def run(events):
        return await asyncio.gather(*(audited(recorder, e, what="ITI-18") for e in events),
                                    return_exceptions=True)

    _broken(store)
    try:
        failed = asyncio.run(run(_events(N)))
    finally:
        _mended(store)
    assert all(isinstance(r, SoapFault) and r.http_status == 503 for r in failed)
    assert store.list(limit=1000) == []

    before = store.rounds
    ok = asyncio.run(run(_events(N)))
    assert ok == [None] * N
    assert store.rounds - before == 1 and len(store.list(limit=1000)) == N


def test_record_outside_a_request_still_commits_at_once(store):
    """CLI and tests: the synchronous ``record`` writes its own transaction."""
    [e] = _events(1)
    store.record(e)
    assert [r.event_id for r in store.list()] == [e.event_id]
    with store.engine.connect() as conn:
        assert conn.execute(audit_events.select()).fetchall()


def test_sqlite_lock_held_elsewhere_never_stalls_the_loop(tmp_path):
    """Another process holding SQLite's write lock: the round waits on a thread, and the event
    loop keeps serving meanwhile (it never sleeps in SQLite's busy handler); the row commits once
    the lock is free, and only then does its request go on."""
    import sqlite3
    import threading
    import time

    url = f"sqlite:///{tmp_path / 'audit.db'}"
    engine = make_engine(url)
    log = AuditLog(engine)
    log.create_schema()
    other = sqlite3.connect(tmp_path / "audit.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # the other worker's transaction holds the write lock
    released = threading.Event()

    def release_later():
        time.sleep(0.5)
        other.execute("COMMIT")
        released.set()

    async def run():
        ticks = 0
        done = asyncio.ensure_future(log.record_async(_events(1)[0]))
        threading.Thread(target=release_later, daemon=True).start()
        while not done.done():
            await asyncio.sleep(0.01)
            ticks += 1
        await done
        return ticks

    ticks = asyncio.run(run())
    assert released.is_set()  # the row could not commit before the lock was free
    assert ticks >= 20  # ... and the loop kept turning the whole time (about 50 turns in 0.5 s)
    assert len(log.list()) == 1
    other.close()
    engine.dispose()
