"""ITI-41 provide-and-register and ITI-43 retrieve over HTTP, MTOM and inline, good and bad."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest
from lxml import etree

from tests import factories as f
from tests.corpus import assert_valid
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml import xdsb
from xds_node.soap.mtom import Attachment

REPO = "/xds/repository"
X = f"{{{v.XDSB}}}"
E = v.ErrorCode


def provide(client, sub, contents: dict[str, bytes], *, mtom: bool = True, headers=None):
    """Send ITI-41 with each document as an MTOM part (or inline base64); ``headers``: e.g. an
    internal client's WS-Security header."""
    docs, attachments = {}, []
    for doc_id, data in contents.items():
        el = etree.Element(X + "Document", nsmap={"xdsb": v.XDSB})
        if mtom:
            cid = f"doc{len(attachments)}@xds-node.test"
            inc = etree.SubElement(el, "{http://www.w3.org/2004/08/xop/include}Include")
            inc.set("href", f"cid:{cid}")
            attachments.append(Attachment(cid, "text/xml", data=data))
        else:
            el.text = base64.b64encode(data).decode()
        docs[doc_id] = el
    return client.call(REPO, v.Action.ITI41, xdsb.write_provide_request(sub, docs),
                       attachments=attachments, mtom=mtom, **({"headers": headers} if headers else {}))


def retrieve(client, pairs, repo="1.3.6.1.4.1.21367.2026.1.2"):
    reqs = [xdsb.DocumentRequest(r or repo, uid) for r, uid in pairs]
    return client.call(REPO, v.Action.ITI43, xdsb.write_retrieve_request(reqs), mtom=True)


def documents_of(reply) -> dict[str, bytes]:
    """uniqueId -> bytes, resolving the MTOM parts of the raw reply."""
    from xds_node.soap.envelope import parse_envelope

    msg = parse_envelope(reply.raw, reply.content_type, require_action=False)
    out = {}
    for dr in msg.body.iter(X + "DocumentResponse"):
        out[dr.findtext(X + "DocumentUniqueId")] = msg.binary(dr.find(X + "Document"))
    return out


def status_of(reply) -> str:
    return reply.body.find(f"{{{v.RS}}}RegistryResponse").get("status")


def no_hash_size(sub):
    for de in sub.documents:
        de.hash = de.size = None
        de.repository_unique_id = None
    return sub


def stored_files(node) -> list:
    """Every stored copy of pushed bytes: files in the folder store and contents in the database."""
    files = [p for p in node.content_store.root.rglob("*") if p.is_file()]
    return files + [f"db:{c.sha1}" for c in node.repository.database.contents()]


@pytest.mark.parametrize("mtom", [True, False], ids=["mtom", "inline"])
def test_round_trip_is_byte_identical(client, node, mtom):
    pid = f.patient(300)
    sub = no_hash_size(f.submission(pid, 2))
    contents = {sub.documents[0].id: b"<ClinicalDocument>one</ClinicalDocument>",
                sub.documents[1].id: os.urandom(300_000)}
    reply = provide(client, sub, contents, mtom=mtom)
    assert reply.status == v.ResponseStatus.SUCCESS, reply.raw[:1500]
    assert_valid(reply.body)
    uids = {de.unique_id: contents[de.id] for de in sub.documents}
    got = retrieve(client, [(None, uid) for uid in uids])
    assert got.content_type.startswith("multipart/related")
    assert status_of(got) == v.ResponseStatus.SUCCESS
    assert_valid(got.body)
    assert documents_of(got) == uids
    assert {dr.findtext(X + "mimeType") for dr in got.body.iter(X + "DocumentResponse")} == {"text/xml"}


def test_registry_gets_computed_hash_size_and_repository(client, node):
    pid = f.patient(301)
    sub = no_hash_size(f.submission(pid, 1))
    data = b"hello repository"
    assert provide(client, sub, {sub.documents[0].id: data}).status == v.ResponseStatus.SUCCESS
    rows = node.registry_store.fetch("doc", [sub.documents[0].id])
    xml = rows[0].rim.decode()
    assert hashlib.sha1(data).hexdigest() in xml
    assert f"<rim:Value>{len(data)}</rim:Value>" in xml
    assert node.settings.repository_unique_id in xml


def test_partial_success_and_unknown_ids(client, node):
    pid = f.patient(302)
    sub = no_hash_size(f.submission(pid, 1))
    provide(client, sub, {sub.documents[0].id: b"x"})
    uid = sub.documents[0].unique_id
    reply = retrieve(client, [(None, uid), (None, "1.2.3.4.404"), ("9.9.9", uid)])
    assert status_of(reply) == v.ResponseStatus.PARTIAL_SUCCESS
    assert sorted(reply.error_codes) == sorted([E.DOCUMENT_UNIQUE_ID_ERROR, E.UNKNOWN_REPOSITORY_ID])
    assert list(documents_of(reply)) == [uid]
    only_bad = retrieve(client, [(None, "1.2.3.4.404")])
    assert status_of(only_bad) == v.ResponseStatus.FAILURE


def test_hash_that_lies_stores_and_registers_nothing(client, node):
    pid = f.patient(303)
    sub = f.submission(pid, 1)
    sub.documents[0].hash = "0" * 40
    reply = provide(client, sub, {sub.documents[0].id: b"the real bytes"})
    assert reply.status == v.ResponseStatus.FAILURE
    assert set(reply.error_codes) == {E.REPOSITORY_METADATA_ERROR}  # the hash, and the size too
    assert node.registry_store.count("doc") == 0 and stored_files(node) == []


def test_size_that_lies(client, node):
    sub = no_hash_size(f.submission(f.patient(304), 1))
    sub.documents[0].size = 3
    reply = provide(client, sub, {sub.documents[0].id: b"more than three"})
    assert reply.error_codes == [E.REPOSITORY_METADATA_ERROR]


def test_missing_document_and_missing_metadata(client, node):
    sub = no_hash_size(f.submission(f.patient(305), 2))
    reply = provide(client, sub, {sub.documents[0].id: b"only one"})
    assert reply.error_codes == [E.MISSING_DOCUMENT]
    reply = provide(client, sub, {sub.documents[0].id: b"a", sub.documents[1].id: b"b", "urn:uuid:stray": b"c"})
    assert E.MISSING_DOCUMENT_METADATA in reply.error_codes
    assert node.registry_store.count("doc") == 0 and stored_files(node) == []


def test_failed_registration_leaves_no_bytes(client, node):
    sub = no_hash_size(f.submission(f.patient(306), 1))
    sub.documents[0].patient_id = f.patient(307)  # XDSPatientIdDoesNotMatch from the registry
    reply = provide(client, sub, {sub.documents[0].id: b"orphan candidate"})
    assert E.PATIENT_ID_DOES_NOT_MATCH in reply.error_codes
    assert stored_files(node) == []


def test_wrong_content_id_is_a_fault(client, node):
    sub = no_hash_size(f.submission(f.patient(308), 1))
    el = etree.Element(X + "Document", nsmap={"xdsb": v.XDSB})
    etree.SubElement(el, "{http://www.w3.org/2004/08/xop/include}Include").set("href", "cid:nobody@here")
    reply = client.call(REPO, v.Action.ITI41, xdsb.write_provide_request(sub, {sub.documents[0].id: el}),
                        attachments=[Attachment("other@here", "text/xml", data=b"x")], mtom=True)
    assert reply.is_fault and reply.fault_code.endswith("Sender")
    assert node.registry_store.count("doc") == 0


def test_truncated_mtom_upload_is_a_fault(client, node):
    sub = no_hash_size(f.submission(f.patient(309), 1))
    from xds_node.soap.envelope import build_request

    el = etree.Element(X + "Document", nsmap={"xdsb": v.XDSB})
    etree.SubElement(el, "{http://www.w3.org/2004/08/xop/include}Include").set("href", "cid:d@x")
    payload, ct, _ = build_request(v.Action.ITI41, xdsb.write_provide_request(sub, {sub.documents[0].id: el}),
                                   attachments=[Attachment("d@x", "text/xml", data=b"y" * 5000)], mtom=True)
    payload = payload if isinstance(payload, bytes) else b"".join(payload)
    reply = client.post_raw(REPO, payload[: len(payload) - 3000], ct)
    assert reply.is_fault and reply.http_status == 400
    assert node.registry_store.count("doc") == 0 and stored_files(node) == []


def test_bad_retrieve_body_is_a_fault(client):
    reply = client.call(REPO, v.Action.ITI43, etree.fromstring(f'<x:RetrieveDocumentSetRequest xmlns:x="{v.XDSB}"/>'))
    assert reply.is_fault and "DocumentRequest" in reply.fault_reason
