"""Hostile values (huge, control and bidi characters, SQL-ish quotes, unicode) in every patient id,
document id, code, author and claim a caller controls, on every endpoint: never a 5xx, never a
revoked veteran's data. SQLite and PostgreSQL (where a value longer than a column used to be a 500)."""

from __future__ import annotations

from tests.responding.requester import Requester
from tests.responding.test_responding_gateway import find_documents
from tests.responding.test_trust_boundary import Caller, get_all
from xds_node.ebxml import rim, xdsb
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import StoredQuery

HOSTILE = ["X" * 100_000, "a\r\nb\u202e\u2028z\u0085", "' OR '1'='1' --", "\"]|//*[1=1]|x[\"",
           "ü𝄞\u0301" * 200, "%_%"]


def test_hostile_values_everywhere(world_both, ehr):
    node, granted, revoked, docs = world_both
    partner = Requester.demo_partner(node.settings.keys_dir)
    c, local = Caller(node.app()), Caller(node.app(), address="127.0.0.1")
    home, repo = node.settings.home_community_id, node.settings.repository_unique_id
    secret = [u.encode() for u in docs[revoked]] + [revoked.split("^")[0].encode()]
    try:
        for val in HOSTILE:
            esc = val.replace("'", "''")
            calls = [
                (c, "/xca/query", v.Action.ITI38, find_documents(val), [partner.header()]),
                (c, "/xca/query", v.Action.ITI38, rim.write_adhoc_query_request(StoredQuery(
                    query_id=v.StoredQueryId.GET_DOCUMENTS, home=home,
                    slots={"$XDSDocumentEntryUniqueId": [[f"('{esc}')"]]})), [partner.header()]),
                (c, "/xca/query", v.Action.ITI38, rim.write_adhoc_query_request(StoredQuery(
                    query_id=v.StoredQueryId.GET_ASSOCIATIONS, home=val, slots={"$uuid": [[f"('{esc}')"]]})),
                 [partner.header()]),
                (c, "/xca/query", v.Action.ITI38, rim.write_adhoc_query_request(StoredQuery(
                    query_id=v.StoredQueryId.FIND_DOCUMENTS, slots={
                        "$XDSDocumentEntryPatientId": [[f"'{granted}'"]], "$XDSDocumentEntryStatus": [["('Approved')"]],
                        "$XDSDocumentEntryAuthorPerson": [[f"('{esc}')"]],
                        "$XDSDocumentEntryClassCode": [[f"('{esc}^^{esc}')"]]})), [partner.header()]),
                (c, "/xca/query", v.Action.ITI38, get_all(revoked), [partner.header(subject_id=val, organization=val)]
                 if len(val) < 10_000 else [partner.header()]),
                (c, "/xca/retrieve", v.Action.ITI39, xdsb.write_retrieve_request(
                    [xdsb.DocumentRequest(repo, val, home), xdsb.DocumentRequest(val, val, val)]), [partner.header()]),
                (local, "/xds/registry", v.Action.ITI18, get_all(val), []),
                (local, "/xds/repository", v.Action.ITI43, xdsb.write_retrieve_request(
                    [xdsb.DocumentRequest(val, val)]), []),
                (c, "/xds/registry", v.Action.ITI18, find_documents(val), [ehr.header()]),
                (c, "/ig/registry", v.Action.ITI18, find_documents(val), [ehr.header()]),
                (c, "/ig/repository", v.Action.ITI43, xdsb.write_retrieve_request(
                    [xdsb.DocumentRequest(val, val, val)]), [ehr.header()]),
            ]
            for caller, path, action, body, headers in calls:
                reply = caller.call(path, action, body, headers=headers)
                where = (path, action.rsplit(":", 1)[-1], val[:12])
                assert reply.http_status < 500, (where, reply.raw[:300])
                assert not any(s in reply.raw for s in secret), where
    finally:
        c.close()
        local.close()
