"""Replay admission by group commit (``DatabaseReplayStore.admit_async``): the messages a worker
has ready share one transaction, with each other and with audit rows, and every decision is the
one a transaction per message makes: resends, replays, keys shared inside one round, the quota,
and a round that cannot be committed (nothing admitted, the audit rows of the round refused too).
On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from tests.audit.test_audit_fail_closed import TRIGGER, UNTRIGGER
from xds_node.audit.events import AuditEvent
from xds_node.audit.store import AuditLog, AuditWriteError
from xds_node.db import make_engine
from xds_node.security.replay import (
    DatabaseReplayStore,
    ReplayKey,
    ReplayRefused,
    ReplayUnavailable,
    replay_entries,
    replay_quota,
)

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def keys_for(message: str, minutes: int = 5) -> list[ReplayKey]:
    return [ReplayKey(f"sig:{message}", NOW + timedelta(minutes=minutes)),
            ReplayKey(f"ts:{message}", NOW + timedelta(minutes=minutes))]


@pytest.fixture
def stores(settings):
    """(audit log, replay store) sharing one engine and one group commit, as in a node."""
    engine = make_engine(settings.db_url)
    audit = AuditLog(engine)
    audit.create_schema()
    store = DatabaseReplayStore(engine, quota=50, group=audit.group)
    store.create_schema()
    yield audit, store
    engine.dispose()


def _gather(*coros):
    async def run():
        return await asyncio.gather(*coros, return_exceptions=True)

    return asyncio.run(run())


def _entries(store: DatabaseReplayStore, partner: str) -> int:
    with store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(replay_entries)
                            .where(replay_entries.c.partner == partner)).scalar_one()


def _counter(store: DatabaseReplayStore, partner: str) -> int | None:
    with store.engine.connect() as conn:
        return conn.execute(select(replay_quota.c.live).where(replay_quota.c.partner == partner)).scalar()


def test_messages_ready_together_share_one_round_with_audit_rows(stores):
    audit, store = stores
    store.admit("p", keys_for("first"), "d0", NOW)  # the partner's counter row exists from now on
    before = audit.rounds
    events = [AuditEvent(transaction="ITI-38", outcome="success") for _ in range(5)]
    results = _gather(*(store.admit_async("p", keys_for(f"m{i}"), f"d{i}", NOW) for i in range(20)),
                      *(audit.record_async(e) for e in events))
    assert results[:20] == [False] * 20 and results[20:] == events
    assert audit.rounds - before == 1  # twenty admissions and five audit rows: one transaction
    assert _entries(store, "p") == 42 and _counter(store, "p") == 42
    assert len(audit.list(limit=100)) == 5


def test_decisions_match_one_transaction_per_message(stores):
    _, store = stores
    store.admit("p", keys_for("seed"), "d", NOW)
    assert _gather(store.admit_async("p", keys_for("a"), "da", NOW)) == [False]
    # a byte-identical resend, a replay (same header, other body) and a partial overlap of an
    # earlier message, with a new message beside them in the same round
    results = _gather(
        store.admit_async("p", keys_for("a"), "da", NOW + timedelta(seconds=5)),
        store.admit_async("p", keys_for("a"), "other body", NOW + timedelta(seconds=5)),
        store.admit_async("p", [keys_for("a")[0], ReplayKey("ts:new", NOW + timedelta(minutes=5))], "dx", NOW),
        store.admit_async("p", keys_for("b"), "db", NOW),
    )
    assert results[0] is True  # resend
    assert isinstance(results[1], ReplayRefused) and results[1].reason == "replayed"
    assert isinstance(results[2], ReplayRefused)
    assert results[3] is False
    # nothing of the refused messages stays (the partial overlap's new key was removed again)
    assert _entries(store, "p") == 6 and _counter(store, "p") == 6


def test_two_messages_of_one_round_sharing_a_key(stores):
    """A captured message replayed while the original is in flight: one round holds both."""
    _, store = stores
    store.admit("p", keys_for("seed"), "d", NOW)
    same = _gather(store.admit_async("p", keys_for("x"), "dx", NOW), store.admit_async("p", keys_for("x"), "dx", NOW))
    assert sorted(same) == [False, True]  # the original, then its byte-identical resend
    other = _gather(store.admit_async("p", keys_for("y"), "dy", NOW),
                    store.admit_async("p", keys_for("y"), "another body", NOW))
    assert other[0] is False and isinstance(other[1], ReplayRefused)
    assert _entries(store, "p") == 6


def test_the_quota_holds_inside_a_round(stores):
    _, store = stores
    store.admit("flood", keys_for("seed"), "d", NOW)  # 2 of 50
    results = _gather(*(store.admit_async("flood", keys_for(f"f{i}"), f"d{i}", NOW) for i in range(30)))
    admitted = [r for r in results if r is False]
    refused = [r for r in results if isinstance(r, ReplayRefused)]
    assert len(admitted) == 24 and len(refused) == 6  # 2 + 24 * 2 = 50 entries, no more
    assert all(r.reason == "replay quota exceeded" for r in refused)
    assert _entries(store, "flood") == 50
    # another partner is not affected
    assert _gather(store.admit_async("calm", keys_for("c"), "dc", NOW)) == [False]


def test_a_round_that_cannot_commit_admits_nothing_and_fails_its_audit_rows(stores):
    audit, store = stores
    store.admit("p", keys_for("seed"), "d", NOW)
    dialect = store.engine.dialect.name
    with store.engine.begin() as conn:  # the audit table refuses rows: the shared round fails
        for stmt in TRIGGER[dialect]:
            conn.execute(text(stmt))
    try:
        results = _gather(*(store.admit_async("p", keys_for(f"m{i}"), f"d{i}", NOW) for i in range(5)),
                          audit.record_async(AuditEvent(transaction="ITI-38", outcome="success")))
    finally:
        with store.engine.begin() as conn:
            conn.execute(text(UNTRIGGER[dialect]))
    assert all(isinstance(r, ReplayUnavailable) for r in results[:5])
    assert isinstance(results[5], AuditWriteError)
    assert _entries(store, "p") == 2 and audit.list() == []
    # the same messages are admitted once the database writes again (nothing was half-recorded)
    assert _gather(*(store.admit_async("p", keys_for(f"m{i}"), f"d{i}", NOW) for i in range(5))) == [False] * 5


def test_expired_entries_are_pruned_on_a_thread_once_due(stores):
    _, store = stores
    store.admit("p", keys_for("old", minutes=1), "d", NOW)
    later = NOW + timedelta(minutes=2)  # "old" has expired; pruning is due (it last ran at NOW)
    store._next_prune = later.timestamp()

    async def run():
        assert await store.admit_async("p", keys_for("new", minutes=10), "d2", later) is False
        for _ in range(200):  # the prune runs on a thread of its own, not in the request's way
            if _entries(store, "p") == 2:
                break
            await asyncio.sleep(0.01)

    asyncio.run(run())
    assert _entries(store, "p") == 2  # the expired pair gone, the new pair kept
    assert store._next_prune > later.timestamp()  # and not scheduled again before the interval
