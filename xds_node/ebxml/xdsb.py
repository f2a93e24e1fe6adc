"""The XDS.b repository messages (urn:ihe:iti:xds-b:2007): provide-and-register and retrieve.

ITI-39 (XCA retrieve) uses the same elements, so both transactions read and write them here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lxml import etree

from xds_node.ebxml import rim
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import RegistryError, Submission

X = f"{{{v.XDSB}}}"
_NSMAP = {"xdsb": v.XDSB, "rs": v.RS}


class RequestError(ValueError):
    """The message is not the XDS.b request it claims to be (answered with a SOAP Sender fault)."""


@dataclass(frozen=True)
class DocumentRequest:
    repository_unique_id: str | None
    document_unique_id: str
    home_community_id: str | None = None


def _child_text(el: etree._Element, local: str) -> str | None:
    child = el.find(X + local)
    if child is None or child.text is None:
        return None
    return child.text.strip() or None


def read_provide_request(el: etree._Element) -> tuple[Submission, dict[str, etree._Element]]:
    """ProvideAndRegisterDocumentSetRequest -> (submission, Document elements by id)."""
    if el.tag != X + "ProvideAndRegisterDocumentSetRequest":
        raise RequestError(f"Expected ProvideAndRegisterDocumentSetRequest, got {etree.QName(el).localname}")
    sor = el.find(f"{{{v.LCM}}}SubmitObjectsRequest")
    if sor is None:
        raise RequestError("ProvideAndRegisterDocumentSetRequest has no lcm:SubmitObjectsRequest")
    documents: dict[str, etree._Element] = {}
    for doc in el.iterchildren(X + "Document"):
        doc_id = doc.get("id", "")
        if not doc_id or doc_id in documents:
            raise RequestError("every xdsb:Document needs a unique id attribute")
        documents[doc_id] = doc
    return rim.read_submit_objects_request(sor), documents


def read_retrieve_request(el: etree._Element) -> list[DocumentRequest]:
    if el.tag != X + "RetrieveDocumentSetRequest":
        raise RequestError(f"Expected RetrieveDocumentSetRequest, got {etree.QName(el).localname}")
    out = []
    for req in el.iterchildren(X + "DocumentRequest"):
        doc = _child_text(req, "DocumentUniqueId")
        if doc is None:
            raise RequestError("DocumentRequest without DocumentUniqueId")
        out.append(DocumentRequest(_child_text(req, "RepositoryUniqueId"), doc, _child_text(req, "HomeCommunityId")))
    if not out:
        raise RequestError("RetrieveDocumentSetRequest has no DocumentRequest")
    return out


def write_retrieve_request(requests: list[DocumentRequest]) -> etree._Element:
    root = etree.Element(X + "RetrieveDocumentSetRequest", nsmap={"xdsb": v.XDSB})
    for r in requests:
        dr = etree.SubElement(root, X + "DocumentRequest")
        if r.home_community_id:
            etree.SubElement(dr, X + "HomeCommunityId").text = r.home_community_id
        etree.SubElement(dr, X + "RepositoryUniqueId").text = r.repository_unique_id or ""
        etree.SubElement(dr, X + "DocumentUniqueId").text = r.document_unique_id
    return root


@dataclass
class DocumentResponse:
    repository_unique_id: str
    document_unique_id: str
    mime_type: str
    home_community_id: str | None = None


def write_retrieve_response(status: str, errors: list[RegistryError], documents: list[DocumentResponse],
                            attach: Callable[[DocumentResponse], etree._Element]) -> etree._Element:
    """RetrieveDocumentSetResponse; ``attach`` returns the xop:Include for each document's bytes."""
    root = etree.Element(X + "RetrieveDocumentSetResponse", nsmap=_NSMAP)
    rr = etree.SubElement(root, f"{{{v.RS}}}RegistryResponse", {"status": status})
    if errors:
        rim.write_error_list(rr, errors)
    for d in documents:
        dr = etree.SubElement(root, X + "DocumentResponse")
        if d.home_community_id:
            etree.SubElement(dr, X + "HomeCommunityId").text = d.home_community_id
        etree.SubElement(dr, X + "RepositoryUniqueId").text = d.repository_unique_id
        etree.SubElement(dr, X + "DocumentUniqueId").text = d.document_unique_id
        etree.SubElement(dr, X + "mimeType").text = d.mime_type
        etree.SubElement(dr, X + "Document").append(attach(d))
    return root


def write_provide_request(sub: Submission, documents: dict[str, etree._Element]) -> etree._Element:
    """ProvideAndRegisterDocumentSetRequest; ``documents`` maps entry id -> a filled xdsb:Document."""
    root = etree.Element(X + "ProvideAndRegisterDocumentSetRequest", nsmap={"xdsb": v.XDSB})
    root.append(rim.write_submit_objects_request(sub))
    for doc_id, el in documents.items():
        el.set("id", doc_id)
        root.append(el)
    return root
