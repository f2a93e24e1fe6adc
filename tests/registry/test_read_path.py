"""The read path on PostgreSQL: reads run on an autocommit, read-only pool, one round trip each.

What the wire carries is checked with libpq's own protocol trace of the read connections: a
FindDocuments over SOAP, a consent read and a retrieve lookup each send their statement and nothing
else (no BEGIN, no ROLLBACK, no pool ping); the write engine, traced the same way, does send them
(so the trace can tell). A write through the read engine is refused by the server, and read
connections killed under the node (a fail-over, an idle-connection reaper) are replaced without
failing the request.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

import pytest
from psycopg import pq
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError

from tests import factories as f
from tests.conftest import POSTGRES_URL
from tests.repository.test_provide_and_retrieve import no_hash_size, provide, retrieve, status_of
from xds_node.ebxml import vocabulary as v

pytestmark = [pytest.mark.postgres,
              pytest.mark.skipif(not POSTGRES_URL, reason="set XDS_TEST_POSTGRES_URL to run against PostgreSQL")]

FIND = v.StoredQueryId.FIND_DOCUMENTS


@pytest.fixture
def backend() -> str:
    return "postgres"


@contextmanager
def wire(engine, path: Path):
    """Trace the frontend/backend messages of every connection ``engine`` hands out, into ``path``."""
    fh = open(path, "w")  # noqa: SIM115 (libpq writes through the descriptor until untraced)

    def on_checkout(dbapi_conn, _record, _proxy) -> None:
        dbapi_conn.pgconn.trace(fh.fileno())
        dbapi_conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)

    event.listen(engine, "checkout", on_checkout)
    engine.pool.dispose()  # connections checked out from now on are traced
    try:
        yield
    finally:
        event.remove(engine, "checkout", on_checkout)
        engine.pool.dispose()
        fh.close()


def sent(path: Path) -> list[str]:
    """The frontend messages (F lines) of a trace, as 'Kind text'."""
    out = []
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[0] == "F":
            out.append(" ".join(p.strip() for p in parts[2:]))
    return out


def round_trips(messages: list[str]) -> int:
    """Each simple Query, and each extended-protocol exchange (ended by Sync), is one round trip."""
    return sum(1 for m in messages if m.startswith(("Query", "Sync")))


def _find(client, pid: str):
    from tests.registry.test_stored_queries import _q

    return _q(client, FIND, XDSDocumentEntryPatientId=f"'{pid}'",
              XDSDocumentEntryStatus="('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved')")


def test_find_documents_is_one_round_trip_without_begin_rollback_or_ping(client, node, tmp_path):
    pid = f.patient(1500)
    assert node.registry.register(f.submission(pid, 3)).status == v.ResponseStatus.SUCCESS
    trace = tmp_path / "read.trace"
    with wire(node.reader, trace):
        for _ in range(3):
            reply = _find(client, pid)
            assert reply.status == v.ResponseStatus.SUCCESS and len(reply.objects("ExtrinsicObject")) == 3
    messages = sent(trace)
    assert round_trips(messages) == 3, messages
    text = " ".join(messages).upper()
    assert "BEGIN" not in text and "ROLLBACK" not in text and "SELECT 1" not in text
    assert not re.search(r'(QUERY|PARSE) "?\s*;?\s*"?$', text)  # no empty-statement ping either


def test_the_trace_would_see_a_transaction_on_the_write_engine(node, tmp_path):
    """The same trace on the write engine's read shows BEGIN and ROLLBACK: the check above can fail."""
    trace = tmp_path / "write.trace"
    with wire(node.engine, trace), node.engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1 FROM xds_document LIMIT 1").all()
    text = " ".join(sent(trace)).upper()
    assert "BEGIN" in text


def test_consent_and_retrieve_lookups_are_single_round_trips(client, node, tmp_path):
    pid = f.patient(1501)
    sub = no_hash_size(f.submission(pid, 1))
    assert provide(client, sub, {sub.documents[0].id: b"<doc>retrieved</doc>"}).status == v.ResponseStatus.SUCCESS
    node.consent_store.grant(pid, source="paper form")
    trace = tmp_path / "reads.trace"
    with wire(node.reader, trace):
        assert node.consent_store.status(pid).state == "granted"
        consent = round_trips(sent(trace))
        outcome = node.repository.retrieve([(node.settings.repository_unique_id, sub.documents[0].unique_id, None)])
        assert outcome.documents[0].located.data == b"<doc>retrieved</doc>"
    messages = sent(trace)
    # consent: one; retrieve: the index rows, then the bytes (same connection, no transaction)
    assert (consent, round_trips(messages)) == (1, 3), messages
    assert "BEGIN" not in " ".join(messages).upper()


def test_the_read_engine_refuses_writes(node):
    with pytest.raises(DBAPIError, match="read-only"), node.reader.connect() as conn:
        conn.exec_driver_sql("DELETE FROM xds_document")


def test_killed_read_connections_are_replaced_without_failing_a_request(client, node):
    pid = f.patient(1502)
    assert node.registry.register(f.submission(pid, 2)).status == v.ResponseStatus.SUCCESS
    for _ in range(3):  # fill the pool with idle read connections
        assert len(_find(client, pid).objects("ExtrinsicObject")) == 2
    with node.engine.begin() as conn:
        killed = conn.exec_driver_sql(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'xds-node read' AND datname = current_database() AND pid <> pg_backend_pid()"
        ).scalar()
    assert killed >= 1
    for _ in range(3):
        reply = _find(client, pid)
        assert reply.status == v.ResponseStatus.SUCCESS and len(reply.objects("ExtrinsicObject")) == 2
    assert node.consent_store.status(pid).state != "granted"  # the consent read recovers too
    uid = "1.2.3.404"
    assert status_of(retrieve(client, [(None, uid)])) == v.ResponseStatus.FAILURE  # answered, not a 500
