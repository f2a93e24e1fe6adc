"""IHE rules the repository and C-CDA ingest used to get wrong (issue 12), each over HTTP as a
Document Source and a Document Consumer would: identical ITI-41 resubmission, a repositoryUniqueId
supplied by the source, a Document element holding elements, C-CDA ids XDS cannot carry as is."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

from lxml import etree

from tests import factories as f
from tests.registry.test_stored_queries import _ids, _q
from tests.repository.test_provide_and_retrieve import (
    REPO,
    X,
    documents_of,
    no_hash_size,
    provide,
    retrieve,
    status_of,
    stored_files,
)
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml import xdsb
from xds_node.soap.mtom import Attachment

Q = v.StoredQueryId
E = v.ErrorCode
SUCCESS = v.ResponseStatus.SUCCESS
XOP_INCLUDE = "{http://www.w3.org/2004/08/xop/include}Include"
SAMPLE = Path(__file__).resolve().parents[2] / "sample_documents" / "alex-testpatient" / "ccd-2024.xml"


def _repository_ids(reply) -> set[str]:
    return {s.findtext(f"{{{v.RIM}}}ValueList/{{{v.RIM}}}Value")
            for s in reply.body.iter(f"{{{v.RIM}}}Slot") if s.get("name") == "repositoryUniqueId"}


# --- rule 1, through the repository --------------------------------------------------------------
def test_identical_provide_and_register_is_accepted(client, node):
    """ITI TF-3 Table 4.2.4.1-2: the same document (same uniqueId, same bytes) provided again in a
    new submission is accepted, as a second DocumentEntry; the repository keeps one copy and serves
    it. The old code answered XDSDuplicateUniqueIdInRegistry."""
    pid = f.patient(1301)
    data = b"<ClinicalDocument>provided twice</ClinicalDocument>"
    first = no_hash_size(f.submission(pid, 1))
    assert provide(client, first, {first.documents[0].id: data}).status == SUCCESS
    second = no_hash_size(f.submission(pid, 1))
    second.documents[0].unique_id = uid = first.documents[0].unique_id
    reply = provide(client, second, {second.documents[0].id: data})
    assert reply.status == SUCCESS, reply.raw[:1500]
    got = _q(client, Q.GET_DOCUMENTS, XDSDocumentEntryUniqueId=f"('{uid}')")
    assert _ids(got) == sorted([first.documents[0].id, second.documents[0].id])
    assert documents_of(retrieve(client, [(None, uid)])) == {uid: data}
    assert len(stored_files(node)) == 1
    other = no_hash_size(f.submission(pid, 1))
    other.documents[0].unique_id = uid
    refused = provide(client, other, {other.documents[0].id: b"<ClinicalDocument>other</ClinicalDocument>"})
    assert refused.error_codes == [E.NON_IDENTICAL_HASH]
    assert documents_of(retrieve(client, [(None, uid)])) == {uid: data}


# --- rule 3: repositoryUniqueId supplied by the source ------------------------------------------------
def test_repository_unique_id_from_the_source_is_replaced(client, node):
    """ITI TF-2b 3.41.4.1.3: the Document Repository adds *or replaces* repositoryUniqueId with its
    own before registering; it does not refuse. The old code answered XDSRepositoryMetadataError."""
    pid = f.patient(1310)
    sub = no_hash_size(f.submission(pid, 2))
    sub.documents[0].repository_unique_id = "1.2.3.4.5.999"  # another repository's id
    sub.documents[1].repository_unique_id = node.settings.repository_unique_id  # ours: kept
    data = {sub.documents[0].id: b"<ClinicalDocument>a</ClinicalDocument>",
            sub.documents[1].id: b"<ClinicalDocument>b</ClinicalDocument>"}
    reply = provide(client, sub, data)
    assert reply.status == SUCCESS, reply.raw[:1500]
    uids = [de.unique_id for de in sub.documents]
    got = _q(client, Q.GET_DOCUMENTS, XDSDocumentEntryUniqueId="(" + ",".join(f"'{u}'" for u in uids) + ")")
    assert len(_ids(got)) == 2
    assert _repository_ids(got) == {node.settings.repository_unique_id}
    fetched = retrieve(client, [(None, u) for u in uids])
    assert documents_of(fetched) == {de.unique_id: data[de.id] for de in sub.documents}


# --- rule 4: a Document element that holds elements ---------------------------------------------------
def _provide_elements(client, sub, el: etree._Element, attachments=()):
    return client.call(REPO, v.Action.ITI41, xdsb.write_provide_request(sub, {sub.documents[0].id: el}),
                       attachments=list(attachments), mtom=True)


def test_document_holding_elements_is_refused_not_stored_empty(client, node):
    """xdsb:Document is simpleContent over xs:base64Binary (XDS.b_DocumentRepository.xsd, the
    ITI-41 message of ITI TF-2b 3.41.4.1.2): text, or the one xop:Include MTOM puts in its place.
    A ClinicalDocument pasted in unencoded was read as empty base64 and stored as a 0-byte document
    (Success, the SHA-1 of nothing); now it is a Sender fault and nothing is stored or registered."""
    sub = no_hash_size(f.submission(f.patient(1320), 1))
    el = etree.Element(X + "Document", nsmap={"xdsb": v.XDSB})
    doc = etree.SubElement(el, "{urn:hl7-org:v3}ClinicalDocument")
    etree.SubElement(doc, "{urn:hl7-org:v3}title").text = "not base64"
    reply = _provide_elements(client, sub, el)
    assert reply.is_fault and reply.fault_code.endswith("Sender"), reply.raw[:800]
    assert "ClinicalDocument" in reply.fault_reason
    assert node.registry_store.count("doc") == 0 and stored_files(node) == []


def test_xop_include_not_directly_in_the_document_is_refused(client, node):
    """An xop:Include nested one level down is not XOP (it must replace the element's content,
    XOP 1.0 §3): the old code did not find it, read the element as empty base64 and stored 0 bytes."""
    sub = no_hash_size(f.submission(f.patient(1321), 1))
    el = etree.Element(X + "Document", nsmap={"xdsb": v.XDSB})
    etree.SubElement(etree.SubElement(el, X + "Wrapper"), XOP_INCLUDE).set("href", "cid:doc0@xds-node.test")
    reply = _provide_elements(client, sub, el, [Attachment("doc0@xds-node.test", "text/xml", data=b"<x/>")])
    assert reply.is_fault and reply.fault_code.endswith("Sender")
    assert node.registry_store.count("doc") == 0 and stored_files(node) == []


def test_xop_include_with_a_comment_beside_it_still_works(client, node):
    """Comments are not content: an xop:Include next to one is still the document's bytes."""
    sub = no_hash_size(f.submission(f.patient(1322), 1))
    el = etree.Element(X + "Document", nsmap={"xdsb": v.XDSB})
    el.append(etree.Comment(" the CCD "))
    etree.SubElement(el, XOP_INCLUDE).set("href", "cid:doc0@xds-node.test")
    data = b"<ClinicalDocument>with a comment</ClinicalDocument>"
    reply = _provide_elements(client, sub, el, [Attachment("doc0@xds-node.test", "text/xml", data=data)])
    assert reply.status == SUCCESS, reply.raw[:1500]
    uid = sub.documents[0].unique_id
    assert documents_of(retrieve(client, [(None, uid)])) == {uid: data}


# --- rule 5: C-CDA ids XDS cannot carry as they are ----------------------------------------------------
def test_cda_whose_id_extension_has_a_space_is_ingested(client, node, tmp_path):
    """ITI TF-3 4.2.3.2.26 limits a CDA uniqueId to oid^extension with an extension of at most 16
    characters; HL7 II allows spaces and any length. Such a document is indexed (not refused, as
    the old code did) under the mapped uniqueId the README documents, and a consumer finds and
    retrieves it by that uniqueId over ITI-18 and ITI-43."""
    root, ext = "1.3.6.1.4.1.21367.2026.1.2.1.1", "VA 24 0001 amended copy"
    text = SAMPLE.read_bytes().replace(b'<id root="1.3.6.1.4.1.21367.2026.1.2.1.1" extension="VA-24-0001"/>',
                                       f'<id root="{root}" extension="{ext}"/>'.encode(), 1)
    assert ext.encode() in text
    folder = tmp_path / "ehr-export"
    folder.mkdir()
    (folder / "ccd.xml").write_bytes(text)
    report = node.folder_indexer(folder).sync()
    assert report.registered == ["ccd.xml"] and not report.rejected, report.rejected
    uid = "2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:hl7ii:{root}:{ext}").int)
    got = _q(client, Q.GET_DOCUMENTS, XDSDocumentEntryUniqueId=f"('{uid}')")
    assert got.status == SUCCESS and len(_ids(got)) == 1
    fetched = retrieve(client, [(None, uid)])
    assert status_of(fetched) == SUCCESS
    assert hashlib.sha1(documents_of(fetched)[uid]).hexdigest() == hashlib.sha1(text).hexdigest()
