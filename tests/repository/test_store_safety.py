"""Shared content files are never deleted while a committed entry or an in-flight request needs them.

The interleavings that lost acknowledged documents (a failing submission deleting "its" file after
a concurrent submission of the same bytes committed, or while one was still in flight) are forced
here step by step with the real Repository and Registry, so each runs the same way every time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os

import pytest

from tests import factories as f
from tests.repository.test_provide_and_retrieve import documents_of, retrieve, status_of
from xds_node.ebxml import vocabulary as v
from xds_node.repository.sources import ContentStore


@pytest.fixture
def settings(settings):
    """These tests are about the folder store (leases, collection); on PostgreSQL pushed documents
    would otherwise go to the database store (tests/repository/test_dbstore.py)."""
    settings.document_store = "folder"
    return settings


def _register(node, gate: asyncio.Event | None = None, reached: asyncio.Event | None = None):
    """The co-located registration, optionally pausing after the bytes are stored (as a slow request would)."""

    async def register(sub, also):
        if reached is not None:
            reached.set()
        if gate is not None:
            await gate.wait()
        return node.registry.register(sub, transaction="ITI-41", also=also)

    return register


def _valid(pid_n: int):
    sub = f.submission(f.patient(pid_n), 1)
    de = sub.documents[0]
    de.hash = de.size = de.repository_unique_id = None
    return sub, de


def _failing(pid_n: int):
    """Fails in the registry, after the repository stored the bytes: XDSPatientIdDoesNotMatch."""
    sub, de = _valid(pid_n)
    de.patient_id = f.patient(pid_n + 1)
    return sub, de


def _assert_retrievable(client, unique_id: str, data: bytes) -> None:
    reply = retrieve(client, [(None, unique_id)])
    assert status_of(reply) == v.ResponseStatus.SUCCESS, reply.raw[:800]
    got = documents_of(reply)[unique_id]
    assert hashlib.sha1(got).hexdigest() == hashlib.sha1(data).hexdigest()


def test_failed_writer_keeps_bytes_a_concurrent_submission_committed(client, node):
    """The failing request wrote the file first; the valid one reused it and committed; then the
    failing one cleaned up. The old code deleted the acknowledged document's bytes here."""
    data = b"<ClinicalDocument>shared " + os.urandom(16).hex().encode() + b"</ClinicalDocument>"
    bad, bad_de = _failing(700)
    good, good_de = _valid(702)

    async def scenario():
        stored, go = asyncio.Event(), asyncio.Event()
        failing = asyncio.create_task(node.repository.provide_and_register(
            bad, {bad_de.id: data}, _register(node, go, stored)))
        await stored.wait()  # the failing request has written the file and waits in its registration
        ok = await node.repository.provide_and_register(good, {good_de.id: data}, _register(node))
        go.set()
        return ok, await failing

    ok, failed = asyncio.run(scenario())
    assert ok.status == v.ResponseStatus.SUCCESS, ok.errors
    assert v.ErrorCode.PATIENT_ID_DOES_NOT_MATCH in [e.code for e in failed.errors]
    _assert_retrievable(client, good_de.unique_id, data)


def test_failed_writer_keeps_bytes_a_request_in_flight_holds(client, node):
    """The valid request stored (reused) the bytes but has not committed when the failing writer
    cleans up; it commits afterwards and must still find its bytes."""
    data = b"<ClinicalDocument>in flight " + os.urandom(16).hex().encode() + b"</ClinicalDocument>"
    bad, bad_de = _failing(710)
    good, good_de = _valid(712)

    async def scenario():
        bad_stored, good_stored, bad_go, good_go = (asyncio.Event() for _ in range(4))
        failing = asyncio.create_task(node.repository.provide_and_register(
            bad, {bad_de.id: data}, _register(node, bad_go, bad_stored)))
        await bad_stored.wait()
        valid = asyncio.create_task(node.repository.provide_and_register(
            good, {good_de.id: data}, _register(node, good_go, good_stored)))
        await good_stored.wait()
        bad_go.set()
        failed = await failing  # cleans up while the valid request is between put and commit
        good_go.set()
        return await valid, failed

    ok, failed = asyncio.run(scenario())
    assert failed.status == v.ResponseStatus.FAILURE
    assert ok.status == v.ResponseStatus.SUCCESS, ok.errors
    _assert_retrievable(client, good_de.unique_id, data)


def test_failed_submission_alone_leaves_no_bytes(client, node):
    """Nobody else shares the bytes: the failed request's file and lease are both gone."""
    bad, bad_de = _failing(720)
    data = os.urandom(2000)
    failed = asyncio.run(node.repository.provide_and_register(bad, {bad_de.id: data}, _register(node)))
    assert failed.status == v.ResponseStatus.FAILURE
    assert [p for p in node.content_store.root.rglob("*") if p.is_file()] == []


def test_resubmission_of_committed_document_keeps_it(client, node):
    """A client retry of an acknowledged submission (new entry, same uniqueId and bytes) is accepted
    as an identical resubmission (ITI TF-3 Table 4.2.4.1-2); one with other bytes is
    XDSNonIdenticalHash. Neither removes the acknowledged document. (This test expected the retry
    to fail as a duplicate: the rule the registry wrongly applied before.)"""
    good, good_de = _valid(730)
    data = os.urandom(5000)
    assert asyncio.run(node.repository.provide_and_register(
        good, {good_de.id: data}, _register(node))).status == v.ResponseStatus.SUCCESS
    retry, retry_de = _valid(730)
    retry_de.unique_id = good_de.unique_id
    again = asyncio.run(node.repository.provide_and_register(retry, {retry_de.id: data}, _register(node)))
    assert again.status == v.ResponseStatus.SUCCESS, again.errors
    other, other_de = _valid(730)
    other_de.unique_id = good_de.unique_id
    refused = asyncio.run(node.repository.provide_and_register(other, {other_de.id: os.urandom(5000)},
                                                               _register(node)))
    assert [e.code for e in refused.errors] == [v.ErrorCode.NON_IDENTICAL_HASH]
    _assert_retrievable(client, good_de.unique_id, data)
    assert len(_files(node.content_store)) == 1


# --- the store's own protocol --------------------------------------------------------------------
def _files(store: ContentStore) -> list[str]:
    return sorted(p.name for p in store.root.rglob("*") if p.is_file())


def test_put_leases_and_release_keeps_one_file(tmp_path):
    store = ContentStore(tmp_path)
    sha1, first = store.put(b"abc")
    _, second = store.put(b"abc")
    assert first.created and not second.created
    assert os.stat(store.path_for(sha1)).st_nlink == 3  # the name and two leases
    store.release(first)
    store.release(second, b"abc")
    assert _files(store) == [sha1]


def test_release_puts_back_a_file_a_collector_took(tmp_path):
    """Even a collector that wrongly deleted the name (say, stale NFS attributes) cannot lose a
    committed document: release re-links it from the lease, or rewrites it from the request."""
    store = ContentStore(tmp_path)
    sha1, lease = store.put(b"payload")
    q = store.quarantine(sha1)
    q.unlink()
    store.release(lease, b"payload")
    assert store.path_for(sha1).read_bytes() == b"payload"

    sha1, lease = store.put(b"other payload")
    lease.path.unlink()  # removed as stale
    store.path_for(sha1).unlink()
    store.release(lease, b"other payload")
    assert store.path_for(sha1).read_bytes() == b"other payload"


def test_collect_respects_leases_and_committed_entries(client, node):
    repo, store = node.repository, node.content_store
    held, lease = store.put(b"held by a request in flight")
    free, free_lease = store.put(b"nobody wants this")
    store.drop(free_lease)
    good, good_de = _valid(740)
    data = b"committed " + os.urandom(8).hex().encode()
    assert asyncio.run(repo.provide_and_register(good, {good_de.id: data}, _register(node))).status == \
        v.ResponseStatus.SUCCESS
    named = hashlib.sha1(data).hexdigest()

    assert repo.collect([held, free, named]) == [free]
    assert store.locate(held) is not None and store.locate(named) is not None and store.locate(free) is None
    assert not [p for p in store.root.rglob(".gc-*")]  # nothing left half-way
    store.release(lease)
    _assert_retrievable(client, good_de.unique_id, data)


def test_put_after_quarantine_writes_a_fresh_file(tmp_path):
    """A put that comes after a collector took the name writes its own copy; restoring the
    quarantined one then leaves that copy in place."""
    store = ContentStore(tmp_path)
    sha1, lease = store.put(b"x" * 100)
    store.drop(lease)
    q = store.quarantine(sha1)
    _, again = store.put(b"x" * 100)
    assert again.created
    store.restore(q)
    store.release(again)
    assert store.path_for(sha1).read_bytes() == b"x" * 100 and _files(store) == [sha1]


def test_cancelled_request_whose_registration_still_commits_keeps_its_bytes(client, node):
    """The client goes away while the registration runs in a worker thread: the handler is
    cancelled, the thread commits anyway. The bytes must outlive the cancellation."""
    import threading

    data = b"<ClinicalDocument>cancelled " + os.urandom(16).hex().encode() + b"</ClinicalDocument>"
    good, good_de = _valid(750)
    in_thread, may_commit = threading.Event(), threading.Event()

    async def register(sub, also):
        def run():
            in_thread.set()
            may_commit.wait(30)
            return node.registry.register(sub, transaction="ITI-41", also=also)

        return await asyncio.to_thread(run)

    async def scenario():
        task = asyncio.create_task(node.repository.provide_and_register(good, {good_de.id: data}, register))
        await asyncio.to_thread(in_thread.wait, 30)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # a failing submission of the same bytes cleans up meanwhile
        bad, bad_de = _failing(752)
        failed = await node.repository.provide_and_register(bad, {bad_de.id: data}, _register(node))
        assert failed.status == v.ResponseStatus.FAILURE
        may_commit.set()

    asyncio.run(scenario())  # returns once the default executor, and so the orphaned thread, finished
    assert node.repository.row_for_uid(good_de.unique_id) is not None
    _assert_retrievable(client, good_de.unique_id, data)


def test_a_damaged_stored_copy_is_healed_by_the_next_put_of_its_bytes(tmp_path):
    store = ContentStore(tmp_path)
    sha1, lease = store.put(b"0123456789" * 10)
    store.release(lease)
    store.path_for(sha1).write_bytes(b"0123")  # truncated behind our back
    _, again = store.put(b"0123456789" * 10)
    store.release(again)
    assert store.path_for(sha1).read_bytes() == b"0123456789" * 10 and _files(store) == [sha1]
