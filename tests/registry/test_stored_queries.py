"""Every ITI-18 stored query over HTTP against a known registry content, plus its error rules."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests import factories as f
from tests.corpus import assert_valid
from xds_node.ebxml import rim
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import Code, StoredQuery

Q = v.StoredQueryId
REG = "/xds/registry"
E = v.ErrorCode
APPROVED = "('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved')"
BOTH = "('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved','urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated')"


@dataclass
class World:
    a: str
    b: str
    a1: object
    a2: object
    a3: object
    b1: object
    ss1: object
    ss2: object
    ss3: object
    folder: object


def _q(client, query_id, return_type="LeafClass", **slots):
    """slots: name (without $) -> value string or list of strings (repeated slot)."""
    built = {}
    for name, value in slots.items():
        groups = value if isinstance(value, list) else [value]
        built["$" + name] = [[g] for g in groups]
    query = StoredQuery(query_id=query_id, return_type=return_type, slots=built)
    reply = client.call(REG, v.Action.ITI18, rim.write_adhoc_query_request(query))
    assert reply.http_status == 200, reply.raw
    assert_valid(reply.body)
    return reply


def _ids(reply, local="ExtrinsicObject"):
    return sorted(e.get("id") for e in reply.objects(local))


def _refs(reply):
    return sorted(e.get("id") for e in reply.objects("ObjectRef"))


@pytest.fixture
def world(client) -> World:
    a, b = f.patient(101), f.patient(102)
    s1 = f.submission(a, 2, with_folder=True)
    a1, a2 = s1.documents
    a1.event_codes = [Code("E1", "1.2.3.4", "Event one"), Code("E2", "1.2.3.4", "Event two")]
    a2.class_code = Code("DEMO-Lab", "1.3.6.1.4.1.21367.100.1", "Lab")
    a2.confidentiality_codes = [Code("R", "2.16.840.1.113883.5.25", "Restricted")]
    a2.creation_time = "20230601"
    a2.service_start_time, a2.service_stop_time = "202306010800", "202306010900"
    a2.authors[0].person = "^Smith^Jane^^^"
    a2.format_code = Code("urn:ihe:pcc:xphr:2007", "1.3.6.1.4.1.19376.1.2.3", "XPHR")
    a2.reference_ids = ["ORD-1^^^&1.2.3&ISO^urn:ihe:iti:xds:2013:order"]
    assert client.call(REG, v.Action.ITI42, rim.write_submit_objects_request(s1)).status == v.ResponseStatus.SUCCESS
    s2 = f.submission(a, 1)
    (a3,) = s2.documents
    s2.associations.append(f.relation(v.AssociationType.RPLC, a3.id, a1.id))
    assert client.call(REG, v.Action.ITI42, rim.write_submit_objects_request(s2)).status == v.ResponseStatus.SUCCESS
    s3 = f.submission(b, 1)
    assert client.call(REG, v.Action.ITI42, rim.write_submit_objects_request(s3)).status == v.ResponseStatus.SUCCESS
    return World(a, b, a1, a2, a3, s3.documents[0], s1.submission_set, s2.submission_set, s3.submission_set,
                 s1.folders[0])


def pid(value):
    return f"'{value}'"


# --- FindDocuments ----------------------------------------------------------------------------
def test_find_documents_status(client, world):
    r = _q(client, Q.FIND_DOCUMENTS, XDSDocumentEntryPatientId=pid(world.a), XDSDocumentEntryStatus=APPROVED)
    assert _ids(r) == sorted([world.a2.id, world.a3.id])
    r = _q(client, Q.FIND_DOCUMENTS, XDSDocumentEntryPatientId=pid(world.a), XDSDocumentEntryStatus=BOTH)
    assert _ids(r) == sorted([world.a1.id, world.a2.id, world.a3.id])


def test_find_documents_object_ref(client, world):
    r = _q(client, Q.FIND_DOCUMENTS, "ObjectRef", XDSDocumentEntryPatientId=pid(world.b),
           XDSDocumentEntryStatus=APPROVED)
    assert _refs(r) == [world.b1.id]
    assert r.objects("ExtrinsicObject") == []


@pytest.mark.parametrize("slot,value,expect", [
    ("XDSDocumentEntryClassCode", "('DEMO-Lab^^1.3.6.1.4.1.21367.100.1')", ["a2"]),
    ("XDSDocumentEntryClassCode", "('DEMO-Lab^^1.3.6.1.4.1.21367.100.1','11488-4^^2.16.840.1.113883.6.1')",
     ["a2", "a3"]),
    ("XDSDocumentEntryClassCode", "('DEMO-Lab^^wrong.scheme')", []),
    ("XDSDocumentEntryConfidentialityCode", "('R^^2.16.840.1.113883.5.25')", ["a2"]),
    ("XDSDocumentEntryFormatCode", "('urn:ihe:pcc:xphr:2007^^1.3.6.1.4.1.19376.1.2.3')", ["a2"]),
    ("XDSDocumentEntryCreationTimeFrom", "20240101", ["a3"]),
    ("XDSDocumentEntryCreationTimeTo", "20240101", ["a2"]),
    ("XDSDocumentEntryCreationTimeFrom", "20230601", ["a2", "a3"]),  # left edge is inclusive
    ("XDSDocumentEntryCreationTimeTo", "20230601", []),  # right edge is exclusive
    ("XDSDocumentEntryServiceStartTimeFrom", "202306010800", ["a2", "a3"]),
    ("XDSDocumentEntryServiceStopTimeTo", "2023060109", []),
    ("XDSDocumentEntryAuthorPerson", "('%Smith%')", ["a2"]),
    ("XDSDocumentEntryAuthorPerson", "('%Ford%', '%Smith%')", ["a2", "a3"]),
    ("XDSDocumentEntryType", f"('{v.ON_DEMAND_DOCUMENT_ENTRY}')", []),
    ("XDSDocumentEntryHealthcareFacilityTypeCode", "('394777002^^2.16.840.1.113883.6.96')", ["a2", "a3"]),
    ("XDSDocumentEntryPracticeSettingCode", "('408443003^^2.16.840.1.113883.6.96')", ["a2", "a3"]),
    ("XDSDocumentEntryTypeCode", "('34133-9^^2.16.840.1.113883.6.1')", ["a2", "a3"]),
])
def test_find_documents_filters(client, world, slot, value, expect):
    r = _q(client, Q.FIND_DOCUMENTS, XDSDocumentEntryPatientId=pid(world.a), XDSDocumentEntryStatus=APPROVED,
           **{slot: value})
    assert _ids(r) == sorted(getattr(world, name).id for name in expect)


def test_event_codes_and_across_slots_or_within(client, world):
    base = dict(XDSDocumentEntryPatientId=pid(world.a), XDSDocumentEntryStatus=BOTH)
    both = _q(client, Q.FIND_DOCUMENTS, XDSDocumentEntryEventCodeList=["('E1^^1.2.3.4')", "('E2^^1.2.3.4')"], **base)
    assert _ids(both) == [world.a1.id]
    missing = _q(client, Q.FIND_DOCUMENTS, XDSDocumentEntryEventCodeList=["('E1^^1.2.3.4')", "('E9^^1.2.3.4')"],
                 **base)
    assert _ids(missing) == []
    either = _q(client, Q.FIND_DOCUMENTS, XDSDocumentEntryEventCodeList="('E9^^1.2.3.4','E2^^1.2.3.4')", **base)
    assert _ids(either) == [world.a1.id]


def test_find_documents_by_reference_id(client, world):
    r = _q(client, Q.FIND_DOCUMENTS_BY_REFERENCE_ID, XDSDocumentEntryPatientId=pid(world.a),
           XDSDocumentEntryStatus=APPROVED,
           XDSDocumentEntryReferenceIdList="('ORD-1^^^&1.2.3&ISO^urn:ihe:iti:xds:2013:order')")
    assert _ids(r) == [world.a2.id]


# --- FindSubmissionSets / FindFolders / GetAll ---------------------------------------------------
def test_find_submission_sets(client, world):
    r = _q(client, Q.FIND_SUBMISSION_SETS, XDSSubmissionSetPatientId=pid(world.a), XDSSubmissionSetStatus=APPROVED)
    assert _ids(r, "RegistryPackage") == sorted([world.ss1.id, world.ss2.id])
    r = _q(client, Q.FIND_SUBMISSION_SETS, XDSSubmissionSetPatientId=pid(world.a), XDSSubmissionSetStatus=APPROVED,
           XDSSubmissionSetSourceId="('9.9.9')")
    assert _ids(r, "RegistryPackage") == []
    r = _q(client, Q.FIND_SUBMISSION_SETS, XDSSubmissionSetPatientId=pid(world.a), XDSSubmissionSetStatus=APPROVED,
           XDSSubmissionSetContentType="('34133-9^^2.16.840.1.113883.6.1')", XDSSubmissionSetAuthorPerson="'%Ford%'")
    assert len(_ids(r, "RegistryPackage")) == 2


def test_find_folders(client, world):
    r = _q(client, Q.FIND_FOLDERS, XDSFolderPatientId=pid(world.a), XDSFolderStatus=APPROVED)
    assert _ids(r, "RegistryPackage") == [world.folder.id]
    r = _q(client, Q.FIND_FOLDERS, XDSFolderPatientId=pid(world.a), XDSFolderStatus=APPROVED,
           XDSFolderCodeList="('Referrals^^1.3.6.1.4.1.21367.100.1')")
    assert _ids(r, "RegistryPackage") == [world.folder.id]
    r = _q(client, Q.FIND_FOLDERS, XDSFolderPatientId=pid(world.a), XDSFolderStatus=APPROVED,
           XDSFolderLastUpdateTimeFrom="29990101")
    assert _ids(r, "RegistryPackage") == []


def test_get_all(client, world):
    r = _q(client, Q.GET_ALL, patientId=pid(world.a), XDSDocumentEntryStatus=BOTH, XDSSubmissionSetStatus=APPROVED,
           XDSFolderStatus=APPROVED)
    assert _ids(r) == sorted([world.a1.id, world.a2.id, world.a3.id])
    assert len(_ids(r, "RegistryPackage")) == 3
    # submission 1, submission 2 HasMember, the RPLC, and the HasMember the registry added from a1's
    # folder to its replacement a3 (ITI TF-2a 3.42.4.1.3.5)
    assert len(r.objects("Association")) == 7 + 1 + 1 + 1


# --- Get* by id ------------------------------------------------------------------------------
def test_get_documents_by_uuid_and_unique_id(client, world):
    r = _q(client, Q.GET_DOCUMENTS, XDSDocumentEntryEntryUUID=f"('{world.a1.id}','{world.a2.id}')")
    assert _ids(r) == sorted([world.a1.id, world.a2.id])
    r = _q(client, Q.GET_DOCUMENTS, XDSDocumentEntryUniqueId=f"('{world.b1.unique_id}')")
    assert _ids(r) == [world.b1.id]


def test_get_documents_of_two_patients_is_not_single_patient(client, world):
    ids = f"('{world.a2.id}','{world.b1.id}')"
    r = _q(client, Q.GET_DOCUMENTS, XDSDocumentEntryEntryUUID=ids)
    assert r.status == v.ResponseStatus.FAILURE
    assert r.error_codes == [E.RESULT_NOT_SINGLE_PATIENT]
    r = _q(client, Q.GET_DOCUMENTS, "ObjectRef", XDSDocumentEntryEntryUUID=ids)
    assert r.status == v.ResponseStatus.SUCCESS and len(_refs(r)) == 2


def test_get_folders(client, world):
    r = _q(client, Q.GET_FOLDERS, XDSFolderEntryUUID=f"('{world.folder.id}')")
    assert _ids(r, "RegistryPackage") == [world.folder.id]
    r = _q(client, Q.GET_FOLDERS, XDSFolderUniqueId=f"('{world.folder.unique_id}')")
    assert _ids(r, "RegistryPackage") == [world.folder.id]


def test_get_associations(client, world):
    r = _q(client, Q.GET_ASSOCIATIONS, uuid=f"('{world.a1.id}')")
    types = sorted(a.get("associationType").rsplit(":", 1)[1] for a in r.objects("Association"))
    assert types == ["HasMember", "HasMember", "RPLC"]  # from SS1, from the folder, the replacement


def test_get_documents_and_associations(client, world):
    r = _q(client, Q.GET_DOCUMENTS_AND_ASSOCIATIONS, XDSDocumentEntryEntryUUID=f"('{world.a3.id}')")
    assert _ids(r) == [world.a3.id]
    assert len(r.objects("Association")) == 3  # from SS2, the RPLC, from a1's folder (a3 replaced a1)


def test_get_submission_sets(client, world):
    r = _q(client, Q.GET_SUBMISSION_SETS, uuid=f"('{world.a1.id}','{world.a3.id}')")
    assert _ids(r, "RegistryPackage") == sorted([world.ss1.id, world.ss2.id])
    assert len(r.objects("Association")) == 2


def test_get_submission_set_and_contents(client, world):
    r = _q(client, Q.GET_SUBMISSION_SET_AND_CONTENTS, XDSSubmissionSetEntryUUID=f"'{world.ss1.id}'")
    assert _ids(r) == sorted([world.a1.id, world.a2.id])
    assert sorted(_ids(r, "RegistryPackage")) == sorted([world.ss1.id, world.folder.id])
    assert len(r.objects("Association")) == 7
    r = _q(client, Q.GET_SUBMISSION_SET_AND_CONTENTS, XDSSubmissionSetUniqueId=f"'{world.ss1.unique_id}'",
           XDSDocumentEntryConfidentialityCode="('R^^2.16.840.1.113883.5.25')")
    assert _ids(r) == [world.a2.id]


def test_get_folder_and_contents(client, world):
    r = _q(client, Q.GET_FOLDER_AND_CONTENTS, XDSFolderEntryUUID=f"'{world.folder.id}'")
    # a3 replaced a1, a member: the registry added it to the folder (ITI TF-2a 3.42.4.1.3.5)
    assert _ids(r) == sorted([world.a1.id, world.a2.id, world.a3.id])
    assert len(r.objects("Association")) == 3


def test_get_folders_for_document(client, world):
    r = _q(client, Q.GET_FOLDERS_FOR_DOCUMENT, XDSDocumentEntryUniqueId=f"'{world.a2.unique_id}'")
    assert _ids(r, "RegistryPackage") == [world.folder.id]
    r = _q(client, Q.GET_FOLDERS_FOR_DOCUMENT, XDSDocumentEntryEntryUUID=f"'{world.b1.id}'")
    assert _ids(r, "RegistryPackage") == []


def test_get_related_documents(client, world):
    r = _q(client, Q.GET_RELATED_DOCUMENTS, XDSDocumentEntryEntryUUID=f"'{world.a3.id}'",
           AssociationTypes="('urn:ihe:iti:2007:AssociationType:RPLC')")
    assert _ids(r) == sorted([world.a1.id, world.a3.id])
    assert len(r.objects("Association")) == 1
    r = _q(client, Q.GET_RELATED_DOCUMENTS, XDSDocumentEntryEntryUUID=f"'{world.a2.id}'",
           AssociationTypes="('urn:ihe:iti:2007:AssociationType:RPLC')")
    assert _ids(r) == []


# --- parameter errors ------------------------------------------------------------------------
def test_unknown_query(client, world):
    r = _q(client, "urn:uuid:00000000-0000-0000-0000-000000000000")
    assert r.status == v.ResponseStatus.FAILURE and r.error_codes == [E.UNKNOWN_STORED_QUERY]


def test_missing_required_param(client, world):
    r = _q(client, Q.FIND_DOCUMENTS, XDSDocumentEntryPatientId=pid(world.a))
    assert r.error_codes == [E.STORED_QUERY_MISSING_PARAM]


def test_one_of_pair(client, world):
    assert _q(client, Q.GET_DOCUMENTS).error_codes == [E.STORED_QUERY_MISSING_PARAM]
    r = _q(client, Q.GET_DOCUMENTS, XDSDocumentEntryEntryUUID=f"('{world.a1.id}')",
           XDSDocumentEntryUniqueId=f"('{world.a1.unique_id}')")
    assert r.error_codes == [E.STORED_QUERY_PARAM_NUMBER]


def test_single_valued_param_with_two_values(client, world):
    r = _q(client, Q.FIND_DOCUMENTS, XDSDocumentEntryPatientId=f"('{world.a}','{world.b}')",
           XDSDocumentEntryStatus=APPROVED)
    assert r.error_codes == [E.STORED_QUERY_PARAM_NUMBER]


def test_repeated_slot_that_does_not_allow_and(client, world):
    r = _q(client, Q.FIND_DOCUMENTS, XDSDocumentEntryPatientId=pid(world.a), XDSDocumentEntryStatus=APPROVED,
           XDSDocumentEntryClassCode=["('a^^b')", "('c^^d')"])
    assert r.error_codes == [E.STORED_QUERY_PARAM_NUMBER]


def test_code_without_scheme_is_an_error_and_unknown_params_are_ignored(client, world):
    r = _q(client, Q.FIND_DOCUMENTS, XDSDocumentEntryPatientId=pid(world.a), XDSDocumentEntryStatus=APPROVED,
           XDSDocumentEntryClassCode="('DEMO-Lab')")
    assert r.status == v.ResponseStatus.FAILURE and r.error_codes == [E.REGISTRY_ERROR]
    assert E.REGISTRY_METADATA_ERROR not in r.error_codes  # never used by queries
    r = _q(client, Q.FIND_DOCUMENTS, XDSDocumentEntryPatientId=pid(world.a), XDSDocumentEntryStatus=APPROVED,
           XDSDocumentEntryPracticeSettingCodeScheme="('whatever')")
    assert r.status == v.ResponseStatus.SUCCESS


def test_too_many_results(client, node, world):
    node.registry.runner.max_results = 1
    r = _q(client, Q.FIND_DOCUMENTS, XDSDocumentEntryPatientId=pid(world.a), XDSDocumentEntryStatus=APPROVED)
    assert r.error_codes == [E.TOO_MANY_RESULTS]
