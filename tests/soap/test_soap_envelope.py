"""Envelope parsing/writing and faults as pure functions (no HTTP)."""

from __future__ import annotations

import base64

import pytest
from lxml import etree

from xds_node.soap.envelope import (
    SOAP_ENV,
    WSA,
    WSA_FAULT_ACTION,
    SoapResponse,
    fault_envelope,
    parse_envelope,
    parse_xml,
    serialize_response,
)
from xds_node.soap.fault import SoapFault

CT = "application/soap+xml; charset=UTF-8"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"


def envelope(body: str = "<t:Ping xmlns:t='urn:t'/>", headers: str | None = None, action: str = "urn:t:Ping") -> bytes:
    if headers is None:
        headers = f"<wsa:Action s:mustUnderstand='1'>{action}</wsa:Action><wsa:MessageID>urn:uuid:1</wsa:MessageID>"
    return (
        f"<s:Envelope xmlns:s='{SOAP_ENV}' xmlns:wsa='{WSA}'><s:Header>{headers}</s:Header>"
        f"<s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def fault_of(exc_info: pytest.ExceptionInfo[SoapFault]) -> SoapFault:
    return exc_info.value


# --- hardened XML -------------------------------------------------------------------------

BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]>
<lolz a="&lol4;">&lol4;</lolz>"""
_DEEP = '<!ENTITY l0 "lol">' + "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
# A billion-laughs document whose DOCTYPE hides behind a comment and expands inside an attribute
# (libxml2 expands attribute entities even with resolve_entities=False; its amplification limit
# must stop it).
DEEP_BOMB = f'<?xml version="1.0"?><!-- <a> --><!DOCTYPE z [{_DEEP}]><z a="&l9;">&l9;</z>'.encode()


@pytest.mark.parametrize(
    "data",
    [
        BOMB,
        # A comment that looks like an element start hides the DOCTYPE from the byte pre-check:
        # the parsed-document check must still reject it.
        BOMB.replace(b"<!DOCTYPE", b"<!-- <a> --><!DOCTYPE", 1),
        DEEP_BOMB,
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>',
        b'<!DOCTYPE r SYSTEM "http://127.0.0.1:9/evil.dtd"><r/>',
    ],
)
def test_doctype_is_rejected_as_sender_fault(data: bytes) -> None:
    with pytest.raises(SoapFault) as err:
        parse_xml(data)
    assert err.value.code == "Sender"
    assert err.value.http_status == 400


@pytest.mark.parametrize("data", [b"<a><b></a>", b"", b"not xml", b"<a>&undefined;</a>"])
def test_malformed_xml_is_sender_fault(data: bytes) -> None:
    with pytest.raises(SoapFault) as err:
        parse_xml(data)
    assert err.value.code == "Sender"


def test_doctype_text_inside_content_is_fine() -> None:
    root = parse_xml(b"<a><![CDATA[<!DOCTYPE html>]]></a>")
    assert root.text == "<!DOCTYPE html>"


# --- parse_envelope -----------------------------------------------------------------------


def test_parse_plain_envelope() -> None:
    hdrs = (
        f"<wsa:Action s:mustUnderstand='true'> urn:t:Ping </wsa:Action><wsa:MessageID>urn:uuid:42</wsa:MessageID>"
        f"<wsa:To>http://x/y</wsa:To><wsa:ReplyTo><wsa:Address>{WSA}/anonymous</wsa:Address></wsa:ReplyTo>"
        f"<wsse:Security xmlns:wsse='{WSSE}' s:mustUnderstand='1'/>"
    )
    req = parse_envelope(envelope(headers=hdrs), CT)
    assert req.action == "urn:t:Ping"
    assert req.message_id == "urn:uuid:42"
    assert req.to == "http://x/y"
    assert req.reply_to == f"{WSA}/anonymous"
    assert req.body.tag == "{urn:t}Ping"
    assert req.header_block(WSSE, "Security") is not None
    assert req.header_block(WSSE, "Missing") is None
    assert len(req.headers) == 5
    assert not req.mtom


def test_soap11_envelope_is_version_mismatch() -> None:
    data = b"<e:Envelope xmlns:e='http://schemas.xmlsoap.org/soap/envelope/'><e:Body><a/></e:Body></e:Envelope>"
    with pytest.raises(SoapFault) as err:
        parse_envelope(data, "text/xml; charset=utf-8")
    fault = err.value
    assert fault.code == "VersionMismatch"
    assert fault.http_status == 500  # SOAP 1.2 Part 2, table 20
    assert fault.headers and fault.headers[0].tag == f"{{{SOAP_ENV}}}Upgrade"


def test_missing_action_is_sender_fault_with_wsa_subcode() -> None:
    with pytest.raises(SoapFault) as err:
        parse_envelope(envelope(headers="<wsa:MessageID>urn:uuid:1</wsa:MessageID>"), CT)
    assert err.value.code == "Sender"
    assert err.value.subcodes == [f"{{{WSA}}}MessageAddressingHeaderRequired"]


@pytest.mark.parametrize(
    ("attrs", "understood", "faults"),
    [
        ("s:mustUnderstand='1'", (), True),
        ("s:mustUnderstand='true'", (), True),
        ("s:mustUnderstand='0'", (), False),
        ("", (), False),
        ("s:mustUnderstand='1' s:role='http://www.w3.org/2003/05/soap-envelope/role/none'", (), False),
        ("s:mustUnderstand='1' s:role='http://www.w3.org/2003/05/soap-envelope/role/next'", (), True),
        ("s:mustUnderstand='1'", ("{urn:x}Custom",), False),
    ],
)
def test_must_understand(attrs: str, understood: tuple[str, ...], faults: bool) -> None:
    hdrs = f"<wsa:Action>urn:t:Ping</wsa:Action><x:Custom xmlns:x='urn:x' {attrs}/>"
    data = envelope(headers=hdrs)
    if not faults:
        assert parse_envelope(data, CT, understood=understood).action == "urn:t:Ping"
        return
    with pytest.raises(SoapFault) as err:
        parse_envelope(data, CT, understood=understood)
    fault = err.value
    assert fault.code == "MustUnderstand"
    (nu,) = fault.headers
    assert nu.tag == f"{{{SOAP_ENV}}}NotUnderstood"
    prefix, _, local = nu.get("qname").partition(":")
    assert (nu.nsmap[prefix], local) == ("urn:x", "Custom")


@pytest.mark.parametrize(
    ("data", "ct"),
    [
        (envelope(body=""), CT),  # empty body
        (envelope(body="<a/><b/>"), CT),  # two payload elements
        (f"<s:Envelope xmlns:s='{SOAP_ENV}'><s:Header/></s:Envelope>".encode(), CT),
        (f"<s:Envelope xmlns:s='{SOAP_ENV}'><s:Body><a/></s:Body><s:Header/></s:Envelope>".encode(), CT),
        (b"<notsoap/>", CT),
        (envelope(), "application/json"),
        (
            envelope(headers="<wsa:Action>urn:a</wsa:Action><wsa:Action>urn:b</wsa:Action>"),
            CT,
        ),
    ],
)
def test_structural_errors_are_sender_faults(data: bytes, ct: str) -> None:
    with pytest.raises(SoapFault) as err:
        parse_envelope(data, ct)
    assert err.value.code == "Sender"


def test_inline_base64_and_invalid_base64() -> None:
    payload = bytes(range(256))
    b64 = base64.encodebytes(payload).decode()  # with line breaks, as many peers send it
    req = parse_envelope(envelope(body=f"<t:Doc xmlns:t='urn:t'>{b64}</t:Doc>"), CT)
    assert req.binary(req.body) == payload
    req = parse_envelope(envelope(body="<t:Doc xmlns:t='urn:t'>@@not base64@@</t:Doc>"), CT)
    with pytest.raises(SoapFault) as err:
        req.binary(req.body)
    assert err.value.code == "Sender"


# --- writing ------------------------------------------------------------------------------


def test_serialize_response_headers_and_bytes_body() -> None:
    resp = SoapResponse("urn:t:PingResponse", b"<?xml version='1.0'?><t:Pong xmlns:t='urn:t'>ok &amp; fine</t:Pong>")
    body, ct = serialize_response(resp, relates_to="urn:uuid:<&>")
    assert isinstance(body, bytes)
    assert ct.startswith("application/soap+xml") and 'action="urn:t:PingResponse"' in ct
    env = etree.fromstring(body)
    action = env.find(f"{{{SOAP_ENV}}}Header/{{{WSA}}}Action")
    assert action.text == "urn:t:PingResponse"
    assert action.get(f"{{{SOAP_ENV}}}mustUnderstand") == "1"
    assert env.findtext(f"{{{SOAP_ENV}}}Header/{{{WSA}}}RelatesTo") == "urn:uuid:<&>"
    assert env.findtext(f"{{{SOAP_ENV}}}Header/{{{WSA}}}MessageID").startswith("urn:uuid:")
    assert env.find(f"{{{SOAP_ENV}}}Body/{{urn:t}}Pong").text == "ok & fine"


def test_element_body_and_extra_headers_and_message_ids_differ() -> None:
    el = etree.Element("{urn:t}Pong")
    el.tail = "tail must not leak"
    extra = etree.Element("{urn:h}Extra")
    resp = SoapResponse("urn:t:R", el, headers=[extra])
    first, _ = serialize_response(resp, relates_to=None)
    second, _ = serialize_response(resp, relates_to=None)
    assert isinstance(first, bytes) and isinstance(second, bytes)
    assert b"tail must not leak" not in first
    req1 = parse_envelope(first, CT, understood={"{urn:h}Extra"})
    req2 = parse_envelope(second, CT)
    assert req1.header_block("urn:h", "Extra") is not None
    assert req1.relates_to is None
    assert req1.message_id != req2.message_id


def test_fault_round_trip_with_subcodes_and_detail() -> None:
    detail = etree.Element("{urn:d}Why")
    detail.text = "because"
    fault = SoapFault(
        "Sender",
        "Bad security header",
        subcodes=[(WSSE, "InvalidSecurity"), "{urn:own}Deeper"],
        detail=detail,
    )
    assert fault.http_status == 400
    data = fault_envelope(fault, relates_to="urn:uuid:9")
    req = parse_envelope(data, CT)
    assert req.action == WSA_FAULT_ACTION
    assert req.relates_to == "urn:uuid:9"
    back = SoapFault.from_element(req.body)
    assert back.code == "Sender"
    assert back.reason == "Bad security header"
    assert back.subcodes == [f"{{{WSSE}}}InvalidSecurity", "{urn:own}Deeper"]
    assert back.detail is not None and back.detail.text == "because"
    # Serializing twice must not move the detail element out of the fault.
    assert fault_envelope(fault).count(b"because") == 1


def test_fault_codes_and_status() -> None:
    assert SoapFault("Receiver", "x").http_status == 500
    assert SoapFault("Sender", "x", http_status=413).http_status == 413
    with pytest.raises(ValueError):
        SoapFault("Client", "SOAP 1.1 code")
