"""Concurrent ITI-41 submissions of the same bytes against a real node (`serve`, one or two workers):
every acknowledged document stays retrievable by ITI-43 with the right hash.

Before the content store had leases, a failing submission deleted the file it had written even when
a concurrent one had committed an entry pointing to it: these rounds lost acknowledged documents
most of the time on PostgreSQL and regularly on SQLite with two workers.
"""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from lxml import etree

from tests import factories as f
from tests.conftest import BACKENDS, LiveNode, _database_url
from tests.repository.test_provide_and_retrieve import REPO, X, documents_of, retrieve, status_of
from tests.soapkit import SoapTestClient, _parse
from xds_node.config import load_settings
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml import xdsb
from xds_node.soap.envelope import build_request
from xds_node.soap.mtom import Attachment

ROUNDS = 12
FAILING = 9

_sqlite, _postgres = BACKENDS
SETUPS = [
    pytest.param(("sqlite", 2), id="sqlite-2workers"),
    pytest.param(("postgres", 1), id="postgres-1worker", marks=_postgres.marks),
    pytest.param(("postgres", 2), id="postgres-2workers", marks=_postgres.marks),
]


@pytest.fixture(scope="module", params=SETUPS)
def served(request, tmp_path_factory):
    backend, workers = request.param
    data = tmp_path_factory.mktemp(f"concurrent-{backend}-{workers}")
    url = _database_url(backend, data)
    from xds_node.node import Node

    Node(load_settings(env={}, data_dir=data, database_url=url)).close()  # schema first, then the workers
    node = LiveNode(data, {"XDS_DATABASE_URL": url}, ["--workers", str(workers)])
    node.store = data / "documents"
    node.database_url = url
    yield node
    node.stop()


def _envelope(base_url: str, sub, data: bytes) -> tuple[bytes, str]:
    el = etree.Element(X + "Document", nsmap={"xdsb": v.XDSB})
    inc = etree.SubElement(el, "{http://www.w3.org/2004/08/xop/include}Include")
    inc.set("href", "cid:doc0@xds-node.test")
    payload, ct, _ = build_request(v.Action.ITI41, xdsb.write_provide_request(sub, {sub.documents[0].id: el}),
                                   to=base_url + REPO, attachments=[Attachment("doc0@xds-node.test", "text/xml",
                                                                               data=data)], mtom=True)
    return (payload if isinstance(payload, bytes) else b"".join(payload)), ct


def _post_together(base_url: str, envelopes: list[tuple[bytes, str]]) -> list[str]:
    """Post every envelope at once from its own thread and client; the RegistryResponse statuses."""
    start = threading.Barrier(len(envelopes))

    def post(envelope: tuple[bytes, str]) -> str:
        body, ct = envelope
        with httpx.Client(base_url=base_url, timeout=60) as http:
            start.wait(30)
            reply = _parse(http.post(REPO, content=body, headers={"Content-Type": ct}))
        assert reply.http_status == 200, reply.raw[:500]
        return reply.status

    with ThreadPoolExecutor(len(envelopes)) as pool:
        return list(pool.map(post, envelopes))


def _sub(pid: str, data: bytes):
    sub = f.submission(pid, 1)
    de = sub.documents[0]
    de.hash, de.size = hashlib.sha1(data).hexdigest(), len(data)
    return sub


def _check_retrievable(client, acknowledged: dict[str, bytes]) -> list[str]:
    """uniqueIds whose acknowledged bytes cannot be retrieved intact."""
    lost = []
    for uid, data in acknowledged.items():
        reply = retrieve(client, [(None, uid)])
        got = documents_of(reply).get(uid) if status_of(reply) == v.ResponseStatus.SUCCESS else None
        if got is None or hashlib.sha1(got).hexdigest() != hashlib.sha1(data).hexdigest():
            lost.append(uid)
    return lost


def test_identical_envelope_posted_twice_at_once(served):
    """A client retry racing its original: one Success, one duplicate, and the document stays."""
    client = SoapTestClient(base_url=served.url)
    acknowledged: dict[str, bytes] = {}
    try:
        for n in range(ROUNDS):
            data = b"<ClinicalDocument>retry " + os.urandom(24).hex().encode() + b"</ClinicalDocument>"
            sub = _sub(f.patient(800 + n), data)
            envelope = _envelope(served.url, sub, data)
            statuses = _post_together(served.url, [envelope, envelope])
            assert statuses.count(v.ResponseStatus.SUCCESS) == 1, statuses
            acknowledged[sub.documents[0].unique_id] = data
        assert _check_retrievable(client, acknowledged) == []
    finally:
        client.close()


def test_one_valid_among_failing_submissions_of_the_same_bytes(served):
    """One valid submission and nine of the same bytes that fail in the registry after the bytes were
    stored (a duplicate uniqueId with other content, or a patient id mismatch)."""
    client = SoapTestClient(base_url=served.url)
    acknowledged: dict[str, bytes] = {}
    try:
        taken = _sub(f.patient(899), b"already registered content")  # its uniqueId is the failing ones' trap
        body, ct = _envelope(served.url, taken, b"already registered content")
        assert client.post_raw(REPO, body, ct).status == v.ResponseStatus.SUCCESS
        for n in range(ROUNDS):
            data = os.urandom(3000)
            valid = _sub(f.patient(900 + n), data)
            envelopes = [_envelope(served.url, valid, data)]
            for k in range(FAILING):
                bad = _sub(f.patient(900 + n), data)
                if k % 2:
                    bad.documents[0].unique_id = taken.documents[0].unique_id
                else:
                    bad.documents[0].patient_id = f.patient(950)
                envelopes.append(_envelope(served.url, bad, data))
            statuses = _post_together(served.url, envelopes)
            assert statuses[0] == v.ResponseStatus.SUCCESS and set(statuses[1:]) == {v.ResponseStatus.FAILURE}
            acknowledged[valid.documents[0].unique_id] = data
        assert _check_retrievable(client, acknowledged) == []
        # the failed submissions let go of their leases: no temp name is left behind
        assert [p.name for p in served.store.rglob(".*") if p.is_file()] == []
    finally:
        client.close()



def test_collector_running_throughout_never_takes_an_acknowledged_document(served):
    """`fsck --repair` (its collector) runs in another process, non-stop, over every file in the
    store while identical and failing submissions race: nothing acknowledged may go."""
    from xds_node.db import make_engine
    from xds_node.repository.service import Repository
    from xds_node.repository.sources import ContentStore

    engine = make_engine(served.database_url)
    collector = Repository(engine, ContentStore(served.store), repository_unique_id="1.3.6.1.4.1.21367.2026.1.2")
    stop, passes = threading.Event(), [0]

    def collect_forever() -> None:
        while not stop.is_set():
            collector.collect(path.name for kind, path, _ in collector.store.scan() if kind == "content")
            passes[0] += 1

    client = SoapTestClient(base_url=served.url)
    acknowledged: dict[str, bytes] = {}
    thread = threading.Thread(target=collect_forever)
    thread.start()
    try:
        for n in range(ROUNDS):
            data = os.urandom(2000)
            valid = _sub(f.patient(960 + n), data)
            envelope = _envelope(served.url, valid, data)
            bad = _sub(f.patient(960 + n), data)
            bad.documents[0].patient_id = f.patient(999)
            statuses = _post_together(served.url, [envelope, envelope, _envelope(served.url, bad, data)])
            assert statuses.count(v.ResponseStatus.SUCCESS) == 1, statuses
            acknowledged[valid.documents[0].unique_id] = data
    finally:
        stop.set()
        thread.join(60)
        engine.dispose()
    assert passes[0] > 0
    try:
        assert _check_retrievable(client, acknowledged) == []
    finally:
        client.close()
