"""Pushed documents' bytes in the database (``document_store = "database"``, the default on PostgreSQL).

Over HTTP as a document source meets it (ITI-41 in, ITI-43 out), and against the store directly for
what HTTP cannot force: a registration that fails after its bytes were written, a large document
that must be streamed rather than loaded, fsck's findings, and the race between ``fsck --repair``
removing an orphan and a registration reusing those very bytes (PostgreSQL, two real transactions).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time

import pytest
from sqlalchemy import update

from tests import factories as f
from tests.conftest import POSTGRES_URL
from tests.repository.test_provide_and_retrieve import documents_of, no_hash_size, provide, retrieve, status_of
from tests.soapkit import SoapTestClient
from xds_node.ebxml import vocabulary as v
from xds_node.repository import dbstore, tables
from xds_node.repository.fsck import fsck


@pytest.fixture
def settings(settings):
    settings.document_store = "database"  # the default on PostgreSQL; chosen here on SQLite too
    return settings


def _rows(node, sql: str) -> list[tuple]:
    with node.engine.connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql(sql)]


def _provide(client, pid: int, contents: list[bytes]) -> dict[str, bytes]:
    sub = no_hash_size(f.submission(f.patient(pid), len(contents)))
    reply = provide(client, sub, {de.id: data for de, data in zip(sub.documents, contents, strict=True)})
    assert reply.status == v.ResponseStatus.SUCCESS, reply.raw[:800]
    return {de.unique_id: data for de, data in zip(sub.documents, contents, strict=True)}


def test_pushed_documents_live_in_the_database_not_the_folder(client, node):
    docs = _provide(client, 1400, [b"<ClinicalDocument>one</ClinicalDocument>", os.urandom(3000)])
    reply = retrieve(client, [(None, uid) for uid in docs])
    assert status_of(reply) == v.ResponseStatus.SUCCESS
    assert documents_of(reply) == docs
    assert not [p for p in node.content_store.root.rglob("*") if p.is_file()]
    assert sorted(_rows(node, "SELECT source, locator FROM repo_document")) == \
        sorted(("db", hashlib.sha1(d).hexdigest()) for d in docs.values())
    assert sorted(c.sha1 for c in node.repository.database.contents()) == \
        sorted(hashlib.sha1(d).hexdigest() for d in docs.values())
    assert fsck(node.repository, grace_seconds=0).ok


def test_large_document_is_chunked_and_streamed_not_loaded(client, node):
    data = os.urandom(dbstore.INLINE_BYTES + dbstore.CHUNK + 12345)  # past the inline bound: 6 chunks
    (uid,) = _provide(client, 1401, [data])
    sha1 = hashlib.sha1(data).hexdigest()
    assert _rows(node, f"SELECT size, chunks FROM repo_content WHERE sha1 = '{sha1}'") == [(len(data), 6)]
    assert max(r[0] for r in _rows(node, "SELECT LENGTH(data) FROM repo_content_chunk")) == dbstore.CHUNK
    outcome = node.repository.retrieve([(node.settings.repository_unique_id, uid, None)])
    located = outcome.documents[0].located
    assert located.data is None and located.stream is not None  # read while sent, chunk by chunk
    assert all(len(chunk) <= dbstore.CHUNK for chunk in located.stream())
    got = documents_of(retrieve(client, [(None, uid)]))[uid]
    assert hashlib.sha1(got).hexdigest() == sha1
    small = _provide(client, 1402, [b"x" * dbstore.INLINE_BYTES])  # at the bound: one round trip, in memory
    outcome = node.repository.retrieve([(node.settings.repository_unique_id, u, None) for u in small])
    assert outcome.documents[0].located.data == b"x" * dbstore.INLINE_BYTES


def test_a_retrieve_of_many_documents_keeps_at_most_the_inline_budget_in_memory(client, node):
    docs = _provide(client, 1412, [os.urandom(dbstore.INLINE_BYTES) for _ in range(5)])  # 20 MiB, 16 inline
    outcome = node.repository.retrieve([(node.settings.repository_unique_id, uid, None) for uid in docs])
    located = [d.located for d in outcome.documents]
    assert sum(len(x.data) for x in located if x.data is not None) <= dbstore.INLINE_TOTAL
    assert [x.data is None for x in located].count(True) == 1  # the fifth is streamed when sent
    assert documents_of(retrieve(client, [(None, uid) for uid in docs])) == docs


def test_a_damaged_large_document_aborts_its_stream_instead_of_passing_for_the_registered_one(client, node):
    data = os.urandom(dbstore.INLINE_BYTES + 10)
    (uid,) = _provide(client, 1411, [data])
    chunk = tables.content_chunks
    with node.engine.begin() as conn:  # same size, other bytes: only the SHA-1 can tell
        conn.execute(update(chunk).where(chunk.c.sha1 == hashlib.sha1(data).hexdigest(), chunk.c.seq == 0)
                     .values(data=os.urandom(dbstore.CHUNK)))
    located = node.repository.retrieve([(node.settings.repository_unique_id, uid, None)]).documents[0].located
    stream = located.stream()
    with pytest.raises(OSError, match="do not match"):
        sent = [next(stream) for _ in range(4)]  # the first chunks go out as they are read ...
        assert sum(map(len, sent)) == 4 * dbstore.CHUNK
        next(stream)  # ... and the last one is never sent: the answer is cut off


def test_registration_failing_after_the_bytes_were_written_leaves_none(node):
    """The bytes are written inside the registration's transaction: a failure after them (here the
    last statement of the transaction) takes them back with everything else."""
    sub = no_hash_size(f.submission(f.patient(1403), 2))
    contents = {de.id: os.urandom(dbstore.CHUNK + 7) for de in sub.documents}

    async def register(s, also):
        def then_fail(conn):
            also(conn)  # bytes and index rows written
            assert _count_in(conn) == 2
            raise RuntimeError("the database went away just before COMMIT")

        return node.registry.register(s, transaction="ITI-41", also=then_fail)

    with pytest.raises(RuntimeError):
        asyncio.run(node.repository.provide_and_register(sub, contents, register))
    assert _rows(node, "SELECT COUNT(*) FROM repo_content") == [(0,)]
    assert _rows(node, "SELECT COUNT(*) FROM repo_content_chunk") == [(0,)]
    assert node.registry_store.count("doc") == 0


def _count_in(conn) -> int:
    return conn.exec_driver_sql("SELECT COUNT(*) FROM repo_content").scalar()


def test_other_bytes_under_a_stored_sha1_are_refused_not_served_for_it(client, node):
    """A SHA-1 collision (made, not found) must not give an entry somebody else's bytes: bytes
    pushed under a stored SHA-1 must have its SHA-256 too, or the registration rolls back."""
    victim = b"<ClinicalDocument>the victim's record</ClinicalDocument>"
    (uid,) = _provide(client, 1413, [victim])
    sha1 = hashlib.sha1(victim).hexdigest()
    forged = b"<ClinicalDocument>the attacker's record!</ClinicalDocument>"[:len(victim)]
    with pytest.raises(dbstore.ContentCollision), node.engine.begin() as conn:
        node.repository.database.write(conn, forged, sha1)  # as if hashlib had said sha1 for it
    sub = no_hash_size(f.submission(f.patient(1414), 1))

    async def register(s, also):
        return node.registry.register(s, transaction="ITI-41", also=also)

    import xds_node.repository.service as service

    real = service.Repository.check_documents

    def collide(self, s, documents):  # the repository computes SHA-1 itself: make it see a collision
        errors = real(self, s, documents)
        s.documents[0].hash = sha1
        return errors

    service.Repository.check_documents = collide
    try:
        reply = asyncio.run(node.repository.provide_and_register(sub, {sub.documents[0].id: forged}, register))
    finally:
        service.Repository.check_documents = real
    assert [e.code for e in reply.errors] == [v.ErrorCode.REPOSITORY_ERROR]
    assert node.registry_store.count("doc") == 1  # only the victim's entry
    assert documents_of(retrieve(client, [(None, uid)])) == {uid: victim}


def test_identical_bytes_in_two_submissions_are_stored_once(client, node):
    data = b"<ClinicalDocument>twice</ClinicalDocument>"
    first = _provide(client, 1404, [data])
    second = _provide(client, 1405, [data])
    assert _rows(node, "SELECT COUNT(*) FROM repo_content") == [(1,)]
    reply = retrieve(client, [(None, uid) for uid in (*first, *second)])
    assert set(documents_of(reply).values()) == {data}


def test_folder_entries_stay_readable_after_switching_to_the_database(tmp_path, settings):
    """Data migration: entries whose bytes were written to the folder store keep being served
    from there; only new pushes go to the database."""
    from xds_node.node import Node

    settings.document_store = "folder"
    node = Node(settings)
    c = SoapTestClient(app=node.app())
    old = _provide(c, 1406, [b"<ClinicalDocument>in a file</ClinicalDocument>"])
    c.close()
    node.close()
    settings.document_store = "database"
    node = Node(settings)
    c = SoapTestClient(app=node.app())
    try:
        new = _provide(c, 1407, [b"<ClinicalDocument>in the database</ClinicalDocument>"])
        assert documents_of(retrieve(c, [(None, uid) for uid in (*old, *new)])) == {**old, **new}
        assert sorted(r[0] for r in _rows(node, "SELECT source FROM repo_document")) == ["db", "store"]
        report = fsck(node.repository, grace_seconds=0)
        assert report.ok and report.entries == 2 and report.content_files == 1 and report.database_contents == 1
    finally:
        c.close()
        node.close()


def test_fsck_names_missing_damaged_and_orphaned_database_contents(client, node):
    docs = _provide(client, 1408, [b"<doc>damaged</doc>", b"<doc>missing</doc>", b"<doc>orphan</doc>",
                                   b"<doc>fine</doc>"])
    damaged, missing, orphan, fine = (hashlib.sha1(d).hexdigest() for d in docs.values())
    uids = list(docs)
    chunk = tables.content_chunks
    with node.engine.begin() as conn:
        conn.execute(update(chunk).where(chunk.c.sha1 == damaged).values(data=b"<doc>DAMAGED</doc>"))
        conn.exec_driver_sql(f"DELETE FROM repo_content_chunk WHERE sha1 = '{missing}'")
        conn.exec_driver_sql(f"DELETE FROM repo_content WHERE sha1 = '{missing}'")
        conn.exec_driver_sql(f"DELETE FROM repo_document WHERE unique_id = '{uids[2]}'")  # entry gone by hand
    report = fsck(node.repository, grace_seconds=3600)
    found = {(x.kind, x.path) for x in report.findings}
    assert found == {("damaged", f"db:{damaged}"), ("missing", f"db:{missing}"), ("orphan", f"db:{orphan}")}
    assert {x.unique_id for x in report.findings if x.kind != "orphan"} == {uids[0], uids[1]}
    # the damaged document is refused rather than served wrong
    assert status_of(retrieve(client, [(None, uids[0])])) == v.ResponseStatus.FAILURE
    repaired = fsck(node.repository, grace_seconds=3600, repair=True)
    assert [(x.kind, x.repaired) for x in repaired.findings if x.kind == "orphan"] == [("orphan", True)]
    assert {c.sha1 for c in node.repository.database.contents()} == {damaged, fine}  # lost bytes are not ours to drop
    assert documents_of(retrieve(client, [(None, uids[3])])) == {uids[3]: b"<doc>fine</doc>"}


# --- fsck --repair racing a registration that reuses the orphan's bytes (PostgreSQL) -----------------
pg_only = pytest.mark.skipif(not POSTGRES_URL, reason="needs PostgreSQL: two real concurrent transactions")


def _orphan(client, node, pid: int) -> tuple[bytes, str]:
    data = b"<doc>about to be orphaned " + os.urandom(8).hex().encode() + b"</doc>"
    (uid,) = _provide(client, pid, [data])
    with node.engine.begin() as conn:
        conn.exec_driver_sql(f"DELETE FROM repo_document WHERE unique_id = '{uid}'")
    return data, hashlib.sha1(data).hexdigest()


def _waiting_on_a_lock(node, deadline: float = 30.0) -> bool:
    """Whether some session of this database waits for a row lock (polled; no timing asserted)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if _rows(node, "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND wait_event_type = 'Lock'")[0][0]:
            return True
        time.sleep(0.05)
    return False


def _index_row(sha1: str, size: int, uid: str) -> dict:
    return {"unique_id": uid, "repository_unique_id": "1.2.3", "entry_uuid": "urn:uuid:" + uid,
            "source": "db", "locator": sha1, "mime_type": "text/xml", "size": size, "sha1": sha1,
            "mtime_ns": None, "state": "current", "version": 1}


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=[pytest.mark.postgres, pg_only])])
def test_repair_waits_for_a_registration_reusing_the_bytes_and_keeps_them(client, node):
    from xds_node.repository.service import _index

    data, sha1 = _orphan(client, node, 1409)
    store = node.repository.database
    result: list[bool] = []
    with node.engine.begin() as conn:  # a registration reusing the stored bytes, not yet committed
        store.write(conn, data, sha1)
        _index(conn, [_index_row(sha1, len(data), "9.9.1409")])
        remover = threading.Thread(target=lambda: result.append(store.remove_orphan(sha1)))
        remover.start()
        assert _waiting_on_a_lock(node)  # the removal waits for this transaction's outcome
    remover.join(60)
    assert result == [False]
    assert [c.sha1 for c in store.contents()] == [sha1]
    assert fsck(node.repository, grace_seconds=0).ok


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=[pytest.mark.postgres, pg_only])])
def test_registration_waiting_for_a_repair_writes_the_bytes_again(client, node):
    from xds_node.repository.service import _index

    data, sha1 = _orphan(client, node, 1410)
    store = node.repository.database
    done: list[BaseException | None] = []

    def register() -> None:
        try:
            with node.engine.begin() as conn:
                store.write(conn, data, sha1)
                _index(conn, [_index_row(sha1, len(data), "9.9.1410")])
            done.append(None)
        except BaseException as exc:  # pragma: no cover - reported by the assertion below
            done.append(exc)

    with node.engine.begin() as conn:  # the repair, between its lock and its commit
        conn.exec_driver_sql(f"SELECT sha1 FROM repo_content WHERE sha1 = '{sha1}' FOR UPDATE")
        conn.exec_driver_sql(f"DELETE FROM repo_content WHERE sha1 = '{sha1}'")
        writer = threading.Thread(target=register)
        writer.start()
        assert _waiting_on_a_lock(node)
    writer.join(60)
    assert done == [None]
    assert [(c.sha1, c.size) for c in store.contents()] == [(sha1, len(data))]
    assert store.digest(sha1) == (sha1, len(data))
