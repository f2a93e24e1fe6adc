"""The ASGI app and the SOAP client, in process over httpx.ASGITransport."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
from lxml import etree

from xds_node.soap import (
    SOAP_ENV,
    WSA,
    Attachment,
    Endpoint,
    SoapApp,
    SoapClient,
    SoapFault,
    SoapRequest,
    SoapResponse,
    SoapTransportError,
    parse_envelope,
    xop_include,
)
from xds_node.soap.envelope import WSA_FAULT_ACTION

CAPTURES = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "03-messages" / "nist-message-captures"
CT = "application/soap+xml; charset=UTF-8"
T = "urn:t"
PNR = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
BASE = "http://node.test"


def envelope(
    action: str | None = "urn:t:Echo", body: str = "<t:Echo xmlns:t='urn:t'>hi</t:Echo>", extra: str = ""
) -> bytes:
    hdr = f"<wsa:MessageID>urn:uuid:req-1</wsa:MessageID>{extra}"
    if action is not None:
        hdr = f"<wsa:Action s:mustUnderstand='1'>{action}</wsa:Action>" + hdr
    return (
        f"<s:Envelope xmlns:s='{SOAP_ENV}' xmlns:wsa='{WSA}'><s:Header>{hdr}</s:Header>"
        f"<s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


# --- the service under test -----------------------------------------------------------------


class Service:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.errors: list[tuple[BaseException, SoapRequest | None]] = []
        self.seen: list[SoapRequest] = []

    async def echo(self, req: SoapRequest) -> SoapResponse:
        self.seen.append(req)
        out = etree.Element(f"{{{T}}}EchoResponse")
        out.text = req.body.text
        return SoapResponse("urn:t:EchoResponse", out)

    async def boom(self, req: SoapRequest) -> SoapResponse:
        raise RuntimeError("secret-db-password-xyz")

    async def digest(self, req: SoapRequest) -> SoapResponse:
        """Sha-256 of every base64Binary <t:Doc> (inline or XOP) or xdsb:Document."""
        docs = req.body.findall(f".//{{{T}}}Doc") + req.body.findall(".//{urn:ihe:iti:xds-b:2007}Document")
        out = etree.Element(f"{{{T}}}Digests")
        for doc in docs:
            data = req.binary(doc)
            etree.SubElement(out, f"{{{T}}}D", size=str(len(data))).text = hashlib.sha256(data).hexdigest()
        return SoapResponse("urn:t:DigestResponse", out)

    async def fetch(self, req: SoapRequest) -> SoapResponse:
        size = int(req.body.get("size", "0"))
        path = self.tmp / f"doc-{size}.bin"
        if not path.exists():
            path.write_bytes(bytes(i % 251 for i in range(size)))
        resp = SoapResponse("urn:t:FetchResponse", b"")
        doc = etree.Element(f"{{{T}}}Doc")
        doc.append(resp.attach(path, "application/pdf"))
        resp.body = etree.tostring(doc)
        return resp

    async def deny(self, req: SoapRequest) -> SoapResponse:
        raise SoapFault("Sender", "no such patient", subcodes=[("urn:t", "Denied")])

    async def check_security(self, req: SoapRequest) -> None:
        if req.body.get("insecure"):
            raise SoapFault("Sender", "Security header invalid", subcodes=[(WSSE, "InvalidSecurity")])


def make_app(tmp: Path, **kw: Any) -> tuple[SoapApp, Service]:
    svc = Service(tmp)
    wsdl = tmp / "svc.wsdl"
    wsdl.write_text(
        "<definitions xmlns='http://schemas.xmlsoap.org/wsdl/'"
        " xmlns:soap12='http://schemas.xmlsoap.org/wsdl/soap12/'"
        " xmlns:soap='http://schemas.xmlsoap.org/wsdl/soap/'>"
        "<service name='S'><port name='P12'><soap12:address location='http://placeholder/xds/test'/></port>"
        "<port name='P11'><soap:address location='http://placeholder/xds/other'/></port></service></definitions>"
    )
    ep = Endpoint(
        path="/xds/test",
        handlers={
            "urn:t:Echo": svc.echo,
            "urn:t:Boom": svc.boom,
            "urn:t:Digest": svc.digest,
            PNR: svc.digest,
            "urn:t:Fetch": svc.fetch,
            "urn:t:Deny": svc.deny,
        },
        wsdl=wsdl,
        before=[svc.check_security],
        understood=frozenset({"{urn:ok}Known"}),
    )
    kw.setdefault("on_error", lambda exc, req: svc.errors.append((exc, req)))
    return SoapApp([ep], **kw), svc


@pytest.fixture
def app(tmp_path: Path) -> tuple[SoapApp, Service]:
    return make_app(tmp_path)


def post(app: SoapApp, data: bytes, ct: str = CT, path: str = "/xds/test") -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
            return await c.post(path, content=data, headers={"content-type": ct})

    return asyncio.run(go())


def get(app: SoapApp, url: str) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
            return await c.get(url)

    return asyncio.run(go())


def fault_of(resp: httpx.Response) -> SoapFault:
    msg = parse_envelope(resp.content, resp.headers["content-type"])
    assert msg.action == WSA_FAULT_ACTION
    assert msg.body.tag == f"{{{SOAP_ENV}}}Fault"
    return SoapFault.from_element(msg.body)


# --- dispatch -------------------------------------------------------------------------------


def test_plain_dispatch_and_addressing_headers(app: tuple[SoapApp, Service]) -> None:
    soap, svc = app
    resp = post(soap, envelope())
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/soap+xml")
    msg = parse_envelope(resp.content, resp.headers["content-type"])
    assert msg.action == "urn:t:EchoResponse"
    assert msg.relates_to == "urn:uuid:req-1"
    assert msg.message_id and msg.message_id.startswith("urn:uuid:") and msg.message_id != "urn:uuid:req-1"
    assert msg.header_block(WSA, "Action").get(f"{{{SOAP_ENV}}}mustUnderstand") == "1"
    assert msg.body.text == "hi"
    assert svc.seen[0].path == "/xds/test"
    assert svc.seen[0].client_cert is None


def test_mtom_capture_request_is_parsed_and_answered_in_mtom(app: tuple[SoapApp, Service]) -> None:
    soap, _ = app
    path = CAPTURES / "config-datatypes__src__test__resources__multipart.body.txt"
    if not path.exists():
        pytest.skip("corpus not available")
    ct = (
        'multipart/related; boundary="MIMEBoundary_ba2e384099b4a244bc1c7bab88c735b4f94aeb2925619b62"; '
        'type="application/xop+xml"; start="<0.8a2e384099b4a244bc1c7bab88c735b4f94aeb2925619b62@apache.org>"; '
        'start-info="application/soap+xml"'
    )
    resp = post(soap, path.read_bytes(), ct)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("multipart/related")  # mirrors the request
    msg = parse_envelope(resp.content, resp.headers["content-type"])
    (digest,) = msg.body
    assert digest.text == hashlib.sha256(b"This is my document.\n\nIt is great!\n\n").hexdigest()


def test_inline_base64_request(app: tuple[SoapApp, Service]) -> None:
    soap, _ = app
    resp = post(soap, envelope("urn:t:Digest", "<t:Req xmlns:t='urn:t'><t:Doc>aGVsbG8=</t:Doc></t:Req>"))
    msg = parse_envelope(resp.content, resp.headers["content-type"])
    assert msg.body[0].text == hashlib.sha256(b"hello").hexdigest()
    bad = post(soap, envelope("urn:t:Digest", "<t:Req xmlns:t='urn:t'><t:Doc>a$b</t:Doc></t:Req>"))
    assert bad.status_code == 400
    assert fault_of(bad).code == "Sender"


# --- faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "ct", "status", "code"),
    [
        (
            b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]><r>&b;</r>',
            CT,
            400,
            "Sender",
        ),
        (b'<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>', CT, 400, "Sender"),
        (b"<s:Envelope xmlns:s='" + SOAP_ENV.encode() + b"'><s:Body>", CT, 400, "Sender"),
        (
            b"<e:Envelope xmlns:e='http://schemas.xmlsoap.org/soap/envelope/'><e:Body><a/></e:Body></e:Envelope>",
            "text/xml; charset=utf-8",
            500,
            "VersionMismatch",
        ),
        (envelope(action=None), CT, 400, "Sender"),
        (envelope(extra="<x:Unknown xmlns:x='urn:x' s:mustUnderstand='1'/>"), CT, 500, "MustUnderstand"),
    ],
    ids=["entity-expansion", "xxe", "malformed", "soap11", "missing-action", "must-understand"],
)
def test_bad_requests_get_soap_faults(
    app: tuple[SoapApp, Service], data: bytes, ct: str, status: int, code: str
) -> None:
    soap, svc = app
    resp = post(soap, data, ct)
    assert resp.status_code == status
    assert resp.headers["content-type"].startswith("application/soap+xml")
    assert fault_of(resp).code == code
    assert b"root:" not in resp.content  # nothing from /etc/passwd
    assert not svc.errors  # client errors are not internal errors


def test_understood_header_from_endpoint_is_accepted(app: tuple[SoapApp, Service]) -> None:
    soap, _ = app
    resp = post(soap, envelope(extra="<k:Known xmlns:k='urn:ok' s:mustUnderstand='1'/>"))
    assert resp.status_code == 200


def test_unknown_action(app: tuple[SoapApp, Service]) -> None:
    soap, _ = app
    resp = post(soap, envelope("urn:t:Nope"))
    assert resp.status_code == 400
    fault = fault_of(resp)
    assert fault.code == "Sender"
    assert fault.subcodes == [f"{{{WSA}}}ActionNotSupported"]
    assert "urn:t:Nope" in fault.reason
    msg = parse_envelope(resp.content, resp.headers["content-type"])
    assert msg.relates_to == "urn:uuid:req-1"


def test_handler_exception_is_receiver_fault_without_details(app: tuple[SoapApp, Service]) -> None:
    soap, svc = app
    resp = post(soap, envelope("urn:t:Boom"))
    assert resp.status_code == 500
    fault = fault_of(resp)
    assert (fault.code, fault.reason) == ("Receiver", "Internal error")
    assert b"secret-db-password" not in resp.content
    assert b"Traceback" not in resp.content
    ((exc, req),) = svc.errors
    assert isinstance(exc, RuntimeError)
    assert req is not None and req.action == "urn:t:Boom"


def test_before_hook_and_handler_faults_pass_through(app: tuple[SoapApp, Service]) -> None:
    soap, svc = app
    resp = post(soap, envelope(body="<t:Echo xmlns:t='urn:t' insecure='1'/>"))
    assert resp.status_code == 400
    assert fault_of(resp).subcodes == [f"{{{WSSE}}}InvalidSecurity"]
    assert not svc.seen  # the handler never ran
    resp = post(soap, envelope("urn:t:Deny"))
    assert fault_of(resp).subcodes == ["{urn:t}Denied"]
    assert not svc.errors


def test_oversized_body_by_content_length(tmp_path: Path) -> None:
    soap, _ = make_app(tmp_path, max_body_bytes=1000)
    resp = post(soap, envelope(body="<t:Echo xmlns:t='urn:t'>" + "x" * 5000 + "</t:Echo>"))
    assert resp.status_code == 413
    assert fault_of(resp).code == "Sender"


def test_oversized_streamed_body_stops_reading(tmp_path: Path) -> None:
    soap, _ = make_app(tmp_path, max_body_bytes=10_000)
    received: list[int] = []
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        received.append(1)
        return {"type": "http.request", "body": b"x" * 4096, "more_body": len(received) < 1000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/xds/test", "headers": [(b"content-type", CT.encode())]}
    asyncio.run(soap(scope, receive, send))
    assert sent[0]["status"] == 413
    assert len(received) == 3  # 12 KiB seen, the other ~4 MB never read
    assert b"Fault" in sent[1]["body"]


def test_tls_client_certificate_from_asgi_extension(app: tuple[SoapApp, Service]) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "partner.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    soap, svc = app
    body = envelope()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/xds/test",
        "headers": [(b"content-type", CT.encode())],
        "extensions": {"tls": {"client_cert_chain": [pem], "client_cert_error": None}},
    }
    asyncio.run(soap(scope, receive, send))
    assert sent[0]["status"] == 200
    assert svc.seen[0].client_cert == ssl.PEM_cert_to_DER_cert(pem)
    assert svc.seen[0].client_cert == cert.public_bytes(serialization.Encoding.DER)


# --- GET ------------------------------------------------------------------------------------


def test_wsdl_address_is_rewritten(app: tuple[SoapApp, Service]) -> None:
    soap, _ = app
    resp = get(soap, "http://node.test:8443/xds/test?wsdl")
    assert resp.status_code == 200
    doc = etree.fromstring(resp.content)
    locations = [el.get("location") for el in doc.iter("{*}address")]
    # each port keeps its own path; only the origin becomes the one the client used
    assert locations == ["http://node.test:8443/xds/test", "http://node.test:8443/xds/other"]


def test_get_without_wsdl_health_and_unknown_path(app: tuple[SoapApp, Service]) -> None:
    soap, _ = app
    assert get(soap, "/xds/test").status_code == 405
    health = get(soap, "/health")
    assert (health.status_code, health.text) == (200, "ok")
    missing = get(soap, "/nope")
    assert missing.status_code == 404
    assert post(soap, envelope(), path="/nope").status_code == 404


# --- client ---------------------------------------------------------------------------------


def client_for(soap: SoapApp) -> SoapClient:
    return SoapClient(transport=httpx.ASGITransport(app=soap))


def test_client_mtom_response_with_5mb_file_attachment_round_trip(app: tuple[SoapApp, Service], tmp_path: Path) -> None:
    soap, _ = app
    size = 5 * 1024 * 1024 + 7

    async def go() -> bytes:
        async with client_for(soap) as client:
            req = etree.Element(f"{{{T}}}Fetch", size=str(size))
            msg = await client.call(f"{BASE}/xds/test", "urn:t:Fetch", req)
            assert msg.mtom and msg.action == "urn:t:FetchResponse"
            assert msg.relates_to and msg.relates_to.startswith("urn:uuid:")
            return msg.binary(msg.body)

    data = asyncio.run(go())
    assert data == (tmp_path / f"doc-{size}.bin").read_bytes()


def test_client_sends_mtom_and_inline(app: tuple[SoapApp, Service]) -> None:
    soap, _ = app
    blob = bytes(range(256)) * 1000

    async def go() -> list[str]:
        async with client_for(soap) as client:
            req = etree.Element(f"{{{T}}}Req")
            etree.SubElement(req, f"{{{T}}}Doc").append(xop_include("part1@test"))
            att = Attachment("part1@test", "application/octet-stream", data=blob)
            mtom = await client.call(f"{BASE}/xds/test", "urn:t:Digest", req, attachments=[att])
            req2 = etree.Element(f"{{{T}}}Req")
            etree.SubElement(req2, f"{{{T}}}Doc").text = "aGVsbG8="
            plain = await client.call(f"{BASE}/xds/test", "urn:t:Digest", req2, timeout=5)
            return [mtom.body[0].text, plain.body[0].text, str(plain.mtom)]

    assert asyncio.run(go()) == [hashlib.sha256(blob).hexdigest(), hashlib.sha256(b"hello").hexdigest(), "False"]


def test_client_raises_faults_and_transport_errors(app: tuple[SoapApp, Service]) -> None:
    soap, _ = app

    async def go() -> None:
        async with client_for(soap) as client:
            with pytest.raises(SoapFault) as err:
                await client.call(f"{BASE}/xds/test", "urn:t:Deny", etree.Element("x"))
            assert (err.value.code, err.value.reason) == ("Sender", "no such patient")
            assert err.value.subcodes == ["{urn:t}Denied"]
            assert err.value.http_status == 400
            with pytest.raises(SoapFault) as err:
                await client.call(f"{BASE}/xds/test", "urn:t:Boom", etree.Element("x"))
            assert err.value.code == "Receiver"
            with pytest.raises(SoapTransportError) as terr:
                await client.call(f"{BASE}/elsewhere", "urn:t:Echo", etree.Element("x"))
            assert terr.value.status == 404

    asyncio.run(go())


def test_client_response_size_cap(app: tuple[SoapApp, Service]) -> None:
    soap, _ = app

    async def go() -> None:
        client = SoapClient(transport=httpx.ASGITransport(app=soap), max_response_bytes=10_000)
        try:
            with pytest.raises(SoapTransportError):
                await client.call(f"{BASE}/xds/test", "urn:t:Fetch", etree.Element(f"{{{T}}}Fetch", size="50000"))
        finally:
            await client.aclose()

    asyncio.run(go())
