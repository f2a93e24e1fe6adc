"""Outbound SOAP 1.2 calls over httpx (zeep can neither send MTOM nor a raw ebRIM body).

Requests are written and responses parsed with the same functions the server uses, so both
directions get the same hardening (no DTDs, size cap, mustUnderstand). A SOAP fault from the
partner is raised as :class:`SoapFault`; anything that is not a SOAP answer (connection refused,
timeout, an HTML error page) as :class:`SoapTransportError`, so a gateway fanning out to many
partners can tell "partner said no" from "partner unreachable".
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator, Sequence

import httpx
from lxml.etree import _Element

from .envelope import SOAP_ENV, Attachment, SoapRequest, build_request, parse_envelope
from .fault import SoapFault

_FAULT_TAG = f"{{{SOAP_ENV}}}Fault"


class SoapTransportError(Exception):
    """The partner could not be reached or did not answer with a SOAP envelope."""

    def __init__(self, message: str, *, url: str, status: int | None = None, timeout: bool = False):
        super().__init__(message)
        self.url = url
        self.status = status
        self.timeout = timeout


async def _aiter(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    # File-backed attachments: read chunks off the event loop.
    while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
        yield chunk


async def read_capped(resp: httpx.Response, url: str, cap: int) -> bytes:
    """The response body, refused (SoapTransportError) as soon as it is known to exceed ``cap``."""
    length = resp.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > cap:
        raise SoapTransportError(f"response from {url} exceeds {cap} bytes", url=url, status=resp.status_code)
    chunks: list[bytes] = []
    total = 0
    async for chunk in resp.aiter_bytes():
        total += len(chunk)
        if total > cap:
            raise SoapTransportError(f"response from {url} exceeds {cap} bytes", url=url, status=resp.status_code)
        chunks.append(chunk)
    return b"".join(chunks)


class SoapClient:
    """A reusable async SOAP client (one connection pool; create once, ``aclose`` at shutdown)."""

    def __init__(
        self,
        *,
        timeout: float = 30.0,
        verify: bool | ssl.SSLContext = True,
        cert: tuple[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_response_bytes: int = 256 << 20,
    ) -> None:
        if cert is not None:
            # httpx 0.28 wants client certificates inside an SSLContext.
            if isinstance(verify, ssl.SSLContext):
                ctx = verify
            else:
                ctx = ssl.create_default_context()
                if verify is False:
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
            ctx.load_cert_chain(*cert)
            verify = ctx
        if verify is True:
            verify = httpx.create_ssl_context()  # httpx's own default (certifi), made explicit for the floor
        if isinstance(verify, ssl.SSLContext) and verify.minimum_version < ssl.TLSVersion.TLSv1_2:
            verify.minimum_version = ssl.TLSVersion.TLSv1_2  # never below TLS 1.2, whatever OpenSSL allows
        self._client = httpx.AsyncClient(timeout=timeout, verify=verify, transport=transport)
        self.max_response_bytes = max_response_bytes

    async def __aenter__(self) -> SoapClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def call(
        self,
        url: str,
        action: str,
        body: _Element | bytes,
        *,
        headers: Sequence[_Element] = (),
        attachments: Sequence[Attachment] = (),
        mtom: bool = False,
        timeout: float | None = None,
    ) -> SoapRequest:
        """POST one request and return the parsed response message (faults are raised)."""
        payload, content_type, _ = build_request(
            action, body, to=url, headers=headers, attachments=attachments, mtom=mtom
        )
        content = payload if isinstance(payload, bytes) else _aiter(payload)
        kwargs = {} if timeout is None else {"timeout": timeout}
        try:
            async with self._client.stream(
                "POST", url, content=content, headers={"content-type": content_type}, **kwargs
            ) as resp:
                data = await self._read(resp, url)
                status = resp.status_code
                resp_ct = resp.headers.get("content-type", "")
        except httpx.TimeoutException as exc:
            raise SoapTransportError(f"timeout calling {url}", url=url, timeout=True) from exc
        except httpx.HTTPError as exc:
            raise SoapTransportError(f"error calling {url}: {exc}", url=url) from exc
        try:
            message = parse_envelope(data, resp_ct, require_action=False)
        except SoapFault as exc:
            raise SoapTransportError(
                f"HTTP {status} from {url} is not a usable SOAP 1.2 message: {exc.reason}",
                url=url,
                status=status,
            ) from exc
        if message.body.tag == _FAULT_TAG:
            raise SoapFault.from_element(message.body, http_status=status)
        if status >= 300:
            raise SoapTransportError(f"HTTP {status} from {url}", url=url, status=status)
        return message

    async def _read(self, resp: httpx.Response, url: str) -> bytes:
        return await read_capped(resp, url, self.max_response_bytes)
