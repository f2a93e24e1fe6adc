"""The responding gateway as an eHealth Exchange partner sees it: signed SAML over HTTP,
consent decides what leaves, every call is audited."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from lxml import etree

from tests.corpus import assert_valid
from tests.responding.requester import Requester
from tests.soapkit import SoapTestClient
from xds_node.admin import init_keys
from xds_node.config import load_settings
from xds_node.ebxml import rim, xdsb
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import StoredQuery
from xds_node.patients import hl7v3

SAMPLES = Path(__file__).resolve().parents[2] / "sample_documents"
HL7 = "{urn:hl7-org:v3}"
E = v.ErrorCode
SAML = "urn:oasis:names:tc:SAML:2.0:assertion"


@pytest.fixture(scope="module")
def key_template(tmp_path_factory):
    """Demo keys and partners.toml made once (RSA key generation is the slow part)."""
    d = tmp_path_factory.mktemp("keys")
    init_keys(load_settings(env={}, data_dir=d))
    return d


@pytest.fixture
def gateway(tmp_path, key_template):
    """A node with demo keys, the sample documents, and consent for the first two sample veterans."""
    import shutil

    from xds_node.node import Node

    shutil.copytree(key_template, tmp_path, dirs_exist_ok=True)
    settings = load_settings(env={}, data_dir=tmp_path)
    node = Node(settings)
    node.folder_indexer(SAMPLES).sync()
    patients = sorted({r.patient_id for r in node.registry_store.fetch(
        "doc", [row["entry_uuid"] for row in _folder_rows(node)])})
    node.consent_store.grant(patients[0], source="paper form")
    node.consent_store.grant(patients[1], source="online")
    node.consent_store.revoke(patients[1], source="online")
    client = SoapTestClient(app=node.app())
    requester = Requester.demo_partner(settings.keys_dir)
    yield node, client, requester, patients
    client.close()
    node.close()


def _folder_rows(node) -> list[dict]:
    """Repository rows of the documents indexed from sample_documents/."""
    return node.repository.rows_for_source(next(s for s in node.repository.sources if s.startswith("folder:")))


def find_documents(pid: str) -> etree._Element:
    return rim.write_adhoc_query_request(StoredQuery(query_id=v.StoredQueryId.FIND_DOCUMENTS, slots={
        "$XDSDocumentEntryPatientId": [[f"'{pid}'"]], "$XDSDocumentEntryStatus": [["('Approved')"]]}))


def xcpd_request(node, pid: str) -> etree._Element:
    """PRPA_IN201305UV02 with the demographics we hold for ``pid`` (as a partner would send them)."""
    demo = node.patients.get(pid).demographics
    given = "".join(f"<given>{g}</given>" for g in demo.given[:1])
    return etree.fromstring(f"""<PRPA_IN201305UV02 xmlns="urn:hl7-org:v3" ITSVersion="XML_1.0">
      <id root="1.2.3.4" extension="msg-1"/><creationTime value="20261123100000"/>
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
            <livingSubjectName><value><family>{demo.family}</family>{given}</value>
              <semanticsText>LivingSubject.name</semanticsText></livingSubjectName>
          </parameterList></queryByParameter></controlActProcess></PRPA_IN201305UV02>""")


def query_response_code(reply) -> str:
    return reply.body.find(f".//{HL7}queryAck/{HL7}queryResponseCode").get("code")


# --- XCPD ---------------------------------------------------------------------------------------
def test_xcpd_finds_a_consenting_patient(gateway):
    node, client, req, patients = gateway
    reply = client.call("/xcpd", v.Action.ITI55, xcpd_request(node, patients[0]), headers=[req.header()])
    assert reply.http_status == 200, reply.raw[:800]
    assert query_response_code(reply) == "OK"
    ids = [i.get("extension") for i in reply.body.iter(f"{HL7}id") if i.getparent().tag == f"{HL7}patient"]
    assert patients[0].split("^")[0] in ids


@pytest.mark.parametrize("which", [1, 2], ids=["revoked", "never-granted"])
def test_xcpd_does_not_reveal_patients_without_consent(gateway, which):
    node, client, req, patients = gateway
    reply = client.call("/xcpd", v.Action.ITI55, xcpd_request(node, patients[which]), headers=[req.header()])
    assert query_response_code(reply) == "NF"
    assert not list(reply.body.iter(f"{HL7}patientPerson"))


# --- ITI-38 -------------------------------------------------------------------------------------
def test_cross_gateway_query_returns_home_on_every_object(gateway):
    node, client, req, patients = gateway
    reply = client.call("/xca/query", v.Action.ITI38, find_documents(patients[0]), headers=[req.header()])
    assert reply.status == v.ResponseStatus.SUCCESS, reply.raw[:800]
    docs = reply.objects("ExtrinsicObject")
    assert docs and all(d.get("home") == node.settings.home_community_id for d in docs)
    assert_valid(reply.body)
    assert reply.envelope.find(".//{http://www.w3.org/2005/08/addressing}Action").text == v.Action.ITI38 + "Response"


@pytest.mark.parametrize("which", [1, 2], ids=["revoked", "never-granted"])
def test_cross_gateway_query_withholds_without_consent(gateway, which):
    _node, client, req, patients = gateway
    reply = client.call("/xca/query", v.Action.ITI38, find_documents(patients[which]), headers=[req.header()])
    assert reply.status == v.ResponseStatus.FAILURE
    assert reply.error_codes == [E.UNKNOWN_PATIENT_ID]
    assert reply.objects("ExtrinsicObject") == []
    # indistinguishable from a patient we have never heard of
    unknown = client.call("/xca/query", v.Action.ITI38, find_documents("NOBODY^^^&1.2.3&ISO"), headers=[req.header()])
    assert unknown.error_codes == reply.error_codes


def _get_documents(uid: str, home: str | None) -> etree._Element:
    q = StoredQuery(query_id=v.StoredQueryId.GET_DOCUMENTS, home=home,
                    slots={"$XDSDocumentEntryUniqueId": [[f"('{uid}')"]]})
    return rim.write_adhoc_query_request(q)


def test_query_without_patient_needs_our_home_community(gateway):
    node, client, req, _patients = gateway
    uid = _folder_rows(node)[0]["unique_id"]
    missing = client.call("/xca/query", v.Action.ITI38, _get_documents(uid, None), headers=[req.header()])
    assert missing.error_codes == [E.MISSING_HOME_COMMUNITY_ID]
    other = client.call("/xca/query", v.Action.ITI38, _get_documents(uid, "urn:oid:9.9.9"), headers=[req.header()])
    assert other.error_codes == [E.UNKNOWN_COMMUNITY]
    for r in (missing, other):
        locations = {e.get("location") for e in r.body.iter(f"{{{v.RS}}}RegistryError")}
        assert locations == {node.settings.home_community_id}


# --- ITI-39 -------------------------------------------------------------------------------------
def _docs_of(node, patient):
    blobs = [r.rim for r in node.registry_store.fetch("doc", [row["entry_uuid"] for row in _folder_rows(node)])]
    out = []
    for blob in blobs:
        de = rim.read_document_entry(etree.fromstring(blob))
        if de.patient_id == patient:
            out.append(de.unique_id)
    return out


def _retrieve(uids, node, home="ours"):
    hcid = node.settings.home_community_id if home == "ours" else home
    return xdsb.write_retrieve_request([xdsb.DocumentRequest(node.settings.repository_unique_id, u, hcid)
                                        for u in uids])


def test_cross_gateway_retrieve_consented_and_withheld(gateway):
    node, client, req, patients = gateway
    ok, withheld = _docs_of(node, patients[0])[:2], _docs_of(node, patients[1])[:1]
    reply = client.call("/xca/retrieve", v.Action.ITI39, _retrieve(ok + withheld, node), headers=[req.header()],
                        mtom=True)
    rr = reply.body.find(f"{{{v.RS}}}RegistryResponse")
    assert rr.get("status") == v.ResponseStatus.PARTIAL_SUCCESS
    responses = reply.body.findall(f"{{{v.XDSB}}}DocumentResponse")
    assert sorted(d.findtext(f"{{{v.XDSB}}}DocumentUniqueId") for d in responses) == sorted(ok)
    assert all(d.findtext(f"{{{v.XDSB}}}HomeCommunityId") == node.settings.home_community_id for d in responses)
    assert reply.error_codes == [E.DOCUMENT_UNIQUE_ID_ERROR]


def test_cross_gateway_retrieve_needs_home_community(gateway):
    node, client, req, patients = gateway
    uid = _docs_of(node, patients[0])[0]
    reply = client.call("/xca/retrieve", v.Action.ITI39, _retrieve([uid], node, home=None), headers=[req.header()])
    assert reply.error_codes == [E.MISSING_HOME_COMMUNITY_ID]
    reply = client.call("/xca/retrieve", v.Action.ITI39, _retrieve([uid], node, home="urn:oid:9.9"),
                        headers=[req.header()])
    assert reply.error_codes == [E.UNKNOWN_COMMUNITY]


# --- security over HTTP -------------------------------------------------------------------------
def _attribute_remover(name: str):
    def mutate(a):
        for attr in a.iter(f"{{{SAML}}}Attribute"):
            if attr.get("Name") == name:
                attr.getparent().remove(attr)
    return mutate


def _attribute_doubler(name: str):
    def mutate(a):
        from copy import deepcopy

        for attr in list(a.iter(f"{{{SAML}}}Attribute")):
            if attr.get("Name") == name:
                attr.addnext(deepcopy(attr))
    return mutate


REFUSALS = {
    "no-security-header": dict(header=None),
    "expired": dict(now=datetime.now(UTC) - timedelta(hours=2)),
    "not-yet-valid": dict(now=datetime.now(UTC) + timedelta(hours=2)),
    "unsigned": dict(unsigned=True),
    "missing-subject-id": dict(mutate=_attribute_remover("urn:oasis:names:tc:xspa:1.0:subject:subject-id")),
    "missing-purpose": dict(mutate=_attribute_remover("urn:oasis:names:tc:xspa:1.0:subject:purposeofuse")),
    "second-role": dict(mutate=_attribute_doubler("urn:oasis:names:tc:xacml:2.0:subject:role")),
    "disallowed-purpose": dict(purpose_of_use=("MARKETING", "2.16.840.1.113883.3.18.7.1", "Marketing")),
    "wrong-community": dict(home_community_id="urn:oid:9.9.9.9"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
@pytest.mark.parametrize("path,action", [("/xca/query", v.Action.ITI38), ("/xcpd", v.Action.ITI55)])
def test_refused_requests_get_a_ws_security_fault_and_an_audit_row(gateway, case, path, action):
    node, client, req, patients = gateway
    spec = dict(REFUSALS[case])
    headers = [] if "header" in spec else [req.header(**spec)]
    body = find_documents(patients[0]) if action == v.Action.ITI38 else xcpd_request(node, patients[0])
    reply = client.call(path, action, body, headers=headers)
    assert reply.is_fault and reply.fault_code.endswith("Sender"), reply.raw[:600]
    assert b"wss-wssecurity-secext" in reply.raw  # the WS-Security subcode namespace
    assert b"Traceback" not in reply.raw and b".py" not in reply.raw
    denied = node.audit.list(outcome="denied")
    assert denied and denied[0].reason


def test_tampered_and_replayed_messages_are_refused(gateway):
    _node, client, req, patients = gateway
    h = req.header()
    first = client.call("/xca/query", v.Action.ITI38, find_documents(patients[0]), headers=[h])
    assert first.status == v.ResponseStatus.SUCCESS
    again = client.call("/xca/query", v.Action.ITI38, find_documents(patients[0]), headers=[h])
    assert again.is_fault  # replayed
    tampered = req.header()
    for value in tampered.iter(f"{{{SAML}}}AttributeValue"):
        if value.text and "Demo Partner Hospital" in value.text:
            value.text = "Someone Else"
    reply = client.call("/xca/query", v.Action.ITI38, find_documents(patients[0]), headers=[tampered])
    assert reply.is_fault


def test_signed_by_an_unknown_key_is_refused(gateway, tmp_path):
    _node, client, req, patients = gateway
    from xds_node.security.keys import generate_demo_keys, load_key_and_cert

    key, cert = load_key_and_cert(*generate_demo_keys(tmp_path / "stranger", common_name="stranger"))
    stranger = Requester(key, cert, req.ctx)
    reply = client.call("/xca/query", v.Action.ITI38, find_documents(patients[0]), headers=[stranger.header()])
    assert reply.is_fault and b"FailedAuthentication" in reply.raw


# --- audit --------------------------------------------------------------------------------------
def test_every_disclosure_is_audited_with_the_requester(gateway):
    node, client, req, patients = gateway
    client.call("/xca/query", v.Action.ITI38, find_documents(patients[0]), headers=[req.header()])
    client.call("/xca/query", v.Action.ITI38, find_documents(patients[1]), headers=[req.header()])
    uid = _docs_of(node, patients[0])[0]
    client.call("/xca/retrieve", v.Action.ITI39, _retrieve([uid], node), headers=[req.header()])
    events = node.audit.list()
    by_tx = {(e.transaction, e.patient_id): e for e in events}
    q = by_tx[("ITI-38", patients[0])]
    assert q.outcome == "success" and q.user_subject_id == "Dr. Demo Clinician"
    assert q.purpose_of_use == "TREATMENT" and q.partner_community.endswith("1.3.6.1.4.1.21367.2026.2.1")
    assert q.document_ids
    assert by_tx[("ITI-38", patients[1])].outcome == "failure"
    r = by_tx[("ITI-39", patients[0])]
    assert r.document_ids == [uid]
    accounting = node.audit.accounting_of_disclosures(patients[0])
    assert {row["transaction"] for row in accounting} >= {"ITI-38", "ITI-39"}
    assert node.audit.accounting_of_disclosures(patients[1]) == []


def test_xcpd_parsing_roundtrip_of_our_request(gateway):
    node, _client, _req, patients = gateway
    q = hl7v3.parse_prpa_in201305(xcpd_request(node, patients[0]))
    assert q.demographics.family
