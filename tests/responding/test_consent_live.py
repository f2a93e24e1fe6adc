"""Consent is always current on every worker: `xds-node serve --workers 2` on 127.0.0.1, a partner
sending signed SAML over HTTP, and `xds-node consent ...` run in another process. The very next
ITI-38, ITI-39 and ITI-55 after a revocation withhold the patient, whichever worker answers; a
re-opt-in discloses again; a grant scheduled before a revocation never takes effect.
On SQLite and PostgreSQL (the database is what the processes share)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from lxml import etree

from tests.conftest import ROOT, LiveNode
from tests.responding.requester import Requester
from tests.responding.test_responding_gateway import (
    _docs_of,
    _retrieve,
    find_documents,
    query_response_code,
    xcpd_request,
)
from tests.soapkit import Reply, _parse
from xds_node.admin import init_keys
from xds_node.config import load_settings
from xds_node.ebxml import vocabulary as v
from xds_node.soap.envelope import build_request

pytestmark = pytest.mark.server

SAMPLES = ROOT / "sample_documents"
E = v.ErrorCode
HL7 = "{urn:hl7-org:v3}"
ROUNDS = 8  # each round is three requests on fresh connections, sent concurrently: both workers answer


@pytest.fixture(scope="module")
def key_template(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    init_keys(load_settings(env={}, data_dir=d))
    return d


class Partner:
    """A partner talking to a live node: a fresh TCP connection and a fresh signed assertion per request."""

    def __init__(self, url: str, keys_dir: Path, bodies: dict[str, dict[str, bytes]]):
        self.url = url
        self.requester = Requester.demo_partner(keys_dir)
        self.bodies = bodies  # patient -> transaction -> request body

    def call(self, path: str, action: str, body: bytes, *, mtom: bool = False) -> Reply:
        payload, ct, _ = build_request(action, body, to=self.url + path, headers=[self.requester.header()],
                                       mtom=mtom)
        if not isinstance(payload, bytes):
            payload = b"".join(payload)
        with httpx.Client(timeout=60) as client:  # one connection per request
            reply = _parse(client.post(self.url + path, content=payload, headers={"Content-Type": ct}))
        assert reply.http_status == 200 and not reply.is_fault, reply.raw[:600]
        return reply

    def disclosed(self, pid: str, transaction: str) -> bool:
        """Whether one request of ``transaction`` about ``pid`` disclosed anything (and, if not,
        whether it was answered exactly as for an unknown patient)."""
        body = self.bodies[pid][transaction]
        if transaction == "ITI-38":
            reply = self.call("/xca/query", v.Action.ITI38, body)
            if reply.objects("ExtrinsicObject"):
                return True
            assert reply.error_codes == [E.UNKNOWN_PATIENT_ID]
            return False
        if transaction == "ITI-39":
            reply = self.call("/xca/retrieve", v.Action.ITI39, body, mtom=True)
            if reply.body.findall(f"{{{v.XDSB}}}DocumentResponse"):
                return True
            assert set(reply.error_codes) == {E.DOCUMENT_UNIQUE_ID_ERROR}
            return False
        reply = self.call("/xcpd", v.Action.ITI55, body)
        if query_response_code(reply) == "OK":
            return True
        assert query_response_code(reply) == "NF" and not list(reply.body.iter(f"{HL7}patientPerson"))
        return False

    def answers(self, pid: str, rounds: int = ROUNDS) -> dict[str, set[bool]]:
        """Send ``rounds`` x (ITI-38, ITI-39, ITI-55) concurrently; what each transaction disclosed."""
        jobs = [t for _ in range(rounds) for t in ("ITI-38", "ITI-39", "ITI-55")]
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda t: (t, self.disclosed(pid, t)), jobs))
        out: dict[str, set[bool]] = {}
        for t, disclosed in results:
            out.setdefault(t, set()).add(disclosed)
        return out


ALL = {"ITI-38": {True}, "ITI-39": {True}, "ITI-55": {True}}
NONE = {"ITI-38": {False}, "ITI-39": {False}, "ITI-55": {False}}


@pytest.fixture
def live(tmp_path, backend, key_template):
    """A two-worker node over the sample veterans; the first has opted in, the second has nothing."""
    from tests.conftest import _database_url
    from xds_node.node import Node

    data = tmp_path / "node"
    shutil.copytree(key_template, data)
    url = _database_url(backend, tmp_path)
    env = {"XDS_DATABASE_URL": url}  # the server, its workers and the CLI all use this database
    settings = load_settings(env={}, data_dir=data, database_url=url)
    node = Node(settings)
    try:
        report = node.folder_indexer(SAMPLES).sync()
        assert not report.rejected, report.rejected
        patients = sorted({d.patient_id for d in _all_docs(node)})
        assert all(node.patients.get(p) is not None for p in patients[:2])  # XCPD can find them
        node.consent_store.grant(patients[0], source="paper form")
        bodies = {pid: {"ITI-38": etree.tostring(find_documents(pid)),
                        "ITI-39": etree.tostring(_retrieve(_docs_of(node, pid)[:1], node)),
                        "ITI-55": etree.tostring(xcpd_request(node, pid))} for pid in patients[:2]}
    finally:
        node.close()
    server = LiveNode(data, extra_env=env, args=["--workers", "2"])
    try:
        yield Partner(server.url, data / "keys", bodies), patients, data, env
    finally:
        server.stop()


def _all_docs(node):
    from xds_node.ebxml import rim

    uuids = [row["entry_uuid"] for row in node.repository.rows_for_source(
        next(s for s in node.repository.sources if s.startswith("folder:")))]
    return [rim.read_document_entry(etree.fromstring(r.rim)) for r in node.registry_store.fetch("doc", uuids)]


def consent_cli(data: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """`xds-node consent ...` in its own process, as an operator would run it next to the server."""
    return subprocess.run([sys.executable, "-m", "xds_node.cli", "consent", *args, "--data-dir", str(data)],
                          cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


def test_revocation_by_another_process_holds_for_the_next_request_on_every_worker(live):
    partner, patients, data, env = live
    pid = patients[0]
    assert partner.answers(pid) == ALL  # every worker has decided "granted" (and would have cached it)
    # partners keep asking while the operator revokes in another process; every request that
    # starts after the command has returned must withhold the patient, on whichever worker
    log: list[tuple[float, str, bool]] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            for t in ("ITI-38", "ITI-39", "ITI-55"):
                started = time.monotonic()
                log.append((started, t, partner.disclosed(pid, t)))

    with ThreadPoolExecutor(4) as pool:
        senders = [pool.submit(traffic) for _ in range(4)]
        try:
            done = consent_cli(data, env, "revoke", pid, "--source", "online", "--note", "patient called")
            revoked = time.monotonic()
            while sum(s > revoked for s, _, _ in log) < 3 * ROUNDS and not any(f.done() for f in senders):
                time.sleep(0.05)
        finally:
            stop.set()
        for f in senders:
            f.result()
    assert done.returncode == 0, done.stderr
    assert any(d for s, _, d in log if s < revoked)  # the revocation happened under live traffic
    leaked = [(round(s - revoked, 3), t) for s, t, d in log if s > revoked and d]
    assert not leaked, f"disclosed after the revocation: {leaked}"
    assert partner.answers(pid) == NONE
    # opting in again (a new grant, recorded after the revocation) discloses again, at once
    done = consent_cli(data, env, "grant", pid, "--source", "paper form")
    assert done.returncode == 0, done.stderr
    assert partner.answers(pid, rounds=4) == ALL


def test_a_revocation_ends_a_grant_scheduled_to_start_later(live):
    partner, patients, data, env = live
    pid = patients[1]
    from xds_node.db import make_engine
    from xds_node.security.consent import ConsentStore

    engine = make_engine(env["XDS_DATABASE_URL"])
    try:
        store = ConsentStore(engine)  # another process's writes, as far as the server can tell
        start = datetime.now(UTC) + timedelta(seconds=2)
        store.grant(pid, source="online", effective_from=start)
        store.revoke(pid, source="online")
    finally:
        engine.dispose()
    while datetime.now(UTC) <= start + timedelta(seconds=0.5):  # let the grant's start pass
        time.sleep(0.1)
    assert partner.answers(pid, rounds=4) == NONE
    show = consent_cli(data, env, "show", pid)
    assert show.returncode == 0 and show.stdout.startswith(f"{pid}: revoked"), show.stdout
