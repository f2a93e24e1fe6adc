"""Outbound SOAP for the initiating gateway: one pooled httpx client, WS-Security per call, MTOM
answers spooled to disk, per-partner timeouts, retries and concurrency limits.

Why not :class:`xds_node.soap.client.SoapClient`: a retrieve answer of many large documents must
not be held in memory, so MTOM responses are parsed here while they arrive and each attachment
larger than ``memory_limit`` goes to a file. Requests are still written with the same
:func:`build_request` and answers parsed with the same hardened :func:`parse_envelope`, and the
same two exceptions come out (:class:`SoapFault` = the partner said no, :class:`SoapTransportError`
= the partner could not be reached or did not answer in SOAP), so callers can tell them apart.

Signing cost: building and signing a SAML assertion (C14N + RSA) is the most expensive part of a
request. :class:`AssertionCache` signs one assertion per (requester, partner audience, algorithm,
NameFormat) and reuses it until shortly before it expires; each message only gets a fresh
Timestamp signed with the holder-of-key key (one RSA signature), as eHealth Exchange gateways do.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import importlib.util
import os
import random
import ssl
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from lxml.etree import _Element

from xds_node.security.saml import ATTRNAME_URI, RequesterContext, sign_assertion, unsigned_assertion
from xds_node.security.trust import Partner
from xds_node.security.wss import SAML2, build_security_header, utcnow
from xds_node.soap.client import SoapTransportError
from xds_node.soap.envelope import SOAP_ENV, SoapRequest, build_request, parse_envelope
from xds_node.soap.fault import SoapFault
from xds_node.soap.mtom import Attachment, normalize_cid, parse_content_type

# httpcore tries ``import sniffio`` several times per request; when sniffio is not installed
# (anyio >= 4.5 no longer needs it) each failed import searches sys.path again (~50 us). A None
# entry in sys.modules makes that import fail at once, and httpcore then assumes asyncio, which is
# what it would have found anyway.
if importlib.util.find_spec("sniffio") is None:
    sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]

__all__ = [
    "AssertionCache",
    "OutboundClient",
    "PartnerOptions",
    "SoapTransportError",
    "endpoint_url",
]

T = TypeVar("T")
_FAULT_TAG = f"{{{SOAP_ENV}}}Fault"

#: Names a partner's endpoints go by in partners.toml (ours first, then the IHE transaction names).
ENDPOINT_ALIASES: dict[str, tuple[str, ...]] = {
    "xcpd": ("xcpd", "ITI-55", "iti55", "patient_discovery"),
    "xca_query": ("xca_query", "ITI-38", "iti38", "query"),
    "xca_retrieve": ("xca_retrieve", "ITI-39", "iti39", "retrieve"),
}


def endpoint_url(partner: Partner, kind: str) -> str | None:
    """The partner's URL for ``xcpd``, ``xca_query`` or ``xca_retrieve`` (any alias), or None."""
    for name in ENDPOINT_ALIASES.get(kind, (kind,)):
        if partner.endpoints.get(name):
            return partner.endpoints[name]
    return None


@dataclass(frozen=True)
class PartnerOptions:
    """How we talk to one partner, from its partners.toml entry (``[partner.options]`` extras).

    ``timeout``, ``retrieve_batch_size`` and ``allow_sha1`` are partner fields; ``retries``,
    ``backoff`` (seconds, doubled per attempt, with jitter), ``max_concurrency`` (requests in flight
    to this partner), ``attribute_name_format`` (SAML Attribute NameFormat), ``audience`` and
    ``sign_sha1`` (sign with RSA-SHA1 for legacy stacks; default: ``allow_sha1``) are options.
    """

    timeout: float = 30.0
    retries: int = 0
    backoff: float = 0.5
    retrieve_batch_size: int = 50
    max_concurrency: int = 8
    sha1: bool = False
    attribute_name_format: str = ATTRNAME_URI
    audience: str | None = None

    @classmethod
    def of(cls, partner: Partner) -> PartnerOptions:
        o = partner.options or {}
        return cls(
            timeout=float(o.get("timeout", partner.timeout)),
            retries=max(0, int(o.get("retries", 0))),
            backoff=max(0.0, float(o.get("backoff", 0.5))),
            retrieve_batch_size=max(1, int(o.get("retrieve_batch_size", partner.retrieve_batch_size))),
            max_concurrency=max(1, int(o.get("max_concurrency", 8))),
            sha1=bool(o.get("sign_sha1", partner.allow_sha1)),
            attribute_name_format=str(o.get("attribute_name_format", ATTRNAME_URI)),
            audience=o.get("audience") or None,
        )


# --- assertions -------------------------------------------------------------------------------
@dataclass
class _Cached:
    assertion: _Element
    renew_at: datetime


class AssertionCache:
    """Signed assertions reused per (requester, audience, algorithm, NameFormat) for their lifetime.

    An assertion is renewed ``margin`` before it expires so a slow partner never receives one that
    runs out while the message travels. ``signed`` / ``reused`` count for the benchmark.
    """

    def __init__(self, key: rsa.RSAPrivateKey, cert: x509.Certificate, *, issuer: str,
                 lifetime: timedelta = timedelta(minutes=30), margin: timedelta = timedelta(minutes=2),
                 max_entries: int = 1024) -> None:
        self.key = key
        self.cert = cert
        self.issuer = issuer
        self.lifetime = lifetime
        self.margin = min(margin, lifetime / 2)
        self.max_entries = max_entries
        self._cache: dict[tuple, _Cached] = {}
        self.signed = 0
        self.reused = 0
        self.sign_seconds = 0.0

    def get(self, ctx: RequesterContext, *, audience: str | None = None, sha1: bool = False,
            name_format: str = ATTRNAME_URI, now: datetime | None = None) -> _Element:
        now = now or utcnow()
        # a flat key (dataclasses.astuple deep-copies, which costs more than the lookup it serves)
        key = (ctx.subject_id, ctx.organization, ctx.organization_id, ctx.home_community_id, tuple(ctx.role),
               tuple(ctx.purpose_of_use), ctx.npi, ctx.resource_id, ctx.audience, ctx.name_id,
               audience, sha1, name_format)
        hit = self._cache.get(key)
        if hit is not None and now < hit.renew_at:
            self.reused += 1
            return hit.assertion
        started = time.perf_counter()
        if audience and ctx.audience != audience:
            ctx = replace(ctx, audience=audience)
        a = unsigned_assertion(ctx, self.cert, issuer=self.issuer, lifetime=self.lifetime, now=now)
        if name_format != ATTRNAME_URI:
            for attr in a.iter(f"{{{SAML2}}}Attribute"):
                attr.set("NameFormat", name_format)
        a = sign_assertion(a, self.key, self.cert, sha1=sha1)
        self.sign_seconds += time.perf_counter() - started
        self.signed += 1
        if len(self._cache) >= self.max_entries:
            self._cache = {k: v for k, v in self._cache.items() if now < v.renew_at}
            if len(self._cache) >= self.max_entries:
                self._cache.clear()
        self._cache[key] = _Cached(a, now + self.lifetime - self.margin)
        return a


# --- streamed MTOM ----------------------------------------------------------------------------
class _Sink:
    """One MIME part's bytes: memory up to ``limit``, then a file in ``spool_dir``."""

    def __init__(self, limit: int | None, spool_dir: Path | None, cap: int) -> None:
        self.limit = limit
        self.spool_dir = spool_dir
        self.cap = cap
        self.buf = bytearray()
        self.fh: Any = None
        self.path: Path | None = None
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        if not data:
            return
        self.size += len(data)
        if self.size > self.cap:
            raise SoapFault("Sender", "MIME part too large")
        if self.fh is not None:
            self.fh.write(data)
            return
        self.buf += data
        if self.limit is not None and len(self.buf) > self.limit and self.spool_dir is not None:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix="part-", suffix=".bin", dir=self.spool_dir)
            self.fh = os.fdopen(fd, "wb")
            self.path = Path(name)
            self.fh.write(self.buf)
            self.buf = bytearray()

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()

    def discard(self) -> None:
        self.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class MtomStreamParser:
    """Incremental ``multipart/related`` parser: feed chunks as they arrive, read parts at the end.

    The root part stays in memory (it is the SOAP envelope); other parts spill to files in
    ``spool_dir`` past ``memory_limit`` bytes. Framing (CRLF or LF) is decided from the first
    delimiter line, as :mod:`xds_node.soap.mtom` does.
    """

    MAX_PARTS = 1000
    MAX_HEADER = 16 * 1024

    def __init__(self, boundary: str, *, spool_dir: Path | None, memory_limit: int = 256 * 1024,
                 max_bytes: int = 1 << 40) -> None:
        if not boundary or len(boundary) > 200:
            raise SoapFault("Sender", "multipart/related without a valid boundary parameter")
        self.delim = b"--" + boundary.encode("ascii", "strict")
        self.spool_dir = spool_dir
        self.memory_limit = memory_limit
        self.max_bytes = max_bytes
        self.buf = bytearray()
        self.state = "preamble"
        self.crlf = True
        self.parts: list[tuple[dict[str, str], _Sink]] = []
        self._headers: dict[str, str] = {}
        self._sink: _Sink | None = None

    def feed(self, chunk: bytes) -> None:
        self.buf += chunk
        while self._step():
            pass

    def _delimiter_line(self, start: int) -> tuple[int, bool] | None:
        """After a delimiter at ``start``: (index past its line, is_close), or None if incomplete."""
        after = start + len(self.delim)
        if len(self.buf) < after + 2:
            return None
        if self.buf[after:after + 2] == b"--":
            return after + 2, True
        eol = self.buf.find(b"\n", after)
        if eol < 0:
            if len(self.buf) - after > 1024:
                raise SoapFault("Sender", "malformed MIME delimiter line")
            return None
        if self.buf[after:eol].rstrip(b"\r").strip(b" \t"):
            raise SoapFault("Sender", "malformed MIME delimiter line")
        return eol + 1, False

    def _step(self) -> bool:
        buf = self.buf
        if self.state == "done":
            buf.clear()
            return False
        if self.state == "preamble":
            i = 0 if buf.startswith(self.delim) else buf.find(b"\n" + self.delim)
            if i < 0:
                del buf[:max(0, len(buf) - len(self.delim) - 1)]
                return False
            start = i if i == 0 and buf.startswith(self.delim) else i + 1
            line = self._delimiter_line(start)
            if line is None:
                return False
            end, close = line
            self.crlf = buf[end - 2:end] == b"\r\n"
            del buf[:end]
            self.state = "done" if close else "headers"
            return not close
        if self.state == "headers":
            if buf.startswith(b"\r\n") or buf.startswith(b"\n"):
                head, body_start = b"", (2 if buf.startswith(b"\r\n") else 1)
            else:
                j1, j2 = buf.find(b"\n\r\n"), buf.find(b"\n\n")
                cands = [(j1, 3), (j2, 2)]
                found = [(j, n) for j, n in cands if j >= 0]
                if not found:
                    if len(buf) > self.MAX_HEADER:
                        raise SoapFault("Sender", "MIME part headers too long")
                    return False
                j, n = min(found)
                head, body_start = bytes(buf[:j]), j + n
            self._headers = _parse_part_headers(head)
            if len(self.parts) >= self.MAX_PARTS:
                raise SoapFault("Sender", "too many MIME parts")
            is_root = not self.parts
            cte = self._headers.get("content-transfer-encoding", "").strip().lower()
            limit = None if (is_root or cte in ("base64", "quoted-printable")) else self.memory_limit
            self._sink = _Sink(limit, self.spool_dir, self.max_bytes)
            self.parts.append((self._headers, self._sink))
            del buf[:body_start]
            self.state = "body"
            return True
        # body
        assert self._sink is not None
        i = buf.find(b"\n" + self.delim)
        if i < 0:
            keep = len(self.delim) + 2
            if len(buf) > keep:
                n = len(buf) - keep
                self._sink.write(memoryview(buf)[:n])
                del buf[:n]
            return False
        line = self._delimiter_line(i + 1)
        if line is None:
            return False
        end_content = i
        if self.crlf and end_content > 0 and buf[end_content - 1] == 0x0D:
            end_content -= 1
        self._sink.write(memoryview(buf)[:end_content])
        self._sink.close()
        end, close = line
        del buf[:end]
        self.state = "done" if close else "headers"
        return not close

    def finish(self, start: str | None) -> tuple[bytes, dict[str, Attachment]]:
        """The root part's bytes and the other parts as attachments keyed by Content-ID."""
        if self.state != "done" or not self.parts:
            for _, sink in self.parts:
                sink.discard()
            raise SoapFault("Sender", "MIME multipart body is truncated (missing boundary)")
        root_index = 0
        if start:
            wanted = normalize_cid(start)
            root_index = next((k for k, (h, _) in enumerate(self.parts)
                               if normalize_cid(h.get("content-id", "")) == wanted), -1)
            if root_index < 0:
                self.discard()
                raise SoapFault("Sender", "multipart/related start part not found")
        root_sink = self.parts[root_index][1]
        root = _decode(bytes(root_sink.buf), self.parts[root_index][0])
        attachments: dict[str, Attachment] = {}
        for k, (headers, sink) in enumerate(self.parts):
            cid = headers.get("content-id")
            if k == root_index or not cid:
                sink.discard()
                continue
            cid = normalize_cid(cid)
            if cid in attachments:
                self.discard()
                raise SoapFault("Sender", "duplicate Content-ID in multipart message")
            ctype = headers.get("content-type", "application/octet-stream")
            if sink.path is not None:
                attachments[cid] = Attachment(cid, ctype, path=sink.path, size=sink.size)
            else:
                attachments[cid] = Attachment(cid, ctype, data=_decode(bytes(sink.buf), headers))
        return root, attachments

    def discard(self) -> None:
        for _, sink in self.parts:
            sink.discard()


def _parse_part_headers(head: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    last: str | None = None
    for raw in head.split(b"\n")[:64]:
        line = raw.rstrip(b"\r")
        if not line.strip():
            continue
        if line[:1] in (b" ", b"\t") and last is not None:
            headers[last] += " " + line.strip().decode("latin-1")
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            raise SoapFault("Sender", "malformed MIME part header")
        last = name.strip().decode("latin-1").lower()
        headers[last] = value.strip().decode("latin-1")
    return headers


def _decode(data: bytes, headers: dict[str, str]) -> bytes:
    cte = headers.get("content-transfer-encoding", "").strip().lower()
    if cte in ("", "binary", "8bit", "7bit"):
        return data
    try:
        if cte == "base64":
            return base64.b64decode(b"".join(data.split()), validate=True)
        if cte == "quoted-printable":
            return binascii.a2b_qp(data)
    except (binascii.Error, ValueError) as exc:
        raise SoapFault("Sender", "invalid encoded MIME part") from exc
    raise SoapFault("Sender", f"unsupported Content-Transfer-Encoding: {cte[:40]}")


# --- the client -------------------------------------------------------------------------------
def make_ssl_context(*, verify: bool = True, ca_file: str | None = None,
                     client_cert: tuple[str, str] | None = None) -> ssl.SSLContext | bool:
    """TLS for partner calls: server certificates are verified unless ``verify`` is False
    (never do that outside a lab); ``client_cert`` = (cert, key) enables mutual TLS."""
    if not verify and client_cert is None:
        return False
    ctx = ssl.create_default_context(cafile=ca_file)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if client_cert is not None:
        ctx.load_cert_chain(*client_cert)
    return ctx


class OutboundClient:
    """Async SOAP client for calls to partner gateways. Create once per event loop.

    Each partner gets its own small connection pool (``max_concurrency`` connections, kept alive):
    httpx's pool scans all of its connections for every request, so one shared pool of hundreds of
    connections makes a 200-partner fan-out quadratic, while per-partner pools keep each scan tiny.
    ``max_connections`` bounds the requests in flight across all partners. A ``transport`` (tests:
    ``httpx.MockTransport``) replaces the network for every partner.
    """

    def __init__(
        self,
        assertions: AssertionCache | None,
        *,
        verify: ssl.SSLContext | bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 512,
        spool_dir: Path | None = None,
        memory_limit: int = 256 * 1024,
        max_response_bytes: int = 256 << 20,
        max_attachment_bytes: int = 4 << 30,
    ) -> None:
        self.assertions = assertions
        # one TLS context for every partner pool: building one (loading the CA store) takes ~20 ms
        self.verify = ssl.create_default_context() if verify is True else verify
        self._shared = httpx.AsyncClient(transport=transport, timeout=30.0) if transport is not None else None
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._in_flight = asyncio.Semaphore(max_connections) if max_connections else None
        self.spool_dir = spool_dir
        self.memory_limit = memory_limit
        self.max_response_bytes = max_response_bytes
        self.max_attachment_bytes = max_attachment_bytes
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        #: seconds spent building per-message security headers (Timestamp signature), and how many
        self.header_seconds = 0.0
        self.headers_built = 0

    async def __aenter__(self) -> OutboundClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        clients = [*self._clients.values(), *([self._shared] if self._shared is not None else [])]
        self._clients = {}
        for c in clients:
            await c.aclose()

    def _http(self, partner: Partner, options: PartnerOptions) -> httpx.AsyncClient:
        if self._shared is not None:
            return self._shared
        client = self._clients.get(partner.name)
        if client is None:
            n = options.max_concurrency
            transport = httpx.AsyncHTTPTransport(
                verify=self.verify, limits=httpx.Limits(max_connections=n, max_keepalive_connections=n,
                                                        keepalive_expiry=30.0))
            client = self._clients[partner.name] = httpx.AsyncClient(transport=transport, timeout=options.timeout)
        return client

    def security_header(self, ctx: RequesterContext, options: PartnerOptions) -> _Element:
        """Timestamp + the cached signed assertion + a fresh holder-of-key signature."""
        assert self.assertions is not None
        a = self.assertions.get(ctx, audience=options.audience, sha1=options.sha1,
                                name_format=options.attribute_name_format)
        started = time.perf_counter()
        header = build_security_header(a, self.assertions.key, None, sha1=options.sha1)
        self.header_seconds += time.perf_counter() - started
        self.headers_built += 1
        return header

    def _semaphore(self, partner: Partner, options: PartnerOptions) -> asyncio.Semaphore:
        sem = self._semaphores.get(partner.name)
        if sem is None:
            sem = self._semaphores[partner.name] = asyncio.Semaphore(options.max_concurrency)
        return sem

    async def call(
        self,
        partner: Partner,
        url: str,
        action: str,
        body: _Element | bytes,
        ctx: RequesterContext | None,
        *,
        options: PartnerOptions | None = None,
        mtom: bool = False,
        spool_dir: Path | None = None,
    ) -> SoapRequest:
        """One partner call with its timeout, retries (transport failures only) and concurrency cap.

        A SOAP fault is the partner's answer and is never retried.
        """
        options = options or PartnerOptions.of(partner)
        http = self._http(partner, options)
        async with self._semaphore(partner, options), (self._in_flight or contextlib.nullcontext()):
            return await retrying(
                lambda: self._send(http, url, action, body, ctx, options, mtom=mtom, spool_dir=spool_dir),
                retries=options.retries, backoff=options.backoff)

    async def _send(self, http: httpx.AsyncClient, url: str, action: str, body: _Element | bytes,
                    ctx: RequesterContext | None, options: PartnerOptions, *, mtom: bool,
                    spool_dir: Path | None) -> SoapRequest:
        headers = [self.security_header(ctx, options)] if ctx is not None and self.assertions else []
        payload, content_type, _ = build_request(action, body, to=url, headers=headers, mtom=mtom)
        assert isinstance(payload, bytes)  # no file attachments are sent by the initiating gateway
        try:
            # the whole exchange, not each socket read, must fit the partner's timeout
            async with asyncio.timeout(options.timeout):
                async with http.stream(
                    "POST", url, content=payload, headers={"content-type": content_type},
                    timeout=options.timeout,
                ) as resp:
                    return await self._read(resp, url, spool_dir or self.spool_dir)
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise SoapTransportError(f"timeout after {options.timeout:g} s calling {url}", url=url,
                                     timeout=True) from exc
        except httpx.HTTPError as exc:
            raise SoapTransportError(f"error calling {url}: {exc!r}", url=url) from exc

    async def _read(self, resp: httpx.Response, url: str, spool_dir: Path | None) -> SoapRequest:
        status = resp.status_code
        media, params = parse_content_type(resp.headers.get("content-type", ""))
        attachments: dict[str, Attachment] = {}
        if media == "multipart/related":
            try:
                parser = MtomStreamParser(params.get("boundary", ""), spool_dir=spool_dir,
                                          memory_limit=self.memory_limit, max_bytes=self.max_attachment_bytes)
            except (SoapFault, UnicodeEncodeError) as exc:
                raise SoapTransportError(f"HTTP {status} from {url}: bad multipart", url=url, status=status) from exc
            try:
                async for chunk in resp.aiter_bytes():
                    parser.feed(chunk)
                    if len(parser.buf) > self.max_response_bytes:
                        raise SoapFault("Sender", "unframed multipart body")
                data, attachments = parser.finish(params.get("start"))
            except SoapFault as exc:
                parser.discard()
                raise SoapTransportError(f"HTTP {status} from {url}: {exc.reason}", url=url, status=status) from exc
            except BaseException:
                parser.discard()
                raise
            ctype = "application/soap+xml"
        else:
            data = await _read_capped(resp, url, self.max_response_bytes)
            ctype = resp.headers.get("content-type", "")
        try:
            message = parse_envelope(data, ctype, require_action=False)
        except SoapFault as exc:
            _drop(attachments)
            raise SoapTransportError(f"HTTP {status} from {url} is not a usable SOAP 1.2 message: {exc.reason}",
                                     url=url, status=status) from exc
        message.attachments = attachments
        message.mtom = bool(attachments) or media == "multipart/related"
        if message.body.tag == _FAULT_TAG:
            _drop(attachments)
            raise SoapFault.from_element(message.body, http_status=status)
        if status >= 300:
            _drop(attachments)
            raise SoapTransportError(f"HTTP {status} from {url}", url=url, status=status)
        return message


def _drop(attachments: dict[str, Attachment]) -> None:
    for att in attachments.values():
        if att.path is not None:
            Path(att.path).unlink(missing_ok=True)


async def _read_capped(resp: httpx.Response, url: str, cap: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    async for chunk in resp.aiter_bytes():
        total += len(chunk)
        if total > cap:
            raise SoapTransportError(f"response from {url} exceeds {cap} bytes", url=url, status=resp.status_code)
        chunks.append(chunk)
    return b"".join(chunks)


async def retrying(make: Callable[[], Awaitable[T]], *, retries: int, backoff: float) -> T:
    """Run ``make()``; on :class:`SoapTransportError` try again up to ``retries`` times, waiting
    ``backoff * 2**n`` seconds (plus up to 25 % jitter so retries to one partner do not align)."""
    attempt = 0
    while True:
        try:
            return await make()
        except SoapTransportError as exc:
            # a 4xx means the partner understood and refused: asking again will not help
            if attempt >= retries or (exc.status is not None and 400 <= exc.status < 500):
                raise
            delay = backoff * (2 ** attempt)
            await asyncio.sleep(delay * (1 + random.random() / 4))
            attempt += 1


@dataclass
class SpooledDocument:
    """A retrieved document: in memory (``data``) or in a spool file (``path``, moved by the caller)."""

    data: bytes | None = None
    path: Path | None = None
    size: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def document_content(message: SoapRequest, element: _Element) -> SpooledDocument:
    """The bytes of an ``xdsb:Document``: its spooled MTOM part when it has one, else decoded base64."""
    include = element.find("{http://www.w3.org/2004/08/xop/include}Include")
    if include is not None:
        href = include.get("href", "")
        cid = normalize_cid(href)
        att = message.attachments.get(cid)
        if att is None:
            from urllib.parse import unquote

            att = message.attachments.get(unquote(cid))
        if att is None:
            raise SoapFault("Sender", "xop:Include refers to a missing MIME part")
        if att.path is not None:
            return SpooledDocument(path=Path(att.path), size=att.size or 0)
        return SpooledDocument(data=att.data, size=len(att.data or b""))
    data = message.binary(element)
    return SpooledDocument(data=data, size=len(data))


__all__ += ["MtomStreamParser", "SpooledDocument", "document_content", "make_ssl_context", "retrying"]
