"""The registry as a partner sees it: a real `xds-node serve` process on 127.0.0.1."""

from __future__ import annotations

import httpx
import pytest
import zeep
from lxml import etree

from tests import factories as f
from tests.corpus import assert_valid
from xds_node.ebxml import rim
from xds_node.ebxml import vocabulary as v

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def registered(live_node):
    from tests.soapkit import SoapTestClient

    c = SoapTestClient(base_url=live_node.url)
    pid = f.patient(900)
    sub = f.submission(pid, 3)
    reply = c.call("/xds/registry", v.Action.ITI42, rim.write_submit_objects_request(sub))
    assert reply.status == v.ResponseStatus.SUCCESS, reply.raw
    c.close()
    return pid, sub


def test_find_documents_over_real_http(live_client, registered):
    pid, sub = registered
    from xds_node.ebxml.model import StoredQuery

    q = StoredQuery(query_id=v.StoredQueryId.FIND_DOCUMENTS, slots={
        "$XDSDocumentEntryPatientId": [[f"'{pid}'"]],
        "$XDSDocumentEntryStatus": [["('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved')"]]})
    reply = live_client.call("/xds/registry", v.Action.ITI18, rim.write_adhoc_query_request(q))
    assert reply.http_status == 200
    assert sorted(e.get("id") for e in reply.objects("ExtrinsicObject")) == sorted(d.id for d in sub.documents)
    assert_valid(reply.body)
    # WS-Addressing answer headers
    wsa = "{http://www.w3.org/2005/08/addressing}"
    assert reply.envelope.find(f".//{wsa}Action").text == v.Action.ITI18 + "Response"
    assert reply.envelope.find(f".//{wsa}RelatesTo") is not None


def test_wsdl_is_served_with_our_address(live_node):
    resp = httpx.get(live_node.url + "/xds/registry?wsdl")
    assert resp.status_code == 200
    doc = etree.fromstring(resp.content)
    locations = {a.get("location") for a in doc.iter("{http://schemas.xmlsoap.org/wsdl/soap12/}address")}
    assert locations == {live_node.url + "/xds/registry"}


def test_zeep_find_documents_from_our_wsdl(live_node, registered):
    """An independent SOAP toolkit, given only our WSDL URL, can query the registry."""
    pid, sub = registered
    client = zeep.Client(live_node.url + "/xds/registry?wsdl", settings=zeep.Settings(strict=True))
    result = client.service.DocumentRegistry_RegistryStoredQuery(
        ResponseOption={"returnType": "LeafClass", "returnComposedObjects": True},
        AdhocQuery={
            "id": v.StoredQueryId.FIND_DOCUMENTS,
            "Slot": [
                {"name": "$XDSDocumentEntryPatientId", "ValueList": {"Value": [f"'{pid}'"]}},
                {"name": "$XDSDocumentEntryStatus",
                 "ValueList": {"Value": ["('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved')"]}},
            ],
        },
    )
    assert result.status == v.ResponseStatus.SUCCESS
    objects = result.RegistryObjectList._value_1
    ids = sorted(o.get("id") for o in objects if etree.QName(o).localname == "ExtrinsicObject")
    assert ids == sorted(d.id for d in sub.documents)


def test_zeep_sees_registry_errors(live_node, registered):
    client = zeep.Client(live_node.url + "/xds/registry?wsdl", settings=zeep.Settings(strict=True))
    result = client.service.DocumentRegistry_RegistryStoredQuery(
        ResponseOption={"returnType": "LeafClass", "returnComposedObjects": True},
        AdhocQuery={"id": v.StoredQueryId.FIND_DOCUMENTS, "Slot": []},
    )
    assert result.status == v.ResponseStatus.FAILURE
    codes = {e.errorCode for e in result.RegistryErrorList.RegistryError}
    assert codes == {v.ErrorCode.STORED_QUERY_MISSING_PARAM}


def test_garbage_gets_a_fault_not_a_500_page(live_node):
    resp = httpx.post(live_node.url + "/xds/registry", content=b"\x00\xffnot xml",
                      headers={"Content-Type": "application/soap+xml"})
    assert resp.status_code == 400
    assert b"Fault" in resp.content and b"Traceback" not in resp.content


def test_oversized_body_is_refused_before_it_is_read(live_node):
    import socket

    with socket.create_connection(("127.0.0.1", live_node.port), timeout=10) as sock:
        sock.sendall(b"POST /xds/registry HTTP/1.1\r\nHost: x\r\nContent-Type: application/soap+xml\r\n"
                     b"Content-Length: " + str(1 << 40).encode() + b"\r\n\r\n<partial")
        answer = b""
        while b"</env:Envelope>" not in answer and b"Envelope>" not in answer[-40:]:
            chunk = sock.recv(65536)  # the 413 comes back while the declared terabyte is still unsent
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"Fault" in answer
