"""With the audit table refusing every insert (a trigger that raises), no endpoint discloses
anything: every transaction that would answer with patient data answers 503, whoever calls.
On both backends, over the ASGI app the server runs."""

from __future__ import annotations

from sqlalchemy import text

from tests.attack.test_xcpd_correlation import _xcpd
from tests.responding.requester import Requester
from tests.responding.test_responding_gateway import find_documents
from tests.responding.test_trust_boundary import Caller, get_all, retrieve_request
from xds_node.ebxml import rim, xdsb
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import StoredQuery
from xds_node.patients.model import PatientId


def _break_audit(engine) -> None:
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text("CREATE TRIGGER no_audit BEFORE INSERT ON audit_event "
                              "BEGIN SELECT RAISE(ABORT, 'audit disk full'); END"))
        else:
            conn.execute(text("CREATE OR REPLACE FUNCTION no_audit() RETURNS trigger AS $$ "
                              "BEGIN RAISE EXCEPTION 'audit disk full'; END $$ LANGUAGE plpgsql"))
            conn.execute(text("CREATE TRIGGER no_audit BEFORE INSERT ON audit_event "
                              "FOR EACH ROW EXECUTE FUNCTION no_audit()"))


def _multi_patient(pids: list[str]):
    return rim.write_adhoc_query_request(StoredQuery(
        query_id=v.StoredQueryId.FIND_DOCUMENTS_FOR_MULTIPLE_PATIENTS, slots={
        "$XDSDocumentEntryPatientId": [["(" + ",".join(f"'{p}'" for p in pids) + ")"]],
        "$XDSDocumentEntryStatus": [["('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved')"]]}))


def _get_documents(uuids: list[str], home: str):
    q = StoredQuery(query_id=v.StoredQueryId.GET_DOCUMENTS,
                    slots={"$XDSDocumentEntryUniqueId": [["(" + ",".join(f"'{u}'" for u in uuids) + ")"]]},
                    home=home)
    return rim.write_adhoc_query_request(q)


def _xca_retrieve(node, uids: list[str]):
    return xdsb.write_retrieve_request([xdsb.DocumentRequest(node.settings.repository_unique_id, u,
                                                             node.settings.home_community_id) for u in uids])


def test_no_disclosure_leaves_without_its_audit_row(world_both, ehr):
    node, granted, _revoked, docs = world_both
    mine = docs[granted]
    _break_audit(node.audit_engine)
    partner = Requester.demo_partner(node.settings.keys_dir)
    local = Caller(node.app(), address="127.0.0.1")
    outside = Caller(node.app())
    home = node.settings.home_community_id
    try:
        calls = [
            (local, "/xds/registry", v.Action.ITI18, find_documents(granted), []),
            (local, "/xds/registry", v.Action.ITI18, get_all(granted), []),
            (local, "/xds/registry", v.Action.ITI51, _multi_patient([granted]), []),
            (local, "/xds/repository", v.Action.ITI43, retrieve_request(node, mine), []),
            (outside, "/xds/registry", v.Action.ITI18, find_documents(granted), [ehr.header()]),
            (outside, "/xds/repository", v.Action.ITI43, retrieve_request(node, mine), [ehr.header()]),
            (outside, "/ig/registry", v.Action.ITI18, find_documents(granted), [ehr.header()]),
            (outside, "/xca/query", v.Action.ITI38, find_documents(granted), [partner.header()]),
            (outside, "/xca/query", v.Action.ITI38, _get_documents(mine, home), [partner.header()]),
            (outside, "/xca/retrieve", v.Action.ITI39, _xca_retrieve(node, mine), [partner.header()]),
            (outside, "/xcpd", v.Action.ITI55, _xcpd(node, granted, "urn:oid:1.3.6.1.4.1.21367.2026.2.1",
                                                     PatientId("R1", "1.2.3.4")), [partner.header()]),
        ]
        for caller, path, action, body, headers in calls:
            reply = caller.call(path, action, body, headers=headers)
            where = f"{path} {action.rsplit(':', 1)[-1]}"
            assert reply.http_status == 503 and reply.is_fault, (where, reply.http_status, reply.raw[:300])
            assert not any(u.encode() in reply.raw for u in mine), where
            assert granted.split("^")[0].encode() not in reply.raw, where
    finally:
        local.close()
        outside.close()
