"""ITI-51 Multi-Patient Stored Query (ITI TF-2b 3.51) over HTTP: both queries, patient lists, no
list at all, the FindDocuments/FindFolders filters, ObjectRef vs LeafClass, the result limit, and
the boundaries (ITI-18 and ITI-51 keep their own query ids; the gateway endpoints do not offer it)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from lxml import etree

from tests import factories as f
from tests.corpus import CORPUS, assert_valid
from xds_node.ebxml import rim
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import Code, StoredQuery
from xds_node.ebxml.query import MAX_PATIENT_IDS

Q = v.StoredQueryId
E = v.ErrorCode
REG = "/xds/registry"
MPQ_DOCS = Q.FIND_DOCUMENTS_FOR_MULTIPLE_PATIENTS
MPQ_FOLDERS = Q.FIND_FOLDERS_FOR_MULTIPLE_PATIENTS
APPROVED = "('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved')"
DEPRECATED = "('urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated')"
BOTH = ("('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved',"
        "'urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated')")
LAB = Code("DEMO-Lab", "1.3.6.1.4.1.21367.100.1", "Lab")
WSA = "{http://www.w3.org/2005/08/addressing}"


@dataclass
class World:
    a: str
    b: str
    c: str
    a1: object  # patient a, class Lab, in a's folder
    a2: object  # patient a, in a's folder
    b1: object  # patient b, in b's folder
    c1: object  # patient c, replaced by c2 (Deprecated)
    c2: object
    fa: object  # a's folder
    fb: object  # b's folder


def _register(client, sub) -> None:
    reply = client.call(REG, v.Action.ITI42, rim.write_submit_objects_request(sub))
    assert reply.status == v.ResponseStatus.SUCCESS, reply.raw[:800]


@pytest.fixture
def world(client) -> World:
    a, b, c = f.patient(201), f.patient(202), f.patient(203)
    sa = f.submission(a, 2, with_folder=True)
    a1, a2 = sa.documents
    a1.class_code = LAB
    a1.type_code = Code("11502-2", "2.16.840.1.113883.6.1", "Laboratory report")
    _register(client, sa)
    sb = f.submission(b, 1, with_folder=True)
    sb.folders[0].codes = [Code("Imaging", "1.3.6.1.4.1.21367.100.1", "Imaging")]
    _register(client, sb)
    sc1 = f.submission(c, 1)
    _register(client, sc1)
    sc2 = f.submission(c, 1)
    sc2.associations.append(f.relation(v.AssociationType.RPLC, sc2.documents[0].id, sc1.documents[0].id))
    _register(client, sc2)
    return World(a, b, c, a1, a2, sb.documents[0], sc1.documents[0], sc2.documents[0], sa.folders[0], sb.folders[0])


def _slots(**slots) -> dict[str, list[list[str]]]:
    """name (without $) -> value string, or a list of strings for a repeated Slot."""
    return {"$" + name: [[g] for g in (value if isinstance(value, list) else [value])]
            for name, value in slots.items()}


def _request(query_id: str, return_type: str = "LeafClass", **slots) -> etree._Element:
    return rim.write_adhoc_query_request(StoredQuery(query_id=query_id, return_type=return_type,
                                                     slots=_slots(**slots)))


def _mpq(client, query_id=MPQ_DOCS, return_type="LeafClass", *, path=REG, action=v.Action.ITI51, **slots):
    reply = client.call(path, action, _request(query_id, return_type, **slots))
    assert reply.http_status == 200, reply.raw[:800]
    assert reply.envelope.find(f".//{WSA}Action").text == v.response_action(action)
    if CORPUS.is_dir():  # the official ebRS 3.0 schemas, when the corpus is present
        assert_valid(reply.body)
    return reply


def plist(*patients: str) -> str:
    return "(" + ",".join(f"'{p}'" for p in patients) + ")"


def _ids(reply, local="ExtrinsicObject"):
    return sorted(e.get("id") for e in reply.objects(local))


def _refs(reply):
    return sorted(e.get("id") for e in reply.objects("ObjectRef"))


def _docs(world, *names):
    return sorted(getattr(world, n).id for n in names)


# --- FindDocumentsForMultiplePatients --------------------------------------------------------------
def test_find_documents_for_two_patients_returns_both_in_one_leafclass_answer(client, world):
    """ITI TF-2b 3.51.4.1.2: a LeafClass answer spanning patients is the point of ITI-51 (ITI-18
    would answer XDSResultNotSinglePatient)."""
    r = _mpq(client, XDSDocumentEntryPatientId=plist(world.a, world.b), XDSDocumentEntryStatus=APPROVED)
    assert r.status == v.ResponseStatus.SUCCESS and r.error_codes == []
    assert _ids(r) == _docs(world, "a1", "a2", "b1")
    patients = {e.get("value") for e in r.body.iter(f"{{{v.RIM}}}ExternalIdentifier")
                if e.get("identificationScheme") == v.DOC_PATIENT_ID}
    assert patients == {world.a, world.b}


def test_patient_list_as_separate_values_and_duplicates(client, world):
    """Values of one Slot are ORed however they are split across Value elements; a patient listed
    twice is not returned twice."""
    query = StoredQuery(query_id=MPQ_DOCS, slots={
        "$XDSDocumentEntryPatientId": [[f"('{world.b}')", f"('{world.c}','{world.b}')"]],
        "$XDSDocumentEntryStatus": [[APPROVED]]})
    r = client.call(REG, v.Action.ITI51, rim.write_adhoc_query_request(query))
    assert r.status == v.ResponseStatus.SUCCESS
    assert _ids(r) == _docs(world, "b1", "c2")


def test_find_documents_object_ref(client, world):
    r = _mpq(client, return_type="ObjectRef", XDSDocumentEntryPatientId=plist(world.a, world.c),
             XDSDocumentEntryStatus=BOTH)
    assert r.status == v.ResponseStatus.SUCCESS
    assert _refs(r) == _docs(world, "a1", "a2", "c1", "c2")
    assert r.objects("ExtrinsicObject") == []


def test_no_patient_list_searches_every_patient(client, world):
    """$XDSDocumentEntryPatientId is optional in ITI-51: without it every patient's entries match."""
    r = _mpq(client, XDSDocumentEntryStatus=APPROVED)
    assert r.status == v.ResponseStatus.SUCCESS
    assert _ids(r) == _docs(world, "a1", "a2", "b1", "c2")


def test_single_patient_list(client, world):
    r = _mpq(client, XDSDocumentEntryPatientId=f"'{world.a}'", XDSDocumentEntryStatus=APPROVED)
    assert _ids(r) == _docs(world, "a1", "a2")


def test_unknown_patients_match_nothing(client, world):
    r = _mpq(client, XDSDocumentEntryPatientId=plist("NOBODY^^^&1.2.3&ISO"), XDSDocumentEntryStatus=APPROVED)
    assert r.status == v.ResponseStatus.SUCCESS and _ids(r) == []


@pytest.mark.parametrize("status,patients,expect", [
    (DEPRECATED, None, ["c1"]),
    (BOTH, ("c",), ["c1", "c2"]),
    (APPROVED, ("c",), ["c2"]),
    ("('Deprecated')", None, ["c1"]),  # short status names, as ITI-18 accepts them
])
def test_status_filter(client, world, status, patients, expect):
    slots = {"XDSDocumentEntryStatus": status}
    if patients:
        slots["XDSDocumentEntryPatientId"] = plist(*(getattr(world, p) for p in patients))
    assert _ids(_mpq(client, **slots)) == _docs(world, *expect)


@pytest.mark.parametrize("slot,value,patients,expect", [
    ("XDSDocumentEntryClassCode", "('DEMO-Lab^^1.3.6.1.4.1.21367.100.1')", None, ["a1"]),
    ("XDSDocumentEntryClassCode", "('DEMO-Lab^^1.3.6.1.4.1.21367.100.1')", ("b", "c"), []),
    ("XDSDocumentEntryClassCode", "('DEMO-Lab^^wrong.scheme')", None, []),
    ("XDSDocumentEntryClassCode", "('11488-4^^2.16.840.1.113883.6.1')", ("a", "b"), ["a2", "b1"]),
    ("XDSDocumentEntryTypeCode", "('11502-2^^2.16.840.1.113883.6.1')", None, ["a1"]),
    ("XDSDocumentEntryTypeCode", "('34133-9^^2.16.840.1.113883.6.1')", ("a", "c"), ["a2", "c2"]),
    ("XDSDocumentEntryType", f"('{v.ON_DEMAND_DOCUMENT_ENTRY}')", None, []),
    ("XDSDocumentEntryCreationTimeFrom", "20990101", None, []),
    ("XDSDocumentEntryAuthorPerson", "('%Ford%')", ("b",), ["b1"]),
])
def test_find_documents_filters(client, world, slot, value, patients, expect):
    slots = {"XDSDocumentEntryStatus": APPROVED, slot: value}
    if patients:
        slots["XDSDocumentEntryPatientId"] = plist(*(getattr(world, p) for p in patients))
    r = _mpq(client, **slots)
    assert r.status == v.ResponseStatus.SUCCESS
    assert _ids(r) == _docs(world, *expect)


# --- FindFoldersForMultiplePatients ------------------------------------------------------------------
def test_find_folders_for_two_patients(client, world):
    r = _mpq(client, MPQ_FOLDERS, XDSFolderPatientId=plist(world.a, world.b), XDSFolderStatus=APPROVED)
    assert r.status == v.ResponseStatus.SUCCESS
    assert _ids(r, "RegistryPackage") == sorted([world.fa.id, world.fb.id])
    assert _ids(r) == []  # folders only, no documents


def test_find_folders_without_patient_list_object_ref_and_codes(client, world):
    r = _mpq(client, MPQ_FOLDERS, "ObjectRef", XDSFolderStatus=APPROVED)
    assert _refs(r) == sorted([world.fa.id, world.fb.id])
    r = _mpq(client, MPQ_FOLDERS, XDSFolderStatus=APPROVED, XDSFolderCodeList="('Imaging^^1.3.6.1.4.1.21367.100.1')")
    assert _ids(r, "RegistryPackage") == [world.fb.id]
    r = _mpq(client, MPQ_FOLDERS, XDSFolderStatus=APPROVED, XDSFolderPatientId=plist(world.c))
    assert _ids(r, "RegistryPackage") == []
    r = _mpq(client, MPQ_FOLDERS, XDSFolderStatus=APPROVED, XDSFolderLastUpdateTimeFrom="29990101")
    assert _ids(r, "RegistryPackage") == []


# --- limits and parameter errors ----------------------------------------------------------------------
def test_too_many_results(client, node, world):
    """The registry's max_query_results holds for ITI-51 too, and matters most without a patient list."""
    node.registry.runner.max_results = 4
    r = _mpq(client, XDSDocumentEntryStatus=APPROVED)
    assert r.status == v.ResponseStatus.SUCCESS and len(_ids(r)) == 4
    node.registry.runner.max_results = 3
    for return_type in ("LeafClass", "ObjectRef"):
        r = _mpq(client, return_type=return_type, XDSDocumentEntryStatus=APPROVED)
        assert r.status == v.ResponseStatus.FAILURE
        assert r.error_codes == [E.TOO_MANY_RESULTS]
        assert r.objects("ExtrinsicObject") == [] and r.objects("ObjectRef") == []
    r = _mpq(client, MPQ_FOLDERS, XDSFolderStatus=APPROVED)
    assert r.status == v.ResponseStatus.SUCCESS
    node.registry.runner.max_results = 1
    r = _mpq(client, MPQ_FOLDERS, XDSFolderStatus=APPROVED)
    assert r.error_codes == [E.TOO_MANY_RESULTS]


def test_missing_status_is_a_missing_parameter(client, world):
    r = _mpq(client, XDSDocumentEntryPatientId=plist(world.a))
    assert r.status == v.ResponseStatus.FAILURE and r.error_codes == [E.STORED_QUERY_MISSING_PARAM]
    r = _mpq(client, MPQ_FOLDERS, XDSFolderPatientId=plist(world.a))
    assert r.error_codes == [E.STORED_QUERY_MISSING_PARAM]


def test_patient_list_may_not_repeat_or_exceed_its_limit(client, world):
    """A repeated patient Slot would mean AND (never true); an oversized list is refused before any SQL."""
    r = _mpq(client, XDSDocumentEntryPatientId=[plist(world.a), plist(world.b)], XDSDocumentEntryStatus=APPROVED)
    assert r.error_codes == [E.STORED_QUERY_PARAM_NUMBER]
    many = [f"P{i}^^^&1.2.3&ISO" for i in range(MAX_PATIENT_IDS)]
    r = _mpq(client, XDSDocumentEntryPatientId=plist(*many, world.a), XDSDocumentEntryStatus=APPROVED)
    assert r.status == v.ResponseStatus.FAILURE and r.error_codes == [E.STORED_QUERY_PARAM_NUMBER]
    r = _mpq(client, XDSDocumentEntryPatientId=plist(*many[1:], world.a), XDSDocumentEntryStatus=APPROVED)
    assert r.status == v.ResponseStatus.SUCCESS and _ids(r) == _docs(world, "a1", "a2")


def test_bad_code_and_time_values(client, world):
    r = _mpq(client, XDSDocumentEntryStatus=APPROVED, XDSDocumentEntryClassCode="('DEMO-Lab')")
    assert r.status == v.ResponseStatus.FAILURE and r.error_codes == [E.REGISTRY_ERROR]
    r = _mpq(client, MPQ_FOLDERS, XDSFolderStatus=APPROVED, XDSFolderLastUpdateTimeFrom="yesterday")
    assert r.error_codes == [E.REGISTRY_ERROR]


def test_each_transaction_keeps_its_own_query_ids(client, world):
    """ITI-51 offers only its two queries, and ITI-18 (hence ITI-38 and /ig) never runs them: a
    single-patient consumer cannot widen its query to every patient by changing the query id."""
    pid = f"'{world.a}'"
    r = _mpq(client, Q.FIND_DOCUMENTS, XDSDocumentEntryPatientId=pid, XDSDocumentEntryStatus=APPROVED)
    assert r.error_codes == [E.UNKNOWN_STORED_QUERY]
    r = _mpq(client, Q.GET_DOCUMENTS, XDSDocumentEntryEntryUUID=f"('{world.a1.id}')")
    assert r.error_codes == [E.UNKNOWN_STORED_QUERY]
    r = _mpq(client, XDSDocumentEntryStatus=APPROVED, action=v.Action.ITI18)
    assert r.status == v.ResponseStatus.FAILURE and r.error_codes == [E.UNKNOWN_STORED_QUERY]
    assert r.objects("ExtrinsicObject") == []
    r = _mpq(client, MPQ_FOLDERS, XDSFolderStatus=APPROVED, action=v.Action.ITI18)
    assert r.error_codes == [E.UNKNOWN_STORED_QUERY]


def test_wrong_payload_is_a_sender_fault(client, world):
    r = client.call(REG, v.Action.ITI51, rim.write_submit_objects_request(f.submission(world.a, 1)))
    assert r.is_fault and r.fault_code.endswith("Sender")
    assert "AdhocQueryRequest" in r.fault_reason


# --- where ITI-51 is offered ------------------------------------------------------------------------
def test_offered_on_the_registry_only_never_on_gateway_endpoints(client, world):
    """Internal consumers only: the same request that /xds/registry answers is ActionNotSupported on
    the responding gateway (/xca/query) and the initiating gateway (/ig/registry)."""
    body = _request(MPQ_DOCS, XDSDocumentEntryPatientId=plist(world.a, world.b), XDSDocumentEntryStatus=APPROVED)
    ok = client.call(REG, v.Action.ITI51, body)
    assert ok.status == v.ResponseStatus.SUCCESS and len(_ids(ok)) == 3
    for path in ("/xca/query", "/ig/registry", "/xca/retrieve", "/xds/repository"):
        refused = client.call(path, v.Action.ITI51, body)
        assert refused.is_fault, path
        assert refused.fault_code.endswith("Sender"), path
        subcode = refused.body.find("{http://www.w3.org/2003/05/soap-envelope}Code/"
                                    "{http://www.w3.org/2003/05/soap-envelope}Subcode/"
                                    "{http://www.w3.org/2003/05/soap-envelope}Value")
        assert subcode is not None and subcode.text.endswith("ActionNotSupported"), path
        assert refused.objects("ExtrinsicObject") == []


def test_published_wsdl_offers_the_operation(client):
    """GET /xds/registry?wsdl names ITI-51 with its request and response actions."""
    resp = client.get(REG + "?wsdl")
    assert resp.status_code == 200
    doc = etree.fromstring(resp.content)
    ns = {"wsdl": "http://schemas.xmlsoap.org/wsdl/", "wsam": "http://www.w3.org/2007/05/addressing/metadata",
          "soap12": "http://schemas.xmlsoap.org/wsdl/soap12/"}
    (op,) = doc.xpath("wsdl:portType/wsdl:operation[@name='DocumentRegistry_MultiPatientStoredQuery']",
                      namespaces=ns)
    assert op.find("wsdl:input", ns).get(f"{{{ns['wsam']}}}Action") == v.Action.ITI51
    assert op.find("wsdl:output", ns).get(f"{{{ns['wsam']}}}Action") == v.Action.ITI51 + "Response"
    assert doc.xpath("wsdl:binding/wsdl:operation[@name='DocumentRegistry_MultiPatientStoredQuery']"
                     "/soap12:operation/@soapAction", namespaces=ns) == [v.Action.ITI51]


def test_secured_registry_refuses_unsigned_iti51(tmp_path):
    """With secure_xds_endpoints the registry's security step stands in front of ITI-51 as of ITI-18:
    an unsigned multi-patient query is refused by a fault and discloses nothing."""
    from tests.soapkit import SoapTestClient
    from xds_node.config import load_settings
    from xds_node.node import Node

    node = Node(load_settings(env={}, data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'r.db'}",
                              secure_xds_endpoints=True))
    client = SoapTestClient(app=node.app())
    try:
        assert node.registry.register(f.submission(f.patient(301), 1)).status == v.ResponseStatus.SUCCESS
        body = _request(MPQ_DOCS, XDSDocumentEntryStatus=APPROVED)
        reply = client.call(REG, v.Action.ITI51, body)
        assert reply.is_fault and reply.fault_code.endswith("Sender")
        assert "ActionNotSupported" not in etree.tostring(reply.body).decode()  # refused by security, not routing
        assert b"ExtrinsicObject" not in reply.raw
    finally:
        client.close()
        node.close()


def test_an_answer_spanning_patients_is_audited_once_per_patient(client, node, world):
    """Each patient's accounting of disclosures shows a multi-patient answer with that patient's
    own documents (one audit row per patient, written before the answer leaves)."""
    r = _mpq(client, XDSDocumentEntryPatientId=plist(world.a, world.b), XDSDocumentEntryStatus=APPROVED)
    assert r.status == v.ResponseStatus.SUCCESS
    rows = [e for e in node.audit.list(limit=50) if e.transaction == "ITI-51"]
    by_patient = {e.patient_id: sorted(e.document_ids) for e in rows}
    assert by_patient == {world.a: sorted([world.a1.id, world.a2.id]), world.b: [world.b1.id]}
