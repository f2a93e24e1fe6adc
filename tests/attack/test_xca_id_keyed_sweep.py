"""ITI-38 every stored query, LeafClass and ObjectRef, keyed by the ids of a revoked veteran's
objects (documents, submission set, folder, associations): answered exactly as for ids that do not
exist, while the same queries on a consenting veteran's ids do answer (so the sweep can fail)."""

from __future__ import annotations

import uuid

import pytest

from tests import factories as f
from tests.responding.requester import Requester
from tests.responding.test_responding_gateway import find_documents
from tests.responding.test_trust_boundary import Caller, get_all
from xds_node.ebxml import rim
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import StoredQuery

Q = v.StoredQueryId


def _ids(node, pid: str) -> dict[str, list[str]]:
    sub = f.submission(pid, 2, with_folder=True)
    assert node.registry.register(sub).status == v.ResponseStatus.SUCCESS
    inner = [a.id for a in sub.associations if a.source == sub.folders[0].id]
    return {"doc": [d.id for d in sub.documents], "uid": [d.unique_id for d in sub.documents],
            "ss": [sub.submission_set.id], "ss_uid": [sub.submission_set.unique_id],
            "folder": [sub.folders[0].id], "folder_uid": [sub.folders[0].unique_id],
            "assoc": [a.id for a in sub.associations], "inner": inner}


def _list(values: list[str]) -> list[list[str]]:
    return [["(" + ",".join(f"'{x}'" for x in values) + ")"]]


def _queries(ids: dict[str, list[str]]) -> list[tuple[str, str, dict]]:
    one = lambda key: [[f"'{ids[key][0]}'"]]  # noqa: E731
    return [
        ("GetDocuments/uuid", Q.GET_DOCUMENTS, {"$XDSDocumentEntryEntryUUID": _list(ids["doc"])}),
        ("GetDocuments/uid", Q.GET_DOCUMENTS, {"$XDSDocumentEntryUniqueId": _list(ids["uid"])}),
        ("GetDocumentsAndAssociations", Q.GET_DOCUMENTS_AND_ASSOCIATIONS,
         {"$XDSDocumentEntryEntryUUID": _list(ids["doc"])}),
        ("GetAssociations/doc", Q.GET_ASSOCIATIONS, {"$uuid": _list(ids["doc"])}),
        ("GetAssociations/ss+folder", Q.GET_ASSOCIATIONS, {"$uuid": _list(ids["ss"] + ids["folder"])}),
        ("GetAssociations/assoc", Q.GET_ASSOCIATIONS, {"$uuid": _list(ids["inner"])}),
        ("GetSubmissionSets", Q.GET_SUBMISSION_SETS, {"$uuid": _list(ids["doc"] + ids["folder"])}),
        ("GetSubmissionSetAndContents/uuid", Q.GET_SUBMISSION_SET_AND_CONTENTS,
         {"$XDSSubmissionSetEntryUUID": one("ss")}),
        ("GetSubmissionSetAndContents/uid", Q.GET_SUBMISSION_SET_AND_CONTENTS,
         {"$XDSSubmissionSetUniqueId": one("ss_uid")}),
        ("GetFolders/uuid", Q.GET_FOLDERS, {"$XDSFolderEntryUUID": _list(ids["folder"])}),
        ("GetFolders/uid", Q.GET_FOLDERS, {"$XDSFolderUniqueId": _list(ids["folder_uid"])}),
        ("GetFolderAndContents", Q.GET_FOLDER_AND_CONTENTS, {"$XDSFolderEntryUUID": one("folder")}),
        ("GetFoldersForDocument", Q.GET_FOLDERS_FOR_DOCUMENT, {"$XDSDocumentEntryEntryUUID": one("doc")}),
        ("GetRelatedDocuments", Q.GET_RELATED_DOCUMENTS, {
            "$XDSDocumentEntryEntryUUID": one("doc"),
            "$AssociationTypes": [["('urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember',"
                                   "'urn:ihe:iti:2007:AssociationType:RPLC')"]]}),
    ]


def _shape(reply) -> tuple:
    """What an answer tells, ids aside: status, error codes, how many objects of each kind."""
    lst = reply.body.find(f"{{{v.RIM}}}RegistryObjectList") if reply.body is not None else None
    kinds = sorted(c.tag.rsplit("}", 1)[-1] for c in (lst if lst is not None else []))
    return reply.status, tuple(reply.error_codes), tuple(kinds)


@pytest.mark.parametrize("return_type", ["LeafClass", "ObjectRef"])
def test_every_id_keyed_query_hides_a_revoked_veteran(world, return_type):
    node, granted, revoked, _docs = world
    home = node.settings.home_community_id
    hidden, shown = _ids(node, revoked), _ids(node, granted)
    ghost = {k: [f"urn:uuid:{uuid.uuid4()}" for _ in vals] for k, vals in hidden.items()}
    partner = Requester.demo_partner(node.settings.keys_dir)
    c = Caller(node.app())

    def ask(qid: str, slots: dict):
        body = rim.write_adhoc_query_request(StoredQuery(query_id=qid, slots=slots, home=home,
                                                         return_type=return_type))
        return c.call("/xca/query", v.Action.ITI38, body, headers=[partner.header()])
    try:
        for (name, qid, slots), (_, _, ghost_slots), (_, _, shown_slots) in zip(
                _queries(hidden), _queries(ghost), _queries(shown), strict=True):
            reply = ask(qid, slots)
            leaked = [x for vals in hidden.values() for x in vals if x.encode() in reply.raw]
            assert not leaked, (name, leaked)
            assert revoked.split("^")[0].encode() not in reply.raw, name
            assert _shape(reply) == _shape(ask(qid, ghost_slots)), name
            if name != "GetRelatedDocuments":  # nothing related: empty for everyone
                assert _shape(ask(qid, shown_slots))[2], (name, "the consenting veteran's objects are answered")
        # and the patient-keyed ones answer like an unknown patient
        for body in (find_documents(revoked), get_all(revoked)):
            reply = c.call("/xca/query", v.Action.ITI38, body, headers=[partner.header()])
            assert reply.error_codes == [v.ErrorCode.UNKNOWN_PATIENT_ID] and not reply.objects("ExtrinsicObject")
    finally:
        c.close()
