"""Group commit over HTTP against a running node: an answer never leaves before the transaction
holding its audit row has committed, and when that transaction fails part-way (one row of the
batch refused), every request of the batch gets the 503 Receiver fault and no data.

Concurrent FindDocuments go to `xds-node serve` (two workers, as in production); a few of them
carry a "poisoned" wsa:MessageID that a trigger on the audit table refuses, so the batch that
holds a poisoned row fails after its earlier rows were already inserted. As each answer arrives,
the test looks its row up in the audit database at once: a 200 must find its row committed.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import threading
import uuid

import httpx
import pytest
from sqlalchemy import text

from tests import factories as f
from tests.conftest import BACKENDS, LiveNode, _database_url
from tests.responding.test_responding_gateway import find_documents
from xds_node.config import load_settings
from xds_node.db import make_test_engine
from xds_node.ebxml import vocabulary as v
from xds_node.soap.envelope import build_request

pytestmark = pytest.mark.server

PATIENTS = 6
CONCURRENT = 24
POISONED = 3
ROUNDS = 4  # rounds until a poisoned row has taken innocent requests down with it (the first, with writes held)

TRIGGER = {
    "sqlite": ["CREATE TRIGGER audit_poison BEFORE INSERT ON audit_event WHEN NEW.message_id LIKE '%poison%' "
               "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"],
    "postgresql": [
        "CREATE OR REPLACE FUNCTION xds_test_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF NEW.message_id LIKE '%poison%' THEN RAISE EXCEPTION 'could not extend file' USING ERRCODE = 'disk_full'; "
        "END IF; RETURN NEW; END $$",
        "CREATE TRIGGER audit_poison BEFORE INSERT ON audit_event FOR EACH ROW EXECUTE FUNCTION xds_test_poison()",
    ],
}
UNTRIGGER = {"sqlite": "DROP TRIGGER audit_poison", "postgresql": "DROP TRIGGER audit_poison ON audit_event"}


@pytest.fixture(scope="module", params=BACKENDS)
def served(request, tmp_path_factory):
    from xds_node.node import Node

    data = tmp_path_factory.mktemp(f"groupcommit-{request.param}")
    url = _database_url(request.param, data)
    settings = load_settings(env={}, data_dir=data, database_url=url)
    node = Node(settings)
    for p in range(PATIENTS):
        assert node.registry.register(f.submission(f.patient(p), 2)).status == v.ResponseStatus.SUCCESS
    node.close()
    audit = make_test_engine(settings.audit_db_url)
    with audit.begin() as conn:
        for stmt in TRIGGER[audit.dialect.name]:
            conn.execute(text(stmt))
    live = LiveNode(data, extra_env={"XDS_DATABASE_URL": url}, args=["--workers", "2"])
    # each withheld answer logs an ERROR with its cause: keep reading, or a full pipe stalls the node
    log: list[bytes] = []
    threading.Thread(target=lambda: log.extend(iter(lambda: live.proc.stdout.read1(65536), b"")),
                     daemon=True).start()
    yield live, audit
    live.stop()
    with audit.begin() as conn:
        conn.execute(text(UNTRIGGER[audit.dialect.name]))
    audit.dispose()
    shutil.rmtree(data, ignore_errors=True)


def _committed(audit, message_ids: list[str]) -> set[str]:
    with audit.connect() as conn:
        rows = conn.execute(text("SELECT message_id FROM audit_event")).all()
    wanted = set(message_ids)
    return {r[0] for r in rows if r[0] in wanted}


def _hold_writes(audit, held: threading.Event, seconds: float) -> None:
    """Keep every insert into audit_event waiting for ``seconds`` (reads go on)."""
    import time

    with audit.connect() as conn:
        if audit.dialect.name == "sqlite":
            raw = conn.connection.dbapi_connection
            raw.isolation_level = None  # our own BEGIN: take the write lock now, not at the first write
            raw.execute("BEGIN IMMEDIATE")
            held.set()
            time.sleep(seconds)
            raw.execute("ROLLBACK")
        else:
            with conn.begin():
                conn.execute(text("LOCK TABLE audit_event IN SHARE ROW EXCLUSIVE MODE"))
                held.set()
                time.sleep(seconds)


async def _round(live: LiveNode, audit, rng: random.Random) -> list[tuple[str, bool, int, bool, bool]]:
    """One burst of concurrent requests: (message id, poisoned, status, carried data, row committed
    when the answer arrived) for each."""
    poisoned = set(rng.sample(range(CONCURRENT), POISONED))
    requests = []
    for i in range(CONCURRENT):
        payload, ct, mid = build_request(v.Action.ITI18, find_documents(f.patient(i % PATIENTS)),
                                         to=live.url + "/xds/registry")
        message_id = f"urn:uuid:{'poison-' if i in poisoned else ''}{uuid.uuid4()}"
        requests.append((message_id, i in poisoned, payload.replace(mid.encode(), message_id.encode(), 1), ct))
    limits = httpx.Limits(max_connections=CONCURRENT, max_keepalive_connections=CONCURRENT)
    async with httpx.AsyncClient(base_url=live.url, limits=limits, timeout=60) as client:
        await asyncio.gather(*(client.get("/health") for _ in range(CONCURRENT)))  # open every connection first
        start = asyncio.Event()

        async def one(message_id: str, bad: bool, payload: bytes, ct: str):
            await start.wait()
            resp = await client.post("/xds/registry", content=payload, headers={"Content-Type": ct})
            # looked up the moment the answer is here: it may not have left before its row committed
            committed = bool(_committed(audit, [message_id])) if resp.status_code == 200 else False
            return message_id, bad, resp.status_code, b"ExtrinsicObject" in resp.content, committed, resp

        tasks = [asyncio.ensure_future(one(*r)) for r in requests]
        await asyncio.sleep(0)
        # hold the audit table's writes for a moment, as a busy node's other writers would: the rows
        # of the burst gather in one round per worker, so a poisoned row must take innocent ones with it
        # (on a quiet machine each request would otherwise commit on its own)
        held = threading.Event()
        holder = threading.Thread(target=_hold_writes, args=(audit, held, 0.3), daemon=True)
        holder.start()
        held.wait(10)
        start.set()
        results = await asyncio.gather(*tasks)
        holder.join(10)
    for message_id, bad, status, data, committed, resp in results:
        assert status in (200, 503), (status, resp.content[:300])
        if status == 200:
            assert not bad, "a request whose audit row cannot be written was answered"
            assert committed and data, (message_id, committed, data)
        else:
            assert not data and b"Receiver" in resp.content and resp.headers.get("retry-after")
    return [(m, b, s, d, c) for m, b, s, d, c, _ in results]


def test_no_answer_before_its_row_commits_and_a_failed_batch_fails_every_request(served):
    live, audit = served
    rng = random.Random(14)
    collateral = 0
    for _ in range(ROUNDS):
        results = asyncio.run(_round(live, audit, rng))
        committed = _committed(audit, [m for m, *_ in results])
        for message_id, bad, status, _data, _ in results:
            # a 503 left no row behind (its whole transaction rolled back); a 200 has exactly its row
            assert (message_id in committed) == (status == 200), (message_id, bad, status)
        collateral += sum(1 for _, bad, status, _, _ in results if status == 503 and not bad)
        assert all(status == 503 for _, bad, status, _, _ in results if bad)
        if collateral:
            break
    # innocent requests that shared a transaction with a refused row were refused with it: the
    # rows share one commit, and the failure mid-batch failed all of them, never just the one
    assert collateral, "no innocent request shared a transaction with a refused row in any round"
