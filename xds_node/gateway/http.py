"""HTTP for the initiating gateway's partner calls: one maintained client (aiohttp), proxies,
TLS, compressed answers and size caps. Knows nothing of SOAP; :mod:`xds_node.gateway.calls` builds
on it.

Why aiohttp (``bench/bench_fanout.py --httpx``: ITI-38 to 200 partners answering after 200 ms;
one session on a 2-core machine shared with other work at load 8-16, so each figure is read against
a baseline measured in the same run):

=============================================  ==================  ====================================
client                                         CPU per call        against
=============================================  ==================  ====================================
hand-written asyncio HTTP/1.1 (removed)        0.96-1.05 ms        the baseline (no proxy, no gzip)
aiohttp 3.14, one session (kept)               1.12-1.21 ms        1.14-1.23x, interleaved runs
httpx 0.28, a keep-alive pool per partner      1.54-1.92 ms        1.44-1.72x aiohttp's, same runs
=============================================  ==================  ====================================

CPU per call includes building the message and its Timestamp's RSA signature (about 0.3 ms) and
parsing the answer (about 0.2 ms for five documents). The HTTP exchange alone (200 partners, no
delay, best of four rounds of 2,000 calls): hand-written 0.04 ms, aiohttp 0.11-0.15 ms. Counted
in instructions (callgrind, the whole fan-out, no signing threads) the two clients cost the same
per call: 10.02 M (aiohttp) against 10.05 M (hand-written). httpx + httpcore + anyio cost about
0.5 ms more per call in layers (request and response models, a readability poll per reused
connection, anyio streams) and took 1.7-2.7x aiohttp's wall time in the same runs; aiohttp's C
parser (llhttp) and its keyed connection pool (a dict lookup per request) stay close to the
hand-written client while bringing CONNECT proxies, keep-alive handling and TLS that we no longer
maintain. httpx remains for in-process transports (``httpx.MockTransport``,
``httpx.ASGITransport``) that tests and embedders pass as ``transport``: :class:`HttpxTransport`
adapts one to the same interface.

What every call keeps, whatever the client: redirects are never followed (a 3xx is an answer,
not a place to send a signed message and a patient's name); the answer is read under caps (the
undecoded body, the decoded body and, for MTOM, each part: a partner answering 10 GB costs at
most the cap, never memory); ``Content-Encoding`` gzip/deflate is decoded here with a bound on the
decoded size (a decompression bomb is refused, not inflated); TLS verifies the partner's
certificate with our context (TLS 1.2 floor, optional client certificate for mutual TLS).

Proxies: a partner's ``proxy`` in partners.toml (``"direct"``: none, whatever the environment),
else the standard ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY`` (also lower-case), read when the
client is created. https partners are reached through an HTTP CONNECT tunnel (TLS stays end to
end with the partner), http partners by absolute-form requests. Proxy credentials in the URL go
out as ``Proxy-Authorization: Basic`` and are masked (``***``) in every message we write.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import re
import ssl
import sys
import urllib.request
import zlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp
import httpx
import yarl

from xds_node.soap.client import SoapTransportError

# httpcore tries ``import sniffio`` several times per request; when sniffio is not installed
# (anyio >= 4.5 no longer needs it) each failed import searches sys.path again (~50 us). A None
# entry in sys.modules makes that import fail at once, and httpcore then assumes asyncio, which is
# what it would have found anyway.
if importlib.util.find_spec("sniffio") is None:
    sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]

__all__ = [
    "ACCEPT_ENCODING",
    "AiohttpClient",
    "HttpAnswer",
    "HttpClient",
    "HttpxTransport",
    "ProxySettings",
    "decode_chunks",
    "make_ssl_context",
    "mask",
]

#: What we ask partners for: the codings :func:`decode_chunks` bounds (no br/zstd: no library here).
ACCEPT_ENCODING = "gzip, deflate"
_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)[^/@\s]*@")


def mask(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced by ``***`` (for logs and errors)."""
    return _USERINFO.sub(r"\1***@", text)


# --- TLS -------------------------------------------------------------------------------------------
def make_ssl_context(*, verify: bool = True, ca_file: str | None = None,
                     client_cert: tuple[str, str] | None = None) -> ssl.SSLContext | bool:
    """TLS for partner calls: server certificates are verified unless ``verify`` is False
    (never do that outside a lab); ``ca_file`` replaces the system CAs (trust exactly the partners'
    issuers); ``client_cert`` = (cert, key) enables mutual TLS. TLS 1.2 is the floor."""
    if not verify and client_cert is None:
        return False
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if client_cert is not None:
        ctx.load_cert_chain(*client_cert)
    return ctx


def _tls(verify: ssl.SSLContext | bool) -> ssl.SSLContext | bool:
    """One context for every partner (building one loads the CA store: ~20 ms)."""
    if verify is True:
        ctx = ssl.create_default_context()
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx
    if isinstance(verify, ssl.SSLContext) and verify.minimum_version < ssl.TLSVersion.TLSv1_2:
        verify.minimum_version = ssl.TLSVersion.TLSv1_2
    return verify


# --- proxies ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProxySettings:
    """The environment's proxies (``scheme -> proxy URL``) and its ``NO_PROXY`` list."""

    proxies: Mapping[str, str]
    no_proxy: str = ""

    @classmethod
    def from_environment(cls) -> ProxySettings:
        env = urllib.request.getproxies_environment()  # HTTPS_PROXY/https_proxy, ..., lower-case wins
        no_proxy = env.pop("no", "")
        return cls({k: v for k, v in env.items() if k in ("http", "https") and v}, no_proxy)

    def for_url(self, url: str, partner_proxy: str | None = None) -> str | None:
        """The proxy URL to reach ``url`` through, or None for a direct connection."""
        if partner_proxy:
            return None if partner_proxy == "direct" else partner_proxy
        u = urlsplit(url)
        proxy = self.proxies.get(u.scheme.lower())
        if not proxy or self._bypass(u.hostname or "", u.port):
            return None
        return proxy if "://" in proxy else f"http://{proxy}"

    def _bypass(self, host: str, port: int | None) -> bool:
        """Whether ``NO_PROXY`` names the host: ``*``; a name (its subdomains too, with or without
        a leading dot), optionally with ``:port``; an IP address; or, as curl reads it, an IP
        network in CIDR notation (``10.0.0.0/8``, ``fd00::/8``) holding a host given as an address
        (names are not resolved for this)."""
        if not self.no_proxy:
            return False
        host = host.lower().strip("[]")
        address = _ip(host)
        for entry in (e.strip().lower() for e in self.no_proxy.split(",")):
            if not entry:
                continue
            if entry == "*":
                return True
            if "/" in entry:
                try:
                    if address is not None and address in ipaddress.ip_network(entry.strip("[]"), strict=False):
                        return True
                except ValueError:
                    pass
                continue
            if (listed := _ip(entry.strip("[]"))) is not None:  # a bare address, IPv6 included (colons no port)
                if address == listed:
                    return True
                continue
            name, _, entry_port = entry.rpartition(":") if entry.count(":") == 1 or entry.startswith("[") \
                else (entry, "", "")
            if entry_port and port is not None and entry_port != str(port):
                continue
            name = name.lstrip(".").strip("[]")
            if host == name or host.endswith("." + name):
                return True
        return False


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


# --- decoding --------------------------------------------------------------------------------------
async def decode_chunks(chunks: AsyncIterator[bytes], encoding: str, cap: int, url: str,
                        status: int) -> AsyncIterator[bytes]:
    """The decoded body of an answer sent with ``Content-Encoding: encoding``: at most ``cap``
    bytes come out (a decompression bomb stops at the cap, with a transport error), each piece at
    most 256 KiB however much one compressed chunk would inflate to."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        async for chunk in chunks:
            yield chunk
        return
    if encoding in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        wbits = zlib.MAX_WBITS  # zlib-wrapped, as RFC 9110 says; raw deflate is tried when that fails
    else:
        raise SoapTransportError(f"HTTP {status} from {url}: unsupported Content-Encoding {encoding[:40]!r}",
                                 url=url, status=status)
    d = zlib.decompressobj(wbits)
    produced = 0
    first = True
    async for chunk in chunks:
        data = chunk
        while data:
            try:
                out = d.decompress(data, min(256 * 1024, cap - produced + 1))
            except zlib.error as exc:
                if first and encoding == "deflate" and wbits > 0:  # raw deflate (some servers send it)
                    wbits, d = -zlib.MAX_WBITS, zlib.decompressobj(-zlib.MAX_WBITS)
                    continue
                raise SoapTransportError(f"HTTP {status} from {url}: invalid {encoding} body", url=url,
                                         status=status) from exc
            first = False
            produced += len(out)
            if produced > cap:
                raise SoapTransportError(f"HTTP {status} from {url}: decoded answer exceeds {cap} bytes",
                                         url=url, status=status)
            if out:
                yield out
            data = d.unconsumed_tail
            if d.eof and d.unused_data:
                if wbits != 16 + zlib.MAX_WBITS:
                    raise SoapTransportError(f"HTTP {status} from {url}: bytes after the {encoding} body",
                                             url=url, status=status)
                data, d = d.unused_data, zlib.decompressobj(wbits)  # another gzip member
    if not d.eof:
        raise SoapTransportError(f"HTTP {status} from {url}: truncated {encoding} body", url=url, status=status)


# --- the client interface --------------------------------------------------------------------------
class HttpAnswer(Protocol):
    """An answer whose head has arrived: status, headers (case-insensitive), ``Content-Encoding``,
    and its body as sent, read whole or as it comes. ``finish(ok)`` hands the connection back for
    reuse when the body was read whole (``ok``), else closes it."""

    status: int
    headers: Mapping[str, str]
    encoding: str

    async def read_raw(self, cap: int, url: str) -> bytes: ...

    def raw_chunks(self) -> AsyncIterator[bytes]: ...

    async def finish(self, ok: bool) -> None: ...


class HttpClient(Protocol):
    async def post(self, url: str, payload: bytes, content_type: str, *, proxy: str | None = None,
                   resend_stale: bool = True) -> HttpAnswer:
        """POST and wait for the answer's head (redirects are never followed)."""

    async def aclose(self) -> None: ...


_HEADERS = {"User-Agent": "xds-node", "Accept": "application/soap+xml, multipart/related",
            "Accept-Encoding": ACCEPT_ENCODING}


def _too_large(url: str, cap: int, status: int) -> SoapTransportError:
    return SoapTransportError(f"response from {url} exceeds {cap} bytes", url=url, status=status)


class _AiohttpAnswer:
    __slots__ = ("_proxy", "_resp", "encoding", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse, proxy: str | None) -> None:
        self._resp = resp
        self._proxy = proxy
        self.status = resp.status
        self.headers = resp.headers
        self.encoding = ", ".join(resp.headers.getall("Content-Encoding", ()))

    async def read_raw(self, cap: int, url: str) -> bytes:
        resp = self._resp
        length = resp.content_length
        if length is not None and length > cap:
            raise _too_large(url, cap, self.status)
        try:
            if length is not None:  # the parser stops at the announced length
                return await resp.read()
            chunks, total = [], 0
            while chunk := await resp.content.readany():
                total += len(chunk)
                if total > cap:
                    raise _too_large(url, cap, self.status)
                chunks.append(chunk)
            return b"".join(chunks)
        except (aiohttp.ClientError, OSError) as exc:
            raise _transport_error(url, self._proxy, exc) from exc

    async def raw_chunks(self) -> AsyncIterator[bytes]:
        content = self._resp.content
        try:
            while chunk := await content.readany():
                yield chunk
        except (aiohttp.ClientError, OSError) as exc:
            raise _transport_error(str(self._resp.url), self._proxy, exc) from exc

    async def finish(self, ok: bool) -> None:
        if ok:
            self._resp.release()  # back to the pool (aiohttp closes it instead if the body is unread)
        else:
            self._resp.close()  # cancelled (timeout) or refused mid-answer: never reused


class AiohttpClient:
    """Partner calls over aiohttp: one session, whose connector keeps a keep-alive pool per
    (host, port, TLS, proxy), so each partner endpoint has its own connections and finding one is a
    dict lookup. How many a partner gets at once is bounded by the caller (its ``max_concurrency``,
    and ``max_connections`` for all of them). The session is made on first use, inside the event
    loop that owns it.
    """

    def __init__(self, verify: ssl.SSLContext | bool = True, *, keepalive: float = 30.0,
                 max_header_bytes: int = 16 * 1024) -> None:
        self.verify = _tls(verify)
        self.keepalive = keepalive
        self.max_header_bytes = max_header_bytes
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, yarl.URL] = {}

    def _url(self, url: str) -> yarl.URL:
        """The parsed URL, once per endpoint (parsing and encoding it is a tenth of a call's HTTP cost)."""
        parsed = self._urls.get(url)
        if parsed is None:
            if len(self._urls) > 4096:
                self._urls.clear()
            parsed = self._urls[url] = yarl.URL(url)
        return parsed

    def _open(self) -> aiohttp.ClientSession:
        # limit=0: the caller's semaphores bound connections (a second count here only costs CPU)
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ssl=self.verify,
                                         keepalive_timeout=self.keepalive)
        # no cookies (every call stands alone), no decompression (decode_chunks does it, under a cap),
        # no environment lookups per request (ProxySettings resolved them once), and no timeout of
        # its own: the caller bounds the whole exchange with the partner's timeout
        self._session = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False, trust_env=False,
            timeout=aiohttp.ClientTimeout(total=None), max_line_size=self.max_header_bytes,
            max_field_size=self.max_header_bytes, headers=_HEADERS, requote_redirect_url=False)
        return self._session

    async def post(self, url: str, payload: bytes, content_type: str, *, proxy: str | None = None,
                   resend_stale: bool = True) -> _AiohttpAnswer:
        session = self._session or self._open()
        headers = {"Content-Type": content_type}
        attempt = 0
        while True:
            try:
                resp = await session.post(self._url(url), data=payload, headers=headers, proxy=proxy,
                                          allow_redirects=False)
                return _AiohttpAnswer(resp, proxy)
            except aiohttp.ServerDisconnectedError as exc:
                # a kept-alive connection the partner closed as our request arrived (the race no
                # readability check can close): send once more, on a new connection; a query is
                # safe to repeat, a push (resend_stale False) is not
                if resend_stale and attempt == 0:
                    attempt += 1
                    continue
                raise _transport_error(url, proxy, exc) from exc
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                raise _transport_error(url, proxy, exc) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


def _transport_error(url: str, proxy: str | None, exc: BaseException) -> SoapTransportError:
    via = f" via proxy {mask(proxy)}" if proxy else ""
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return SoapTransportError(f"proxy {mask(proxy or '')} refused the tunnel to {url}: HTTP {exc.status}",
                                  url=url)
    if isinstance(exc, aiohttp.ClientResponseError):  # the answer's head did not parse
        return SoapTransportError(f"unusable HTTP answer from {url}{via}: {mask(str(exc.message))[:200]}", url=url)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return SoapTransportError(f"error calling {url}{via}: connection closed before the answer", url=url)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return SoapTransportError(f"error calling {url}{via}: the answer's body broke off ({mask(str(exc))[:200]})",
                                  url=url)
    return SoapTransportError(f"error calling {url}{via}: {mask(repr(exc))[:300]}", url=url)


class _HttpxAnswer:
    __slots__ = ("_resp", "encoding", "headers", "status")

    def __init__(self, resp: httpx.Response) -> None:
        self._resp = resp
        self.status = resp.status_code
        self.headers = resp.headers
        self.encoding = resp.headers.get("content-encoding", "")

    async def read_raw(self, cap: int, url: str) -> bytes:
        length = self.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > cap:
            raise _too_large(url, cap, self.status)
        chunks, total = [], 0
        async for chunk in self.raw_chunks():
            total += len(chunk)
            if total > cap:
                raise _too_large(url, cap, self.status)
            chunks.append(chunk)
        return b"".join(chunks)

    async def raw_chunks(self) -> AsyncIterator[bytes]:
        if self._resp.is_stream_consumed:  # a response made with content= (MockTransport) holds it already
            yield self._resp.content
            return
        try:
            async for chunk in self._resp.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            raise _httpx_error(str(self._resp.url), exc) from exc

    async def finish(self, ok: bool) -> None:
        await self._resp.aclose()


class HttpxTransport:
    """An in-process httpx transport (``MockTransport``, ``ASGITransport``) behind the same interface:
    what tests and embedders pass as ``transport``. Partner traffic over the network never takes it."""

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self._client = httpx.AsyncClient(transport=transport, timeout=None, follow_redirects=False)

    async def post(self, url: str, payload: bytes, content_type: str, *, proxy: str | None = None,
                   resend_stale: bool = True) -> _HttpxAnswer:
        request = self._client.build_request("POST", url, content=payload,
                                             headers={**_HEADERS, "Content-Type": content_type})
        try:
            return _HttpxAnswer(await self._client.send(request, stream=True))
        except httpx.HTTPError as exc:
            raise _httpx_error(url, exc) from exc

    async def aclose(self) -> None:
        await self._client.aclose()


def _httpx_error(url: str, exc: httpx.HTTPError) -> SoapTransportError:
    if isinstance(exc, httpx.TimeoutException):
        return SoapTransportError(f"timeout calling {url}", url=url, timeout=True)
    return SoapTransportError(f"error calling {url}: {mask(repr(exc))[:300]}", url=url)


async def read_capped(answer: HttpAnswer, url: str, cap: int) -> bytes:
    """A whole (non-MTOM) answer body, decoded, refused as soon as it is known to exceed ``cap``
    (sent or decoded)."""
    if answer.encoding in ("", "identity"):
        return await answer.read_raw(cap, url)
    chunks: list[bytes] = []
    async for chunk in decode_chunks(_raw_capped(answer, url, cap), answer.encoding, cap, url, answer.status):
        chunks.append(chunk)
    return b"".join(chunks)


async def _raw_capped(answer: HttpAnswer, url: str, cap: int) -> AsyncIterator[bytes]:
    """The body as sent (before decoding), at most ``cap`` bytes."""
    total = 0
    async for chunk in answer.raw_chunks():
        total += len(chunk)
        if total > cap:
            raise _too_large(url, cap, answer.status)
        yield chunk


def decoded_body(answer: HttpAnswer, url: str, *, raw_cap: int, decoded_cap: int) -> AsyncIterator[bytes]:
    """The body decoded as it arrives: at most ``raw_cap`` bytes sent, ``decoded_cap`` after decoding."""
    return decode_chunks(_raw_capped(answer, url, raw_cap), answer.encoding, decoded_cap, url, answer.status)
