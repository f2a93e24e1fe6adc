"""The outbound client's HTTP against scripted servers on 127.0.0.1 (real sockets, aiohttp in
between): compressed answers and decompression bombs, answers too large to hold, redirects never
followed, TLS verification (refused without our CA, mutual TLS with it), MTOM answers parsed by the
shared MIME parser and spooled, and the proxy resolution rules."""

from __future__ import annotations

import asyncio
import gzip
import os
import re
import socket
import ssl
import zlib
from pathlib import Path

import pytest

from xds_node.ebxml import vocabulary as v
from xds_node.gateway.http import ProxySettings, make_ssl_context, mask
from xds_node.gateway.outbound import OutboundClient, document_content
from xds_node.security.keys import generate_demo_keys
from xds_node.security.trust import Partner, valid_proxy
from xds_node.soap.client import SoapTransportError
from xds_node.soap.mtom import Attachment, build_multipart

XOP = "http://www.w3.org/2004/08/xop/include"
OK = (b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body>'
      b'<q:AdhocQueryResponse xmlns:q="urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0" '
      b'status="urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"/></s:Body></s:Envelope>')
SOAP_CT = b"application/soap+xml; charset=UTF-8"


class Server:
    """Answers each request by path with ``routes[path](head) -> bytes`` (a whole HTTP answer, or
    an async iterator of pieces); keeps every request head."""

    def __init__(self, routes, *, tls: ssl.SSLContext | None = None) -> None:
        self.routes = routes
        self.tls = tls
        self.heads: list[bytes] = []
        self.tls_errors = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0, ssl=self.tls)
        return self.server.sockets[0].getsockname()[1]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                n = re.search(rb"(?i)content-length: (\d+)", head)
                await reader.readexactly(int(n.group(1)) if n else 0)
                self.heads.append(head)
                answer = self.routes[head.split(b" ")[1].decode()](head)
                if isinstance(answer, bytes):
                    writer.write(answer)
                else:
                    async for piece in answer:
                        writer.write(piece)
                        await writer.drain()
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        self.server.close()


def http(body: bytes, *, ctype: bytes = SOAP_CT, status: bytes = b"200 OK", extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype + b"\r\nContent-Length: %d\r\n" % len(body)
            + extra + b"\r\n" + body)


def partner(url: str, **kw) -> Partner:
    return Partner("p", "urn:oid:1.2.3", endpoints={"xca_query": url}, options={"timeout": 10.0}, **kw)


def call(client: OutboundClient, url: str, *, action: str = v.Action.ITI38, mtom: bool = False, **kw):
    p = partner(url, **kw)
    return client.call(p, url, action, b"<x/>", None, mtom=mtom)


def run_with(routes, body, *, tls: ssl.SSLContext | None = None, **client_kw):
    """Start a server with ``routes``, run ``body(client, base_url, server)`` against it."""

    async def main():
        server = Server(routes, tls=tls)
        port = await server.start()
        base = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        try:
            async with OutboundClient(None, proxies=ProxySettings({}), **client_kw) as client:
                return await body(client, base, server)
        finally:
            server.close()

    return asyncio.run(main())


# --- compressed answers ----------------------------------------------------------------------
def _deflate_raw(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


@pytest.mark.parametrize(("coding", "encode"), [
    (b"gzip", gzip.compress), (b"x-gzip", gzip.compress), (b"deflate", zlib.compress), (b"deflate", _deflate_raw),
    (b"gzip", lambda d: gzip.compress(d[:40]) + gzip.compress(d[40:])),  # two gzip members
])
def test_compressed_answers_are_accepted_and_asked_for(coding, encode):
    routes = {"/q": lambda head: http(encode(OK), extra=b"Content-Encoding: " + coding + b"\r\n")}

    async def body(client, base, server):
        reply = await call(client, base + "/q")
        assert reply.body.get("status", "").endswith("Success")
        assert re.search(rb"(?im)^accept-encoding: gzip, deflate\r$", server.heads[0])

    run_with(routes, body)


def test_decompression_bomb_is_refused_at_the_cap_not_inflated():
    bomb = gzip.compress(b"<" + b" " * (64 << 20))  # 64 MiB of spaces: about 64 KB on the wire
    assert len(bomb) < 200_000
    routes = {"/bomb": lambda head: http(bomb, extra=b"Content-Encoding: gzip\r\n"),
              "/ok": lambda head: http(gzip.compress(OK), extra=b"Content-Encoding: gzip\r\n")}

    async def body(client, base, server):
        with pytest.raises(SoapTransportError, match=r"decoded answer exceeds 1048576 bytes"):
            await call(client, base + "/bomb")
        # the same partner's honest compressed answer still works
        assert (await call(client, base + "/ok")).body.get("status", "").endswith("Success")

    run_with(routes, body, max_decompressed_bytes=1 << 20)


def test_mtom_answer_bomb_is_refused_and_leaves_no_spool_files(tmp_path):
    data, ct = build_multipart(b"<x/>", [Attachment("a@x", "application/octet-stream", data=b"\0" * (8 << 20))])
    assert isinstance(data, bytes)
    routes = {"/r": lambda head: http(gzip.compress(data), ctype=ct.encode(), extra=b"Content-Encoding: gzip\r\n")}

    async def body(client, base, server):
        with pytest.raises(SoapTransportError, match="exceeds"):
            await call(client, base + "/r", mtom=True)

    run_with(routes, body, max_decompressed_bytes=1 << 20, spool_dir=tmp_path / "spool", memory_limit=4096)
    assert not list((tmp_path / "spool").glob("*"))


@pytest.mark.parametrize(("headers", "payload", "match"), [
    (b"Content-Encoding: br\r\n", OK, "unsupported Content-Encoding"),
    (b"Content-Encoding: gzip\r\n", b"not gzip at all", "invalid gzip body"),
    (b"Content-Encoding: gzip\r\n", gzip.compress(OK)[:-12], "truncated gzip body"),
    (b"Content-Encoding: gzip, gzip\r\n", gzip.compress(gzip.compress(OK)), "unsupported Content-Encoding"),
])
def test_bad_or_unknown_codings_are_transport_errors(headers, payload, match):
    routes = {"/q": lambda head: http(payload, extra=headers)}

    async def body(client, base, server):
        with pytest.raises(SoapTransportError, match=match):
            await call(client, base + "/q")

    run_with(routes, body)


# --- a partner answering far too much -------------------------------------------------------------
async def _endless(head: bytes):
    """10 GB announced, then as much as the reader takes (chunked, so no length warns the client)."""
    yield b"HTTP/1.1 200 OK\r\nContent-Type: application/soap+xml\r\nTransfer-Encoding: chunked\r\n\r\n"
    piece = b"%x\r\n%s\r\n" % (1 << 16, b" " * (1 << 16))
    for _ in range((10 << 30) >> 16):
        yield piece


def test_huge_answers_are_refused_at_the_cap():
    routes = {"/announced": lambda head: b"HTTP/1.1 200 OK\r\nContent-Type: application/soap+xml\r\n"
                                         b"Content-Length: 10737418240\r\n\r\n<",
              "/endless": _endless}

    async def body(client, base, server):
        with pytest.raises(SoapTransportError, match="exceeds 1048576 bytes"):
            await call(client, base + "/announced")
        with pytest.raises(SoapTransportError, match="exceeds 1048576 bytes"):
            await call(client, base + "/endless")

    run_with(routes, body, max_response_bytes=1 << 20)


def test_huge_mtom_part_is_refused_and_its_spool_file_removed(tmp_path):
    boundary = b"MIMEBoundary_huge"
    ct = b'multipart/related; boundary="MIMEBoundary_huge"; type="application/xop+xml"'

    async def huge(head: bytes):
        yield b"HTTP/1.1 200 OK\r\nContent-Type: " + ct + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        first = (b"--" + boundary + b"\r\nContent-Type: application/xop+xml\r\n\r\n" + OK + b"\r\n--" + boundary
                 + b"\r\nContent-ID: <big@x>\r\nContent-Type: application/octet-stream\r\n\r\n")
        yield b"%x\r\n%s\r\n" % (len(first), first)
        piece = b"%x\r\n%s\r\n" % (1 << 16, os.urandom(1 << 16))
        for _ in range((10 << 30) >> 16):
            yield piece

    async def body(client, base, server):
        with pytest.raises(SoapTransportError, match=r"exceeds 4194304 bytes|MIME part larger than 4194304 bytes"):
            await call(client, base + "/huge", mtom=True)

    run_with({"/huge": huge}, body, max_attachment_bytes=4 << 20, spool_dir=tmp_path / "spool", memory_limit=4096)
    assert not list((tmp_path / "spool").glob("*"))


# --- redirects ----------------------------------------------------------------------------------
def test_redirects_are_never_followed():
    routes = {"/moved": lambda head: b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /elsewhere\r\n"
                                     b"Content-Length: 0\r\n\r\n",
              "/elsewhere": lambda head: http(OK)}

    async def body(client, base, server):
        with pytest.raises(SoapTransportError) as err:
            await call(client, base + "/moved")
        assert err.value.status == 307
        assert [h.split(b" ")[1] for h in server.heads] == [b"/moved"]  # the signed message went nowhere else

    run_with(routes, body)


# --- MTOM answers: the shared parser, streamed ----------------------------------------------------
def test_mtom_answer_parts_are_spooled_and_found_by_xop_include(tmp_path):
    big = os.urandom(300_000)
    root = (b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body><r xmlns:xop="' + XOP.encode()
            + b'"><Document><xop:Include href="cid:big%40x"/></Document><Document><xop:Include href="cid:small@x"/>'
            b"</Document><Document><xop:Include href=\"cid:gone@x\"/></Document></r></s:Body></s:Envelope>")
    data, ct = build_multipart(root, [Attachment("big@x", "application/pdf", data=big),
                                      Attachment("small@x", "text/plain", data=b"<small/>")])
    assert isinstance(data, bytes)

    async def chunked(head: bytes):  # in odd pieces, so parts straddle reads
        yield b"HTTP/1.1 200 OK\r\nContent-Type: " + ct.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        for i in range(0, len(data), 4093):
            piece = data[i:i + 4093]
            yield b"%x\r\n%s\r\n" % (len(piece), piece)
        yield b"0\r\n\r\n"

    async def body(client, base, server):
        return await call(client, base + "/r", mtom=True)

    reply = run_with({"/r": chunked}, body, spool_dir=tmp_path / "spool", memory_limit=64 * 1024)
    docs = reply.body.findall(".//Document")
    spooled = document_content(reply, docs[0])  # href percent-encoded: cid:big%40x
    assert spooled.path is not None and spooled.path.parent == tmp_path / "spool" and spooled.path.read_bytes() == big
    assert document_content(reply, docs[1]).data == b"<small/>"
    from xds_node.soap.fault import SoapFault

    with pytest.raises(SoapFault, match="missing MIME part"):
        document_content(reply, docs[2])


@pytest.mark.parametrize(("ctype", "payload", "match"), [
    (b"multipart/related; type=\"application/xop+xml\"", b"--b1\r\n\r\n<x/>\r\n--b1--", "valid boundary"),
    (b'multipart/related; boundary="b1"', b"--b1\r\nContent-ID: <r>\r\n\r\n" + OK, "truncated"),
    (b'multipart/related; boundary="b1"', b"--b1\r\nBroken header line\r\n\r\n" + OK + b"\r\n--b1--", "malformed"),
    (b'multipart/related; boundary="b1"', b"--b1\r\n" + b"X-H: y\r\n" * 70 + b"\r\n" + OK + b"\r\n--b1--",
     "too many MIME part header lines"),
    (b'multipart/related; boundary="b1"; start="<nope>"', b"--b1\r\nContent-ID: <r>\r\n\r\n" + OK + b"\r\n--b1--",
     "start part not found"),
])
def test_malformed_mtom_answers_are_transport_errors(ctype, payload, match, tmp_path):
    routes = {"/r": lambda head: http(payload, ctype=ctype)}

    async def body(client, base, server):
        with pytest.raises(SoapTransportError, match=match):
            await call(client, base + "/r", mtom=True)

    run_with(routes, body, spool_dir=tmp_path / "spool")


# --- TLS ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    server = generate_demo_keys(d / "server", common_name="partner tls")  # SAN 127.0.0.1
    client = generate_demo_keys(d / "client", common_name="our tls client")
    return {"server": server, "client": client}


def _server_tls(files, *, require_client: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    key, cert = files["server"]
    ctx.load_cert_chain(str(cert), str(key))
    if require_client:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(str(files["client"][1]))
    return ctx


def test_tls_partner_certificate_is_verified(tls_files):
    routes = {"/q": lambda head: http(OK)}
    tls = _server_tls(tls_files, require_client=False)

    async def refused(client, base, server):
        with pytest.raises(SoapTransportError, match=r"(?i)certificate verify failed"):
            await call(client, base + "/q")

    run_with(routes, refused, tls=tls)  # system CAs: our partner's self-signed certificate is not trusted

    async def ok(client, base, server):
        return await call(client, base + "/q")

    reply = run_with(routes, ok, tls=tls, verify=make_ssl_context(ca_file=str(tls_files["server"][1])))
    assert reply.body.get("status", "").endswith("Success")


def test_mutual_tls_presents_our_client_certificate(tls_files):
    routes = {"/q": lambda head: http(OK)}
    tls = _server_tls(tls_files, require_client=True)
    ca = str(tls_files["server"][1])

    async def ok(client, base, server):
        return await call(client, base + "/q")

    key, cert = tls_files["client"]
    reply = run_with(routes, ok, tls=tls, verify=make_ssl_context(ca_file=ca, client_cert=(str(cert), str(key))))
    assert reply.body.get("status", "").endswith("Success")

    async def refused(client, base, server):
        with pytest.raises(SoapTransportError):
            await call(client, base + "/q")

    run_with(routes, refused, tls=tls, verify=make_ssl_context(ca_file=ca))


def test_outbound_tls_floor_is_1_2(tls_files):
    ctx = make_ssl_context(ca_file=str(tls_files["server"][1]))
    assert isinstance(ctx, ssl.SSLContext) and ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    lax = ssl.create_default_context()
    lax.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    client = OutboundClient(None, verify=lax)
    assert client._http.verify.minimum_version == ssl.TLSVersion.TLSv1_2  # type: ignore[attr-defined]


# --- proxy rules ----------------------------------------------------------------------------------
def test_proxy_resolution_from_environment_and_partner(monkeypatch):
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "no_proxy", "ALL_PROXY",
                 "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://u:p@proxy.example:3128")
    monkeypatch.setenv("HTTP_PROXY", "proxy.example:8080")
    monkeypatch.setenv("NO_PROXY", "internal.example, .local:8443,10.1.2.3")
    env = ProxySettings.from_environment()
    assert env.for_url("https://hie.example/xca") == "http://u:p@proxy.example:3128"
    assert env.for_url("http://hie.example/xca") == "http://proxy.example:8080"
    assert env.for_url("https://internal.example/xca") is None
    assert env.for_url("https://a.internal.example/xca") is None  # subdomains too
    assert env.for_url("https://notinternal.example/xca") == "http://u:p@proxy.example:3128"
    assert env.for_url("https://gw.local:8443/xca") is None
    assert env.for_url("https://gw.local:443/xca") == "http://u:p@proxy.example:3128"  # other port
    assert env.for_url("https://10.1.2.3/xca") is None
    # a partner's own proxy wins, "direct" means none at all
    assert env.for_url("https://internal.example/xca", "http://other:1") == "http://other:1"
    assert env.for_url("https://hie.example/xca", "direct") is None
    monkeypatch.setenv("NO_PROXY", "*")
    assert ProxySettings.from_environment().for_url("https://hie.example/") is None


@pytest.mark.parametrize("bad", ["socks5://p:1", "http://", "http://p:99999", "http://p:1/path", "http://p:1?q",
                                 "ftp://p", 42, "http://us er@p:1"])
def test_partner_proxy_is_validated_and_never_echoes_credentials(bad):
    with pytest.raises(ValueError) as err:
        valid_proxy(bad, "p")
    assert "er@" not in str(err.value)
    assert valid_proxy("http://u:secret@p:1") == "http://u:secret@p:1"
    assert valid_proxy(" DIRECT ") == "direct"
    assert valid_proxy("") is None


def test_credentials_are_masked():
    text = "error calling https://hie/x via proxy http://user:s3cret@proxy:3128: refused"
    assert mask(text) == "error calling https://hie/x via proxy http://***@proxy:3128: refused"
    with pytest.raises(ValueError) as err:
        valid_proxy("http://user:s3cret@proxy:3128/x", "p")
    assert "s3cret" not in str(err.value)


def test_proxy_failures_name_the_proxy_without_its_credentials(tmp_path):
    from tests.forward_proxy import ProxyProcess

    async def main(proxy_url: str, target: str):
        async with OutboundClient(None, proxies=ProxySettings({})) as client:
            p = partner(target, proxy=proxy_url)
            with pytest.raises(SoapTransportError) as err:
                await client.call(p, target, v.Action.ITI38, b"<x/>", None)
            return str(err.value)

    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    text = asyncio.run(main(f"http://user:s3cret@127.0.0.1:{port}", "https://partner.invalid/xca"))
    assert f"via proxy http://***@127.0.0.1:{port}" in text and "s3cret" not in text
    with ProxyProcess(tmp_path, "--auth", "user:right") as proxy:
        text = asyncio.run(main(f"http://user:s3cret@127.0.0.1:{proxy.port}", "https://partner.invalid/xca"))
        assert f"proxy http://***@127.0.0.1:{proxy.port} refused the tunnel" in text and "HTTP 407" in text
        assert "s3cret" not in text
        assert [(r["method"], r["target"], r["authorized"]) for r in proxy.records()] == [
            ("CONNECT", "partner.invalid:443", False)]


def test_partner_proxy_round_trips_through_partners_toml(tmp_path: Path):
    from xds_node.security.trust import TrustStore

    store = TrustStore([Partner("a", "urn:oid:1.2.3", proxy="http://u:p@proxy:3128"), Partner("b", "urn:oid:1.2.4")])
    store.save(tmp_path / "partners.toml")
    again = TrustStore.load(tmp_path / "partners.toml")
    assert again.partner("a").proxy == "http://u:p@proxy:3128" and again.partner("b").proxy is None
    (tmp_path / "bad.toml").write_text('[[partner]]\nname = "x"\ncommunities = ["urn:oid:1.2.5"]\n'
                                       'proxy = "socks5://u:pw@p:1"\n', encoding="utf-8")
    with pytest.raises(ValueError, match="proxy") as err:
        TrustStore.load(tmp_path / "bad.toml")
    assert "pw" not in str(err.value)


def test_partners_add_proxy_from_the_command_line(tmp_path, capsys):
    import json

    from xds_node.cli import main
    from xds_node.security.trust import TrustStore

    data = str(tmp_path / "node")
    _key, cert = generate_demo_keys(tmp_path / "hie", common_name="Some HIE")
    base = ["partners", "add", "hie", "--cert", str(cert), "--community", "urn:oid:1.2.3.5", "--data-dir", data]
    assert main([*base, "--proxy", "socks5://u:pw1@p:1"]) == 2
    err = capsys.readouterr().err
    assert "--proxy" in err and "pw1" not in err and "Traceback" not in err
    assert main([*base, "--proxy", "http://u:pw2@proxy.example:3128",
                 "--endpoint", "xca_query=https://hie.example/xca/query"]) == 0
    assert TrustStore.load(tmp_path / "node" / "partners.toml").partner("hie").proxy == "http://u:pw2@proxy.example:3128"
    capsys.readouterr()
    assert main(["partners", "list", "--json", "--data-dir", data]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[0]["proxy"] == "http://***@proxy.example:3128"
    assert main(["partners", "list", "--data-dir", data]) == 0
    table = capsys.readouterr().out
    assert "proxy=http://***@proxy.example:3128" in table and "pw2" not in table
    # replace keeps the proxy unless a new one is given; "direct" turns the environment's off
    assert main(["partners", "replace", "hie", "--cert", str(cert), "--data-dir", data]) == 0
    assert TrustStore.load(tmp_path / "node" / "partners.toml").partner("hie").proxy == "http://u:pw2@proxy.example:3128"
    assert main(["partners", "replace", "hie", "--cert", str(cert), "--proxy", "direct", "--data-dir", data]) == 0
    assert TrustStore.load(tmp_path / "node" / "partners.toml").partner("hie").proxy == "direct"


@pytest.mark.parametrize(("url", "direct"), [
    ("https://10.1.2.3/xca", True),             # inside 10.0.0.0/8
    ("https://11.0.0.1/xca", False),
    ("https://a.hospital.example/xca", True),   # a subdomain of .hospital.example
    ("https://hospital.example/xca", True),
    ("https://partner.test:8443/xca", True),    # name with its port
    ("https://partner.test:443/xca", False),    # ... another port is proxied
    ("https://[::1]:9/xca", True),              # a bare IPv6 address (its colons are not a port)
    ("https://[fd00::1]:443/xca", True),
    ("https://[fd00::1]:8443/xca", False),
    ("https://[fd12::7]/xca", True),            # inside fd12::/16
    ("https://192.168.1.50/xca", False),        # an address is not a name suffix of 192.168.1.5
    ("https://10.example/xca", False),          # names are not resolved against networks
])
def test_no_proxy_names_suffixes_ports_addresses_and_cidr_networks(url, direct):
    proxies = ProxySettings({"https": "http://proxy.internal:3128"},
                            "10.0.0.0/8, .hospital.example, partner.test:8443, ::1, [fd00::1]:443, fd12::/16, "
                            "192.168.1.5, not/a/network")
    assert proxies.for_url(url) == (None if direct else "http://proxy.internal:3128")
