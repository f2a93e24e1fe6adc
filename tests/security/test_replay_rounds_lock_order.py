"""Attack tests: lock order of group-commit rounds on PostgreSQL.

Two workers (two engines, two event loops, one database) each commit a round. A round locks the
replay_entry keys it inserts (in the order of its jobs) and then each partner's replay_partner
counter row (in the order the partners first appear in the round). Two rounds that take the same
locks in opposite orders deadlock; PostgreSQL aborts one of them, and *every* request in the aborted
round gets ReplayUnavailable (503), including innocent partners' requests that share the round.

The windows are widened with triggers that sleep (pg_sleep), so the interleaving is deterministic;
without them the same deadlock needs only the right timing under load.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import POSTGRES_URL
from xds_node.db import make_engine
from xds_node.rounds import GroupCommit
from xds_node.security.replay import DatabaseReplayStore, ReplayKey

pytestmark = [pytest.mark.postgres,
              pytest.mark.skipif(not POSTGRES_URL, reason="set XDS_TEST_POSTGRES_URL to run against PostgreSQL")]

NOW = datetime.now(UTC)


def keys_for(message: str) -> list[ReplayKey]:
    return [ReplayKey(f"sig:{message}", NOW + timedelta(minutes=5)),
            ReplayKey(f"ts:{message}", NOW + timedelta(minutes=5))]


SLOW_COUNTER = """
CREATE OR REPLACE FUNCTION attack_slow() RETURNS trigger AS $$
BEGIN PERFORM pg_sleep(0.4); RETURN NEW; END $$ LANGUAGE plpgsql;
CREATE TRIGGER attack_slow AFTER UPDATE ON replay_partner FOR EACH ROW EXECUTE FUNCTION attack_slow();
"""
SLOW_INSERT = """
CREATE OR REPLACE FUNCTION attack_slow() RETURNS trigger AS $$
BEGIN PERFORM pg_sleep(0.3); RETURN NEW; END $$ LANGUAGE plpgsql;
CREATE TRIGGER attack_slow BEFORE INSERT ON replay_entry FOR EACH ROW EXECUTE FUNCTION attack_slow();
"""
UNSLOW = "DROP TRIGGER IF EXISTS attack_slow ON replay_partner; DROP TRIGGER IF EXISTS attack_slow ON replay_entry"


@pytest.fixture
def workers(settings, backend):
    if backend != "postgres":
        pytest.skip("PostgreSQL only: SQLite has one writer at a time")
    engines = [make_engine(settings.db_url) for _ in range(2)]
    stores = [DatabaseReplayStore(e, quota=1000, group=GroupCommit(e)) for e in engines]
    stores[0].create_schema()
    for p in ("A", "B", "C"):  # every partner's counter row exists
        stores[0].admit(p, keys_for(f"setup-{p}"), "d", NOW)
    yield stores
    with engines[0].begin() as conn:
        conn.exec_driver_sql(UNSLOW)
    for e in engines:
        e.dispose()


def _rounds(jobs_per_worker):
    """Run each worker's jobs as one round on its own event loop, in parallel threads."""
    out: list = [None] * len(jobs_per_worker)

    def run(i, store, jobs):
        async def go():
            return await asyncio.gather(*(store.admit_async(p, keys_for(m), f"digest-{m}", NOW) for p, m in jobs),
                                        return_exceptions=True)
        out[i] = asyncio.run(go())

    threads = [threading.Thread(target=run, args=(i, s, j)) for i, (s, j) in enumerate(jobs_per_worker)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def test_two_partners_in_opposite_order_on_two_workers_do_not_fail_a_round(workers):
    """No attacker: partners A and B each send two fresh messages; worker 1's round holds A's then
    B's, worker 2's B's then A's. Every message is new, so every one must be admitted."""
    w1, w2 = workers
    with w1.engine.begin() as conn:
        conn.exec_driver_sql(SLOW_COUNTER)
    out = _rounds([(w1, [("A", "a1"), ("B", "b1")]), (w2, [("B", "b2"), ("A", "a2")])])
    assert out == [[False, False], [False, False]], out


def test_replayed_messages_in_opposite_order_cannot_fail_an_innocent_partners_request(workers):
    """An attacker replays two captured messages X and Y (partner A) to two workers at once, in
    opposite orders; partner C's fresh messages share both rounds. C's messages must be admitted
    whichever round the database picks as the deadlock victim."""
    w1, w2 = workers
    with w1.engine.begin() as conn:
        conn.exec_driver_sql(SLOW_INSERT)
    out = _rounds([(w1, [("A", "x"), ("A", "y"), ("C", "c1")]), (w2, [("A", "y"), ("A", "x"), ("C", "c2")])])
    innocent = [out[0][2], out[1][2]]
    assert innocent == [False, False], f"partner C's fresh messages failed because of A's replays: {out!r}"
