"""One SOAP call to one partner, as the initiating gateway makes it: a fresh signed WS-Security
header per message, the partner's timeout over the whole exchange, retries of transport failures
only, a concurrency cap per partner, and the answer parsed under caps (MTOM parts spooled to disk
as they arrive, by the same :class:`~xds_node.soap.mtom.MultipartParser` the server uses).

Requests are written with the same :func:`build_request` and answers parsed with the same hardened
:func:`parse_envelope` as on the server, and two exceptions come out: :class:`SoapFault` (the
partner said no) and :class:`SoapTransportError` (the partner could not be reached, did not answer
in time, or not in SOAP), so callers can tell them apart. HTTP is :mod:`xds_node.gateway.http`'s.

Fan-out cost (``bench/bench_fanout.py``): with hundreds of partners the CPU per call, not the
network, sets the wall time. So the signed assertion is reused (:class:`AssertionCache`), each
message's header is written from a template (:func:`security_header_bytes`: no lxml trees or C14N
per call) and its RSA signature, which releases the GIL, runs on ``signing_threads`` worker
threads while the event loop sends and parses.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

import httpx
from lxml import etree
from lxml.etree import _Element

from xds_node import metrics
from xds_node.security.saml import ATTRNAME_URI, RequesterContext
from xds_node.security.trust import Partner
from xds_node.security.wss import parse_xml, security_header_bytes
from xds_node.soap.client import SoapTransportError
from xds_node.soap.envelope import SOAP_ENV, SoapRequest, build_request, parse_envelope
from xds_node.soap.fault import SoapFault
from xds_node.soap.mtom import Attachment, MultipartParser, normalize_cid, parse_content_type

from .assertions import AssertionCache
from .http import AiohttpClient, HttpAnswer, HttpClient, HttpxTransport, ProxySettings, decoded_body, read_capped

__all__ = [
    "ENDPOINT_ALIASES",
    "MtomStreamParser",
    "OutboundClient",
    "PartnerOptions",
    "SpooledDocument",
    "call_outcome",
    "document_content",
    "endpoint_url",
    "retrying",
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



class MtomStreamParser(MultipartParser):
    """The shared MIME parser as a partner's answer needs it: :meth:`finish` gives the root part's
    bytes (the SOAP envelope) and the attachments, large ones in spool files."""

    def finish(self, start: str | None) -> tuple[bytes, dict[str, Attachment]]:  # type: ignore[override]
        root, attachments = super().finish(start)
        return root.data, attachments


class OutboundClient:
    """Async SOAP client for calls to partner gateways. Create once per event loop.

    HTTP goes over :class:`~xds_node.gateway.http.AiohttpClient` (a keep-alive pool per partner
    endpoint; ``max_connections`` in flight across all partners, ``max_concurrency`` per partner),
    through the partner's ``proxy`` or the environment's (``proxies``, read from ``HTTPS_PROXY`` /
    ``HTTP_PROXY`` / ``NO_PROXY`` when not given). A ``transport`` (an in-process httpx transport:
    ``httpx.MockTransport`` in tests) replaces the network for every partner. ``signing_threads``
    sign the per-message Timestamps (0: on the event loop).

    Caps on an answer: a plain SOAP answer ``max_response_bytes`` (held in memory); an MTOM answer
    ``max_attachment_bytes`` in all, its parts held in memory (the envelope, encoded parts, parts
    under ``memory_limit``) ``max_response_bytes`` together, larger binary parts spooled to
    ``spool_dir``; a compressed answer at most ``max_decompressed_bytes`` once decoded.
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
        max_decompressed_bytes: int = 256 << 20,
        signing_threads: int = 2,
        proxies: ProxySettings | None = None,
    ) -> None:
        self.assertions = assertions
        #: threads that sign Timestamps (0 = sign on the event loop); created on first use
        self.signing_threads = max(0, signing_threads)
        self._signer: ThreadPoolExecutor | None = None
        self._http: HttpClient = HttpxTransport(transport) if transport is not None else AiohttpClient(verify)
        self.proxies = proxies if proxies is not None else ProxySettings.from_environment()
        self._proxy_for: dict[tuple[str, str | None], str | None] = {}
        self._in_flight = asyncio.Semaphore(max_connections) if max_connections else None
        self.spool_dir = spool_dir
        self.memory_limit = memory_limit
        self.max_response_bytes = max_response_bytes
        self.max_attachment_bytes = max_attachment_bytes
        self.max_decompressed_bytes = max_decompressed_bytes
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        #: seconds spent building per-message security headers (Timestamp signature), and how many
        self.header_seconds = 0.0
        self.headers_built = 0

    async def __aenter__(self) -> OutboundClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._signer is not None:
            self._signer.shutdown(wait=False, cancel_futures=True)
            self._signer = None
        await self._http.aclose()

    def proxy_for(self, partner: Partner, url: str) -> str | None:
        """The proxy a call to ``url`` goes through (the partner's, else the environment's), or None."""
        key = (url, partner.proxy)
        try:
            return self._proxy_for[key]
        except KeyError:
            if len(self._proxy_for) > 4096:
                self._proxy_for.clear()
            proxy = self._proxy_for[key] = self.proxies.for_url(url, partner.proxy)
            return proxy

    def security_header(self, ctx: RequesterContext, options: PartnerOptions) -> _Element:
        """Timestamp + the cached signed assertion + a fresh holder-of-key signature, as an element
        (for callers and tests; :meth:`call` splices the bytes of :meth:`_security_header` instead)."""
        return parse_xml(self._header_now(*self._assertion(ctx, options), options.sha1)[0])

    def _assertion(self, ctx: RequesterContext, options: PartnerOptions) -> tuple[str, bytes]:
        assert self.assertions is not None
        return self.assertions.get_serialized(ctx, audience=options.audience, sha1=options.sha1,
                                              name_format=options.attribute_name_format)

    def _header_now(self, assertion_id: str, assertion_xml: bytes, sha1: bool) -> tuple[bytes, float]:
        assert self.assertions is not None
        started = time.perf_counter()
        data = security_header_bytes(assertion_id, assertion_xml, self.assertions.key, sha1=sha1)
        return data, time.perf_counter() - started

    async def _security_header(self, ctx: RequesterContext, options: PartnerOptions) -> bytes:
        """A fresh signed header per message. The RSA signature (most of the cost) releases the GIL,
        so it runs on the signing threads while the event loop keeps sending and parsing."""
        # the assertion cache is not thread-safe and a hit is a dict lookup: it stays on the loop
        assertion_id, assertion_xml = self._assertion(ctx, options)
        if self.signing_threads:
            if self._signer is None:
                self._signer = ThreadPoolExecutor(self.signing_threads, thread_name_prefix="xds-wss-sign")
            data, seconds = await asyncio.get_running_loop().run_in_executor(
                self._signer, self._header_now, assertion_id, assertion_xml, options.sha1)
        else:
            data, seconds = self._header_now(assertion_id, assertion_xml, options.sha1)
        self.header_seconds += seconds
        self.headers_built += 1
        return data

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
        attachments: Sequence[Attachment] = (),
    ) -> SoapRequest:
        """One partner call with its timeout, retries (transport failures only) and concurrency cap.

        A SOAP fault is the partner's answer and is never retried. ``attachments`` (in memory) go
        out as MTOM parts (XDR pushes); the body's xop:Include elements name them.
        """
        options = options or PartnerOptions.of(partner)
        mtom = mtom or bool(attachments)
        proxy = self.proxy_for(partner, url)
        started = time.perf_counter()
        outcome = "answered"
        try:
            async with self._semaphore(partner, options), (self._in_flight or contextlib.nullcontext()):
                return await retrying(
                    lambda: self._send(url, action, body, ctx, options, proxy, mtom=mtom, spool_dir=spool_dir,
                                       attachments=attachments),
                    retries=options.retries, backoff=options.backoff)
        except BaseException as exc:
            outcome = call_outcome(exc)
            raise
        finally:
            metrics.partner_call(partner.name, action, outcome, time.perf_counter() - started)

    async def _send(self, url: str, action: str, body: _Element | bytes, ctx: RequesterContext | None,
                    options: PartnerOptions, proxy: str | None, *, mtom: bool, spool_dir: Path | None,
                    attachments: Sequence[Attachment] = ()) -> SoapRequest:
        security = await self._security_header(ctx, options) if ctx is not None and self.assertions else None
        payload, content_type, _ = build_request(action, body, to=url, headers=[_PLACEHOLDER] if security else [],
                                                 mtom=mtom, attachments=attachments)
        if not isinstance(payload, bytes):  # attachments backed by files: sent whole
            payload = b"".join(payload)
        if security is not None:
            payload = _splice(payload, security)
        try:
            # the whole exchange, not each socket read, must fit the partner's timeout
            async with asyncio.timeout(options.timeout):
                answer = await self._http.post(url, payload, content_type, proxy=proxy, resend_stale=not attachments)
                ok = False
                try:
                    message = await self._read(answer, url, spool_dir or self.spool_dir)
                    ok = True
                    return message
                except SoapFault:
                    ok = True  # a fault is a whole answer too: the connection stays usable
                    raise
                finally:
                    await answer.finish(ok)
        except TimeoutError as exc:
            raise SoapTransportError(f"timeout after {options.timeout:g} s calling {url}", url=url,
                                     timeout=True) from exc

    async def _read(self, answer: HttpAnswer, url: str, spool_dir: Path | None) -> SoapRequest:
        status = answer.status
        ctype = answer.headers.get("content-type", "")
        media, params = parse_content_type(ctype)
        encoded = answer.encoding.strip().lower() not in ("", "identity")
        if media != "multipart/related":
            cap = min(self.max_response_bytes, self.max_decompressed_bytes) if encoded else self.max_response_bytes
            data = await read_capped(answer, url, cap)
            return self._message(status, url, data, ctype, {}, multipart=False)
        try:
            parser = MtomStreamParser(params.get("boundary", ""), spool_dir=spool_dir, memory_limit=self.memory_limit,
                                      max_part_bytes=self.max_attachment_bytes,
                                      max_memory_bytes=self.max_response_bytes)
        except SoapFault as exc:
            raise SoapTransportError(f"HTTP {status} from {url}: bad multipart ({exc.reason})", url=url,
                                     status=status) from exc
        try:
            async for chunk in decoded_body(answer, url, raw_cap=self.max_attachment_bytes, decoded_cap=(
                    min(self.max_decompressed_bytes, self.max_attachment_bytes) if encoded
                    else self.max_attachment_bytes)):
                parser.feed(chunk)
            data, attachments = parser.finish(params.get("start"))
        except SoapFault as exc:
            parser.discard()
            raise SoapTransportError(f"HTTP {status} from {url}: {exc.reason}", url=url, status=status) from exc
        except BaseException:
            parser.discard()
            raise
        return self._message(status, url, data, "application/soap+xml", attachments, multipart=True)

    def _message(self, status: int, url: str, data: bytes, ctype: str, attachments: dict[str, Attachment], *,
                 multipart: bool) -> SoapRequest:
        """Parse the answer; a SOAP fault raises :class:`SoapFault`, anything else unusable
        :class:`SoapTransportError`."""
        try:
            message = parse_envelope(data, ctype, require_action=False)
        except SoapFault as exc:
            _drop(attachments)
            raise SoapTransportError(f"HTTP {status} from {url} is not a usable SOAP 1.2 message: {exc.reason}",
                                     url=url, status=status) from exc
        message.attachments = attachments
        message.mtom = bool(attachments) or multipart
        if message.body.tag == _FAULT_TAG:
            _drop(attachments)
            raise SoapFault.from_element(message.body, http_status=status)
        if status >= 300:
            _drop(attachments)
            raise SoapTransportError(f"HTTP {status} from {url}", url=url, status=status)
        return message


#: Stands in for the Security header in :func:`build_request`'s output; replaced by the header's
#: bytes. The header goes first in soap:Header, before anything taken from the caller's body, and
#: the WS-Addressing values before it are escaped, so the first occurrence is the stand-in.
_PLACEHOLDER = etree.Element("{urn:xds-node:outbound}SecurityHeaderGoesHere")
_PLACEHOLDER_XML = etree.tostring(_PLACEHOLDER, encoding="UTF-8", xml_declaration=False, with_tail=False)


def _splice(payload: bytes, security: bytes) -> bytes:
    """Put the header bytes in as text: re-parenting a signed element with lxml can re-prefix it."""
    at = payload.find(_PLACEHOLDER_XML)
    if at < 0:
        raise RuntimeError("request envelope has no Security header slot")
    return b"".join((payload[:at], security, payload[at + len(_PLACEHOLDER_XML):]))


def _drop(attachments: dict[str, Attachment]) -> None:
    for att in attachments.values():
        if att.path is not None:
            Path(att.path).unlink(missing_ok=True)


def call_outcome(exc: BaseException) -> str:
    """The ``xds_partner_calls_total`` outcome of a call that raised ``exc``."""
    if isinstance(exc, SoapFault):
        return "fault"
    if isinstance(exc, SoapTransportError):
        return "timeout" if exc.timeout else ("http_error" if exc.status else "unreachable")
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return "invalid"


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
        att = message.attachments.get(cid) or message.attachments.get(unquote(cid))
        if att is None:
            raise SoapFault("Sender", "xop:Include refers to a missing MIME part")
        if att.path is not None:
            return SpooledDocument(path=Path(att.path), size=att.size or 0)
        return SpooledDocument(data=att.data, size=len(att.data or b""))
    data = message.binary(element)
    return SpooledDocument(data=data, size=len(data))


