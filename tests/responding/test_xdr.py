"""XDR Document Recipient at /xdr (issue 12): a partner's ITI-41 push, over HTTP, as a partner sends it.

IHE ITI TF-1 15 (XDR) and ITI TF-2b 3.41 (ITI-41 point to point); limited metadata: ITI TF-3
4.2.3.2.29 and the XDR MS column of the TF-3 4.3.1 tables. Access as for the responding gateway
(WS-Security + SAML signed by a pinned partner); every push audited; delivered whole or not at all.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from lxml import etree

from tests import factories as f
from tests.conftest import _database_url
from tests.repository.test_provide_and_retrieve import documents_of, retrieve
from tests.responding.requester import Requester
from tests.responding.test_responding_gateway import key_template  # noqa: F401
from tests.responding.test_trust_boundary import Caller, InternalClient, ehr, pin_client  # noqa: F401
from tests.soapkit import SoapTestClient
from xds_node.admin import DEMO_PARTNER_HCID
from xds_node.config import load_settings
from xds_node.ebxml import rim, xdsb
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import Slot, StoredQuery
from xds_node.security.keys import generate_demo_keys
from xds_node.soap.mtom import Attachment
from xds_node.transactions.xdr import RECEIVED_FROM, RECEIVED_TIME

X = f"{{{v.XDSB}}}"
E = v.ErrorCode
XDR = "/xdr"
PARTNER_HCID = DEMO_PARTNER_HCID  # the demo partner of `keys init`


def push(client, sub, contents: dict[str, bytes], *, headers=(), path: str = XDR, action: str = v.Action.ITI41):
    """An ITI-41 with each document as an MTOM part, as a partner's gateway sends it."""
    docs, attachments = {}, []
    for doc_id, data in contents.items():
        el = etree.Element(X + "Document", nsmap={"xdsb": v.XDSB})
        cid = f"doc{len(attachments)}@partner.test"
        etree.SubElement(el, "{http://www.w3.org/2004/08/xop/include}Include").set("href", f"cid:{cid}")
        attachments.append(Attachment(cid, "text/xml", data=data))
        docs[doc_id] = el
    return client.call(path, action, xdsb.write_provide_request(sub, docs), attachments=attachments, mtom=True,
                       headers=list(headers))


def one_doc(pid: str, content: bytes = b"<ClinicalDocument>referral</ClinicalDocument>"):
    sub = f.submission(pid, 1)
    de = sub.documents[0]
    de.hash = de.size = de.repository_unique_id = None
    return sub, {de.id: content}


def limited(pid: str | None):
    """A Metadata-Limited Document Source's push: flagged, with only what XDR MS requires."""
    sub, contents = one_doc(pid or f.patient(1))
    ss, de = sub.submission_set, sub.documents[0]
    ss.limited_metadata = de.limited_metadata = True
    ss.content_type_code = None
    for attr in ("class_code", "type_code", "format_code", "healthcare_facility_type_code", "practice_setting_code",
                 "creation_time", "source_patient_id", "language_code"):
        setattr(de, attr, None)
    de.confidentiality_codes = []
    if pid is None:
        ss.patient_id = de.patient_id = None
    return sub, contents


def get_documents(uuid_: str) -> etree._Element:
    return rim.write_adhoc_query_request(StoredQuery(query_id=v.StoredQueryId.GET_DOCUMENTS,
                                                     slots={"$XDSDocumentEntryEntryUUID": [[f"('{uuid_}')"]]}))


def slot_values(obj: etree._Element, name: str) -> list[str] | None:
    for s in obj.iterfind(f"{{{v.RIM}}}Slot"):
        if s.get("name") == name:
            return [x.text for x in s.iter(f"{{{v.RIM}}}Value")]
    return None


def registered(node) -> int:
    from sqlalchemy import func, select

    from xds_node.registry.tables import documents

    with node.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(documents)).scalar_one()


@pytest.fixture
def make_node(tmp_path, backend, key_template, ehr):  # noqa: F811
    """A node with demo keys (the demo partner pinned) and ``boston-ehr`` as an internal client."""
    from xds_node.node import Node

    made = []

    def make(**overrides):
        shutil.copytree(key_template, tmp_path, dirs_exist_ok=True)
        settings = load_settings(env={}, data_dir=tmp_path, database_url=_database_url(backend, tmp_path),
                                 **overrides)
        pin_client(settings, ehr)
        node = Node(settings)
        client = SoapTestClient(app=node.app())
        made.append((node, client))
        return node, client, Requester.demo_partner(settings.keys_dir)

    yield make
    for node, client in made:
        client.close()
        node.close()


# --- the repository destination ------------------------------------------------------------------
def test_partner_push_is_registered_marked_as_received_and_audited(make_node):
    """ITI TF-2b 3.41 via XDR: Success; the entry is queryable and retrievable, carries who sent it
    (not our clinicians), and the push has an audit row naming the partner."""
    node, client, partner = make_node()
    pid = f.patient(4101)
    sub, contents = one_doc(pid)
    sub.submission_set.extra_slots.append(Slot(RECEIVED_FROM, ["urn:oid:9.9.9", "forged", "x"]))  # dropped
    reply = push(client, sub, contents, headers=[partner.header()])
    assert reply.status == v.ResponseStatus.SUCCESS, reply.raw[:1500]
    found = client.call("/xds/registry", v.Action.ITI18, get_documents(sub.documents[0].id))
    (entry,) = found.objects("ExtrinsicObject")
    assert slot_values(entry, RECEIVED_FROM) == [PARTNER_HCID, "demo-partner", "Dr. Demo Clinician"]
    assert slot_values(entry, RECEIVED_TIME)[0][:4].isdigit()
    assert documents_of(retrieve(client, [(None, sub.documents[0].unique_id)])) == {
        sub.documents[0].unique_id: contents[sub.documents[0].id]}
    (event,) = [e for e in node.audit.list(transaction="ITI-41") if e.endpoint == XDR]
    assert event.outcome == "success" and event.caller_kind == "partner"
    assert event.patient_id == pid and event.document_ids == [sub.documents[0].unique_id]
    assert PARTNER_HCID in (event.partner_community or "")


def test_the_connect_action_is_answered_in_kind(make_node):
    """CONNECT-based eHealth Exchange gateways send the urn:ihe:iti:xdr:2007 action (NhinXDR.wsdl)."""
    _node, client, partner = make_node()
    sub, contents = one_doc(f.patient(4102))
    reply = push(client, sub, contents, headers=[partner.header()],
                 action="urn:ihe:iti:xdr:2007:ProvideAndRegisterDocumentSet-b")
    assert reply.status == v.ResponseStatus.SUCCESS, reply.raw[:1500]
    action = reply.envelope.findtext("{*}Header/{http://www.w3.org/2005/08/addressing}Action")
    assert action == "urn:ihe:iti:xdr:2007:ProvideAndRegisterDocumentSet-bResponse"


def test_unauthenticated_unpinned_and_internal_pushes_are_refused(make_node, ehr, tmp_path_factory):  # noqa: F811
    """Only a pinned partner's signed SAML opens /xdr: no header, an unpinned signer, an internal
    client's assertion or certificate, and an anonymous loopback caller are all refused with a SOAP
    Sender fault, audited as denied, and nothing is stored."""
    node, client, partner = make_node()
    pid = f.patient(4103)
    stranger_dir = tmp_path_factory.mktemp("stranger")
    from xds_node.security.keys import load_key_and_cert

    key, cert = load_key_and_cert(*generate_demo_keys(stranger_dir, common_name="stranger"))
    stranger = Requester(key, cert, partner.ctx)
    attempts = {
        "anonymous loopback": (client, []),
        "anonymous remote": (Caller(node.app()), []),
        "unsigned assertion": (client, [partner.header(unsigned=True)]),
        "unpinned signer": (client, [stranger.header()]),
        "internal client SAML": (client, [ehr.header()]),
        "internal client TLS": (Caller(node.app(), client_cert=ehr.der), []),
    }
    for what, (caller, headers) in attempts.items():
        sub, contents = one_doc(pid)
        reply = push(caller, sub, contents, headers=headers)
        assert reply.is_fault and reply.fault_code.endswith("Sender"), (what, reply.raw[:600])
        assert reply.http_status < 500, what
    assert registered(node) == 0
    assert len(node.audit.list(outcome="denied")) == len(attempts)


def test_a_push_cannot_replace_or_refile_our_records(make_node):
    """A partner adds, never changes: an RPLC of one of our documents, or a HasMember into our
    registered SubmissionSet, is refused whole (XDSRepositoryMetadataError) and ours stays Approved."""
    node, client, partner = make_node()
    pid = f.patient(4104)
    ours = f.submission(pid, 1)
    assert node.registry.register(ours).status == v.ResponseStatus.SUCCESS
    sub, contents = one_doc(pid)
    sub.associations.append(f.relation(v.AssociationType.RPLC, sub.documents[0].id, ours.documents[0].id))
    reply = push(client, sub, contents, headers=[partner.header()])
    assert reply.status == v.ResponseStatus.FAILURE
    assert E.REPOSITORY_METADATA_ERROR in reply.error_codes
    assert registered(node) == 1
    found = client.call("/xds/registry", v.Action.ITI18, get_documents(ours.documents[0].id))
    assert found.objects("ExtrinsicObject")[0].get("status") == v.Status.APPROVED


@pytest.mark.parametrize("case", ["missing-document", "hash-mismatch", "wrong-body", "bad-metadata"])
def test_malformed_pushes_get_the_ihe_answer_and_store_nothing(make_node, case):
    """ITI TF-2b 3.41.4.1.3 / TF-3 Table 4.2.4.1-2: XDSMissingDocument, XDSRepositoryMetadataError,
    a Sender fault for the wrong body; never a 500, never a half-stored submission."""
    node, client, partner = make_node()
    sub, contents = one_doc(f.patient(4105))
    if case == "missing-document":
        reply = push(client, sub, {}, headers=[partner.header()])
        assert reply.status == v.ResponseStatus.FAILURE and E.MISSING_DOCUMENT in reply.error_codes
    elif case == "hash-mismatch":
        sub.documents[0].hash = "0" * 40
        reply = push(client, sub, contents, headers=[partner.header()])
        assert reply.status == v.ResponseStatus.FAILURE and E.REPOSITORY_METADATA_ERROR in reply.error_codes
    elif case == "wrong-body":
        reply = client.call(XDR, v.Action.ITI41, xdsb.write_retrieve_request([xdsb.DocumentRequest("1.2", "3.4")]),
                            headers=[partner.header()])
        assert reply.is_fault and reply.fault_code.endswith("Sender")
    else:
        sub.documents[0].unique_id = None
        reply = push(client, sub, contents, headers=[partner.header()])
        assert reply.status == v.ResponseStatus.FAILURE, reply.raw[:800]
        assert reply.error_codes and set(reply.error_codes) <= {E.REPOSITORY_METADATA_ERROR, E.REGISTRY_METADATA_ERROR}
    assert reply.http_status < 500
    assert registered(node) == 0
    assert not list((Path(node.settings.data_dir) / "xdr-inbox").glob("*"))


# --- limited metadata ------------------------------------------------------------------------------
def test_limited_metadata_is_accepted_at_xdr_only(make_node):
    """ITI TF-3 4.2.3.2.29: limitedMetadata is for XDR/XDM. /xds/repository refuses it
    (XDSRegistryMetadataError); /xdr accepts it and, the registry being unable to hold it,
    delivers it to the inbox folder, not the registry."""
    node, client, partner = make_node()
    sub, contents = limited(None)
    refused = push(client, sub, contents, path="/xds/repository")
    assert refused.status == v.ResponseStatus.FAILURE and E.REGISTRY_METADATA_ERROR in refused.error_codes

    sub, contents = limited(None)
    reply = push(client, sub, contents, headers=[partner.header()])
    assert reply.status == v.ResponseStatus.SUCCESS, reply.raw[:1500]
    assert registered(node) == 0
    (delivered,) = (Path(node.settings.data_dir) / "xdr-inbox").iterdir()
    received = json.loads((delivered / "received.json").read_text())
    assert received["limited_metadata"] is True and received["partner"] == "demo-partner"
    (doc,) = received["documents"]
    assert (delivered / doc["file"]).read_bytes() == contents[sub.documents[0].id]
    meta = rim.read_submit_objects_request(etree.fromstring((delivered / "metadata.xml").read_bytes()))
    assert meta.documents[0].limited_metadata and meta.documents[0].slot(RECEIVED_FROM).values[0] == PARTNER_HCID


def test_limited_metadata_still_needs_what_xdr_ms_requires(make_node):
    """The XDR MS column keeps uniqueId and mimeType required: a flagged entry without them fails."""
    node, client, partner = make_node()
    sub, contents = limited(None)
    sub.documents[0].mime_type = None
    reply = push(client, sub, contents, headers=[partner.header()])
    assert reply.status == v.ResponseStatus.FAILURE and E.REPOSITORY_METADATA_ERROR in reply.error_codes
    assert "mimeType" in reply.raw.decode()
    assert not (Path(node.settings.data_dir) / "xdr-inbox").exists() or \
        not list((Path(node.settings.data_dir) / "xdr-inbox").iterdir())


def test_an_unflagged_entry_gets_no_limited_allowance(make_node):
    """Only flagged objects are relaxed: a flagged SubmissionSet does not excuse an unflagged entry."""
    _node, client, partner = make_node()
    sub, contents = limited(f.patient(4106))
    sub.documents[0].limited_metadata = False
    reply = push(client, sub, contents, headers=[partner.header()])
    assert reply.status == v.ResponseStatus.FAILURE
    assert "classCode" in reply.raw.decode()


# --- the folder destination -------------------------------------------------------------------------
def test_folder_destination_writes_one_directory_per_submission(make_node, tmp_path):
    """xdr_destination = a folder: the documents and the metadata XML in one directory per
    submission, nothing registered, nothing half-written left behind."""
    node, client, partner = make_node(xdr_destination=str(tmp_path / "received"))
    pid = f.patient(4107)
    for n in range(2):
        sub, contents = one_doc(pid, f"<ClinicalDocument>{n}</ClinicalDocument>".encode())
        reply = push(client, sub, contents, headers=[partner.header()])
        assert reply.status == v.ResponseStatus.SUCCESS, reply.raw[:1500]
    dirs = sorted((tmp_path / "received").iterdir())
    assert len(dirs) == 2 and not [d for d in dirs if d.name.startswith(".")]
    for d in dirs:
        names = sorted(p.name for p in d.iterdir())
        assert "metadata.xml" in names and "received.json" in names and len(names) == 3
    assert registered(node) == 0
    assert [e.outcome for e in node.audit.list(transaction="ITI-41") if e.endpoint == XDR] == ["success"] * 2


def test_folder_delivery_is_undone_when_the_audit_cannot_be_written(make_node, tmp_path, monkeypatch):
    """Audit fails closed: the partner is asked to retry (503) and the delivered directory is removed."""
    node, client, partner = make_node(xdr_destination=str(tmp_path / "received"))

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(node.audit, "record", broken)
    sub, contents = one_doc(f.patient(4108))
    reply = push(client, sub, contents, headers=[partner.header()])
    assert reply.http_status == 503 and reply.is_fault
    assert not list((tmp_path / "received").iterdir())


def test_xdr_wsdl_is_published(make_node):
    """GET /xdr?wsdl: the Document Recipient's WSDL, addressed at this node's /xdr, MTOM."""
    _node, client, _partner = make_node()
    resp = client.get("/xdr?wsdl")
    assert resp.status_code == 200
    doc = etree.fromstring(resp.content)
    ops = {o.get("name") for o in doc.iter("{http://schemas.xmlsoap.org/wsdl/}operation")}
    assert ops == {"DocumentRecipient_ProvideAndRegisterDocumentSet-b"}
    (address,) = doc.iter("{http://schemas.xmlsoap.org/wsdl/soap12/}address")
    assert address.get("location").endswith("/xdr")
    assert b"OptimizedMimeSerialization" in resp.content


def test_limited_metadata_rule_set_is_data():
    """The relaxations are derived from the XDR MS column table and name real catalogue rules;
    the flag survives the codec both ways (a model-built entry and a parsed one)."""
    from xds_node.ebxml.validation import RULES_BY_ID
    from xds_node.ebxml.validation.xdr import LIMITED_USAGE, RELAXED_FOR_LIMITED

    assert set(RELAXED_FOR_LIMITED) - set(RULES_BY_ID) == set()
    assert "DE-required-classCode" in RELAXED_FOR_LIMITED and "SS-required-contentTypeCode" in RELAXED_FOR_LIMITED
    assert "DE-required-uniqueId" not in RELAXED_FOR_LIMITED and "DE-required-mimeType" not in RELAXED_FOR_LIMITED
    assert LIMITED_USAGE["DocumentEntry"]["mimeType"] == "R"
    sub, _ = limited(None)
    once = rim.read_submit_objects_request(rim.write_submit_objects_request(sub))
    twice = rim.read_submit_objects_request(rim.write_submit_objects_request(once))
    for s in (once, twice):
        assert s.submission_set.limited_metadata and s.documents[0].limited_metadata
        assert sum(c.node == v.DOC_LIMITED_METADATA for c in s.documents[0].extra_classifications) == 1


@pytest.mark.server
def test_push_registers_with_a_remote_registry_when_configured(make_node, live_node, live_client):
    """With ``registry_url`` the push is registered where ITI-41 would register it (ITI-42 to the
    remote registry), marked there as received; the local registry stays empty."""
    node, client, partner = make_node(registry_url=live_node.url + "/xds/registry")
    sub, contents = one_doc(f.patient(4109))
    sub.submission_set.id, sub.documents[0].id = "SubmissionSet01", "Document01"  # symbolic: the repository assigns
    sub.associations[0].source, sub.associations[0].target = "SubmissionSet01", "Document01"
    contents = {"Document01": next(iter(contents.values()))}
    reply = push(client, sub, contents, headers=[partner.header()])
    assert reply.status == v.ResponseStatus.SUCCESS, reply.raw[:1500]
    assert registered(node) == 0
    uuid_ = node.repository.row_for_uid(sub.documents[0].unique_id)["entry_uuid"]
    (entry,) = live_client.call("/xds/registry", v.Action.ITI18, get_documents(uuid_)).objects("ExtrinsicObject")
    assert slot_values(entry, RECEIVED_FROM)[:2] == [PARTNER_HCID, "demo-partner"]
