"""HTTPS with mutual TLS: the client certificate must belong to the partner the SAML names."""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveNode
from tests.responding.requester import Requester
from tests.responding.test_responding_gateway import find_documents, key_template  # noqa: F401
from tests.soapkit import SoapTestClient
from xds_node.config import load_settings
from xds_node.ebxml import vocabulary as v

pytestmark = pytest.mark.server
SAMPLES = Path(__file__).resolve().parents[2] / "sample_documents"


def tls_context(keys: Path, client: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(keys / "node.cert.pem"))  # we pin the server certificate
    if client:
        ctx.load_cert_chain(str(keys / f"{client}.cert.pem"), str(keys / f"{client}.key.pem"))
    return ctx


@pytest.fixture(scope="module")
def mtls_node(tmp_path_factory, key_template):  # noqa: F811
    from xds_node.node import Node

    data = tmp_path_factory.mktemp("mtls")
    shutil.copytree(key_template, data, dirs_exist_ok=True)
    node = Node(load_settings(env={}, data_dir=data))
    node.folder_indexer(SAMPLES).sync()
    pid = sorted(node.patients.get(p).patient_id for p in _patient_ids(node))[0]
    node.consent_store.grant(pid, source="test")
    node.close()
    keys = data / "keys"
    live = LiveNode(data, args=["--tls-cert", str(keys / "node.cert.pem"), "--tls-key", str(keys / "node.key.pem"),
                                "--mtls"], scheme="https",
                    health_client={"verify": tls_context(keys, "demo-partner")})
    yield live, keys, pid
    live.stop()


def _patient_ids(node) -> list[str]:
    from sqlalchemy import select

    from xds_node.patients import tables

    with node.engine.connect() as conn:
        return list(conn.scalars(select(tables.patient.c.patient_id)))


def _client(live, keys, client_cert):
    c = SoapTestClient(base_url=live.url)
    c._client = httpx.AsyncClient(base_url=live.url, verify=tls_context(keys, client_cert), timeout=30)
    return c


def test_partner_certificate_and_matching_saml(mtls_node):
    live, keys, pid = mtls_node
    c = _client(live, keys, "demo-partner")
    try:
        reply = c.call("/xca/query", v.Action.ITI38, find_documents(pid),
                       headers=[Requester.demo_partner(keys).header()])
        assert reply.status == v.ResponseStatus.SUCCESS, reply.raw[:600]
        assert reply.objects("ExtrinsicObject")
    finally:
        c.close()


def test_tls_client_of_another_partner_is_refused(mtls_node):
    live, keys, pid = mtls_node
    c = _client(live, keys, "node")  # pinned (as "this-node"), but the SAML says demo-partner
    try:
        reply = c.call("/xca/query", v.Action.ITI38, find_documents(pid),
                       headers=[Requester.demo_partner(keys).header()])
        assert reply.is_fault and b"FailedAuthentication" in reply.raw
    finally:
        c.close()


def test_no_client_certificate_no_connection(mtls_node):
    live, keys, _pid = mtls_node
    with pytest.raises(httpx.HTTPError):
        httpx.post(live.url + "/xca/query", content=b"<x/>", verify=tls_context(keys, None), timeout=10)
