"""The loopback decision (anonymous callers on /xds/*) is the socket peer's, never a header's.

uvicorn rewrites the ASGI client address from X-Forwarded-For when the peer is in
``forwarded_allow_ips``, which its FORWARDED_ALLOW_IPS environment variable sets; container images
commonly set it to ``*``. With that, any remote caller could claim ``X-Forwarded-For: 127.0.0.1``
and be admitted as the anonymous loopback caller, with every patient's documents. We can only send
from loopback here, so the test shows the header being obeyed the other way round (the audit row
named the address the header claimed). Now the node serves without uvicorn's proxy headers, and a
request that carries a forwarding header came through a proxy, so it is never anonymous-loopback.
"""

from __future__ import annotations

import shutil

import pytest

from tests.attack.conftest import make_world
from tests.conftest import LiveNode
from tests.responding.test_responding_gateway import find_documents
from tests.soapkit import SoapTestClient, _parse
from xds_node.ebxml import vocabulary as v
from xds_node.soap.envelope import build_request


@pytest.fixture(scope="module")
def live(tmp_path_factory, key_template, ehr):
    data = tmp_path_factory.mktemp("peer")
    node, granted, _revoked, _docs = make_world(data, "sqlite", key_template, ehr)
    node.close()
    shutil.rmtree(data / "tmp", ignore_errors=True)
    n = LiveNode(data, extra_env={"FORWARDED_ALLOW_IPS": "*"})
    yield n, data, granted
    n.stop()


def test_forwarded_headers_never_decide_the_caller_address(live):
    n, data, granted = live
    c = SoapTestClient(base_url=n.url)

    def post(headers: dict):
        payload, ct, _ = build_request(v.Action.ITI18, find_documents(granted), to=n.url + "/xds/registry")
        return _parse(c._run(c._client.post("/xds/registry", content=payload, headers={"Content-Type": ct,
                                                                                        **headers})))
    try:
        assert post({}).status == v.ResponseStatus.SUCCESS  # the demo's local curl still works
        for header in ({"X-Forwarded-For": "203.0.113.9"}, {"Forwarded": "for=203.0.113.9"},
                       {"X-Real-IP": "203.0.113.9"}, {"X-Forwarded-For": "127.0.0.1"}):
            reply = post(header)  # forwarded by a proxy on this host: the caller is elsewhere
            assert reply.is_fault and b"authentication required" in reply.raw, (header, reply.raw[:300])
    finally:
        c.close()
    from xds_node.audit.store import AuditLog
    from xds_node.config import load_settings
    from xds_node.db import make_engine

    engine = make_engine(load_settings(env={}, data_dir=data).audit_db_url)
    try:
        rows = AuditLog(engine).list(transaction="ITI-18")
    finally:
        engine.dispose()
    assert len(rows) == 5 and {e.remote_address for e in rows} == {"127.0.0.1"}  # the peer, not a header
    assert sorted(e.outcome for e in rows) == ["denied"] * 4 + ["success"]
