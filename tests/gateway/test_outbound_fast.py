"""The fan-out fast paths of the outbound client: the template-built ``wsse:Security`` header (its
bytes are exactly lxml's exclusive C14N and it verifies like the lxml-built one) and the lean
HTTP/1.1 client (framing, keep-alive, stale connections, caps, timeouts), against a scripted
asyncio server in this process."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from lxml import etree

from xds_node.ebxml import vocabulary as v
from xds_node.gateway.outbound import (
    _PLACEHOLDER,
    AssertionCache,
    OutboundClient,
    PartnerOptions,
    _splice,
)
from xds_node.security.keys import generate_demo_keys, load_key_and_cert
from xds_node.security.saml import InboundVerifier, RequesterContext, SecurityPolicy
from xds_node.security.trust import Partner, TrustStore
from xds_node.security.wss import (
    DS,
    WSSE,
    WSU,
    SecurityFault,
    build_security_header,
    exc_c14n,
    parse_xml,
    security_header_bytes,
)
from xds_node.soap.client import SoapTransportError
from xds_node.soap.envelope import build_request, parse_envelope
from xds_node.soap.fault import SoapFault

OURS = "urn:oid:1.3.6.1.4.1.21367.2026.7.1"
CTX = RequesterContext(subject_id="Dr. Jane Example", organization="VA Test", organization_id=OURS,
                       home_community_id=OURS, role=("112247003", "2.16.840.1.113883.6.96", "Medical doctor"),
                       purpose_of_use=("TREATMENT", "2.16.840.1.113883.3.18.7.1", "Treatment"))


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("fast-keys")
    return load_key_and_cert(*generate_demo_keys(d, common_name="VA initiating gateway"))


def _verifier(keys, *, allow_sha1: bool = False) -> InboundVerifier:
    return InboundVerifier(TrustStore([Partner("va", OURS, certificates=[keys[1]], allow_sha1=allow_sha1)]),
                           SecurityPolicy())


def _message(header: bytes):
    """The header spliced into a request the way OutboundClient does it, parsed as a partner would."""
    payload, ct, _ = build_request(v.Action.ITI38, b"<x/>", to="http://p.test/xca/query", headers=[_PLACEHOLDER])
    assert isinstance(payload, bytes)
    return parse_envelope(_splice(payload, header), ct)


# --- the template-built Security header --------------------------------------------------------
@pytest.mark.parametrize("sha1", [False, True])
def test_template_header_is_canonical_and_verifies(keys, sha1):
    cache = AssertionCache(keys[0], keys[1], issuer="CN=VA initiating gateway")
    assertion_id, assertion_xml = cache.get_serialized(CTX, sha1=sha1)
    raw = security_header_bytes(assertion_id, assertion_xml, keys[0], sha1=sha1)
    msg = _message(raw)
    sec = msg.header_block(WSSE, "Security")
    ts = sec.find(f"{{{WSU}}}Timestamp")
    si = sec.find(f"{{{DS}}}Signature/{{{DS}}}SignedInfo")
    # what we hashed and signed is byte for byte lxml's exclusive C14N of what the partner parses
    ts_c14n, si_c14n = exc_c14n(ts), exc_c14n(si)
    assert ts_c14n in raw and si_c14n in raw
    digest = hashlib.new("sha1" if sha1 else "sha256", ts_c14n).digest()
    assert si.findtext(f".//{{{DS}}}DigestValue") == base64.b64encode(digest).decode()
    value = base64.b64decode(sec.findtext(f"{{{DS}}}Signature/{{{DS}}}SignatureValue"))
    keys[1].public_key().verify(value, si_c14n, padding.PKCS1v15(), hashes.SHA1() if sha1 else hashes.SHA256())
    # the same shape as the lxml-built header
    reference = build_security_header(cache.get(CTX, sha1=sha1), keys[0], keys[1], sha1=sha1)
    assert [el.tag for el in sec.iter()] == [el.tag for el in reference.iter()]
    principal = _verifier(keys, allow_sha1=sha1).verify(sec, msg.envelope)
    assert principal.subject_id == "Dr. Jane Example"


def test_template_header_tampered_or_replayed_is_refused(keys):
    cache = AssertionCache(keys[0], keys[1], issuer="CN=VA initiating gateway")
    raw = security_header_bytes(*cache.get_serialized(CTX), keys[0])
    later = re.sub(rb"(<wsu:Expires>[^<]*)\d\d\dZ", rb"\g<1>999Z", raw)
    assert later != raw
    verifier = _verifier(keys)
    with pytest.raises(SecurityFault) as err:
        verifier.verify(*_sec(later))
    assert err.value.code == "wsse:FailedCheck"
    verifier.verify(*_sec(raw))
    with pytest.raises(SecurityFault):  # the partner's replay cache keys on the signature
        verifier.verify(*_sec(raw))


def _sec(raw: bytes):
    msg = _message(raw)
    return msg.header_block(WSSE, "Security"), msg.envelope


def test_every_message_gets_its_own_timestamp_and_signature(keys):
    client = OutboundClient(AssertionCache(keys[0], keys[1], issuer="CN=VA initiating gateway"), signing_threads=2)

    async def main():
        try:
            return await asyncio.gather(*(client._security_header(CTX, PartnerOptions()) for _ in range(8)))
        finally:
            await client.aclose()

    headers = asyncio.run(main())
    stamps = {parse_xml(h).find(f"{{{WSU}}}Timestamp").get(f"{{{WSU}}}Id") for h in headers}
    values = {parse_xml(h).findtext(f"{{{DS}}}Signature/{{{DS}}}SignatureValue") for h in headers}
    assert len(stamps) == len(values) == 8
    assert client.headers_built == 8
    for h in headers:
        _verifier(keys).verify(*_sec(h))
    # the element form (for callers that want one) is the same header
    assert etree.QName(client.security_header(CTX, PartnerOptions())).localname == "Security"


# --- the lean HTTP/1.1 client ------------------------------------------------------------------
def _soap(body: bytes = b'<q:AdhocQueryResponse xmlns:q="urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0" '
                        b'status="urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"/>') -> bytes:
    return (b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body>' + body
            + b"</s:Body></s:Envelope>")


FAULT = _soap(b"<s:Fault><s:Code><s:Value>s:Receiver</s:Value></s:Code><s:Reason>"
              b'<s:Text xml:lang="en">registry down</s:Text></s:Reason></s:Fault>')
CT = b"Content-Type: application/soap+xml; charset=UTF-8\r\n"


def _chunked(data: bytes) -> bytes:
    return b"".join(b"%x;ext=1\r\n%s\r\n" % (len(data[i:i + 7]), data[i:i + 7]) for i in range(0, len(data), 7))


class Scripted:
    """Answers each request by its path: /ok, /chunked, /close, /continue, /fault, /big, /slow, /drop."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []
        #: close the next kept-alive connection that gets a second request, without answering it
        self.drop_next_reuse = False

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                n = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
                await reader.readexactly(n)
                served += 1
                if served > 1 and self.drop_next_reuse:
                    self.drop_next_reuse = False
                    break
                self.requests.append(head)
                path = head.split(b" ")[1]
                ok = _soap()
                if path == b"/ok":
                    writer.write(b"HTTP/1.1 200 OK\r\n" + CT + b"Content-Length: %d\r\n\r\n" % len(ok) + ok)
                elif path == b"/chunked":
                    writer.write(b"HTTP/1.1 200 OK\r\n" + CT + b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(ok)
                                 + b"0\r\nX-Trailer: yes\r\n\r\n")
                elif path == b"/continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n" + CT
                                 + b"Content-Length: %d\r\n\r\n" % len(ok) + ok)
                elif path == b"/close":  # no length: the answer ends with the connection
                    writer.write(b"HTTP/1.1 200 OK\r\n" + CT + b"Connection: close\r\n\r\n" + ok)
                    await writer.drain()
                    break
                elif path == b"/fault":
                    writer.write(b"HTTP/1.1 500 Internal Server Error\r\n" + CT
                                 + b"Content-Length: %d\r\n\r\n" % len(FAULT) + FAULT)
                elif path == b"/big":
                    writer.write(b"HTTP/1.1 200 OK\r\n" + CT + b"Content-Length: 100000\r\n\r\n" + b" " * 100000)
                elif path == b"/slow":
                    await asyncio.sleep(5)
                elif path == b"/garbage":
                    writer.write(b"SMTP ready\r\n\r\n")
                elif path == b"/drop":
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _client(**kw) -> OutboundClient:
    return OutboundClient(None, max_response_bytes=64 * 1024, **kw)


def _call(client: OutboundClient, port: int, path: str, *, timeout: float = 5.0):
    p = Partner("p", "urn:oid:1.2.3", endpoints={"xca_query": f"http://127.0.0.1:{port}{path}"},
                options={"timeout": timeout})
    return client.call(p, p.endpoints["xca_query"], v.Action.ITI38, b"<x/>", None)


def test_lean_http_framings_and_keep_alive():
    async def main():
        server = Scripted()
        port = await server.start()
        async with _client() as client:
            for path in ("/ok", "/chunked", "/continue", "/ok"):
                reply = await _call(client, port, path)
                assert reply.body.tag == "{urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0}AdhocQueryResponse"
            assert server.connections == 1  # one kept-alive connection for all four
            reply = await _call(client, port, "/close")
            assert reply.body.get("status", "").endswith("Success")
            await _call(client, port, "/ok")
            assert server.connections == 2  # the closed one was not reused
        head = server.requests[0]
        assert head.startswith(b"POST /ok HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % port)
        assert b'action="urn:ihe:iti:2007:CrossGatewayQuery"' in head
        server.server.close()

    asyncio.run(main())


def test_lean_http_recovers_from_a_connection_the_server_dropped():
    async def main():
        server = Scripted()
        port = await server.start()
        async with _client() as client:
            await _call(client, port, "/ok")
            for w in server.writers:  # the server closes its idle keep-alive connection
                w.close()
            await asyncio.sleep(0.05)
            await _call(client, port, "/ok")
            assert server.connections == 2
            # the race: the server drops the connection as our request arrives on it
            server.drop_next_reuse = True
            await _call(client, port, "/ok")
            assert server.connections == 3 and not server.drop_next_reuse
            with pytest.raises(SoapTransportError):  # a fresh connection dropped is an error, not a loop
                await _call(client, port, "/drop")
        server.server.close()

    asyncio.run(main())


def test_lean_http_errors_map_to_transport_errors_and_faults():
    async def main():
        server = Scripted()
        port = await server.start()
        async with _client() as client:
            with pytest.raises(SoapFault) as fault:
                await _call(client, port, "/fault")
            assert fault.value.reason == "registry down"
            with pytest.raises(SoapTransportError, match="exceeds"):
                await _call(client, port, "/big")
            with pytest.raises(SoapTransportError, match="unusable HTTP answer"):
                await _call(client, port, "/garbage")
            with pytest.raises(SoapTransportError) as slow:
                await _call(client, port, "/slow", timeout=0.2)
            assert slow.value.timeout
            before = server.connections
            await _call(client, port, "/ok")  # a timed-out connection is never reused
            assert server.connections == before + 1
        server.server.close()
        with pytest.raises(SoapTransportError) as refused:
            async with _client() as client:
                await _call(client, port, "/ok")
        assert not refused.value.timeout

    asyncio.run(main())
