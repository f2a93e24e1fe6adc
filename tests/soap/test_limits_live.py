"""Request limits against a real ``xds-node serve`` process, over raw sockets as an attacker would.

Every limit is set short (seconds, kilobytes) through settings, so each test is bounded by a
socket timeout and asserts only what the server answered, never how long it took.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from lxml import etree

from tests import factories as f
from tests.conftest import ROOT, free_port
from tests.soapkit import SoapTestClient
from xds_node.ebxml import rim, xdsb
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import StoredQuery
from xds_node.soap.envelope import build_request
from xds_node.soap.mtom import Attachment

pytestmark = pytest.mark.server

WAIT = 20.0  # socket timeout: far above every limit below, so only a server that never answers fails

SHORT_LIMITS = {
    "XDS_MAX_HEADER_BYTES": "8192",
    "XDS_MAX_HEADER_COUNT": "40",
    "XDS_HEADER_TIMEOUT_SECONDS": "2",
    "XDS_KEEP_ALIVE_TIMEOUT_SECONDS": "1",
    "XDS_BODY_IDLE_TIMEOUT_SECONDS": "1",
    "XDS_BODY_TIMEOUT_SECONDS": "4",
    "XDS_MAX_BODY_BYTES": str(4 << 20),
    "XDS_BODY_SPOOL_BYTES": str(64 << 10),
    "XDS_MAX_INFLIGHT_BODY_BYTES": str(6 << 20),
    "XDS_MAX_XML_ELEMENTS": "20000",
    "XDS_MAX_XML_DEPTH": "40",
    "XDS_SERVER_NAMES": "xds.example.org",
}


class Node:
    """``xds-node serve`` with settings from the environment, optionally under a low fd limit."""

    def __init__(self, data_dir: Path, env: dict[str, str], *, nofile: int | None = None) -> None:
        self.port = free_port()
        self.spool_dir = str(data_dir / "tmp")
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, "XDS_DATA_DIR": str(data_dir), **env}

        def limit_fds() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xds_node.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=limit_fds if nofile is not None else None,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("node exited")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("node did not start within 30 s")

    def status(self, field: str) -> int:
        """A /proc/<pid>/status figure in kB (VmRSS, VmHWM)."""
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    n = Node(tmp_path_factory.mktemp("limits"), SHORT_LIMITS)
    yield n
    n.stop()


def connect(node: Node) -> socket.socket:
    return socket.create_connection(("127.0.0.1", node.port), timeout=WAIT)


def send_quietly(sock: socket.socket, data: bytes) -> None:
    """Send what the server will take; a server that has already refused may stop reading."""
    with contextlib.suppress(OSError):
        sock.sendall(data)


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (a refusal always closes)."""
    out = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        out += chunk
    return out


def read_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length body, leaving the connection open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "closed before a response"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))
    while len(body) < length:
        body += sock.recv(65536)
    return head


# --- headers ------------------------------------------------------------------------------


def test_huge_header_is_431(node):
    with connect(node) as sock:
        send_quietly(sock, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (2 << 20) + b"\r\n\r\n")
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431 ")


def test_huge_header_in_small_pieces_is_431(node):
    """The head is refused while it arrives, not after httptools has buffered all of it."""
    with connect(node) as sock:
        send_quietly(sock, b"GET /health HTTP/1.1\r\nHost: x\r\n")
        for _ in range(64):
            send_quietly(sock, b"X-Filler: " + b"b" * 1000 + b"\r\n")
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431 ")


def test_too_many_headers_is_431(node):
    fields = b"".join(b"X-F%d: 1\r\n" % i for i in range(200))
    with connect(node) as sock:
        send_quietly(sock, b"GET /health HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431 ")


def test_headers_within_limits_are_served(node):
    fields = b"".join(b"X-F%d: 1\r\n" % i for i in range(30))
    with connect(node) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + fields + b"Connection: close\r\n\r\n")
        assert read_all(sock).startswith(b"HTTP/1.1 200 ")


# --- time ---------------------------------------------------------------------------------


def test_withheld_body_is_408(node):
    with connect(node) as sock:
        sock.sendall(b"POST /xds/registry HTTP/1.1\r\nHost: x\r\nContent-Type: application/soap+xml\r\n"
                     b"Content-Length: 100000\r\n\r\n<soap:Envelope" + b" " * 50_000)
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"Fault" in answer


def test_trickled_body_is_408(node):
    """A byte every half second never trips the idle timeout; the whole-body deadline ends it."""
    with connect(node) as sock:
        sock.sendall(b"POST /xds/registry HTTP/1.1\r\nHost: x\r\nContent-Type: application/soap+xml\r\n"
                     b"Content-Length: 100000\r\n\r\n<")
        sock.settimeout(0.5)
        answer = b""
        for _ in range(int(WAIT / 0.5)):
            try:
                answer = sock.recv(65536)
                break
            except TimeoutError:
                send_quietly(sock, b" ")
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_half_sent_head_is_408(node):
    with connect(node) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Partial: yes")
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_silent_connection_is_closed(node):
    with connect(node) as sock:
        assert read_all(sock) == b""


def test_idle_keep_alive_connection_is_closed(node):
    with connect(node) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # keep-alive works...
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        assert read_all(sock) == b""  # ...and the idle connection is then closed by the server


# --- bodies -------------------------------------------------------------------------------


def test_body_over_cap_is_413(node):
    """Chunked, so no Content-Length warns the server: the cap applies while the body arrives."""
    with connect(node) as sock:
        sock.sendall(b"POST /xds/registry HTTP/1.1\r\nHost: x\r\nContent-Type: application/soap+xml\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        piece = b"%x\r\n" % (256 << 10) + b" " * (256 << 10) + b"\r\n"
        for _ in range(24):  # 6 MiB > 4 MiB cap
            send_quietly(sock, piece)
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 413 ")


def test_bodies_in_flight_are_capped_and_spooled_to_disk(node):
    """Two withheld 3 MiB bodies fill the 6 MiB in-flight budget: the next body gets a 503.

    The withheld bodies sit in spool files under <data_dir>/tmp, not in RAM.
    """
    head = (b"POST /xds/repository HTTP/1.1\r\nHost: x\r\nContent-Type: application/soap+xml\r\n"
            b"Content-Length: %d\r\n\r\n" % (4 << 20))
    holders = [connect(node) for _ in range(2)]
    try:
        for sock in holders:
            sock.sendall(head + b" " * (3 << 20))
        spooled: list[int] = []
        for _ in range(300):  # until the server has read both bodies whole (a loaded machine is slow)
            spooled = [_size(p) for p in Path(f"/proc/{node.proc.pid}/fd").iterdir()
                       if _readlink(p).startswith(node.spool_dir)]
            if len(spooled) == 2 and min(spooled) >= (3 << 20) - (64 << 10):  # (a write buffer may lag)
                break
            time.sleep(0.1)
        assert len(spooled) == 2 and min(spooled) >= (3 << 20) - (64 << 10), spooled
        with connect(node) as sock:
            send_quietly(sock, head + b" " * (1 << 20))
            answer = read_all(sock)
        assert answer.startswith(b"HTTP/1.1 503 ")
    finally:
        for sock in holders:
            sock.close()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size  # the spool file itself (unlinked, still open)
    except OSError:
        return -1


def _readlink(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def test_spooled_mtom_upload_round_trips(node):
    """A document larger than the spool threshold is provided from the spool file, byte for byte."""
    content = os.urandom(1 << 20)
    sub = f.submission(f.patient(7001), 1)
    doc = sub.documents[0]
    doc.hash = doc.size = doc.repository_unique_id = None  # the repository computes them
    el = etree.Element(f"{{{v.XDSB}}}Document", nsmap={"xdsb": v.XDSB})
    etree.SubElement(el, "{http://www.w3.org/2004/08/xop/include}Include").set("href", "cid:doc0@t")
    client = SoapTestClient(base_url=node.url)
    try:
        reply = client.call("/xds/repository", v.Action.ITI41, xdsb.write_provide_request(sub, {doc.id: el}),
                            attachments=[Attachment("doc0@t", "text/xml", data=content)], mtom=True)
        assert reply.status == v.ResponseStatus.SUCCESS, reply.raw[:2000]
        back = client.call("/xds/repository", v.Action.ITI43, xdsb.write_retrieve_request(
            [xdsb.DocumentRequest("1.3.6.1.4.1.21367.2026.1.2", doc.unique_id)]), mtom=True)
    finally:
        client.close()
    assert content in back.raw


# --- XML ----------------------------------------------------------------------------------


def _envelope(inner: bytes) -> tuple[bytes, str]:
    payload, ct, _ = build_request(v.Action.ITI18, b"<q:Wrap xmlns:q='urn:q'>" + inner + b"</q:Wrap>")
    assert isinstance(payload, bytes)
    return payload, ct


def test_many_tiny_elements_are_a_fault_with_bounded_memory(node):
    data, ct = _envelope(b"<x/>" * (900_000))  # 3.6 MB, 45 times the element limit
    before = node.status("VmHWM")
    resp = httpx.post(node.url + "/xds/registry", content=data, headers={"content-type": ct}, timeout=WAIT)
    assert resp.status_code == 400
    assert b"Fault" in resp.content and b"more than 20000 elements" in resp.content
    # a full tree of 900,000 elements costs far more than this; the counted parse stops at 20,000
    assert node.status("VmHWM") - before < 60_000


def test_deep_nesting_is_a_fault(node):
    data, ct = _envelope(b"<a>" * 60 + b"</a>" * 60)
    resp = httpx.post(node.url + "/xds/registry", content=data, headers={"content-type": ct}, timeout=WAIT)
    assert resp.status_code == 400
    assert b"deeper than 40" in resp.content


def find_documents(url: str) -> httpx.Response:
    """A legitimate ITI-18 FindDocuments request."""
    q = StoredQuery(query_id=v.StoredQueryId.FIND_DOCUMENTS, slots={
        "$XDSDocumentEntryPatientId": [[f"'{f.patient(7002)}'"]],
        "$XDSDocumentEntryStatus": [["('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved')"]]})
    payload, ct, _ = build_request(v.Action.ITI18, rim.write_adhoc_query_request(q))
    return httpx.post(url + "/xds/registry", content=payload, headers={"content-type": ct}, timeout=WAIT)


def test_normal_query_passes_the_xml_limits(node):
    resp = find_documents(node.url)
    assert resp.status_code == 200 and b"ResponseStatusType:Success" in resp.content


# --- WSDL ---------------------------------------------------------------------------------


def _wsdl_locations(node: Node, host: str) -> set[str]:
    resp = httpx.get(node.url + "/xds/registry?wsdl", headers={"host": host}, timeout=WAIT)
    assert resp.status_code == 200
    doc = etree.fromstring(resp.content)
    return {a.get("location") for a in doc.iter("{http://schemas.xmlsoap.org/wsdl/soap12/}address")}


def test_wsdl_address_ignores_a_foreign_host(node):
    assert _wsdl_locations(node, "evil.example:666") == {node.url + "/xds/registry"}


def test_wsdl_address_uses_a_configured_server_name(node):
    assert _wsdl_locations(node, "xds.example.org") == {"http://xds.example.org/xds/registry"}
    assert _wsdl_locations(node, "XDS.example.org:8443") == {"http://xds.example.org:8443/xds/registry"}


# --- connections --------------------------------------------------------------------------


def test_idle_connections_never_block_a_real_request(tmp_path):
    """300 idle sockets against a node allowed 256 descriptors: the oldest idle ones are closed.

    Without a cap the node runs out of descriptors and stops accepting anything.
    """
    node = Node(tmp_path, {"XDS_MAX_CONNECTIONS": "100", "XDS_HEADER_TIMEOUT_SECONDS": "60"}, nofile=256)
    idle: list[socket.socket] = []
    try:
        for _ in range(300):
            idle.append(connect(node))
        resp = find_documents(node.url)
        assert resp.status_code == 200 and b"ResponseStatusType:Success" in resp.content
        idle[0].settimeout(WAIT)
        assert read_all(idle[0]) == b""  # the oldest idle connection was closed to make room
    finally:
        for sock in idle:
            sock.close()
        node.stop()
