"""Issue 9, finding 8: the XCPD patient index is not writable by documents.

Over HTTP against a real ``xds-node serve``: a C-CDA provided with ITI-41 whose recordTarget names
a veteran as "Mallory Intruder" must leave ITI-55 (signed SAML) answering OK for the real veteran
and NF for Mallory, and ``xds-node patients show`` (a separate process) must list the discrepancy.
An operator's ``patients add`` is how a real correction is made: a new version, and matching uses
it from the next request on. SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from lxml import etree

from tests.conftest import BACKENDS, ROOT, LiveNode, _database_url
from tests.repository.test_provide_and_retrieve import provide
from tests.responding.requester import Requester
from tests.soapkit import SoapTestClient
from xds_node.admin import init_keys
from xds_node.cda import extract_metadata
from xds_node.config import load_settings
from xds_node.ebxml import vocabulary as v
from xds_node.patients.index import demographics_from_cda
from xds_node.patients.model import Demographics, cx
from xds_node.repository.ingest import submission_for

pytestmark = pytest.mark.server

SAMPLES = Path(__file__).resolve().parents[2] / "sample_documents"
VET_ROOT = "1.3.6.1.4.1.21367.2026.1.9"
SOURCE_ID = "1.3.6.1.4.1.21367.2026.1.77"
H = "{urn:hl7-org:v3}"


class World:
    """One live node with the sample documents, consent for every sample veteran, demo keys."""

    def __init__(self, data_dir: Path, db_url: str):
        self.data_dir, self.db_url = data_dir, db_url
        self.env = {"XDS_DATA_DIR": str(data_dir), "XDS_DATABASE_URL": db_url}
        self.live: LiveNode | None = None
        self.client: SoapTestClient | None = None
        self.requester = Requester.demo_partner(data_dir / "keys")

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "xds_node.cli", "patients", *args], cwd=ROOT,
                              env={**os.environ, **self.env}, capture_output=True, text=True, timeout=120)

    def show(self, pid: str) -> dict:
        done = self.cli("show", pid, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def provide_cda(self, data: bytes) -> str:
        """ITI-41 of one C-CDA as our EHR sends it (a pinned internal client signing its own SAML:
        only such documents feed the patient index); returns the document's uniqueId."""
        from xds_node.config import DEMO_HOME_COMMUNITY_ID

        entry = extract_metadata(data, source_name="upload.xml")
        entry.id = f"Document-{uuid.uuid4().hex}"  # also seeds the submission set's uniqueId
        sub = submission_for(entry, source_id=SOURCE_ID)
        reply = provide(self.client, sub, {entry.id: data},
                        headers=[self.ehr.header(home_community_id=DEMO_HOME_COMMUNITY_ID)])
        assert reply.http_status == 200 and reply.body.get("status") == v.ResponseStatus.SUCCESS, reply.raw[-1500:]
        return entry.unique_id

    def xcpd(self, demo: Demographics) -> tuple[str, list[str]]:
        """ITI-55 as a partner sends it: (queryResponseCode, patient ids of the subjects)."""
        reply = self.client.call("/xcpd", v.Action.ITI55, xcpd_request(demo), headers=[self.requester.header()])
        assert reply.http_status == 200 and not reply.is_fault, reply.raw[-1500:]
        code = reply.body.find(f".//{H}queryAck/{H}queryResponseCode").get("code")
        ids = [i.get("extension") for i in reply.body.iter(f"{H}id") if i.getparent().tag == f"{H}patient"]
        return code, ids


def xcpd_request(demo: Demographics) -> etree._Element:
    req = etree.fromstring(f"""<PRPA_IN201305UV02 xmlns="urn:hl7-org:v3" ITSVersion="XML_1.0">
      <id root="1.2.3.4" extension="msg-{uuid.uuid4()}"/><creationTime value="20261123100000"/>
      <interactionId root="2.16.840.1.113883.1.6" extension="PRPA_IN201305UV02"/>
      <processingCode code="P"/><processingModeCode code="T"/><acceptAckCode code="AL"/>
      <receiver typeCode="RCV"><device classCode="DEV" determinerCode="INSTANCE"><id root="1.2.3.99"/></device>
      </receiver>
      <sender typeCode="SND"><device classCode="DEV" determinerCode="INSTANCE"><id root="1.3.6.1.4.1.21367.2026.2"/>
      </device></sender>
      <controlActProcess classCode="CACT" moodCode="EVN">
        <code code="PRPA_TE201305UV02" codeSystem="2.16.840.1.113883.1.6"/>
        <queryByParameter><queryId root="1.2.3.4" extension="q-1"/><statusCode code="new"/>
          <responseModalityCode code="R"/><responsePriorityCode code="I"/>
          <parameterList>
            <livingSubjectAdministrativeGender><value code="{demo.gender}"/>
              <semanticsText>LivingSubject.administrativeGender</semanticsText></livingSubjectAdministrativeGender>
            <livingSubjectBirthTime><value value="{demo.birth_date}"/>
              <semanticsText>LivingSubject.birthTime</semanticsText></livingSubjectBirthTime>
            <livingSubjectName><value><family/><given/></value>
              <semanticsText>LivingSubject.name</semanticsText></livingSubjectName>
          </parameterList></queryByParameter></controlActProcess></PRPA_IN201305UV02>""")
    name = req.find(f".//{H}livingSubjectName/{H}value")
    name.find(f"{H}family").text = demo.family
    name.find(f"{H}given").text = demo.given[0]
    return req


def sample(vet: str) -> bytes:
    """The first sample C-CDA of veteran ``vet`` (e.g. VET0002)."""
    for path in sorted(SAMPLES.rglob("*.xml")):
        if f'extension="{vet}"' in path.read_text(encoding="utf-8"):
            return path.read_bytes()
    raise LookupError(vet)


def rewritten(data: bytes, *, given: list[str] | None = None, family: str | None = None,
              gender: str | None = None, birth: str | None = None) -> bytes:
    """``data`` as a new document (fresh id) whose recordTarget states other demographics."""
    root = etree.fromstring(data)
    root.find(f"{H}id").set("extension", f"UPLOAD-{uuid.uuid4().hex[:12]}")
    person = root.find(f"{H}recordTarget/{H}patientRole/{H}patient")
    name = person.find(f"{H}name")
    if given is not None:
        for g in name.findall(f"{H}given"):
            name.remove(g)
        for i, g in enumerate(given):
            el = etree.Element(f"{H}given")
            el.text = g
            name.insert(i, el)
    if family is not None:
        name.find(f"{H}family").text = family
    if gender is not None:
        person.find(f"{H}administrativeGenderCode").set("code", gender)
    if birth is not None:
        person.find(f"{H}birthTime").set("value", birth)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


@pytest.fixture(scope="module", params=BACKENDS)
def world(request, tmp_path_factory):
    from xds_node.node import Node

    data_dir = tmp_path_factory.mktemp(f"trust-{request.param}")
    db_url = _database_url(request.param, data_dir)
    settings = load_settings(env={}, data_dir=data_dir, database_url=db_url)
    init_keys(settings)
    from tests.responding.test_trust_boundary import InternalClient, pin_client
    from xds_node.security.keys import generate_demo_keys, load_key_and_cert

    key_path, cert_path = generate_demo_keys(tmp_path_factory.mktemp("ehr"), common_name="Boston EHR")
    ehr = InternalClient("boston-ehr", *load_key_and_cert(key_path, cert_path), cert_path, key_path)
    pin_client(settings, ehr)
    node = Node(settings)
    try:
        report = node.folder_indexer(SAMPLES).sync()
        assert not report.rejected, report.rejected
        for n in range(1, 5):
            node.consent_store.grant(cx(f"VET000{n}", VET_ROOT), source="test")
    finally:
        node.close()
    w = World(data_dir, db_url)
    w.ehr = ehr
    w.live = LiveNode(data_dir, extra_env=w.env)
    w.client = SoapTestClient(base_url=w.live.url)
    yield w
    w.client.close()
    w.live.stop()
    if request.param == "sqlite":
        shutil.rmtree(data_dir, ignore_errors=True)


def test_a_document_naming_mallory_does_not_rewrite_the_veteran(world):
    pid = cx("VET0002", VET_ROOT)
    original = sample("VET0002")
    _, real = demographics_from_cda(original)
    assert world.xcpd(real) == ("OK", ["VET0002"])

    mallory = Demographics(given=["Mallory"], family="Intruder", gender="F" if real.gender == "M" else "M",
                           birth_date="19900101")
    uid = world.provide_cda(rewritten(original, given=mallory.given, family=mallory.family,
                                      gender=mallory.gender, birth=mallory.birth_date))

    assert world.xcpd(real) == ("OK", ["VET0002"])  # the veteran is still found ...
    assert world.xcpd(mallory) == ("NF", [])  # ... and Mallory is nobody

    report = world.show(pid)
    assert report["current"]["demographics"]["family"] == real.family
    found = {d["field"]: d for d in report["discrepancies"] if d["document_unique_id"] == uid}
    assert set(found) == {"family", "given", "gender", "birth_date"}
    assert (found["family"]["indexed_value"], found["family"]["document_value"]) == (real.family, "Intruder")
    assert found["birth_date"]["document_value"] == "19900101"
    assert found["family"]["entry_uuid"].startswith("urn:uuid:") and found["family"]["recorded"]
    assert all(ver["demographics"]["family"] == real.family for ver in report["versions"])

    text = world.cli("show", pid)
    assert text.returncode == 0, text.stderr
    assert "Intruder" in text.stdout and uid in text.stdout and "discrepancies (" in text.stdout
    listed = world.cli("discrepancies")  # what an operator reviews without knowing the patient id
    assert listed.returncode == 0, listed.stderr
    assert any(pid in line and "Intruder" in line and uid in line for line in listed.stdout.splitlines())


def test_show_escapes_what_a_document_smuggles_in(world):
    pid = cx("VET0004", VET_ROOT)
    original = sample("VET0004")
    _, real = demographics_from_cda(original)
    # U+009B is a one-byte CSI (terminal escape) and U+202E reverses the text after it; both are legal XML
    uid = world.provide_cda(rewritten(original, family="Intruder\u009b2Jforged\u202eesrever"))
    out = world.cli("show", pid)
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if uid in x)
    assert "Intruder\\x9b2Jforged\\u202eesrever" in line
    assert "\u009b" not in out.stdout and "\u202e" not in out.stdout
    assert world.xcpd(real) == ("OK", ["VET0004"])


def test_operator_correction_is_a_new_version_and_matching_uses_it(world):
    pid = cx("VET0003", VET_ROOT)
    original = sample("VET0003")
    _, real = demographics_from_cda(original)
    assert world.xcpd(real) == ("OK", ["VET0003"])
    loaded = world.show(pid)["versions"]  # the sample documents: created, then completed (addresses)
    assert loaded[-1]["version"] == 1 and {ver["source"] for ver in loaded} == {"cda"}
    n = len(loaded)

    done = world.cli("add", pid, "--family", "Rivera", "--by", "records office")
    assert done.returncode == 0, done.stderr
    assert "updated" in done.stdout and f"version {n + 1}" in done.stdout
    corrected = Demographics(given=real.given, family="Rivera", gender=real.gender, birth_date=real.birth_date)
    assert world.xcpd(corrected) == ("OK", ["VET0003"])
    assert world.xcpd(real) == ("NF", [])

    # the EHR keeps sending the old name: recorded, not applied
    uid = world.provide_cda(rewritten(original))
    assert world.xcpd(corrected) == ("OK", ["VET0003"])
    assert world.xcpd(real) == ("NF", [])

    report = world.show(pid)
    newest, first = report["versions"][0], report["versions"][-1]
    assert (newest["version"], newest["source"], newest["actor"]) == (n + 1, "cli", "records office")
    assert newest["demographics"]["family"] == "Rivera" and newest["demographics"]["given"] == real.given
    assert newest["demographics"]["birth_date"] == real.birth_date  # fields not named carry over
    assert newest["demographics"]["addresses"] == loaded[0]["demographics"]["addresses"]
    assert (first["version"], first["source"], first["demographics"]["family"]) == (1, "cda", real.family)
    assert first["actor"].startswith("document ")
    assert report["current"]["version"] == n + 1 and len(report["versions"]) == n + 1
    (d,) = [d for d in report["discrepancies"] if d["document_unique_id"] == uid]
    assert (d["field"], d["indexed_value"], d["document_value"]) == ("family", "Rivera", real.family)

    # a second correction: one more version, and the match follows it
    done = world.cli("add", pid, "--birth-date", "19700101", "--by", "records office")
    assert done.returncode == 0 and f"version {n + 2}" in done.stdout, done.stdout + done.stderr
    moved = Demographics(given=real.given, family="Rivera", gender=real.gender, birth_date="19700101")
    assert world.xcpd(moved) == ("OK", ["VET0003"])
    assert world.xcpd(corrected) == ("NF", [])
    assert [ver["version"] for ver in world.show(pid)["versions"]] == list(range(n + 2, 0, -1))


def test_a_document_may_create_a_patient_the_index_does_not_know(world):
    newcomer = Demographics(given=["Robin"], family="Newcomer", gender="F", birth_date="19880808")
    data = sample("VET0001").replace(b'extension="VET0001"', b'extension="VET0099"')
    uid = world.provide_cda(rewritten(data, given=newcomer.given, family=newcomer.family, gender=newcomer.gender,
                                      birth=newcomer.birth_date))
    report = world.show(cx("VET0099", VET_ROOT))
    (first,) = report["versions"]
    # the source names the internal client whose document created the patient
    assert (first["version"], first["source"], first["actor"]) == (1, "cda:boston-ehr", f"document {uid}")
    assert first["demographics"]["family"] == "Newcomer" and report["discrepancies"] == []
