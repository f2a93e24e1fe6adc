"""XCPD (ITI-55): every corpus request parsed, answers checked against the NIST 15500 test plans
and validated against the HL7 V3 PRPA_IN201306UV02 schema, errors as AE, consent, and the handler
over SOAP in process."""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
from pathlib import Path

import pytest
from lxml import etree

from tests.soapkit import SoapTestClient
from xds_node.config import Settings
from xds_node.db import make_engine, metadata
from xds_node.patients.hl7v3 import HL7, II, XcpdQuery, XcpdRequestError, build_prpa_in201306, parse_prpa_in201305
from xds_node.patients.index import PatientIndex
from xds_node.patients.model import Address, Demographics, Patient, PatientId, cx
from xds_node.soap.app import Endpoint, SoapApp
from xds_node.soap.envelope import WSA, parse_xml
from xds_node.transactions.iti55 import ACTION, RESPONSE_ACTION, make_handler, respond

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
MSG = CORPUS / "03-messages"
IPF = MSG / "ipf"
NIST_15500 = MSG / "nist-testkit" / "tests" / "15500"
NIST_XCPD = MSG / "nist-testkit" / "xcpd"
BASIC_XCPD = MSG / "nist-testkit" / "examples" / "BasicXcpd" / "305" / "testplan.xml"
SCHEMA = CORPUS / "01-schemas" / "hl7v3-ipf" / "HL7V3" / "NE2008" / "multicacheschemas" / "PRPA_IN201306UV02.xsd"

requires_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus not present")

HOME = "urn:oid:1.3.6.1.4.1.21367.2026.1.1"
DEVICE = "1.3.6.1.4.1.21367.2026.1.55"
NIST_ROOT = "1.2.3.4.5.1000"
NS = {"v3": HL7}

#: Values for the NIST placeholders; the patient matches the 15500 readme ("Chip Moore").
PLACEHOLDERS = {
    "$gender$": "M", "$gender_id$": "M", "$dob$": "19849711", "$dob_id$": "19849711",
    "$first_Name$": "Chip", "$firstName_id$": "Chip", "$last_Name$": "Moore", "$lastName_id$": "Moore",
    "$homeCity_id$": "Montreal", "$homeZip_id$": "H2X 1Y4", "$homeCountry_id$": "CA", "$ssn_id$": "TXT",
}


@functools.cache
def _schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(SCHEMA)))


def assert_valid(el: etree._Element) -> None:
    doc = etree.fromstring(etree.tostring(el))
    schema = _schema()
    if not schema.validate(doc):
        raise AssertionError("\n".join(f"line {e.line}: {e.message}" for e in schema.error_log))


def load(path: Path, substitute: bool = False) -> etree._Element:
    data = path.read_bytes()
    if substitute:
        text = data.decode("utf-8")
        for k, v in PLACEHOLDERS.items():
            text = text.replace(k, v)
        text = re.sub(r"\$[A-Za-z_]+\$", "X", text)  # the optional parameters we do not care about
        data = text.encode("utf-8")
    root = parse_xml(data)
    if root.tag == "TestPlan":  # request embedded in a NIST test plan
        root = copy.deepcopy(root.find(f".//{{{HL7}}}PRPA_IN201305UV02"))
    return root


def corpus_requests() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    return [
        IPF / "iti55-sample-request.xml",
        NIST_15500 / "test1_findpatient_dob_gender_name.xml",
        NIST_15500 / "test2_findpatient_gender_name_failure.xml",
        NIST_15500 / "test3_findpatient_dob_gender_name_failure.xml",
        NIST_15500 / "findpatient_dob_gender_name" / "test1_findpatient_dob_gender_name.xml",
        NIST_15500 / "findpatient_dob_gender_name_failure" / "test3_findpatient_dob_gender_name_failure.xml",
        NIST_XCPD / "FindPatient" / "XCA" / "findpatient.xml",
        NIST_XCPD / "FindPatient" / "testplan.xml",
        BASIC_XCPD,
    ]


@pytest.fixture
def index(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/p.db")
    metadata.create_all(engine)
    yield PatientIndex(engine)
    engine.dispose()


CHIP = Patient(cx("100", NIST_ROOT), Demographics(
    given=["Chip"], family="Moore", gender="M", birth_date="19849711",
    addresses=[Address([], "Montreal", None, None, None)], ids=[PatientId("801", NIST_ROOT)]), source="nist")


def run(index: PatientIndex, body: etree._Element, **kw):
    el, outcome = respond(index, body, home_community_id=HOME, device_oid=DEVICE, **kw)
    assert_valid(el)
    return el, outcome


def code(el: etree._Element, path: str) -> str | None:
    found = el.find(path, NS)
    return None if found is None else found.get("code")


def subjects(el: etree._Element) -> list[etree._Element]:
    return el.findall("v3:controlActProcess/v3:subject", NS)


def issue_codes(el: etree._Element) -> list[str]:
    return [c.get("code") for c in el.findall(
        "v3:controlActProcess/v3:reasonOf/v3:detectedIssueEvent/v3:mitigatedBy/v3:detectedIssueManagement/v3:code",
        NS)]


# --- parsing --------------------------------------------------------------------------------------


@requires_corpus
def test_schema_loads_and_accepts_the_corpus_responses():
    for sample in (IPF / "iti55-sample-response.xml", NIST_XCPD / "FindPatientResponse" / "FindPatientResponse.xml"):
        assert_valid(etree.parse(str(sample)).getroot())


@requires_corpus
@pytest.mark.parametrize("path", corpus_requests(), ids=lambda p: p.parent.name + "/" + p.name)
def test_every_corpus_request_parses(path):
    q = parse_prpa_in201305(load(path, substitute=True))
    assert q.message_id is not None and q.query_id is not None
    assert q.sender_oid and q.query_by_parameter is not None
    assert q.demographics.family and q.demographics.given
    assert q.demographics.gender in ("M", "F")


@requires_corpus
def test_ipf_sample_request_details():
    q = parse_prpa_in201305(load(IPF / "iti55-sample-request.xml"))
    assert q.message_id == II("1.2.840.114350.1.13.0.1.7.1.1", "35423")
    assert q.query_id == II("1.2.840.114350.1.13.28.1.18.5.999", "18204")
    assert q.sender_oid == "1.2.840.114350.1.13.999.567" and q.receiver_oid == "1.2.840.114350.1.13.999.234"
    assert q.sender_home_community_id == "1.2.3.928.955"
    assert q.living_subject_ids == [PatientId("1234", "1.2.840.114350.1.13.99997.2.3412"),
                                    PatientId("58910", "2.16.840.1.113883.4.1")]
    assert q.initiator_patient_id == PatientId("1234", "1.2.840.114350.1.13.99997.2.3412")
    d = q.demographics
    assert (d.given, d.family, d.gender, d.birth_date) == (["Jimmy"], "Jones", "M", "19630805")
    assert q.minimum_degree_match == 100 and q.response_priority == "I"


@requires_corpus
def test_nist_xcpd_request_with_all_parameters():
    q = parse_prpa_in201305(load(NIST_XCPD / "FindPatient" / "XCA" / "findpatient.xml", substitute=True))
    d = q.demographics
    assert d.addresses[0].city == "Montreal" and d.addresses[0].postal_code == "H2X 1Y4"
    assert PatientId("801", NIST_ROOT) in d.ids and q.initiator_patient_id == PatientId("801", NIST_ROOT)


@requires_corpus
def test_deferred_mode_is_refused_with_an_ae():
    with pytest.raises(XcpdRequestError) as exc:
        parse_prpa_in201305(load(IPF / "iti55-sample-request-deferred.xml"))
    assert exc.value.detail_code == "NS250" and exc.value.query.message_id is not None


@requires_corpus
def test_deferred_mode_answer_is_a_valid_ae(index):
    el, outcome = run(index, load(IPF / "iti55-sample-request-deferred.xml"))
    assert outcome.ack_code == "AE" and outcome.query_response_code == "AE"
    assert code(el, "v3:acknowledgement/v3:acknowledgementDetail/v3:code") == "NS250"
    assert el.find("v3:controlActProcess/v3:queryByParameter", NS) is not None


# --- NIST 15500 -------------------------------------------------------------------------------


@requires_corpus
def test_nist_15500_test1_finds_the_patient(index):
    index.add(CHIP)
    el, outcome = run(index, load(NIST_15500 / "test1_findpatient_dob_gender_name.xml"))
    assert code(el, "v3:acknowledgement/v3:typeCode") == "AA"
    assert code(el, "v3:controlActProcess/v3:queryAck/v3:queryResponseCode") == "OK"
    (subject,) = subjects(el)
    pid = subject.find("v3:registrationEvent/v3:subject1/v3:patient/v3:id", NS)
    assert (pid.get("root"), pid.get("extension")) == (NIST_ROOT, "100")
    person = subject.find("v3:registrationEvent/v3:subject1/v3:patient/v3:patientPerson", NS)
    assert person.findtext("v3:name/v3:family", namespaces=NS) == "Moore"
    assert code(person, "v3:administrativeGenderCode") == "M"
    assert person.find("v3:birthTime", NS).get("value") == "19849711"
    custodian = subject.find("v3:registrationEvent/v3:custodian/v3:assignedEntity/v3:id", NS)
    assert custodian.get("root") == HOME.removeprefix("urn:oid:")
    # queryAck echoes the queryId, the acknowledgement names the request, the query is echoed
    assert el.find("v3:controlActProcess/v3:queryAck/v3:queryId", NS).get("extension") == "3809840989"
    assert el.find("v3:acknowledgement/v3:targetMessage/v3:id", NS).get("extension") == "35423"
    assert el.find("v3:controlActProcess/v3:queryByParameter/v3:parameterList", NS) is not None
    assert el.find("v3:receiver/v3:device/v3:id", NS).get("root") == "1.2.840.114350.1.13.99998.8735"
    assert el.find("v3:interactionId", NS).get("extension") == "PRPA_IN201306UV02"
    assert code(el, "v3:processingCode") == "P" and code(el, "v3:acceptAckCode") == "NE"
    assert outcome.query_response_code == "OK" and outcome.patient_id == CHIP.patient_id


@requires_corpus
def test_nist_15500_test2_without_birth_date_is_not_found(index):
    index.add(CHIP)
    el, outcome = run(index, load(NIST_15500 / "test2_findpatient_gender_name_failure.xml"))
    assert code(el, "v3:acknowledgement/v3:typeCode") == "AA"
    assert code(el, "v3:controlActProcess/v3:queryAck/v3:queryResponseCode") == "NF"
    assert subjects(el) == [] and issue_codes(el) == ["LivingSubjectBirthTimeRequested"]
    # even a responder that does not insist on a birth date cannot match name + gender alone
    el, outcome = run(index, load(NIST_15500 / "test2_findpatient_gender_name_failure.xml"),
                      require_birth_date=False)
    assert outcome.query_response_code == "NF" and issue_codes(el) == []


@requires_corpus
def test_nist_15500_test3_wrong_gender_is_not_found(index):
    index.add(CHIP)
    el, outcome = run(index, load(NIST_15500 / "test3_findpatient_dob_gender_name_failure.xml"))
    assert code(el, "v3:controlActProcess/v3:queryAck/v3:queryResponseCode") == "NF"
    assert subjects(el) == [] and outcome.patient_id is None


@requires_corpus
@pytest.mark.parametrize("path", [NIST_XCPD / "FindPatient" / "XCA" / "findpatient.xml",
                                  NIST_XCPD / "FindPatient" / "testplan.xml", BASIC_XCPD])
def test_nist_xcpd_find_patient_succeeds(index, path):
    if path == BASIC_XCPD:  # 305 describes patient 801 with its own fixed birth date
        index.add(Patient(CHIP.patient_id, dataclasses.replace(CHIP.demographics, birth_date="19570423"), "nist"))
    else:
        index.add(CHIP)
    el, outcome = run(index, load(path, substitute=True))
    assert outcome.query_response_code == "OK" and len(subjects(el)) == 1


# --- IPF sample, correlation, ambiguity, consent -----------------------------------------------


JIMMY = Patient(cx("J-1", "1.3.6.1.4.1.21367.2026.1.9"), Demographics(
    given=["Jimmy"], family="Jones", gender="M", birth_date="19630805"), source="test")


@requires_corpus
def test_ipf_sample_matches_and_records_the_correlation(index):
    index.add(JIMMY)
    el, outcome = run(index, load(IPF / "iti55-sample-request.xml"))
    assert outcome.query_response_code == "OK" and outcome.patient_id == JIMMY.patient_id
    assert el.find("v3:receiver/v3:device/v3:asAgent/v3:representedOrganization/v3:id", NS).get("root") \
        == "1.2.3.928.955"
    assert index.local_for("urn:oid:1.2.3.928.955", "1234") == JIMMY.patient_id
    (corr,) = index.correlations_for(JIMMY.patient_id)
    assert corr.remote_root == "1.2.840.114350.1.13.99997.2.3412"


@requires_corpus
def test_ambiguous_answer_is_ae_with_answer_not_available(index):
    index.add(JIMMY)
    index.add(Patient(cx("J-2", "1.3.6.1.4.1.21367.2026.1.9"), copy.deepcopy(JIMMY.demographics)))
    el, outcome = run(index, load(IPF / "iti55-sample-request.xml"))
    assert code(el, "v3:acknowledgement/v3:typeCode") == "AE"
    assert code(el, "v3:controlActProcess/v3:queryAck/v3:queryResponseCode") == "AE"
    assert subjects(el) == []
    event = el.find("v3:controlActProcess/v3:reasonOf/v3:detectedIssueEvent", NS)
    assert event is not None
    codes = issue_codes(el)
    assert codes[0] == "AnswerNotAvailable" and "PatientAddressRequested" in codes
    mgmt = event.find("v3:mitigatedBy/v3:detectedIssueManagement/v3:code", NS)
    assert mgmt.get("codeSystem") == "1.3.6.1.4.1.19376.1.2.27.1"
    assert outcome.patient_id is None and index.correlations_for(JIMMY.patient_id) == []


@requires_corpus
def test_patient_without_consent_is_answered_as_unknown(index):
    index.add(CHIP)
    body = load(NIST_15500 / "test1_findpatient_dob_gender_name.xml")
    el, outcome = run(index, body, consent=lambda pid: pid != CHIP.patient_id)
    assert code(el, "v3:controlActProcess/v3:queryAck/v3:queryResponseCode") == "NF"
    assert subjects(el) == [] and issue_codes(el) == [] and outcome.withheld
    # byte-for-byte the same shape as a truly unknown patient, apart from ids and times
    index.remove(CHIP.patient_id)
    el2, _ = run(index, body)
    strip = ("v3:id", "v3:creationTime")
    for e in (el, el2):
        for path in strip:
            e.remove(e.find(path, NS))
    assert etree.tostring(el) == etree.tostring(el2)


@requires_corpus
def test_ambiguity_among_patients_without_consent_is_not_revealed(index):
    index.add(JIMMY)
    twin = Patient(cx("J-2", "1.3.6.1.4.1.21367.2026.1.9"), copy.deepcopy(JIMMY.demographics))
    index.add(twin)
    el, outcome = run(index, load(IPF / "iti55-sample-request.xml"), consent=lambda pid: False)
    assert outcome.query_response_code == "NF" and issue_codes(el) == []
    el, outcome = run(index, load(IPF / "iti55-sample-request.xml"), consent=lambda pid: pid == twin.patient_id)
    assert outcome.query_response_code == "AE"


# --- malformed requests ---------------------------------------------------------------------------


def _minimal(params: str = "<livingSubjectName><value><given>A</given><family>B</family></value>"
                           "<semanticsText>LivingSubject.name</semanticsText></livingSubjectName>",
             cap: bool = True, qbp: bool = True, plist: bool = True) -> etree._Element:
    inner = f"<parameterList>{params}</parameterList>" if plist else ""
    q = (f'<queryByParameter><queryId root="1.2.3" extension="q1"/><statusCode code="new"/>{inner}'
         "</queryByParameter>") if qbp else ""
    c = (f'<controlActProcess classCode="CACT" moodCode="EVN"><code code="PRPA_TE201305UV02" '
         f'codeSystem="2.16.840.1.113883.1.6"/>{q}</controlActProcess>') if cap else ""
    return etree.fromstring(
        f'<PRPA_IN201305UV02 xmlns="urn:hl7-org:v3" ITSVersion="XML_1.0"><id root="1.2.9.9" extension="m1"/>'
        f'<creationTime value="20240101000000"/><interactionId root="2.16.840.1.113883.1.6" '
        f'extension="PRPA_IN201305UV02"/><processingCode code="P"/><processingModeCode code="T"/>'
        f'<acceptAckCode code="NE"/><receiver typeCode="RCV"><device classCode="DEV" determinerCode="INSTANCE">'
        f'<id root="1.2.8.8"/></device></receiver><sender typeCode="SND"><device classCode="DEV" '
        f'determinerCode="INSTANCE"><id root="1.2.7.7"/></device></sender>{c}</PRPA_IN201305UV02>')


@pytest.mark.parametrize(("body", "response_code", "needle"), [
    (_minimal(cap=False), "AE", "controlActProcess"),
    (_minimal(qbp=False), "AE", "queryByParameter"),
    (_minimal(plist=False), "QE", "parameterList"),
    (_minimal(params=""), "QE", "parameterList"),
    (etree.fromstring('<PRPA_IN201301UV02 xmlns="urn:hl7-org:v3"/>'), "AE", "PRPA_IN201305UV02"),
    (etree.fromstring("<Other/>"), "AE", "PRPA_IN201305UV02"),
])
@requires_corpus
def test_malformed_request_gets_an_ae_acknowledgement(index, body, response_code, needle):
    el, outcome = run(index, body)
    assert code(el, "v3:acknowledgement/v3:typeCode") == "AE"
    assert code(el, "v3:controlActProcess/v3:queryAck/v3:queryResponseCode") == response_code
    text = el.findtext("v3:acknowledgement/v3:acknowledgementDetail/v3:text", namespaces=NS)
    assert needle in text and outcome.error == text
    assert subjects(el) == []


@requires_corpus
def test_corpus_pix_feed_is_not_an_xcpd_query(index):
    el, outcome = run(index, load(IPF / "prpa-invalid.xml"))
    assert outcome.ack_code == "AE" and code(el, "v3:acknowledgement/v3:acknowledgementDetail/v3:code") == "NS200"


def test_build_rejects_match_without_patient():
    with pytest.raises(ValueError):
        build_prpa_in201306(XcpdQuery(), outcome="match", home_community_id=HOME, our_device_oid=DEVICE)


# --- over SOAP ------------------------------------------------------------------------------------


@requires_corpus
def test_handler_over_soap(index):
    index.add(CHIP)
    seen = []
    settings = Settings(home_community_id=HOME)

    async def audit(req, outcome):
        seen.append((req.action, outcome.query_response_code))

    app = SoapApp([Endpoint("/xcpd", {ACTION: make_handler(index, settings, audit=audit)})])
    client = SoapTestClient(app=app)
    try:
        reply = client.call("/xcpd", ACTION, load(NIST_15500 / "test1_findpatient_dob_gender_name.xml"))
        assert reply.http_status == 200 and not reply.is_fault
        assert reply.body.tag == f"{{{HL7}}}PRPA_IN201306UV02"
        assert reply.envelope.findtext(f".//{{{WSA}}}Action") == RESPONSE_ACTION
        assert code(reply.body, "v3:controlActProcess/v3:queryAck/v3:queryResponseCode") == "OK"
        assert_valid(reply.body)

        bad = client.call("/xcpd", ACTION, _minimal(plist=False))
        assert bad.http_status == 200 and not bad.is_fault
        assert code(bad.body, "v3:acknowledgement/v3:typeCode") == "AE"
        assert seen == [(ACTION, "OK"), (ACTION, "QE")]
    finally:
        client.close()
