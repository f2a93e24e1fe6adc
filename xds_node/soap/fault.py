"""SOAP 1.2 faults as a Python exception that knows how to become (and be read back from) XML.

Any layer (envelope parsing, security, transactions) raises :class:`SoapFault`; only the HTTP
adapter turns it into bytes. Keeping the HTTP status on the exception lets a layer that knows
better (e.g. the size cap -> 413) say so without the adapter guessing.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from lxml import etree
from lxml.etree import _Element

SOAP_ENV = "http://www.w3.org/2003/05/soap-envelope"
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"

FAULT_CODES = ("VersionMismatch", "MustUnderstand", "DataEncodingUnknown", "Sender", "Receiver")

# SOAP 1.2 Part 2, 7.5.2.2 (Table 20): only env:Sender maps to 400; every other fault code is a
# 500. Kept overridable because some faults (413 body too large) have a more precise status.
_DEFAULT_STATUS = {"Sender": 400}

# Readable prefixes for subcode namespaces seen in IHE traffic; anything else gets "sc<n>".
_KNOWN_PREFIXES = {
    "http://www.w3.org/2005/08/addressing": "wsa",
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd": "wsse",
    "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0": "rs",
}


def _qname(ns: str, local: str) -> str:
    return f"{{{ns}}}{local}" if ns else local


def _split_qname(value: str | tuple[str, str]) -> tuple[str, str]:
    if isinstance(value, tuple):
        return value
    if value.startswith("{"):
        ns, _, local = value[1:].partition("}")
        return ns, local
    return "", value


class SoapFault(Exception):
    """A SOAP 1.2 fault; raise it anywhere in request processing to answer with a fault envelope.

    ``headers`` are extra SOAP header blocks for the fault envelope (``env:NotUnderstood``,
    ``env:Upgrade``), which SOAP 1.2 asks for with MustUnderstand/VersionMismatch faults;
    ``http_headers`` are extra HTTP response headers (``Retry-After`` with a 503).
    """

    def __init__(
        self,
        code: str,
        reason: str,
        *,
        subcodes: Sequence[str | tuple[str, str]] = (),
        detail: _Element | None = None,
        http_status: int | None = None,
        headers: Sequence[_Element] = (),
        http_headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        if code not in FAULT_CODES:
            raise ValueError(f"not a SOAP 1.2 fault code: {code!r}")
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.subcodes: list[str] = [_qname(*_split_qname(s)) for s in subcodes]
        self.detail = detail
        self.http_status = http_status if http_status is not None else _DEFAULT_STATUS.get(code, 500)
        self.headers: list[_Element] = list(headers)
        self.http_headers: list[tuple[str, str]] = list(http_headers)

    def __repr__(self) -> str:
        return f"SoapFault({self.code!r}, {self.reason!r}, subcodes={self.subcodes!r})"

    def to_element(self) -> _Element:
        """Build the ``env:Fault`` element (Code/Subcode chain, Reason, optional Detail)."""
        fault = etree.Element(f"{{{SOAP_ENV}}}Fault", nsmap={"soap": SOAP_ENV})
        code = etree.SubElement(fault, f"{{{SOAP_ENV}}}Code")
        etree.SubElement(code, f"{{{SOAP_ENV}}}Value").text = f"soap:{self.code}"
        parent = code
        for i, sub in enumerate(self.subcodes):
            ns, local = _split_qname(sub)
            parent = etree.SubElement(parent, f"{{{SOAP_ENV}}}Subcode")
            if ns:
                prefix = _KNOWN_PREFIXES.get(ns, f"sc{i}")
                value = etree.SubElement(parent, f"{{{SOAP_ENV}}}Value", nsmap={prefix: ns})
                value.text = f"{prefix}:{local}"
            else:
                etree.SubElement(parent, f"{{{SOAP_ENV}}}Value").text = local
        reason = etree.SubElement(fault, f"{{{SOAP_ENV}}}Reason")
        text = etree.SubElement(reason, f"{{{SOAP_ENV}}}Text")
        text.set(_XML_LANG, "en")
        text.text = self.reason
        if self.detail is not None:
            etree.SubElement(fault, f"{{{SOAP_ENV}}}Detail").append(_copy(self.detail))
        return fault

    @classmethod
    def from_element(cls, fault: _Element, *, http_status: int | None = None) -> SoapFault:
        """Read an ``env:Fault`` element back (outbound client); unknown codes become Receiver."""
        code = "Receiver"
        subcodes: list[str] = []
        value = fault.find(f"{{{SOAP_ENV}}}Code/{{{SOAP_ENV}}}Value")
        if value is not None:
            ns, local = _resolve_qname(value)
            if ns == SOAP_ENV and local in FAULT_CODES:
                code = local
            sub = value.getparent().find(f"{{{SOAP_ENV}}}Subcode")
            while sub is not None:
                sub_value = sub.find(f"{{{SOAP_ENV}}}Value")
                if sub_value is None:
                    break
                subcodes.append(_qname(*_resolve_qname(sub_value)))
                sub = sub.find(f"{{{SOAP_ENV}}}Subcode")
        texts = fault.findall(f"{{{SOAP_ENV}}}Reason/{{{SOAP_ENV}}}Text")
        reason = next((t.text or "" for t in texts if t.get(_XML_LANG, "").startswith("en")), None)
        if reason is None:
            reason = (texts[0].text or "") if texts else ""
        detail_el = fault.find(f"{{{SOAP_ENV}}}Detail")
        detail = next(detail_el.iterchildren(etree.Element), None) if detail_el is not None else None
        return cls(code, reason, subcodes=subcodes, detail=detail, http_status=http_status)


def _resolve_qname(el: _Element) -> tuple[str, str]:
    """Resolve a QName in element text against the element's in-scope namespaces."""
    text = (el.text or "").strip()
    prefix, sep, local = text.partition(":")
    if not sep:
        return el.nsmap.get(None, "") or "", text
    return el.nsmap.get(prefix, "") or "", local


def _copy(el: _Element) -> _Element:
    # Appending would move the caller's element out of its own tree; a fault can be raised
    # once and serialized more than once.
    return copy.deepcopy(el)
