"""The ASGI adapter: HTTP in, :func:`parse_envelope` -> hooks -> handler -> serialize, HTTP out.

This is the only SOAP module that knows about HTTP. It enforces the body size cap while the body
is still arriving (and its time and memory, see :mod:`.body`), turns every error into a SOAP 1.2
fault (a Python traceback never reaches a client), and serves each endpoint's WSDL with its address
rewritten to the node's public URL (a client's Host header is used only when it is a configured name).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import hashlib
import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lxml import etree
from lxml.etree import _Element

from xds_node import metrics

from .body import BodyReader, Inflight
from .envelope import (
    DEFAULT_UNDERSTOOD,
    WSA,
    SoapRequest,
    SoapResponse,
    fault_envelope,
    parse_envelope,
    parse_xml,
    serialize_response,
)
from .fault import SoapFault
from .limits import BodyLimits, XmlLimits

log = logging.getLogger("xds_node.soap")

Handler = Callable[[SoapRequest], Awaitable[SoapResponse]]
Hook = Callable[[SoapRequest], Awaitable[None]]
ErrorCallback = Callable[[BaseException, SoapRequest | None], None]

WSDL_SOAP12 = "http://schemas.xmlsoap.org/wsdl/soap12/"
WSDL_SOAP11 = "http://schemas.xmlsoap.org/wsdl/soap/"

_FAULT_CT = b"application/soap+xml; charset=UTF-8"
_TEXT_CT = b"text/plain; charset=utf-8"
_HOST_RE = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
_HOST_PORT_RE = re.compile(r":[0-9]{1,5}$")
_WSDL_CACHE_MAX = 64
#: Bodies larger than this are parsed on a worker thread so the event loop keeps serving others.
_THREAD_PARSE_BYTES = 1 << 20
#: Statuses after which the connection is closed: the rest of the body is not worth reading.
_CLOSE_STATUSES = frozenset({408, 413, 503})
_WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
#: Operations endpoints (plain GETs, no credentials, see xds_node.ops).
_OPS_PATHS = frozenset({"/health", "/ready", "/metrics"})
#: Headers by which a proxy names the caller it forwards for (read only to mark a request forwarded).
_FORWARDING_HEADERS = frozenset({b"x-forwarded-for", b"forwarded", b"x-real-ip"})


@dataclass
class Endpoint:
    """One SOAP service: an HTTP path, its actions, optional WSDL and pre-dispatch hooks."""

    path: str
    handlers: dict[str, Handler]
    wsdl: Path | None = None
    before: list[Hook] = field(default_factory=list)
    understood: frozenset[str] = frozenset()


def _client_cert(scope: dict[str, Any]) -> bytes | None:
    """DER of the TLS client certificate from the ASGI TLS extension, when the server offers it."""
    tls = (scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or ()
    if not chain or tls.get("client_cert_error"):
        return None
    first = chain[0]
    if isinstance(first, bytes):
        if not first.lstrip().startswith(b"-----BEGIN"):
            return first
        first = first.decode("ascii")
    try:
        return ssl.PEM_cert_to_DER_cert(first)
    except ValueError:
        return None


class SoapApp:
    """ASGI application serving a set of SOAP 1.2 endpoints."""

    def __init__(
        self,
        endpoints: Iterable[Endpoint],
        *,
        max_body_bytes: int = 64 << 20,
        on_error: ErrorCallback | None = None,
        body: BodyLimits | None = None,
        xml: XmlLimits | None = None,
        base_url: str = "",
        server_names: Collection[str] = (),
        fallback_url: str = "",
        ops: Any = None,
    ) -> None:
        """``base_url`` (or else ``fallback_url``, else the listening address) is the WSDL address;
        a Host header is honoured only when it is one of ``server_names`` and no base_url is set.
        ``ops`` (:class:`xds_node.ops.Operations`) decides who reaches /health, /ready and /metrics
        and what readiness means; by default loopback only, ready when the process answers."""
        self._endpoints: dict[str, Endpoint] = {}
        self._understood: dict[str, frozenset[str]] = {}
        for ep in endpoints:
            path = ep.path.rstrip("/") or "/"
            if path in self._endpoints:
                raise ValueError(f"duplicate endpoint path {path}")
            self._endpoints[path] = ep
            self._understood[path] = frozenset(ep.understood) - DEFAULT_UNDERSTOOD
        self.body_limits = dataclasses.replace(body or BodyLimits(), max_bytes=max_body_bytes)
        self.xml_limits = xml or XmlLimits()
        self._inflight = Inflight()
        self._base_url = base_url.rstrip("/")
        self._server_names = frozenset(n.strip().lower() for n in server_names if n.strip())
        self._fallback_url = fallback_url.rstrip("/")
        self._on_error = on_error
        self._wsdl_templates: dict[str, _Element] = {}
        self._wsdl_cache: dict[tuple[str, str], bytes] = {}
        if ops is None:
            from xds_node.ops import Operations  # here, not at import: soap stays below security

            ops = Operations()
        self._ops = ops

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})

    # --- plumbing ---------------------------------------------------------------------------

    @staticmethod
    async def _lifespan(receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    @staticmethod
    async def _send_text(send: Any, status: int, text: str, extra: Iterable[tuple[bytes, bytes]] = ()) -> None:
        body = text.encode("utf-8")
        headers = [(b"content-type", _TEXT_CT), (b"content-length", str(len(body)).encode()), *extra]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def _send_bytes(
        send: Any, status: int, body: bytes, content_type: bytes, extra: Iterable[tuple[bytes, bytes]] = ()
    ) -> None:
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *extra]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def _send_stream(send: Any, chunks: Iterator[bytes], content_type: bytes) -> None:
        # Chunks may come from files: large ones are read off the event loop.
        headers = [(b"content-type", content_type)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        blocking = getattr(chunks, "blocking", True)
        try:
            while (chunk := (await asyncio.to_thread(next, chunks, None) if blocking else next(chunks, None))) \
                    is not None:
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    async def _send_fault(self, send: Any, fault: SoapFault, req: SoapRequest | None) -> None:
        body = fault_envelope(fault, relates_to=req.message_id if req is not None else None)
        extra = [(b"connection", b"close")] if fault.http_status in _CLOSE_STATUSES else []
        extra += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in fault.http_headers]
        if fault.http_status in _CLOSE_STATUSES:
            metrics.http_refusal(fault.http_status)
        if fault.http_status == 503 and not any(k == b"retry-after" for k, _ in extra):
            extra.append((b"retry-after", b"5"))
        await self._send_bytes(send, fault.http_status, body, _FAULT_CT, extra)

    def _report(self, exc: BaseException, req: SoapRequest | None) -> None:
        try:
            if self._on_error is not None:
                self._on_error(exc, req)
            else:
                log.error("unhandled error in SOAP handler", exc_info=exc)
        except Exception:  # a broken logger must not turn a fault into a crash
            log.exception("on_error callback failed")

    # --- HTTP ------------------------------------------------------------------------------

    async def _http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        ep = self._endpoints.get(path) or self._endpoints.get(path.rstrip("/") or "/")
        if ep is None:
            if path in _OPS_PATHS and method == "GET":
                await self._operations(path, scope, send)
            else:
                await self._send_text(send, 404, "not found")
            return
        if method == "POST":
            await self._post(ep, scope, receive, send)
        elif method == "GET":
            query = scope.get("query_string", b"").lower()
            if ep.wsdl is not None and (query == b"wsdl" or query.startswith((b"wsdl&", b"wsdl="))):
                try:
                    body = self._wsdl_for(ep, scope)
                except Exception as exc:
                    self._report(exc, None)
                    await self._send_text(send, 500, "WSDL unavailable")
                    return
                await self._send_bytes(send, 200, body, b"text/xml; charset=UTF-8")
            else:
                await self._send_text(
                    send, 405, "SOAP 1.2 endpoint: POST application/soap+xml", [(b"allow", b"POST, GET")]
                )
        else:
            await self._send_text(send, 405, "method not allowed", [(b"allow", b"POST, GET")])

    async def _operations(self, path: str, scope: dict[str, Any], send: Any) -> None:
        """/health, /ready, /metrics: for loopback and ``ops_allow`` only; others see a 404."""
        client = scope.get("client")
        if not self._ops.admits(client[0] if client else None):
            await self._send_text(send, 404, "not found")
            return
        if path == "/health":
            await self._send_text(send, 200, "ok")
        elif path == "/ready":
            status, text = await self._ops.ready()
            await self._send_text(send, status, text, [(b"cache-control", b"no-store")])
        else:
            body, content_type = await asyncio.to_thread(metrics.render)
            await self._send_bytes(send, 200, body, content_type.encode("latin-1"), [(b"cache-control", b"no-store")])

    @property
    def max_body_bytes(self) -> int:
        return self.body_limits.max_bytes

    async def _read_body(self, scope: dict[str, Any], receive: Any, reader: BodyReader) -> tuple[bytes | None, str]:
        """The request body (None if the client went away) and its Content-Type."""
        content_type = ""
        length: int | None = None
        for name, value in scope.get("headers", ()):
            if name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    raise SoapFault("Sender", "Invalid Content-Length") from None
        return await reader.read(receive, length), content_type

    async def _post(self, ep: Endpoint, scope: dict[str, Any], receive: Any, send: Any) -> None:
        req: SoapRequest | None = None
        reader = BodyReader(self.body_limits, self._inflight)
        try:
            data, content_type = await self._read_body(scope, receive, reader)
            if data is None:
                return
            understood = self._understood[ep.path.rstrip("/") or "/"]
            large = len(data) > _THREAD_PARSE_BYTES
            if large:
                req = await asyncio.to_thread(
                    parse_envelope, data, content_type, understood=understood, limits=self.xml_limits
                )
            else:
                req = parse_envelope(data, content_type, understood=understood, limits=self.xml_limits)
            if req.header_block(_WSSE, "Security") is not None:
                # the whole message's digest ties a replay entry to its body (resends vs. reuse);
                # only a signed message has replay state, so other bodies are never hashed
                req.raw_digest = await asyncio.to_thread(_sha256, data) if large else _sha256(data)
            del data
            req.path = scope["path"]
            req.client_cert = _client_cert(scope)
            client = scope.get("client")
            req.remote_address = client[0] if client else ""
            req.forwarded = any(name in _FORWARDING_HEADERS for name, _ in scope.get("headers", ()))
            handler = ep.handlers.get(req.action)
            if handler is None:
                detail = etree.Element(f"{{{WSA}}}Action", nsmap={"wsa": WSA})
                detail.text = req.action
                raise SoapFault(
                    "Sender",
                    f"The action {req.action[:200]!r} is not supported by this endpoint",
                    subcodes=[(WSA, "ActionNotSupported")],
                    detail=detail,
                )
            for hook in ep.before:
                await hook(req)
            resp = await handler(req)
            if not isinstance(resp, SoapResponse):
                raise TypeError(f"handler for {req.action} returned {type(resp).__name__}")
            payload, ct = serialize_response(resp, relates_to=req.message_id, mtom=req.mtom)
        except SoapFault as fault:
            await self._send_fault(send, fault, req)
            return
        except Exception as exc:
            self._report(exc, req)
            await self._send_fault(send, SoapFault("Receiver", "Internal error"), req)
            return
        finally:
            reader.release()
        if isinstance(payload, bytes):
            await self._send_bytes(send, 200, payload, ct.encode("latin-1"))
        else:
            try:
                await self._send_stream(send, payload, ct.encode("latin-1"))
            except Exception as exc:  # headers are gone: all we can do is log and drop the connection
                self._report(exc, req)
                raise

    # --- WSDL ------------------------------------------------------------------------------

    def _wsdl_base(self, scope: dict[str, Any]) -> str:
        """The origin written into soap:address: never a Host header the operator did not configure."""
        if self._base_url:
            return self._base_url
        host = ""
        for name, value in scope.get("headers", ()):
            if name == b"host":
                host = value.decode("latin-1").strip().lower()
                break
        if host and _HOST_RE.fullmatch(host) and (
            host in self._server_names or _HOST_PORT_RE.sub("", host) in self._server_names
        ):
            return f"{scope.get('scheme', 'http')}://{host}{scope.get('root_path', '')}"
        if self._fallback_url:
            return self._fallback_url
        server = scope.get("server") or ("localhost", None)
        host = server[0] if server[1] in (None, 80, 443) else f"{server[0]}:{server[1]}"
        return f"{scope.get('scheme', 'http')}://{host}{scope.get('root_path', '')}"

    def _wsdl_for(self, ep: Endpoint, scope: dict[str, Any]) -> bytes:
        base = self._wsdl_base(scope)
        key = (ep.path, base)
        cached = self._wsdl_cache.get(key)
        if cached is not None:
            return cached
        template = self._wsdl_templates.get(ep.path)
        if template is None:
            assert ep.wsdl is not None
            template = self._wsdl_templates[ep.path] = parse_xml(Path(ep.wsdl).read_bytes())
        doc = copy.deepcopy(template)
        # keep each port's own path (a WSDL may describe several endpoints); swap in our origin
        for address in doc.iter(f"{{{WSDL_SOAP12}}}address", f"{{{WSDL_SOAP11}}}address"):
            path = urlsplit(address.get("location", "")).path or scope["path"]
            address.set("location", base + path)
        body = etree.tostring(doc, encoding="UTF-8", xml_declaration=True)
        if len(self._wsdl_cache) < _WSDL_CACHE_MAX:  # Host is client-chosen: bound the cache
            self._wsdl_cache[key] = body
        return body
