"""Small helpers that let tests talk to a node the way a partner would: SOAP 1.2 over HTTP."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx
from lxml import etree

from xds_node.ebxml import vocabulary as v
from xds_node.soap.envelope import build_request, parse_envelope

SOAP_ENV = "http://www.w3.org/2003/05/soap-envelope"


@dataclass
class Reply:
    http_status: int
    content_type: str
    raw: bytes
    envelope: etree._Element | None
    body: etree._Element | None  # first payload element (or soap:Fault)

    @property
    def is_fault(self) -> bool:
        return self.body is not None and self.body.tag == f"{{{SOAP_ENV}}}Fault"

    @property
    def status(self) -> str | None:
        return None if self.body is None else self.body.get("status")

    @property
    def error_codes(self) -> list[str]:
        if self.body is None:
            return []
        return [e.get("errorCode") for e in self.body.iter(f"{{{v.RS}}}RegistryError")]

    def objects(self, local: str) -> list[etree._Element]:
        lst = self.body.find(f"{{{v.RIM}}}RegistryObjectList") if self.body is not None else None
        return [] if lst is None else [c for c in lst if etree.QName(c).localname == local]

    @property
    def fault_code(self) -> str | None:
        if not self.is_fault:
            return None
        val = self.body.find(f"{{{SOAP_ENV}}}Code/{{{SOAP_ENV}}}Value")
        return val.text if val is not None else None

    @property
    def fault_reason(self) -> str:
        text = self.body.find(f"{{{SOAP_ENV}}}Reason/{{{SOAP_ENV}}}Text") if self.is_fault else None
        return text.text if text is not None else ""


def _parse(resp: httpx.Response) -> Reply:
    ct = resp.headers.get("content-type", "")
    env = body = None
    try:
        msg = parse_envelope(resp.content, ct, require_action=False)
        env, body = msg.envelope, msg.body
    except Exception:  # a fault envelope parses too; anything else stays raw for the assertion
        try:
            env = etree.fromstring(resp.content)
            bodies = env.find(f"{{{SOAP_ENV}}}Body")
            body = bodies[0] if bodies is not None and len(bodies) else None
        except etree.XMLSyntaxError:
            pass
    return Reply(resp.status_code, ct, resp.content, env, body)


class SoapTestClient:
    """Synchronous SOAP client for tests: in-process (ASGI app) or against a live base URL."""

    def __init__(self, app=None, base_url: str = "http://testserver"):
        self._loop = asyncio.new_event_loop()
        transport = httpx.ASGITransport(app=app) if app is not None else None
        self.base_url = base_url
        self._client = httpx.AsyncClient(transport=transport, base_url=base_url, timeout=60)

    def _run(self, coro):
        return self._loop.run_until_complete(coro)

    def call(self, path: str, action: str, body: etree._Element | bytes, **kw) -> Reply:
        payload, ct, _ = build_request(action, body, to=self.base_url + path, **kw)
        if not isinstance(payload, bytes):
            payload = b"".join(payload)
        return self.post_raw(path, payload, ct)

    def post_raw(self, path: str, data: bytes, content_type: str) -> Reply:
        resp = self._run(self._client.post(path, content=data, headers={"Content-Type": content_type}))
        return _parse(resp)

    def get(self, path: str) -> httpx.Response:
        return self._run(self._client.get(path))

    def close(self) -> None:
        self._run(self._client.aclose())
        self._loop.close()
