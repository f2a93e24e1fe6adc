"""Request limits without a server: XML shape, body spooling and accounting, WSDL address, TLS floor."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from lxml import etree

from xds_node.soap import Endpoint, SoapApp, SoapFault, SoapRequest, SoapResponse
from xds_node.soap.body import BodyReader, Inflight
from xds_node.soap.envelope import build_request, parse_envelope, parse_xml
from xds_node.soap.limits import BodyLimits, XmlLimits

LIMITS = XmlLimits(max_elements=100, max_depth=10, max_bytes=1 << 20)


def doc(inner: bytes) -> bytes:
    return b"<r>" + inner + b"</r>"


# --- XML ----------------------------------------------------------------------------------


def test_element_count_at_the_limit_passes_and_one_more_fails():
    assert len(parse_xml(doc(b"<x/>" * 99), LIMITS)) == 99  # 100 elements with the root
    with pytest.raises(SoapFault, match="more than 100 elements"):
        parse_xml(doc(b"<x/>" * 100), LIMITS)


def test_large_document_with_few_elements_is_parsed_exactly():
    """'<' inside CDATA and comments inflates the cheap bound; the exact count lets it through."""
    data = doc(b"<![CDATA[" + b"<x/>" * 5000 + b"]]><!--" + b"<y>" * 5000 + b"-->" + b"<z/>" * 10)
    root = parse_xml(data, LIMITS)
    assert len(root.findall("z")) == 10


def test_depth_at_the_limit_passes_and_one_more_fails():
    assert parse_xml(b"<a>" * 10 + b"</a>" * 10, LIMITS) is not None
    with pytest.raises(SoapFault, match="deeper than 10"):
        parse_xml(b"<a>" * 11 + b"</a>" * 11, LIMITS)


def test_depth_is_checked_in_the_counted_path_too():
    deep = b"<a>" * 11 + b"</a>" * 11
    with pytest.raises(SoapFault, match="deeper than 10"):
        parse_xml(doc(b"<!--" + b"<" * 500 + b"-->" + deep), LIMITS)


def test_xml_size_limit_is_a_413_fault():
    with pytest.raises(SoapFault) as err:
        parse_xml(doc(b" " * (1 << 20)), LIMITS)
    assert err.value.http_status == 413


def test_malformed_xml_in_the_counted_path_is_a_sender_fault():
    with pytest.raises(SoapFault, match="Malformed"):
        parse_xml(b"<r><!--" + b"<" * 500 + b"--><unclosed>", LIMITS)


def test_without_limits_parse_xml_is_unchanged():
    assert len(parse_xml(doc(b"<x/>" * 500))) == 500


def test_parse_envelope_applies_the_limits():
    payload, ct, _ = build_request("urn:t", b"<t:R xmlns:t='urn:t'>" + b"<x/>" * 200 + b"</t:R>")
    assert parse_envelope(payload, ct).action == "urn:t"
    with pytest.raises(SoapFault, match="elements"):
        parse_envelope(payload, ct, limits=LIMITS)


# --- bodies -------------------------------------------------------------------------------


def receiver(chunks: list[bytes]):
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive():
        return messages.pop(0)

    return receive


def test_body_past_the_threshold_is_spooled_and_accounting_returns_to_zero(tmp_path: Path):
    limits = BodyLimits(max_bytes=1 << 20, spool_bytes=1000, spool_dir=str(tmp_path / "spool"))
    inflight = Inflight()
    reader = BodyReader(limits, inflight)
    body = asyncio.run(reader.read(receiver([b"a" * 600, b"b" * 600, b"c" * 600]), None))
    assert body == b"a" * 600 + b"b" * 600 + b"c" * 600
    assert reader.spooled
    assert inflight.memory == 0 and inflight.total == 1800
    reader.release()
    assert inflight.memory == 0 and inflight.total == 0


def test_small_bodies_stay_in_memory_until_the_shared_budget_is_used(tmp_path: Path):
    limits = BodyLimits(spool_bytes=10_000, max_inflight_memory=1500, spool_dir=str(tmp_path))
    inflight = Inflight()
    first, second = BodyReader(limits, inflight), BodyReader(limits, inflight)
    asyncio.run(first.read(receiver([b"x" * 1000]), None))
    assert not first.spooled and inflight.memory == 1000
    asyncio.run(second.read(receiver([b"y" * 1000]), None))  # would pass the shared 1500: spools
    assert second.spooled and inflight.memory == 1000
    first.release()
    second.release()
    assert (inflight.memory, inflight.total) == (0, 0)


def test_in_flight_cap_is_a_503():
    limits = BodyLimits(max_inflight=1500)
    inflight = Inflight()
    holder = BodyReader(limits, inflight)
    asyncio.run(holder.read(receiver([b"x" * 1000]), None))
    with pytest.raises(SoapFault) as err:
        asyncio.run(BodyReader(limits, inflight).read(receiver([b"y" * 1000]), None))
    assert err.value.http_status == 503


def test_silent_client_is_a_408():
    async def never():
        await asyncio.sleep(3600)

    with pytest.raises(SoapFault) as err:
        asyncio.run(BodyReader(BodyLimits(idle_timeout=0.05), Inflight()).read(never, 10))
    assert err.value.http_status == 408


def test_app_releases_the_budget_after_every_request(tmp_path: Path):
    async def echo(req: SoapRequest) -> SoapResponse:
        return SoapResponse("urn:t:EchoResponse", etree.Element("{urn:t}Ok"))

    app = SoapApp([Endpoint("/svc", {"urn:t:Echo": echo})],
                  body=BodyLimits(spool_bytes=100, spool_dir=str(tmp_path)))
    payload, ct, _ = build_request("urn:t:Echo", b"<t:R xmlns:t='urn:t'>" + b" " * 5000 + b"</t:R>")
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/svc",
             "headers": [(b"content-type", ct.encode())], "query_string": b""}
    asyncio.run(app(scope, receiver([payload[:3000], payload[3000:]]), send))
    assert sent[0]["status"] == 200
    assert (app._inflight.memory, app._inflight.total) == (0, 0)


# --- WSDL ---------------------------------------------------------------------------------


WSDL = (
    "<definitions xmlns='http://schemas.xmlsoap.org/wsdl/' xmlns:soap12='http://schemas.xmlsoap.org/wsdl/soap12/'>"
    "<service name='S'><port name='P'><soap12:address location='http://placeholder/svc'/></port></service>"
    "</definitions>"
)


def wsdl_address(app: SoapApp, host: str, server=("10.0.0.5", 8080)) -> str:
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "GET", "path": "/svc", "query_string": b"wsdl", "scheme": "http",
             "server": server, "headers": [(b"host", host.encode())]}
    asyncio.run(app(scope, receive, send))
    return etree.fromstring(sent[1]["body"]).find(".//{*}address").get("location")


@pytest.fixture
def wsdl_file(tmp_path: Path) -> Path:
    path = tmp_path / "s.wsdl"
    path.write_text(WSDL)
    return path


def endpoint(wsdl: Path) -> Endpoint:
    return Endpoint("/svc", {}, wsdl=wsdl)


def test_wsdl_foreign_host_gets_the_configured_address(wsdl_file):
    app = SoapApp([endpoint(wsdl_file)], fallback_url="http://xds.internal:8080")
    assert wsdl_address(app, "evil.example") == "http://xds.internal:8080/svc"
    bare = SoapApp([endpoint(wsdl_file)])  # nothing configured: the listening address, never the Host
    assert wsdl_address(bare, "evil.example") == "http://10.0.0.5:8080/svc"


def test_wsdl_base_url_wins_over_any_host(wsdl_file):
    app = SoapApp([endpoint(wsdl_file)], base_url="https://xds.example.org/node/", server_names=["a.example"])
    assert wsdl_address(app, "a.example") == "https://xds.example.org/node/svc"


def test_wsdl_configured_server_name_is_honoured(wsdl_file):
    app = SoapApp([endpoint(wsdl_file)], server_names=["xds.example.org"], fallback_url="http://10.0.0.5:8080")
    assert wsdl_address(app, "xds.example.org:8443") == "http://xds.example.org:8443/svc"
    assert wsdl_address(app, "xds.example.org.evil.example") == "http://10.0.0.5:8080/svc"
    assert wsdl_address(app, "xds.example.org/../x") == "http://10.0.0.5:8080/svc"


# --- TLS ----------------------------------------------------------------------------------


def test_server_tls_context_has_a_tls12_floor():
    from xds_node.httpserver import tls_context_factory

    ctx = tls_context_factory(None, lambda: ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


def test_client_tls_context_has_a_tls12_floor():
    from xds_node.soap.client import SoapClient

    lax = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    lax.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    client = SoapClient(verify=lax)
    asyncio.run(client.aclose())
    assert lax.minimum_version == ssl.TLSVersion.TLSv1_2


def test_cipher_policy_is_accepted_by_openssl():
    from xds_node.config import Settings

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_ciphers(Settings().tls_ciphers)
    names = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert names and all("GCM" in n or "CHACHA20" in n for n in names)
