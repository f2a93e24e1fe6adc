"""Outbound SOAP for the initiating gateway: pooled keep-alive connections, WS-Security per call,
MTOM answers spooled to disk, per-partner timeouts, retries and concurrency limits.

Why not :class:`xds_node.soap.client.SoapClient`: a retrieve answer of many large documents must
not be held in memory, so MTOM responses are parsed here while they arrive and each attachment
larger than ``memory_limit`` goes to a file. Requests are still written with the same
:func:`build_request` and answers parsed with the same hardened :func:`parse_envelope`, and the
same two exceptions come out (:class:`SoapFault` = the partner said no, :class:`SoapTransportError`
= the partner could not be reached or did not answer in SOAP), so callers can tell them apart.

Fan-out cost (``bench/bench_fanout.py``): with hundreds of partners the CPU per call, not the
network, sets the wall time. So

* a signed SAML assertion (C14N + RSA) is reused: :class:`AssertionCache` signs one per
  (requester, partner audience, algorithm, NameFormat) until shortly before it expires;
* each message still gets its own fresh Timestamp signed with the holder-of-key key, but the header
  is written from a template (:func:`security_header_bytes`: no lxml trees or C14N per call) and
  its RSA signature, which releases the GIL, runs on ``signing_threads`` worker threads while the
  event loop sends and parses;
* plain (non-MTOM) calls go over a small asyncio HTTP/1.1 client (:class:`_Http1Pool`) instead of
  httpx, whose layers cost about as much CPU per call as the signature; MTOM calls (retrieve)
  keep httpx, which streams the answer to the spool files.
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
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from lxml import etree
from lxml.etree import _Element

from xds_node import metrics
from xds_node.security.saml import ATTRNAME_URI, RequesterContext, sign_assertion, unsigned_assertion
from xds_node.security.trust import Partner
from xds_node.security.wss import (
    SAML2,
    parse_xml,
    security_header_bytes,
    utcnow,
)
from xds_node.soap.client import SoapTransportError, read_capped
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
    #: the assertion serialized once, spliced as bytes into every message's header
    xml: bytes = b""


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
        return self._entry(ctx, audience=audience, sha1=sha1, name_format=name_format, now=now).assertion

    def get_serialized(self, ctx: RequesterContext, *, audience: str | None = None, sha1: bool = False,
                       name_format: str = ATTRNAME_URI, now: datetime | None = None) -> tuple[str, bytes]:
        """(assertion ID, its bytes): what a template-built Security header needs, serialized once."""
        entry = self._entry(ctx, audience=audience, sha1=sha1, name_format=name_format, now=now)
        if not entry.xml:
            entry.xml = etree.tostring(entry.assertion, with_tail=False)
        return entry.assertion.get("ID") or "", entry.xml

    def _entry(self, ctx: RequesterContext, *, audience: str | None, sha1: bool, name_format: str,
               now: datetime | None) -> _Cached:
        now = now or utcnow()
        # a flat key (dataclasses.astuple deep-copies, which costs more than the lookup it serves)
        key = (ctx.subject_id, ctx.organization, ctx.organization_id, ctx.home_community_id, tuple(ctx.role),
               tuple(ctx.purpose_of_use), ctx.npi, ctx.resource_id, ctx.audience, ctx.name_id,
               audience, sha1, name_format)
        hit = self._cache.get(key)
        if hit is not None and now < hit.renew_at:
            self.reused += 1
            return hit
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
        entry = self._cache[key] = _Cached(a, now + self.lifetime - self.margin)
        return entry


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


# --- lean HTTP/1.1 for plain SOAP calls -------------------------------------------------------
class _StaleConnection(ConnectionError):
    """A kept-alive connection closed before any byte of the answer: the request may be re-sent."""


class _HttpResponse:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class _Http1Connection(asyncio.Protocol):
    """One HTTP/1.1 connection as an asyncio protocol: one request at a time, answer read whole.

    Why not httpx here: for a fan-out of small query answers httpx + httpcore + anyio cost about
    1 ms of CPU per call in layers (request/response models, cookies, redirects, pool scans, a
    readability poll per reused connection); this does the same exchange in a fraction of that.
    Framing: Content-Length, chunked, or read-to-close; 1xx answers are skipped.
    """

    MAX_HEAD = 64 * 1024

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.keep_alive = True
        self.requests = 0
        self.idle_since = time.monotonic()
        self._buf = bytearray()
        self._waiter: asyncio.Future[_HttpResponse] | None = None
        self._got_bytes = False
        self._state = "head"
        self._status = 0
        self._headers: dict[str, str] = {}
        self._need = 0
        self._body = bytearray()

    # -- protocol callbacks --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        w = self._waiter
        if w is None or w.done():
            return
        if self._state == "eof" and exc is None:
            self._complete()
        elif not self._got_bytes and self.requests > 1:
            w.set_exception(_StaleConnection("connection closed before the answer"))
        else:
            w.set_exception(ConnectionError(f"connection closed during the answer ({exc or 'EOF'})"))

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost finishes a read-to-close answer

    def data_received(self, data: bytes) -> None:
        w = self._waiter
        if w is None or w.done():  # nothing was asked: a confused server; never reuse this one
            self.keep_alive = False
            self.close()
            return
        self._got_bytes = True
        self._buf += data
        try:
            while self._step():
                pass
        except (ValueError, UnicodeDecodeError) as exc:
            self.keep_alive = False
            self.close()
            if not w.done():
                w.set_exception(ConnectionError(f"unusable HTTP answer: {exc}"))

    # -- use --
    async def request(self, data: bytes) -> _HttpResponse:
        if self.closed or self.transport is None:
            raise _StaleConnection("connection already closed")
        self.requests += 1
        self._waiter = asyncio.get_running_loop().create_future()
        self._got_bytes = False
        self._state, self._status, self._headers, self._body = "head", 0, {}, bytearray()
        self._buf.clear()
        self.transport.write(data)
        try:
            return await self._waiter
        finally:
            self._waiter = None
            self.idle_since = time.monotonic()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # -- parsing --
    def _complete(self) -> None:
        assert self._waiter is not None
        if not self._waiter.done():
            self._waiter.set_result(_HttpResponse(self._status, self._headers, bytes(self._body)))
        self._state = "done"

    def _take(self, n: int) -> None:
        if len(self._body) + n > self.cap:
            raise ValueError(f"answer exceeds {self.cap} bytes")
        with memoryview(self._buf) as view:  # released before the del below resizes the buffer
            self._body += view[:n]
        del self._buf[:n]

    def _step(self) -> bool:
        buf, state = self._buf, self._state
        if state == "head":
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > self.MAX_HEAD:
                    raise ValueError("header too long")
                return False
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            del buf[:end + 4]
            version, _, rest = lines[0].partition(" ")
            if not version.startswith("HTTP/1."):
                raise ValueError("not HTTP/1.x")
            status = int(rest[:3])
            if 100 <= status < 200:
                return True  # interim answer (100 Continue): the real one follows
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep or not name or name[-1] in " \t":
                    raise ValueError("bad header line")
                name, value = name.lower(), value.strip()
                if name in headers:
                    if name == "content-length" and headers[name] != value:
                        raise ValueError("conflicting Content-Length")
                    headers[name] = value if name == "content-length" else f"{headers[name]}, {value}"
                else:
                    headers[name] = value
            self._status, self._headers = status, headers
            conn = headers.get("connection", "").lower()
            if "close" in conn or (version == "HTTP/1.0" and "keep-alive" not in conn):
                self.keep_alive = False
            te = headers.get("transfer-encoding", "").lower()
            if te:
                if te.rsplit(",", 1)[-1].strip() != "chunked":
                    raise ValueError("unsupported Transfer-Encoding")
                if "content-length" in headers:
                    self.keep_alive = False  # both framings (RFC 9112 6.3): chunked wins, then close
                self._state = "chunk-size"
            elif "content-length" in headers:
                n = headers["content-length"]
                if not n.isdigit():
                    raise ValueError("bad Content-Length")
                self._need = int(n)
                if self._need > self.cap:
                    raise ValueError(f"answer exceeds {self.cap} bytes")
                self._state = "length"
            elif status in (204, 304):
                self._complete()
                return False
            else:
                self.keep_alive = False
                self._state = "eof"
            return True
        if state == "length":
            if len(buf) < self._need:
                return False
            if len(buf) > self._need:
                self.keep_alive = False  # bytes after the answer: the connection is out of step
            self._take(self._need)
            self._complete()
            return False
        if state == "eof":
            self._take(len(buf))
            return False
        if state == "chunk-size":
            eol = buf.find(b"\r\n")
            if eol < 0:
                if len(buf) > 1024:
                    raise ValueError("bad chunk size line")
                return False
            size = bytes(buf[:eol]).split(b";", 1)[0].strip()
            if not size or len(size) > 16:
                raise ValueError("bad chunk size")
            self._need = int(size, 16)
            del buf[:eol + 2]
            self._state = "chunk-data" if self._need else "trailer"
            return True
        if state == "chunk-data":
            if len(buf) < self._need + 2:
                return False
            if buf[self._need:self._need + 2] != b"\r\n":
                raise ValueError("bad chunk end")
            self._take(self._need)
            del buf[:2]
            self._state = "chunk-size"
            return True
        if state == "trailer":
            eol = buf.find(b"\r\n")
            if eol < 0:
                if len(buf) > self.MAX_HEAD:
                    raise ValueError("trailer too long")
                return False
            del buf[:eol + 2]
            if eol == 0:
                if buf:
                    self.keep_alive = False
                self._complete()
                return False
            return True
        return False


class _Http1Pool:
    """Kept-alive :class:`_Http1Connection` per (scheme, host, port), most recently used first.

    How many connections one partner gets is bounded by the caller (the per-partner semaphore in
    :meth:`OutboundClient.call`); idle ones are dropped after ``keepalive`` seconds or as soon as the
    server closes them (the event loop reports that, so no per-request readability check is needed).
    """

    def __init__(self, verify: ssl.SSLContext | bool, *, cap: int, keepalive: float = 30.0) -> None:
        self.verify = verify
        self.cap = cap
        self.keepalive = keepalive
        self._idle: dict[tuple[str, str, int], list[_Http1Connection]] = {}
        self._targets: dict[str, tuple[tuple[str, str, int], bytes]] = {}
        self._insecure: ssl.SSLContext | None = None

    def _target(self, url: str) -> tuple[tuple[str, str, int], bytes]:
        """(pool key, the request line and Host header) for ``url``, parsed once per URL."""
        hit = self._targets.get(url)
        if hit is not None:
            return hit
        u = urlsplit(url)
        scheme = u.scheme.lower()
        if scheme not in ("http", "https") or not u.hostname:
            raise ConnectionError(f"unsupported URL {url!r}")
        port = u.port or (443 if scheme == "https" else 80)
        host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
        if port != (443 if scheme == "https" else 80):
            host += f":{port}"
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        if not (path + host).isascii() or any(c in path + host for c in "\r\n\0 \t"):
            raise ConnectionError(f"unusable URL {url!r}")
        line = f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
        hit = self._targets[url] = ((scheme, u.hostname, port), line.encode("ascii"))
        if len(self._targets) > 4096:
            self._targets.clear()
        return hit

    def _ssl(self, scheme: str) -> ssl.SSLContext | None:
        if scheme != "https":
            return None
        if isinstance(self.verify, ssl.SSLContext):
            return self.verify
        if self.verify:
            self.verify = ssl.create_default_context()
            return self.verify
        if self._insecure is None:  # verify=False: encryption without authentication (labs only)
            self._insecure = ssl.create_default_context()
            self._insecure.check_hostname = False
            self._insecure.verify_mode = ssl.CERT_NONE
        return self._insecure

    async def post(self, url: str, payload: bytes, content_type: str) -> _HttpResponse:
        key, line = self._target(url)
        if "\r" in content_type or "\n" in content_type:
            raise ConnectionError("bad content type")
        data = b"".join((line, b"User-Agent: xds-node\r\nAccept: application/soap+xml, multipart/related\r\n"
                         b"Content-Type: ", content_type.encode("latin-1"), b"\r\nContent-Length: ",
                         str(len(payload)).encode(), b"\r\n\r\n", payload))
        while True:
            conn, reused = self._idle_connection(key), True
            if conn is None:
                conn, reused = await self._connect(key), False
            try:
                resp = await conn.request(data)
            except _StaleConnection:
                conn.close()
                if reused:
                    continue  # the server dropped it while idle: try the next (or a new) one
                raise
            except BaseException:
                conn.close()  # cancelled (timeout) or failed mid-exchange: never reuse it
                raise
            if conn.keep_alive and not conn.closed:
                self._idle.setdefault(key, []).append(conn)
            else:
                conn.close()
            return resp

    def _idle_connection(self, key: tuple[str, str, int]) -> _Http1Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self.keepalive:
                return conn
            conn.close()
        return None

    async def _connect(self, key: tuple[str, str, int]) -> _Http1Connection:
        scheme, host, port = key
        ctx = self._ssl(scheme)
        conn = _Http1Connection(self.cap)
        await asyncio.get_running_loop().create_connection(
            lambda: conn, host, port, ssl=ctx, server_hostname=host if ctx is not None else None)
        return conn

    def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()


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
    ``httpx.MockTransport``) replaces the network for every partner (and turns the lean HTTP path
    off). ``signing_threads`` sign the per-message Timestamps (0: on the event loop); ``lean_http``
    False sends plain calls through httpx as well.
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
        signing_threads: int = 2,
        lean_http: bool = True,
    ) -> None:
        self.assertions = assertions
        #: threads that sign Timestamps (0 = sign on the event loop); created on first use
        self.signing_threads = max(0, signing_threads)
        self._signer: ThreadPoolExecutor | None = None
        # one TLS context for every partner pool: building one (loading the CA store) takes ~20 ms
        self.verify = ssl.create_default_context() if verify is True else verify
        self._shared = httpx.AsyncClient(transport=transport, timeout=30.0) if transport is not None else None
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._in_flight = asyncio.Semaphore(max_connections) if max_connections else None
        #: plain (non-MTOM) calls go over :class:`_Http1Pool`; MTOM answers stream through httpx
        self._lean = _Http1Pool(self.verify, cap=max_response_bytes) if lean_http and transport is None else None
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
        if self._lean is not None:
            self._lean.close()
        if self._signer is not None:
            self._signer.shutdown(wait=False, cancel_futures=True)
            self._signer = None
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
        lean = self._lean is not None and not mtom and url.isascii()
        http = None if lean else self._http(partner, options)
        started = time.perf_counter()
        outcome = "answered"
        try:
            async with self._semaphore(partner, options), (self._in_flight or contextlib.nullcontext()):
                return await retrying(
                    lambda: self._send(http, url, action, body, ctx, options, mtom=mtom, spool_dir=spool_dir,
                                       attachments=attachments),
                    retries=options.retries, backoff=options.backoff)
        except BaseException as exc:
            outcome = call_outcome(exc)
            raise
        finally:
            metrics.partner_call(partner.name, action, outcome, time.perf_counter() - started)

    async def _send(self, http: httpx.AsyncClient | None, url: str, action: str, body: _Element | bytes,
                    ctx: RequesterContext | None, options: PartnerOptions, *, mtom: bool,
                    spool_dir: Path | None, attachments: Sequence[Attachment] = ()) -> SoapRequest:
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
                if http is None:
                    assert self._lean is not None
                    resp = await self._lean.post(url, payload, content_type)
                    return self._plain_message(resp, url, spool_dir or self.spool_dir)
                async with http.stream(
                    "POST", url, content=payload, headers={"content-type": content_type},
                    timeout=options.timeout,
                ) as resp:
                    return await self._read(resp, url, spool_dir or self.spool_dir)
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise SoapTransportError(f"timeout after {options.timeout:g} s calling {url}", url=url,
                                     timeout=True) from exc
        except (httpx.HTTPError, OSError) as exc:  # OSError: the lean path (incl. TLS, bad URLs)
            raise SoapTransportError(f"error calling {url}: {exc!r}", url=url) from exc

    def _plain_message(self, resp: _HttpResponse, url: str, spool_dir: Path | None) -> SoapRequest:
        """The answer read by :class:`_Http1Pool`, already whole in memory (capped at
        ``max_response_bytes``), as the streamed path would have parsed it."""
        status = resp.status
        encoding = resp.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):  # we never ask for a compressed answer
            raise SoapTransportError(f"HTTP {status} from {url}: unexpected Content-Encoding {encoding[:40]}",
                                     url=url, status=status)
        media, params = parse_content_type(resp.headers.get("content-type", ""))
        if media != "multipart/related":
            return self._message(status, url, resp.body, resp.headers.get("content-type", ""), {}, multipart=False)
        try:
            parser = MtomStreamParser(params.get("boundary", ""), spool_dir=spool_dir,
                                      memory_limit=self.memory_limit, max_bytes=self.max_attachment_bytes)
        except (SoapFault, UnicodeEncodeError) as exc:
            raise SoapTransportError(f"HTTP {status} from {url}: bad multipart", url=url, status=status) from exc
        try:
            parser.feed(resp.body)
            data, attachments = parser.finish(params.get("start"))
        except SoapFault as exc:
            parser.discard()
            raise SoapTransportError(f"HTTP {status} from {url}: {exc.reason}", url=url, status=status) from exc
        return self._message(status, url, data, "application/soap+xml", attachments, multipart=True)

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
            data = await read_capped(resp, url, self.max_response_bytes)
            ctype = resp.headers.get("content-type", "")
        return self._message(status, url, data, ctype, attachments, multipart=media == "multipart/related")

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
