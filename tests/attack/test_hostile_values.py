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


def test_xcpd_with_thousands_of_parameter_values_is_a_query_error_not_a_500(world):
    """2,000 livingSubjectIds became one SQL expression SQLite refused (HTTP 500); 20,000 names or
    given names cost seconds of matching on the event loop. Now each is a QE answer."""
    from lxml import etree

    from tests.responding.test_responding_gateway import query_response_code, xcpd_request

    node, granted, _revoked, _docs = world
    partner = Requester.demo_partner(node.settings.keys_dir)
    h = "{urn:hl7-org:v3}"
    c = Caller(node.app())

    def add(req, tag: str, n: int, fill) -> etree._Element:
        params = req.find(f".//{h}parameterList")
        for i in range(n):
            p = etree.SubElement(params, f"{h}{tag}")
            fill(etree.SubElement(p, f"{h}value"), i)
            etree.SubElement(p, f"{h}semanticsText").text = tag
        return req

    def ident(value, i):
        value.set("root", f"1.2.3.{i}")
        value.set("extension", f"X{i}")

    def name(value, i):
        etree.SubElement(value, f"{h}family").text = f"F{i}"

    def givens(value, i):
        for j in range(2000):
            etree.SubElement(value, f"{h}given").text = f"G{j}"

    try:
        ok = c.call("/xcpd", v.Action.ITI55, add(xcpd_request(node, granted), "livingSubjectId", 3, ident),
                    headers=[partner.header()])
        assert query_response_code(ok) == "OK"  # a few extra ids are fine
        for tag, n, fill in (("livingSubjectId", 2000, ident), ("livingSubjectName", 2000, name),
                             ("livingSubjectName", 1, givens), ("patientTelecom", 2000,
                                                                 lambda value, i: value.set("value", f"tel:{i}"))):
            reply = c.call("/xcpd", v.Action.ITI55, add(xcpd_request(node, granted), tag, n, fill),
                           headers=[partner.header()])
            assert reply.http_status == 200 and query_response_code(reply) == "QE", (tag, reply.raw[:300])
            assert granted.split("^")[0].encode() not in reply.raw
    finally:
        c.close()


def test_stored_queries_with_thousands_of_and_groups_or_patterns_are_refused_cleanly(world_both):
    """2,000 $XDSDocumentEntryEventCodeList groups (or confidentiality / reference-id groups) or 1,000
    author patterns: SQLite refused the statement (HTTP 500) and PostgreSQL ran one such query for
    over half an hour after the caller had gone. Now an XDSStoredQueryParamNumber error."""
    node, granted, _revoked, _docs = world_both
    partner = Requester.demo_partner(node.settings.keys_dir)
    c, local = Caller(node.app()), Caller(node.app(), address="127.0.0.1")
    base = {"$XDSDocumentEntryPatientId": [[f"'{granted}'"]], "$XDSDocumentEntryStatus": [["('Approved')"]]}
    floods = {
        "event": (v.StoredQueryId.FIND_DOCUMENTS, {"$XDSDocumentEntryEventCodeList": [[f"('e{i}^^s')"]
                                                                                     for i in range(2000)]}),
        "confidentiality": (v.StoredQueryId.FIND_DOCUMENTS, {"$XDSDocumentEntryConfidentialityCode": [
            [f"('c{i}^^s')"] for i in range(2000)]}),
        "author": (v.StoredQueryId.FIND_DOCUMENTS, {"$XDSDocumentEntryAuthorPerson": [
            ["(" + ",".join(f"'%a{i}%'" for i in range(1000)) + ")"]]}),
        "reference": (v.StoredQueryId.FIND_DOCUMENTS_BY_REFERENCE_ID, {"$XDSDocumentEntryReferenceIdList": [
            [f"('r{i}')"] for i in range(2000)]}),
    }
    try:
        for what, (qid, slots) in floods.items():
            body = rim.write_adhoc_query_request(StoredQuery(query_id=qid, slots={**base, **slots}))
            for caller, path, action, headers in ((c, "/xca/query", v.Action.ITI38, [partner.header()]),
                                                  (local, "/xds/registry", v.Action.ITI18, [])):
                reply = caller.call(path, action, body, headers=headers)
                assert reply.http_status == 200, (what, path, reply.raw[:300])
                assert reply.error_codes == [v.ErrorCode.STORED_QUERY_PARAM_NUMBER], (what, path, reply.error_codes)
        few = rim.write_adhoc_query_request(StoredQuery(query_id=v.StoredQueryId.FIND_DOCUMENTS, slots={
            **base, "$XDSDocumentEntryEventCodeList": [[f"('e{i}^^s')"] for i in range(3)]}))
        assert c.call("/xca/query", v.Action.ITI38, few, headers=[partner.header()]).status == \
            v.ResponseStatus.SUCCESS
    finally:
        c.close()
        local.close()
