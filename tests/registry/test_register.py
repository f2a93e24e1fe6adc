"""ITI-42 Register Document Set-b over HTTP: success, all-or-nothing rejection, relationships."""

from __future__ import annotations

from lxml import etree

from tests import factories as f
from tests.corpus import assert_valid
from xds_node.ebxml import rim
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import StoredQuery

REG = "/xds/registry"
SUCCESS = v.ResponseStatus.SUCCESS
FAILURE = v.ResponseStatus.FAILURE


def register(client, sub):
    return client.call(REG, v.Action.ITI42, rim.write_submit_objects_request(sub))


def find_docs(client, pid, status=("Approved",), return_type="LeafClass"):
    q = StoredQuery(query_id=v.StoredQueryId.FIND_DOCUMENTS, return_type=return_type, slots={
        "$XDSDocumentEntryPatientId": [[f"'{pid}'"]],
        "$XDSDocumentEntryStatus": [["(" + ",".join(f"'{s}'" for s in status) + ")"]],
    })
    return client.call(REG, v.Action.ITI18, rim.write_adhoc_query_request(q))


def table_counts(node) -> dict[str, int]:
    return {k: node.registry_store.count(k) for k in ("doc", "ss", "folder", "assoc")}


def test_register_and_find(client, node):
    pid = f.patient(1)
    reply = register(client, f.submission(pid, 2, with_folder=True))
    assert reply.http_status == 200
    assert reply.status == SUCCESS, reply.raw
    assert_valid(reply.body)
    assert table_counts(node) == {"doc": 2, "ss": 1, "folder": 1, "assoc": 7}
    found = find_docs(client, pid)
    assert found.status == SUCCESS
    docs = found.objects("ExtrinsicObject")
    assert len(docs) == 2
    assert all(d.get("status") == v.Status.APPROVED for d in docs)
    assert all(d.get("id").startswith("urn:uuid:") for d in docs)
    assert_valid(found.body)


def test_symbolic_ids_are_replaced_by_uuids(client):
    pid = f.patient(9)
    assert register(client, f.submission(pid, 1, uuids=False)).status == SUCCESS
    (doc,) = find_docs(client, pid).objects("ExtrinsicObject")
    assert doc.get("id").startswith("urn:uuid:")
    assert doc.find(f"{{{v.RIM}}}ExternalIdentifier").get("registryObject") == doc.get("id")


def test_rejected_submission_leaves_no_trace(client, node):
    pid = f.patient(2)
    sub = f.submission(pid, 2)
    sub.documents[1].patient_id = f.patient(3)  # XDSPatientIdDoesNotMatch
    sub.documents[0].creation_time = None  # missing required slot
    reply = register(client, sub)
    assert reply.status == FAILURE
    assert v.ErrorCode.PATIENT_ID_DOES_NOT_MATCH in reply.error_codes
    assert v.ErrorCode.REGISTRY_METADATA_ERROR in reply.error_codes  # every violation, not only the first
    assert_valid(reply.body)
    assert table_counts(node) == {"doc": 0, "ss": 0, "folder": 0, "assoc": 0}


def test_duplicate_unique_id_is_rejected(client, node):
    pid = f.patient(4)
    first = f.submission(pid, 1)
    assert register(client, first).status == SUCCESS
    again = f.submission(pid, 1)
    again.documents[0].unique_id = first.documents[0].unique_id
    again.documents[0].hash = "0" * 40
    reply = register(client, again)
    assert reply.status == FAILURE
    assert set(reply.error_codes) & {v.ErrorCode.NON_IDENTICAL_HASH, v.ErrorCode.DUPLICATE_UNIQUE_ID}
    assert table_counts(node)["doc"] == 1


def test_rplc_deprecates_the_original(client):
    pid = f.patient(5)
    original = f.submission(pid, 1)
    assert register(client, original).status == SUCCESS
    original_uuid = original.documents[0].id
    replacement = f.submission(pid, 1)
    replacement.associations.append(f.relation(v.AssociationType.RPLC, replacement.documents[0].id, original_uuid))
    reply = register(client, replacement)
    assert reply.status == SUCCESS, reply.raw
    approved = find_docs(client, pid).objects("ExtrinsicObject")
    deprecated = find_docs(client, pid, status=("Deprecated",)).objects("ExtrinsicObject")
    assert [d.get("id") for d in deprecated] == [original_uuid]
    assert len(approved) == 1 and approved[0].get("id") != original_uuid


def test_rplc_of_unknown_target_fails(client, node):
    pid = f.patient(6)
    sub = f.submission(pid, 1, uuids=False)
    sub.associations.append(f.relation(v.AssociationType.RPLC, "Document01",
                                       "urn:uuid:00000000-0000-4000-8000-000000000000"))
    reply = register(client, sub)
    assert reply.status == FAILURE
    assert reply.error_codes
    assert table_counts(node)["doc"] == 0


def test_unknown_patient_when_identity_feed_is_required(client, node):
    node.registry.lookup._check = True
    node.registry_store.add_patients([f.patient(7)])
    assert register(client, f.submission(f.patient(7), 1)).status == SUCCESS
    reply = register(client, f.submission(f.patient(8), 1))
    assert reply.status == FAILURE
    assert v.ErrorCode.UNKNOWN_PATIENT_ID in reply.error_codes


def test_broken_ebrim_gets_metadata_error(client, node):
    body = etree.fromstring(
        b'<lcm:SubmitObjectsRequest xmlns:lcm="urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0" '
        b'xmlns:rim="urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"><rim:RegistryObjectList>'
        b'<rim:RegistryPackage id="x"/></rim:RegistryObjectList></lcm:SubmitObjectsRequest>')
    reply = client.call(REG, v.Action.ITI42, body)
    assert reply.http_status == 200
    assert reply.status == FAILURE
    assert reply.error_codes == [v.ErrorCode.REGISTRY_METADATA_ERROR]
    assert table_counts(node)["ss"] == 0


def test_wrong_payload_is_a_sender_fault(client):
    body = etree.fromstring(b'<foo xmlns="urn:example"/>')
    reply = client.call(REG, v.Action.ITI42, body)
    assert reply.is_fault and reply.fault_code.endswith("Sender")
    assert "SubmitObjectsRequest" in reply.fault_reason


def test_doctype_is_rejected_without_registering(client, node):
    data = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
            b'<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"><env:Body>&e;</env:Body>'
            b'</env:Envelope>')
    reply = client.post_raw(REG, data, "application/soap+xml")
    assert reply.http_status == 400 and reply.is_fault
    assert b"root:" not in reply.raw


def test_unknown_action_is_a_fault(client):
    reply = client.call(REG, "urn:example:NoSuchAction", etree.fromstring(b"<x/>"))
    assert reply.is_fault and reply.fault_code.endswith("Sender")
