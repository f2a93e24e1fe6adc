"""ITI-38 queries keyed by object ids never reveal objects of a patient without consent: not the
objects themselves, not the associations that point at them (GetAssociations), not an error that
tells of them. A partner asks over SOAP with a signed SAML assertion, on SQLite and PostgreSQL."""

from __future__ import annotations

import shutil

import pytest
from lxml import etree

from tests.factories import patient, relation, submission
from tests.responding.requester import Requester
from tests.soapkit import Reply, SoapTestClient
from xds_node.admin import init_keys
from xds_node.config import load_settings
from xds_node.ebxml import rim
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import StoredQuery

Q = v.StoredQueryId
S = v.ResponseStatus
CONSENTED, REVOKED = patient(701), patient(702)


@pytest.fixture(scope="module")
def key_template(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    init_keys(load_settings(env={}, data_dir=d))
    return d


@pytest.fixture
def world(settings, key_template):
    """Two patients, each with a submission set, a folder holding two documents, and a third
    document appended to the first (APND); one has consented, the other granted then revoked."""
    from xds_node.node import Node

    shutil.copytree(key_template, settings.data_dir, dirs_exist_ok=True)
    node = Node(settings)
    objects: dict[str, dict[str, list[str]]] = {}
    for pid in (CONSENTED, REVOKED):
        first = submission(pid, 2, with_folder=True)
        assert node.registry.register(first).status == S.SUCCESS
        second = submission(pid, 1)
        second.associations.append(relation(v.AssociationType.APND, second.documents[0].id, first.documents[0].id))
        assert node.registry.register(second).status == S.SUCCESS, node.registry.register(second)
        objects[pid] = {
            "docs": [d.id for d in (*first.documents, *second.documents)],
            "ss": [first.submission_set.id, second.submission_set.id],
            "folder": [f.id for f in first.folders],
            "assoc": [a.id for a in (*first.associations, *second.associations)],
        }
        node.consent_store.grant(pid, source="paper form")
    node.consent_store.revoke(REVOKED, source="online")
    client = SoapTestClient(app=node.app())
    yield node, client, Requester.demo_partner(settings.keys_dir), objects
    client.close()
    node.close()


def _in(ids: list[str]) -> list[list[str]]:
    return [["(" + ",".join(f"'{i}'" for i in ids) + ")"]]


def _one(value: str) -> list[list[str]]:
    return [[f"'{value}'"]]


def id_keyed_queries(o: dict[str, list[str]]) -> dict[str, StoredQuery]:
    """Every stored query keyed by object ids, aimed at one patient's objects."""
    every = [*o["docs"], *o["ss"], *o["folder"]]
    return {
        "GetAssociations": StoredQuery(Q.GET_ASSOCIATIONS, slots={"$uuid": _in(every)}),
        "GetAssociations(ObjectRef)": StoredQuery(Q.GET_ASSOCIATIONS, return_type="ObjectRef",
                                                  slots={"$uuid": _in(every)}),
        "GetDocumentsAndAssociations": StoredQuery(Q.GET_DOCUMENTS_AND_ASSOCIATIONS,
                                                   slots={"$XDSDocumentEntryEntryUUID": _in(o["docs"])}),
        "GetSubmissionSetAndContents": StoredQuery(Q.GET_SUBMISSION_SET_AND_CONTENTS,
                                                   slots={"$XDSSubmissionSetEntryUUID": _one(o["ss"][0])}),
        "GetFolderAndContents": StoredQuery(Q.GET_FOLDER_AND_CONTENTS,
                                            slots={"$XDSFolderEntryUUID": _one(o["folder"][0])}),
        "GetRelatedDocuments": StoredQuery(Q.GET_RELATED_DOCUMENTS, slots={
            "$XDSDocumentEntryEntryUUID": _one(o["docs"][0]), "$AssociationTypes": _in([v.AssociationType.APND])}),
        "GetDocuments": StoredQuery(Q.GET_DOCUMENTS, slots={"$XDSDocumentEntryEntryUUID": _in(o["docs"])}),
        "GetDocuments(ObjectRef)": StoredQuery(Q.GET_DOCUMENTS, return_type="ObjectRef",
                                               slots={"$XDSDocumentEntryEntryUUID": _in(o["docs"])}),
        "GetFolders": StoredQuery(Q.GET_FOLDERS, slots={"$XDSFolderEntryUUID": _in(o["folder"])}),
        "GetSubmissionSets": StoredQuery(Q.GET_SUBMISSION_SETS, slots={"$uuid": _in(o["docs"])}),
        "GetFoldersForDocument": StoredQuery(Q.GET_FOLDERS_FOR_DOCUMENT,
                                             slots={"$XDSDocumentEntryEntryUUID": _one(o["docs"][0])}),
    }


def ask(world, query: StoredQuery) -> Reply:
    node, client, requester, _ = world
    query.home = node.settings.home_community_id
    reply = client.call("/xca/query", v.Action.ITI38, rim.write_adhoc_query_request(query),
                        headers=[requester.header()])
    assert reply.http_status == 200 and not reply.is_fault, reply.raw[:600]
    return reply


def revealed(reply: Reply) -> set[str]:
    """Every object id the answer names: returned objects, ObjectRefs and association ends."""
    ids: set[str] = set()
    lst = reply.body.find(f"{{{v.RIM}}}RegistryObjectList")
    for el in lst if lst is not None else []:
        if not isinstance(el.tag, str):
            continue
        ids.add(el.get("id"))
        if etree.QName(el).localname == "Association":
            ids.update((el.get("sourceObject"), el.get("targetObject")))
    return ids


def test_no_id_keyed_query_reveals_a_revoked_patients_objects(world):
    objects = world[3]
    theirs = {i for kind in objects[REVOKED].values() for i in kind}
    for name, query in id_keyed_queries(objects[REVOKED]).items():
        reply = ask(world, query)
        assert not revealed(reply) & theirs, f"{name} revealed {sorted(revealed(reply) & theirs)}"
        # answered exactly like ids we never heard of: an empty Success, no error to tell them apart
        assert (reply.status, reply.error_codes, revealed(reply)) == (S.SUCCESS, [], set()), name
    # the same queries for the consenting patient do return objects (the queries are not empty by design)
    for name, query in id_keyed_queries(objects[CONSENTED]).items():
        assert revealed(ask(world, query)), name


def test_get_associations_returns_only_consenting_patients_associations(world):
    objects = world[3]
    ours, theirs = objects[CONSENTED], objects[REVOKED]
    both = [*ours["docs"], *ours["ss"], *theirs["docs"], *theirs["ss"]]
    reply = ask(world, StoredQuery(Q.GET_ASSOCIATIONS, slots={"$uuid": _in(both)}))
    assert reply.status == S.SUCCESS
    returned = {a.get("id") for a in reply.objects("Association")}
    assert returned and returned <= set(ours["assoc"])
    assert not revealed(reply) & {i for kind in theirs.values() for i in kind}


def test_leaf_class_over_two_patients_answers_the_consenting_one_without_telling_of_the_other(world):
    # without consent filtering first, the registry would answer XDSResultNotSinglePatient: an
    # oracle that a withheld document id exists
    objects = world[3]
    ids = [objects[CONSENTED]["docs"][0], objects[REVOKED]["docs"][0]]
    reply = ask(world, StoredQuery(Q.GET_DOCUMENTS, slots={"$XDSDocumentEntryEntryUUID": _in(ids)}))
    assert (reply.status, reply.error_codes) == (S.SUCCESS, [])
    assert [d.get("id") for d in reply.objects("ExtrinsicObject")] == [objects[CONSENTED]["docs"][0]]


def test_the_withholding_is_audited_without_the_withheld_patient(world):
    node, *_ = world
    objects = world[3]
    ask(world, StoredQuery(Q.GET_ASSOCIATIONS, slots={"$uuid": _in(objects[REVOKED]["docs"])}))
    event = node.audit.list(transaction="ITI-38")[0]
    assert event.outcome == "success" and "withheld" in event.reason
    assert event.patient_id in (None, "")


def test_retrieve_withholds_a_document_whose_patient_the_registry_cannot_name(settings, key_template):
    """With a remote registry (registry_url) our repository holds documents our registry does not
    know: whose they are cannot be told, so ITI-39 answers for them as for unknown ids."""
    from sqlalchemy import delete

    from tests.responding.test_responding_gateway import SAMPLES, _docs_of, _retrieve
    from xds_node.node import Node
    from xds_node.registry import tables as t

    shutil.copytree(key_template, settings.data_dir, dirs_exist_ok=True)
    node = Node(settings)
    client = SoapTestClient(app=node.app())
    try:
        assert not node.folder_indexer(SAMPLES / "alex-testpatient").sync().rejected
        pid = "VET0001^^^&1.3.6.1.4.1.21367.2026.1.9&ISO"  # Alex Testpatient
        node.consent_store.grant(pid, source="paper form")
        known, orphan = _docs_of(node, pid)[:2]
        with node.engine.begin() as conn:  # the registry no longer knows the second document
            conn.execute(delete(t.documents).where(t.documents.c.unique_id == orphan))
        reply = client.call("/xca/retrieve", v.Action.ITI39, _retrieve([known, orphan], node),
                            headers=[Requester.demo_partner(settings.keys_dir).header()], mtom=True)
        got = [d.findtext(f"{{{v.XDSB}}}DocumentUniqueId") for d in reply.body.iter(f"{{{v.XDSB}}}DocumentResponse")]
        assert got == [known]
        assert reply.error_codes == [v.ErrorCode.DOCUMENT_UNIQUE_ID_ERROR]
    finally:
        client.close()
        node.close()
