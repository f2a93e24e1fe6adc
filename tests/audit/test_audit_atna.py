"""DICOM / IHE ATNA AuditMessage rendering for the gateway transactions (ITI-38, ITI-39, ITI-55)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from lxml import etree

from xds_node.audit.atna import to_dicom_audit_message
from xds_node.audit.events import AuditEvent

HOME = "urn:oid:1.3.6.1.4.1.21367.2026.1.1"
PARTNER = "urn:oid:2.16.840.1.113883.3.1"
PID = "123^^^&1.2.3&ISO"
FIND_DOCUMENTS = "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d"
T0 = datetime(2024, 3, 1, 9, 0, 0, 250000, tzinfo=UTC)
PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def make(**kw) -> AuditEvent:
    base = dict(
        transaction="ITI-38",
        time=T0,
        partner_community=PARTNER,
        partner_organization="General Hospital",
        partner_organization_id="urn:oid:2.16.840.1.113883.3.1.5",
        user_subject_id="Dr. Jane Smith",
        user_role_code="112247003",
        user_role_display="Medical doctor",
        purpose_of_use="TREATMENT",
        purpose_of_use_display="Treatment",
        patient_id=PID,
        remote_address="10.0.0.7",
        endpoint="https://gw.va.example/xca/query",
        query_id=FIND_DOCUMENTS,
    )
    return AuditEvent(**(base | kw))


def render(event: AuditEvent):
    data = to_dicom_audit_message(event, source_id="xds-node@gw.va.example", home_community_id=HOME, process_id="42")
    assert data.startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
    return etree.fromstring(data, PARSER)


def coded(el) -> tuple[str, str, str]:
    return el.get("csd-code"), el.get("codeSystemName"), el.get("originalText")


def participant(root, role_code: str):
    [ap] = root.xpath(f"ActiveParticipant[RoleIDCode/@csd-code='{role_code}']")
    return ap


def objects(root, type_code: str, role: str):
    return root.xpath(
        f"ParticipantObjectIdentification[@ParticipantObjectTypeCode='{type_code}']"
        f"[@ParticipantObjectTypeCodeRole='{role}']"
    )


def details(po) -> dict[str, str]:
    return {d.get("type"): base64.b64decode(d.get("value")).decode() for d in po.findall("ParticipantObjectDetail")}


def test_top_level_order_follows_the_dicom_schema():
    root = render(make())
    tags = [c.tag for c in root]
    assert root.tag == "AuditMessage" and root.nsmap == {}
    assert tags[0] == "EventIdentification"
    first_source = tags.index("AuditSourceIdentification")
    assert set(tags[1:first_source]) == {"ActiveParticipant"}
    assert set(tags[first_source + 1 :]) == {"ParticipantObjectIdentification"}


def test_iti38_responding_gateway():
    query = b"<query:AdhocQueryRequest>...</query:AdhocQueryRequest>"
    root = render(make(query_message=query, reply_to="http://www.w3.org/2005/08/addressing/anonymous"))
    ev = root.find("EventIdentification")
    assert ev.get("EventActionCode") == "E"
    assert ev.get("EventDateTime") == "2024-03-01T09:00:00.250Z"
    assert ev.get("EventOutcomeIndicator") == "0"
    assert coded(ev.find("EventID")) == ("110112", "DCM", "Query")
    assert coded(ev.find("EventTypeCode")) == ("ITI-38", "IHE Transactions", "Cross Gateway Query")
    assert coded(ev.find("PurposeOfUse")) == ("TREATMENT", "2.16.840.1.113883.3.18.7.1", "Treatment")

    # the initiating gateway (partner) is the Source and the requestor; we are the Destination
    source = participant(root, "110153")
    assert source.get("UserIsRequestor") == "true"
    assert source.get("UserID") == "http://www.w3.org/2005/08/addressing/anonymous"
    assert (source.get("NetworkAccessPointID"), source.get("NetworkAccessPointTypeCode")) == ("10.0.0.7", "2")
    dest = participant(root, "110152")
    assert dest.get("UserIsRequestor") == "false"
    assert dest.get("UserID") == "https://gw.va.example/xca/query"
    assert dest.get("AlternativeUserID") == "42"
    assert (dest.get("NetworkAccessPointID"), dest.get("NetworkAccessPointTypeCode")) == ("gw.va.example", "1")
    [human] = root.xpath("ActiveParticipant[@UserID='Dr. Jane Smith']")
    assert human.get("UserIsRequestor") == "true"
    assert coded(human.find("RoleIDCode")) == ("112247003", "2.16.840.1.113883.6.96", "Medical doctor")

    asi = root.find("AuditSourceIdentification")
    assert asi.get("AuditSourceID") == "xds-node@gw.va.example"
    assert asi.get("AuditEnterpriseSiteID") == "1.3.6.1.4.1.21367.2026.1.1"

    [patient] = objects(root, "1", "1")
    assert patient.get("ParticipantObjectID") == PID
    assert coded(patient.find("ParticipantObjectIDTypeCode")) == ("2", "RFC-3881", "Patient Number")
    [q] = objects(root, "2", "24")
    assert q.get("ParticipantObjectID") == FIND_DOCUMENTS
    assert coded(q.find("ParticipantObjectIDTypeCode")) == ("ITI-38", "IHE Transactions", "Cross Gateway Query")
    assert base64.b64decode(q.findtext("ParticipantObjectQuery")) == query
    assert details(q) == {"QueryEncoding": "UTF-8", "urn:ihe:iti:xca:2010:homeCommunityId": HOME}
    # children of a participant object in schema order: id type, query, details
    assert [c.tag for c in q] == ["ParticipantObjectIDTypeCode", "ParticipantObjectQuery",
                                  "ParticipantObjectDetail", "ParticipantObjectDetail"]  # fmt: skip
    assert objects(root, "2", "3") == []


def test_iti51_is_a_query_named_by_its_transaction():
    """ITI TF-2b 3.51.5: a Multi-Patient Stored Query is audited as a Query (110112, action E) with
    EventTypeCode ITI-51 and the stored query as participant object (role 24)."""
    mpq = "urn:uuid:3d1bdb10-39a2-11de-89c2-2f44d94eaa9f"
    root = render(make(transaction="ITI-51", query_id=mpq, partner_community=None,
                       endpoint="https://gw.va.example/xds/registry"))
    ev = root.find("EventIdentification")
    assert ev.get("EventActionCode") == "E"
    assert coded(ev.find("EventID")) == ("110112", "DCM", "Query")
    assert coded(ev.find("EventTypeCode")) == ("ITI-51", "IHE Transactions", "Multi-Patient Stored Query")
    [q] = objects(root, "2", "24")
    assert q.get("ParticipantObjectID") == mpq
    assert coded(q.find("ParticipantObjectIDTypeCode")) == ("ITI-51", "IHE Transactions", "Multi-Patient Stored Query")


def test_iti39_responding_gateway_exports_documents():
    root = render(make(transaction="ITI-39", query_id=None, document_ids=["1.2.3", "1.2.4"],
                       repository_unique_id="1.3.6.1.4.1.21367.2026.1.2"))  # fmt: skip
    ev = root.find("EventIdentification")
    assert ev.get("EventActionCode") == "R"
    assert coded(ev.find("EventID")) == ("110106", "DCM", "Export")
    assert coded(ev.find("EventTypeCode")) == ("ITI-39", "IHE Transactions", "Cross Gateway Retrieve")
    # documents flow from us (Source) to the initiating gateway (Destination), which asked
    source = participant(root, "110153")
    assert source.get("UserIsRequestor") == "false" and source.get("UserID") == "https://gw.va.example/xca/query"
    dest = participant(root, "110152")
    assert dest.get("UserIsRequestor") == "true" and dest.get("NetworkAccessPointID") == "10.0.0.7"
    docs = objects(root, "2", "3")
    assert [d.get("ParticipantObjectID") for d in docs] == ["1.2.3", "1.2.4"]
    for d in docs:
        assert coded(d.find("ParticipantObjectIDTypeCode")) == ("9", "RFC-3881", "Report Number")
        assert details(d) == {"Repository Unique Id": "1.3.6.1.4.1.21367.2026.1.2", "ihe:homeCommunityID": HOME}
    assert objects(root, "2", "24") == []
    assert len(objects(root, "1", "1")) == 1


def test_iti39_outbound_imports():
    root = render(make(transaction="ITI-39", direction="outbound", document_ids=["1.2.3"], remote_address="",
                       endpoint="https://partner.example/xca/retrieve"))  # fmt: skip
    ev = root.find("EventIdentification")
    assert ev.get("EventActionCode") == "C"
    assert coded(ev.find("EventID")) == ("110107", "DCM", "Import")
    source = participant(root, "110153")  # the responding gateway is the partner
    assert source.get("UserID") == "https://partner.example/xca/retrieve"
    assert source.get("NetworkAccessPointID") == "partner.example"
    dest = participant(root, "110152")
    assert dest.get("UserIsRequestor") == "true" and dest.get("AlternativeUserID") == "42"
    [doc] = objects(root, "2", "3")
    assert details(doc) == {"ihe:homeCommunityID": PARTNER}


def test_iti55_denied_by_consent():
    root = render(make(transaction="ITI-55", outcome="denied", reason="patient has not opted in",
                       query_id="1.2.840.114350.1.13.28.1.18.5.999^1840997084"))  # fmt: skip
    ev = root.find("EventIdentification")
    assert ev.get("EventActionCode") == "E"
    assert ev.get("EventOutcomeIndicator") == "8"
    assert ev.findtext("EventOutcomeDescription") == "patient has not opted in"
    assert coded(ev.find("EventTypeCode")) == ("ITI-55", "IHE Transactions", "Cross Gateway Patient Discovery")
    assert [c.tag for c in ev] == ["EventID", "EventTypeCode", "EventOutcomeDescription", "PurposeOfUse"]
    [q] = objects(root, "2", "24")
    assert coded(q.find("ParticipantObjectIDTypeCode"))[0] == "ITI-55"
    assert q.get("ParticipantObjectID") == "1.2.840.114350.1.13.28.1.18.5.999^1840997084"
    assert q.find("ParticipantObjectQuery") is None  # no message given
    assert details(q) == {"ihe:homeCommunityID": PARTNER}  # the initiating gateway's community
    assert participant(root, "110153").get("UserName") == "General Hospital"


def test_minimal_event_without_patient_or_user():
    root = render(AuditEvent(transaction="ITI-55", outcome="failure", time=T0))
    assert objects(root, "1", "1") == []
    assert len(root.findall("ActiveParticipant")) == 2
    [q] = objects(root, "2", "24")
    assert q.get("ParticipantObjectID") == "unknown"
