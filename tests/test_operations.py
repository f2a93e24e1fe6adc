"""Operations endpoints (issue 11): /health, /ready and /metrics, over HTTP against ``xds-node serve``.

* /ready answers 200 while the database and the content store answer, 503 naming what does not;
* /metrics counts requests per transaction and outcome, summed over every ``--workers`` process;
* all three answer loopback and ``ops_allow`` networks only: anyone else gets a 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from tests.conftest import POSTGRES_URL, LiveNode, _database_url
from xds_node.config import ConfigError, load_settings
from xds_node.demo import find_documents_envelope

SOAP = {"content-type": "application/soap+xml; charset=UTF-8"}
PATIENT = "VET0001^^^&2.16.840.1.113883.3.42.10001.100001.12&ISO"
ITI38 = f"""<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"
  xmlns:wsa="http://www.w3.org/2005/08/addressing"><env:Header>
 <wsa:Action env:mustUnderstand="1">urn:ihe:iti:2007:CrossGatewayQuery</wsa:Action>
 <wsa:MessageID>urn:uuid:5d1f7a0e-0c2a-4a57-9d3b-3a4d3f7e2b11</wsa:MessageID></env:Header>
 <env:Body><query:AdhocQueryRequest xmlns:query="urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0"
  xmlns:rim="urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0">
  <query:ResponseOption returnComposedObjects="true" returnType="LeafClass"/>
  <rim:AdhocQuery id="urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d">
   <rim:Slot name="$XDSDocumentEntryPatientId"><rim:ValueList><rim:Value>'{PATIENT.replace("&", "&amp;")}'</rim:Value>
   </rim:ValueList></rim:Slot></rim:AdhocQuery></query:AdhocQueryRequest></env:Body></env:Envelope>"""


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus exposition text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name + "{"):
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line[len(name):line.rindex("}") + 1]))
        if got == labels:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def fresh(url: str, path: str, **kw) -> httpx.Response:
    """One request on its own connection, so the kernel may hand it to any worker."""
    with httpx.Client(timeout=30, headers={"connection": "close"}) as c:
        return c.request(kw.pop("method", "GET"), url + path, **kw)


# --- metrics, two workers ------------------------------------------------------------------------
def test_metrics_count_requests_and_sum_every_worker(tmp_path):
    node = LiveNode(tmp_path, args=["--workers", "2"])
    try:
        before = fresh(node.url, "/metrics")
        assert before.status_code == 200 and before.headers["content-type"].startswith("text/plain")
        assert sample(before.text, "xds_requests_total", transaction="ITI-18", outcome="success") == 0
        deadline = time.monotonic() + 30  # the second worker may still be starting
        while len(files := sorted((tmp_path / "metrics").glob("counter_*.db"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(files) == 2, files  # one per worker: the parent cleaned the directory at start

        # ITI-18 from loopback (anonymous admitted): success; ITI-38 with no WS-Security: denied
        sent = 0
        while sent < 200:
            env = find_documents_envelope(node.url + "/xds/registry", PATIENT)
            assert fresh(node.url, "/xds/registry", method="POST", content=env, headers=SOAP).status_code == 200
            sent += 1
            if sent >= 10 and all(_worker_count(f, "ITI-18") for f in files):
                break
        if not all(_worker_count(f, "ITI-18") for f in files):
            pytest.skip("the kernel gave every connection to one worker: aggregation not observable")
        refused = fresh(node.url, "/xca/query", method="POST", content=ITI38, headers=SOAP)
        assert refused.status_code >= 400 and b"Fault" in refused.content

        per_worker = [_worker_count(f, "ITI-18") for f in files]
        assert sum(per_worker) == sent and all(per_worker)
        for _ in range(4):  # whichever worker answers, it reports every worker's requests
            text = fresh(node.url, "/metrics").text
            assert sample(text, "xds_requests_total", transaction="ITI-18", outcome="success") == sent
            assert sample(text, "xds_requests_total", transaction="ITI-38", outcome="denied") == 1
            assert sample(text, "xds_request_duration_seconds_count", transaction="ITI-18") == sent
            assert sample(text, "xds_request_duration_seconds_count", transaction="ITI-38") == 1
    finally:
        node.stop()


def _worker_count(db_file: Path, transaction: str) -> float:
    """One worker's ITI-18 successes, read from its own metrics file alone."""
    alone = db_file.parent / ("only-" + db_file.stem)
    alone.mkdir(exist_ok=True)
    shutil.copy(db_file, alone / db_file.name)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(alone))
    value = registry.get_sample_value("xds_requests_total", {"transaction": transaction, "outcome": "success"})
    shutil.rmtree(alone)
    return value or 0.0


# --- readiness -----------------------------------------------------------------------------------
class TcpCut:
    """A TCP relay to PostgreSQL that the test can cut, as a network or database outage would."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread; close alone does not
        self.listener.close()
        with self.lock:
            for s in self.conns:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()


@pytest.mark.postgres
@pytest.mark.skipif(not POSTGRES_URL, reason="set XDS_TEST_POSTGRES_URL to run against PostgreSQL")
def test_ready_turns_503_when_the_database_goes_away(tmp_path):
    from sqlalchemy.engine import make_url

    url = make_url(_database_url("postgres", tmp_path))
    relay = TcpCut(url.port or 5432)
    relayed = url.set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False)
    node = LiveNode(tmp_path, {"XDS_DATABASE_URL": relayed})
    try:
        ok = httpx.get(node.url + "/ready", timeout=30)
        assert (ok.status_code, ok.text) == (200, "ready")
        relay.cut()
        gone = httpx.get(node.url + "/ready", timeout=30)
        assert gone.status_code == 503
        assert gone.text.startswith("not ready: database:")
        assert httpx.get(node.url + "/health", timeout=30).status_code == 200  # alive, just not ready
    finally:
        relay.cut()
        node.stop()


def _get(app, path: str, address: str = "127.0.0.1") -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(address, 40123))
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as c:
            return await c.get(path)

    return asyncio.run(go())


def test_ready_names_a_content_store_that_cannot_be_written(node):
    node.settings.document_store = "folder"  # pushed documents go to the folder: /ready checks it
    app = node.app()
    assert _get(app, "/ready").status_code == 200
    root = Path(node.content_store.root)
    shutil.rmtree(root)
    root.write_text("not a directory")  # refuses writes even to root, unlike a chmod
    answer = _get(app, "/ready")
    assert answer.status_code == 503
    assert "content store" in answer.text and str(root) in answer.text


# --- who may ask ---------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/health", "/ready", "/metrics"])
def test_operations_endpoints_answer_loopback_only(node, path):
    app = node.app()
    assert _get(app, path, "127.0.0.1").status_code == 200
    assert _get(app, path, "::1").status_code == 200
    for outsider in ("203.0.113.9", "10.1.2.3", "::ffff:203.0.113.9", "2001:db8::1", ""):
        refused = _get(app, path, outsider)
        assert (refused.status_code, refused.text) == (404, "not found"), outsider


def test_ops_allow_admits_a_monitoring_network_and_nothing_else(tmp_path):
    from xds_node.node import Node

    settings = load_settings(env={}, data_dir=tmp_path, ops_allow=["10.1.2.0/24", "2001:db8::/64"])
    node = Node(settings)
    try:
        app = node.app()
        for allowed in ("10.1.2.3", "::ffff:10.1.2.200", "2001:db8::7"):
            assert _get(app, "/metrics", allowed).status_code == 200, allowed
        for outsider in ("10.1.3.1", "203.0.113.9", "2001:db9::1"):
            assert _get(app, "/ready", outsider).status_code == 404, outsider
        # the SOAP endpoints are not opened by ops_allow: anonymous is still loopback-only
        env = find_documents_envelope("http://node/xds/registry", PATIENT)
        transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 40123))

        async def post() -> httpx.Response:
            async with httpx.AsyncClient(transport=transport, base_url="http://node") as c:
                return await c.post("/xds/registry", content=env, headers=SOAP)

        assert b"Fault" in asyncio.run(post()).content
    finally:
        node.close()


def test_ops_allow_must_be_networks(tmp_path):
    cfg = tmp_path / "node.toml"
    cfg.write_text('ops_allow = ["monitoring.example.org"]\n')
    with pytest.raises(ConfigError, match=r"ops_allow = .* is not valid: expected IP networks"):
        load_settings(cfg, env={})
