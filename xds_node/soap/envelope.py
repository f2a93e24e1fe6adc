"""SOAP 1.2 envelopes in and out, as pure functions over bytes and lxml elements.

Inbound: :func:`parse_envelope` turns an HTTP body + Content-Type into a :class:`SoapRequest`
(hardened XML parsing, MTOM/XOP, mustUnderstand, WS-Addressing). Outbound:
:func:`serialize_response` / :func:`fault_envelope` write UTF-8 envelopes by concatenating bytes
around the payload, so a large pre-serialized query response is never re-parsed or copied into a
tree. The same writer builds client requests (:func:`build_request`).
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
import uuid
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from lxml import etree
from lxml.etree import _Element

from xds_node import safexml

from .fault import SOAP_ENV, SoapFault
from .limits import XmlLimits
from .mtom import Attachment, Streamed, build_multipart, new_content_id, parse_content_type, split_mtom

__all__ = [
    "DEFAULT_UNDERSTOOD",
    "SOAP11_ENV",
    "SOAP_ENV",
    "WSA",
    "WSA_ANONYMOUS",
    "WSA_FAULT_ACTION",
    "WSSE",
    "XOP",
    "Attachment",
    "SoapRequest",
    "SoapResponse",
    "build_request",
    "fault_envelope",
    "parse_envelope",
    "parse_xml",
    "safe_parser",
    "serialize_response",
    "xop_include",
]

SOAP11_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
WSA = "http://www.w3.org/2005/08/addressing"
WSA_ANONYMOUS = "http://www.w3.org/2005/08/addressing/anonymous"
WSA_FAULT_ACTION = "http://www.w3.org/2005/08/addressing/soap/fault"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
XOP = "http://www.w3.org/2004/08/xop/include"

_ENVELOPE = f"{{{SOAP_ENV}}}Envelope"
_HEADER = f"{{{SOAP_ENV}}}Header"
_BODY = f"{{{SOAP_ENV}}}Body"
_MUST_UNDERSTAND = f"{{{SOAP_ENV}}}mustUnderstand"
_ROLE = f"{{{SOAP_ENV}}}role"
_XOP_INCLUDE = f"{{{XOP}}}Include"
_ROLE_NONE = "http://www.w3.org/2003/05/soap-envelope/role/none"
_ROLES_US = frozenset(
    {
        "",
        "http://www.w3.org/2003/05/soap-envelope/role/ultimateReceiver",
        "http://www.w3.org/2003/05/soap-envelope/role/next",
    }
)

# Header blocks this layer (WS-Addressing) or the security layer (wsse:Security) processes.
DEFAULT_UNDERSTOOD = frozenset(
    {f"{{{WSA}}}{name}" for name in ("To", "From", "ReplyTo", "FaultTo", "Action", "MessageID", "RelatesTo")}
    | {f"{{{WSSE}}}Security"}
)

_ACCEPTED_TYPES = frozenset({"application/soap+xml", "text/xml", "application/xml"})
_MULTIPART = "multipart/related"

# --- hardened parsing ---------------------------------------------------------------------

_local = threading.local()
_FIRST_ELEMENT = re.compile(rb"<[A-Za-z_:\x80-\xff]")


def _new_parser() -> etree.XMLParser:
    return safexml.parser(remove_pis=True)


def safe_parser() -> etree.XMLParser:
    """The calling thread's hardened parser (lxml parsers must not be shared across threads)."""
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = _new_parser()
    return parser


_FEED_CHUNK = 64 * 1024
_COUNT_BELOW = 64 * 1024  # '<' is always counted in documents smaller than this
_depth_checks: dict[int, etree.XPath] = {}


def _deeper_than(depth: int) -> etree.XPath:
    """An XPath that is true when some element sits deeper than ``depth`` (runs in C, O(elements))."""
    xp = _depth_checks.get(depth)
    if xp is None:
        xp = _depth_checks[depth] = etree.XPath("boolean(/*" + "/*" * depth + ")")
    return xp


def _element_bound(data: bytes, limit: int) -> int:
    """An upper bound on the elements in ``data``, cheaply: every element takes a '<' and at least
    4 bytes (``<x/>``). '<' is counted (one ``bytes.count``, ~0.6 ns a byte) when the document is
    small (a tight bound) or when its length alone does not keep it under ``limit``."""
    by_length = len(data) // 4
    if by_length <= limit and len(data) > _COUNT_BELOW:
        return by_length
    return data.count(b"<")


def _parse_counted(data: bytes, limits: XmlLimits) -> _Element:
    """Incremental parse that stops at the first element past the count or depth limit.

    Used only when the cheap bound says the document may be too big, so the tree built before
    the refusal holds at most ``max_elements`` elements whatever the body's size.
    """
    parser = safexml.pull_parser(events=("start", "end"), remove_pis=True)
    count = depth = 0
    max_elements, max_depth = limits.max_elements, limits.max_depth
    view = memoryview(data)
    for offset in range(0, len(data), _FEED_CHUNK):
        parser.feed(bytes(view[offset : offset + _FEED_CHUNK]))
        for event, _ in parser.read_events():
            if event == "start":
                count += 1
                depth += 1
                if count > max_elements:
                    raise _too_many_elements(max_elements)
                if depth > max_depth:
                    raise _too_deep(max_depth)
            else:
                depth -= 1
    return parser.close()


def _too_many_elements(limit: int) -> SoapFault:
    return SoapFault("Sender", f"XML message has more than {limit} elements")


def _too_deep(limit: int) -> SoapFault:
    return SoapFault("Sender", f"XML message nests elements deeper than {limit}")


def parse_xml(data: bytes, limits: XmlLimits | None = None) -> _Element:
    """Parse untrusted XML; any DOCTYPE (entity bombs, XXE) or malformed input is a Sender fault.

    With ``limits`` the size, element count and depth are checked before a large tree is built:
    the length or a count of '<' bounds the elements, and only a document whose bound exceeds the
    limit is parsed incrementally, with an exact count that stops at the limit. Depth is checked
    on the (then small enough) tree by one XPath evaluated in C.
    """
    if limits is not None and len(data) > limits.max_bytes:
        raise SoapFault("Sender", f"XML message larger than {limits.max_bytes} bytes", http_status=413)
    # Cheap pre-check so a hostile DTD is never even parsed: a DOCTYPE can only sit in the
    # prolog, before the first element. The docinfo check below is the authoritative one.
    i = data.find(b"<!DOCTYPE")
    if i >= 0:
        m = _FIRST_ELEMENT.search(data)
        if m is None or i < m.start():
            raise SoapFault("Sender", "DTDs are not allowed in SOAP messages")
    try:
        bound = _element_bound(data, limits.max_elements) if limits is not None else 0
        if limits is not None and bound > limits.max_elements:
            root = _parse_counted(data, limits)
        else:
            root = etree.fromstring(data, safe_parser())
            if limits is not None and bound > limits.max_depth and _deeper_than(limits.max_depth)(root):
                raise _too_deep(limits.max_depth)
    except etree.XMLSyntaxError as exc:
        raise SoapFault("Sender", "Malformed XML") from exc
    except ValueError as exc:  # e.g. unicode string with encoding declaration
        raise SoapFault("Sender", "Malformed XML") from exc
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise SoapFault("Sender", "DTDs are not allowed in SOAP messages")
    return root


# --- messages -----------------------------------------------------------------------------


@dataclass
class SoapRequest:
    """A parsed inbound SOAP 1.2 message (also what :class:`SoapClient` returns for responses)."""

    envelope: _Element
    header: _Element | None
    body: _Element
    action: str
    message_id: str | None
    to: str | None
    reply_to: str | None
    headers: list[_Element]
    attachments: dict[str, Attachment]
    path: str = ""
    client_cert: bytes | None = None
    remote_address: str = ""
    principal: Any = None
    relates_to: str | None = None
    mtom: bool = False
    #: SHA-256 (hex) of the whole request as received; replay protection tells a peer's
    #: byte-identical resend from a captured header reused with another Body by it.
    raw_digest: str = ""
    #: The request names another origin (X-Forwarded-For, Forwarded or X-Real-IP): it came through
    #: a proxy, so its socket peer is not its caller (never admitted as an anonymous loopback caller).
    forwarded: bool = False

    def header_block(self, ns: str, local: str) -> _Element | None:
        """The first header block with this QName, if any."""
        tag = f"{{{ns}}}{local}"
        for block in self.headers:
            if block.tag == tag:
                return block
        return None

    def binary(self, element: _Element) -> bytes:
        """Content of a base64Binary element: an XOP reference to a MIME part, or inline base64.

        base64Binary has simple content: its only possible child is the xop:Include that MTOM puts
        in place of the bytes (XOP 1.0). An element holding other elements (an unencoded
        ClinicalDocument pasted in) is refused; read as base64 text it would be a 0-byte document.
        """
        children = [c for c in element if isinstance(c.tag, str)]  # comments and PIs are not content
        if children and (len(children) > 1 or children[0].tag != _XOP_INCLUDE):
            raise SoapFault("Sender", f"<{etree.QName(element).localname}> holds the element "
                            f"<{etree.QName(children[0]).localname}>: base64Binary content must be base64 "
                            "text or a single xop:Include")
        include = children[0] if children else None
        if include is not None:
            href = include.get("href", "")
            if href[:4].lower() != "cid:":
                raise SoapFault("Sender", "xop:Include href must be a cid: URL")
            cid = href[4:]
            att = self.attachments.get(cid) or self.attachments.get(unquote(cid))
            if att is None:
                raise SoapFault("Sender", "xop:Include refers to a missing MIME part")
            return att.read()
        text = element.text or ""
        try:
            return base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SoapFault("Sender", "Invalid base64 content") from exc


@dataclass
class SoapResponse:
    """What a handler returns. ``body`` may be pre-serialized bytes (one element, UTF-8, no decl)."""

    action: str
    body: _Element | bytes
    attachments: list[Attachment] = field(default_factory=list)
    headers: list[_Element] = field(default_factory=list)
    mtom: bool = False  # force an MTOM response even without attachments (e.g. ITI-43)

    def attach(self, data: bytes | Path | Streamed, content_type: str) -> _Element:
        """Register an attachment; put the returned xop:Include inside the base64Binary element."""
        cid = new_content_id()
        if isinstance(data, Path):
            att = Attachment(cid, content_type, path=data)
        elif isinstance(data, Streamed):
            att = Attachment(cid, content_type, source=data)
        else:
            att = Attachment(cid, content_type, data=bytes(data))
        self.attachments.append(att)
        return xop_include(cid)


def xop_include(content_id: str) -> _Element:
    """An ``xop:Include`` element pointing at the MIME part with this Content-ID."""
    el = etree.Element(_XOP_INCLUDE, nsmap={"xop": XOP})
    el.set("href", f"cid:{content_id}")
    return el


# --- parsing ------------------------------------------------------------------------------


def _text(el: _Element) -> str:
    return (el.text or "").strip()


def _missing_header(local: str) -> SoapFault:
    detail = etree.Element(f"{{{WSA}}}ProblemHeaderQName", nsmap={"wsa": WSA})
    detail.text = f"wsa:{local}"
    return SoapFault(
        "Sender",
        f"A required header representing a Message Addressing Property is not present: wsa:{local}",
        subcodes=[(WSA, "MessageAddressingHeaderRequired")],
        detail=detail,
    )


def _invalid_header(local: str) -> SoapFault:
    detail = etree.Element(f"{{{WSA}}}ProblemHeaderQName", nsmap={"wsa": WSA})
    detail.text = f"wsa:{local}"
    return SoapFault(
        "Sender",
        f"A header representing a Message Addressing Property is not valid: wsa:{local}",
        subcodes=[(WSA, "InvalidAddressingHeader")],
        detail=detail,
    )


def _not_understood(blocks: list[_Element]) -> SoapFault:
    headers = []
    for block in blocks:
        qn = etree.QName(block)
        el = etree.Element(f"{{{SOAP_ENV}}}NotUnderstood", nsmap={"soap": SOAP_ENV, "ns": qn.namespace})
        el.set("qname", f"ns:{qn.localname}")
        headers.append(el)
    names = ", ".join(etree.QName(b).text for b in blocks)
    return SoapFault("MustUnderstand", f"Header block(s) not understood: {names}"[:500], headers=headers)


def _version_mismatch() -> SoapFault:
    upgrade = etree.Element(f"{{{SOAP_ENV}}}Upgrade", nsmap={"soap": SOAP_ENV})
    supported = etree.SubElement(upgrade, f"{{{SOAP_ENV}}}SupportedEnvelope")
    supported.set("qname", "soap:Envelope")
    return SoapFault("VersionMismatch", "Only SOAP 1.2 envelopes are supported", headers=[upgrade])


def parse_envelope(
    data: bytes,
    content_type: str,
    *,
    understood: Collection[str] = frozenset(),
    require_action: bool = True,
    limits: XmlLimits | None = None,
) -> SoapRequest:
    """Parse an HTTP body into a :class:`SoapRequest` or raise a :class:`SoapFault`.

    ``understood`` adds header QNames (Clark notation) to :data:`DEFAULT_UNDERSTOOD`; a block
    with ``mustUnderstand`` targeted at us that is in neither set is a MustUnderstand fault.
    ``limits`` bounds the XML part (size, elements, depth) before its tree is built.
    """
    media, params = parse_content_type(content_type or "")
    attachments: dict[str, Attachment] = {}
    mtom = False
    if media == _MULTIPART:
        root_part, attachments = split_mtom(data, params)
        root_media, _ = parse_content_type(root_part.content_type)
        if root_media not in ("application/xop+xml", *_ACCEPTED_TYPES):
            raise SoapFault("Sender", "Unsupported root part type in multipart/related message")
        data = root_part.data
        mtom = True
    elif media not in _ACCEPTED_TYPES:
        raise SoapFault("Sender", "Unsupported Content-Type; expected application/soap+xml", http_status=415)

    envelope = parse_xml(data, limits)
    if envelope.tag != _ENVELOPE:
        qn = etree.QName(envelope)
        if qn.localname == "Envelope":  # SOAP 1.1 or some other envelope namespace
            raise _version_mismatch()
        raise SoapFault("Sender", "Not a SOAP envelope")

    header: _Element | None = None
    body: _Element | None = None
    for child in envelope.iterchildren(etree.Element):
        if child.tag == _HEADER and header is None and body is None:
            header = child
        elif child.tag == _BODY and body is None:
            body = child
        else:
            raise SoapFault("Sender", "Unexpected element in soap:Envelope")
    if body is None:
        raise SoapFault("Sender", "soap:Body is missing")
    payload = list(body.iterchildren(etree.Element))
    if len(payload) != 1:
        raise SoapFault("Sender", "soap:Body must contain exactly one element")

    headers: list[_Element] = list(header.iterchildren(etree.Element)) if header is not None else []
    action = message_id = to = reply_to = relates_to = None
    not_understood: list[_Element] = []
    for block in headers:
        tag = block.tag
        mu = block.get(_MUST_UNDERSTAND)
        if (
            mu is not None
            and mu.strip() in ("1", "true")
            and tag not in DEFAULT_UNDERSTOOD
            and tag not in understood
            and block.get(_ROLE, "").strip() in _ROLES_US
        ):
            not_understood.append(block)
        if tag.startswith("{" + WSA + "}"):
            local = tag[len(WSA) + 2 :]
            if local == "Action":
                if action is not None:
                    raise _invalid_header("Action")
                action = _text(block)
            elif local == "MessageID":
                if message_id is not None:
                    raise _invalid_header("MessageID")
                message_id = _text(block)
            elif local == "To":
                to = _text(block)
            elif local == "RelatesTo":
                relates_to = _text(block)
            elif local == "ReplyTo":
                address = block.find(f"{{{WSA}}}Address")
                reply_to = _text(address) if address is not None else None
    if not_understood:
        raise _not_understood(not_understood)
    if not action:
        if require_action:
            raise _missing_header("Action")
        action = ""
    return SoapRequest(
        envelope=envelope,
        header=header,
        body=payload[0],
        action=action,
        message_id=message_id or None,
        to=to,
        reply_to=reply_to,
        headers=headers,
        attachments=attachments,
        relates_to=relates_to,
        mtom=mtom,
    )


# --- writing ------------------------------------------------------------------------------

_ENV_OPEN = f'<soap:Envelope xmlns:soap="{SOAP_ENV}" xmlns:wsa="{WSA}"><soap:Header>'.encode()
_BODY_OPEN = b"</soap:Header><soap:Body>"
_ENV_CLOSE = b"</soap:Body></soap:Envelope>"
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"})


def _esc(value: str) -> bytes:
    return value.translate(_ESCAPES).encode("utf-8")


def _element_bytes(el: _Element) -> bytes:
    return etree.tostring(el, encoding="UTF-8", xml_declaration=False, with_tail=False)


def _payload_bytes(body: _Element | bytes) -> bytes:
    if isinstance(body, bytes | bytearray | memoryview):
        body = bytes(body)
        if body.startswith(b"<?xml"):
            end = body.find(b"?>")
            body = body[end + 2 :].lstrip() if end >= 0 else body
        return body
    return _element_bytes(body)


def _envelope(wsa: list[bytes], extra: Sequence[_Element], body: _Element | bytes) -> bytes:
    parts = [_ENV_OPEN, *wsa]
    parts.extend(_element_bytes(h) for h in extra)
    parts.append(_BODY_OPEN)
    parts.append(_payload_bytes(body))
    parts.append(_ENV_CLOSE)
    return b"".join(parts)


def _wsa_headers(
    action: str,
    *,
    relates_to: str | None = None,
    to: str | None = None,
    reply_to: bool = False,
) -> tuple[list[bytes], str]:
    message_id = f"urn:uuid:{uuid.uuid4()}"
    out = [
        b'<wsa:Action soap:mustUnderstand="1">' + _esc(action) + b"</wsa:Action>",
        b"<wsa:MessageID>" + message_id.encode("ascii") + b"</wsa:MessageID>",
    ]
    if relates_to:
        out.append(b"<wsa:RelatesTo>" + _esc(relates_to) + b"</wsa:RelatesTo>")
    if reply_to:
        out.append(b"<wsa:ReplyTo><wsa:Address>" + WSA_ANONYMOUS.encode() + b"</wsa:Address></wsa:ReplyTo>")
    if to:
        out.append(b'<wsa:To soap:mustUnderstand="1">' + _esc(to) + b"</wsa:To>")
    return out, message_id


def _soap_content_type(action: str) -> str:
    ct = "application/soap+xml; charset=UTF-8"
    if action and '"' not in action and "\\" not in action and action.isprintable() and action.isascii():
        ct += f'; action="{action}"'
    return ct


def serialize_response(
    resp: SoapResponse,
    *,
    relates_to: str | None,
    fault: bool = False,
    mtom: bool = False,
) -> tuple[bytes | Iterator[bytes], str]:
    """Write a response envelope; returns (body, Content-Type).

    The body is ``bytes`` unless an attachment is file-backed, in which case it is an iterator of
    chunks that reads the file lazily. MTOM is used when there are attachments or when ``mtom``
    (or ``resp.mtom``) asks for it; ``fault=True`` always writes a plain envelope.
    """
    wsa, _ = _wsa_headers(resp.action, relates_to=relates_to)
    xml = _envelope(wsa, resp.headers, resp.body)
    if not fault and (resp.attachments or resp.mtom or mtom):
        return build_multipart(xml, resp.attachments, action=resp.action)
    return xml, _soap_content_type(resp.action)


def fault_envelope(fault: SoapFault, *, relates_to: str | None = None) -> bytes:
    """A complete fault envelope (wsa:Action is the WS-Addressing SOAP fault action)."""
    wsa, _ = _wsa_headers(WSA_FAULT_ACTION, relates_to=relates_to)
    return _envelope(wsa, fault.headers, fault.to_element())


def build_request(
    action: str,
    body: _Element | bytes,
    *,
    to: str | None = None,
    headers: Sequence[_Element] = (),
    attachments: Sequence[Attachment] = (),
    mtom: bool = False,
) -> tuple[bytes | Iterator[bytes], str, str]:
    """Write an outbound request; returns (body, Content-Type, wsa:MessageID)."""
    wsa, message_id = _wsa_headers(action, to=to, reply_to=True)
    xml = _envelope(wsa, headers, body)
    if attachments or mtom:
        payload, ct = build_multipart(xml, attachments, action=action)
        return payload, ct, message_id
    return xml, _soap_content_type(action), message_id
