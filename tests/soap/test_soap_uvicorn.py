"""The SOAP app behind a real uvicorn server on 127.0.0.1, called with SoapClient over TCP."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from lxml import etree

from xds_node.soap import Endpoint, SoapApp, SoapClient, SoapFault, SoapRequest, SoapResponse, xop_include
from xds_node.soap.envelope import Attachment

pytestmark = pytest.mark.server
T = "urn:t"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    doc = tmp_path / "doc.bin"
    doc.write_bytes(bytes(i % 253 for i in range(1_500_000)))

    async def retrieve(req: SoapRequest) -> SoapResponse:
        resp = SoapResponse("urn:t:RetrieveResponse", b"")
        out = etree.Element(f"{{{T}}}Doc")
        out.append(resp.attach(doc, "application/octet-stream"))
        resp.body = out
        return resp

    async def digest(req: SoapRequest) -> SoapResponse:
        out = etree.Element(f"{{{T}}}Digest")
        out.text = hashlib.sha256(req.binary(req.body[0])).hexdigest()
        return SoapResponse("urn:t:DigestResponse", out)

    app = SoapApp(
        [Endpoint("/xds/repo", {"urn:t:Retrieve": retrieve, "urn:t:Digest": digest})],
        max_body_bytes=4 << 20,
    )
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not srv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", doc
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


def test_real_server_round_trips(server: tuple[str, Path]) -> None:
    base, doc = server

    async def go() -> None:
        async with SoapClient(timeout=10) as client:
            msg = await client.call(f"{base}/xds/repo", "urn:t:Retrieve", etree.Element(f"{{{T}}}Retrieve"))
            assert msg.action == "urn:t:RetrieveResponse"
            assert msg.mtom
            assert msg.binary(msg.body) == doc.read_bytes()

            blob = b"\x00\r\n--" * 50_000
            req = etree.Element(f"{{{T}}}Req")
            etree.SubElement(req, f"{{{T}}}Doc").append(xop_include("up@test"))
            att = Attachment("up@test", "application/octet-stream", path=_write(doc.parent / "up.bin", blob))
            msg = await client.call(f"{base}/xds/repo", "urn:t:Digest", req, attachments=[att])
            assert msg.body.text == hashlib.sha256(blob).hexdigest()

            with pytest.raises(SoapFault) as err:
                await client.call(f"{base}/xds/repo", "urn:t:Unknown", etree.Element("x"))
            assert err.value.http_status == 400

        async with httpx.AsyncClient() as raw:
            assert (await raw.get(f"{base}/health")).text == "ok"

    asyncio.run(go())


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
