"""What /metrics counts besides requests: partner calls of the initiating gateway (per partner and
outcome), audit write failures and HTTP limit refusals. Partner calls go to a scripted HTTP
server; the refusal is sent to a real ``xds-node serve``."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest
from sqlalchemy import text

from tests.conftest import LiveNode, free_port
from tests.gateway.test_outbound_fast import Scripted, _call, _client
from tests.test_operations import sample
from xds_node import metrics
from xds_node.audit.events import AuditEvent
from xds_node.soap.client import SoapTransportError
from xds_node.soap.fault import SoapFault


def value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_partner_calls_are_counted_per_partner_and_outcome():
    calls = "xds_partner_calls_total"

    async def main():
        server = Scripted()
        port = await server.start()
        before = {o: value(calls, partner="p", transaction="ITI-38", outcome=o)
                  for o in ("answered", "fault", "timeout", "unreachable")}
        async with _client() as client:
            await _call(client, port, "/ok")
            with pytest.raises(SoapFault):
                await _call(client, port, "/fault")
            with pytest.raises(SoapTransportError):
                await _call(client, port, "/slow", timeout=0.2)
            with socket.socket() as closed:  # bound, never listening: the connection is refused
                closed.bind(("127.0.0.1", 0))
                with pytest.raises(SoapTransportError):
                    await _call(client, closed.getsockname()[1], "/ok")
        server.server.close()
        return before

    before = asyncio.run(main())
    for outcome in ("answered", "fault", "timeout", "unreachable"):
        assert value(calls, partner="p", transaction="ITI-38", outcome=outcome) == before[outcome] + 1, outcome
    assert value("xds_partner_call_duration_seconds_count", partner="p", transaction="ITI-38") >= 4


def test_audit_write_failures_are_counted(node):
    class Broken:
        def send(self, event) -> None:
            raise OSError("syslog collector down")

    event = AuditEvent(transaction="ITI-18", outcome="success")
    sinks = value("xds_audit_write_failures_total", target="sink")
    node.audit.sinks = [Broken()]
    node.audit.record(event)  # a sink failing is logged and counted, the record is kept
    assert value("xds_audit_write_failures_total", target="sink") == sinks + 1
    database = value("xds_audit_write_failures_total", target="database")
    with node.audit_engine.begin() as conn:
        conn.execute(text("DROP TABLE audit_event"))
    with pytest.raises(Exception):  # noqa: B017 (whatever the driver raises)
        node.audit.record(AuditEvent(transaction="ITI-18", outcome="success"))
    assert value("xds_audit_write_failures_total", target="database") == database + 1


def test_http_limit_refusals_are_counted(tmp_path):
    node = LiveNode(tmp_path, {"XDS_MAX_HEADER_BYTES": "2048"}, port=free_port())
    try:
        refused = httpx.get(node.url + "/xds/registry", headers={"x-filler": "a" * 4096}, timeout=30)
        assert refused.status_code == 431
        text_ = httpx.get(node.url + "/metrics", timeout=30).text
        assert sample(text_, "xds_http_refusals_total", status="431") == 1
    finally:
        node.stop()


@pytest.mark.parametrize(("body", "outcome"), [
    (b'<q:AdhocQueryResponse xmlns:q="urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0" '
     b'status="urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"/>', "success"),
    (b'<rs:RegistryResponse xmlns:rs="urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0" '
     b'status="urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure"/>', "failure"),
    (b'<x:RetrieveDocumentSetResponse xmlns:x="urn:ihe:iti:xds-b:2007"><rs:RegistryResponse '
     b'xmlns:rs="urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0" '
     b'status="urn:ihe:iti:2007:ResponseStatusType:PartialSuccess"/></x:RetrieveDocumentSetResponse>', "partial"),
    (b'<PRPA_IN201306UV02 xmlns="urn:hl7-org:v3"><acknowledgement><typeCode code="AE"/></acknowledgement>'
     b'</PRPA_IN201306UV02>', "failure"),
    (b'<PRPA_IN201306UV02 xmlns="urn:hl7-org:v3"><acknowledgement><typeCode code="AA"/></acknowledgement>'
     b'</PRPA_IN201306UV02>', "success"),
])
def test_outcome_read_from_the_answer_element_or_its_bytes(body, outcome):
    from lxml import etree

    assert metrics.response_outcome(etree.fromstring(body)) == outcome
    if b"RegistryResponse" in body or b"AdhocQuery" in body:  # pre-serialized answers carry the status early
        assert metrics.response_outcome(body) == outcome


def test_transaction_labels():
    assert metrics.transaction_label("/xds/registry", "urn:ihe:iti:2007:RegistryStoredQuery") == "ITI-18"
    assert metrics.transaction_label("/ig/registry", "urn:ihe:iti:2007:RegistryStoredQuery") == "ig-ITI-18"
    assert metrics.transaction_label("/xds/registry", "urn:example:made-up") == "other"


def test_a_status_word_inside_the_content_does_not_decide_the_outcome():
    body = (b'<q:AdhocQueryResponse xmlns:q="urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0" '
            b'status="urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"><rim:RegistryObjectList '
            b'xmlns:rim="urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"><rim:Name>urn:oasis:names:tc:ebxml-regrep:'
            b'ResponseStatusType:Failure</rim:Name></rim:RegistryObjectList></q:AdhocQueryResponse>')
    assert metrics.response_outcome(body) == "success"
