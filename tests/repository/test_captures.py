"""Real HTTP captures (NIST toolkit, Axis2 clients) replayed against the node: each gets a
standard SOAP answer, a RegistryResponse with IHE codes or a SOAP fault, never a 500."""

from __future__ import annotations

import pytest

from tests.corpus import CORPUS
from tests.soapkit import SoapTestClient
from xds_node.ebxml import vocabulary as v

CAPTURES = CORPUS / "03-messages" / "nist-message-captures"
ENDPOINT = {v.Action.ITI41: "/xds/repository", v.Action.ITI43: "/xds/repository", v.Action.ITI42: "/xds/registry",
            v.Action.ITI18: "/xds/registry"}


def split_http(raw: bytes) -> tuple[dict[str, str], bytes]:
    """Headers and body of a captured HTTP request (CRLF or LF line ends, as captured)."""
    sep = b"\r\n\r\n" if b"\r\n\r\n" in raw[:4096] else b"\n\n"
    head, _, body = raw.partition(sep)
    headers = {}
    for line in head.replace(b"\r\n", b"\n").split(b"\n")[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", ""):
        body = dechunk(body)
    return headers, body


def dechunk(data: bytes) -> bytes:
    """Undo HTTP/1.1 chunked transfer coding, as the ASGI server does before the app sees a body."""
    out, pos = [], 0
    while pos < len(data):
        eol = data.index(b"\n", pos)
        size = int(data[pos:eol].strip().split(b";")[0] or b"0", 16)
        if size == 0:
            break
        start = eol + 1
        out.append(data[start:start + size])
        pos = start + size
        while pos < len(data) and data[pos:pos + 1] in (b"\r", b"\n"):
            pos += 1
    return b"".join(out)


def _captures():
    if not CAPTURES.is_dir():
        return []
    out = []
    # (request, separate body file, expected status, expected codes): the two Axis2 captures
    # replace a document (RPLC) this fresh registry has never seen, so they must fail cleanly
    for name, body_name, status, codes in (
        ("common__data__httpParser__http-mtom-pnr.txt", None, v.ResponseStatus.SUCCESS, []),
        ("config-datatypes__src__test__resources__multipart.header.txt",
         "config-datatypes__src__test__resources__multipart.body.txt", v.ResponseStatus.FAILURE,
         [v.ErrorCode.REGISTRY_METADATA_ERROR]),
        ("config-datatypes__src__test__resources__simple.header.txt",
         "config-datatypes__src__test__resources__simple.body.txt", v.ResponseStatus.FAILURE,
         [v.ErrorCode.REGISTRY_METADATA_ERROR]),
        ("soap__src__main__java__gov__nist__toolkit__soap__http__sq.txt", None, v.ResponseStatus.SUCCESS, []),
    ):
        out.append(pytest.param(name, body_name, status, codes, id=name.split("__")[-1]))
    return out


@pytest.mark.parametrize("name,body_name,status,codes", _captures())
def test_capture_is_answered(node, name, body_name, status, codes):
    headers, body = split_http((CAPTURES / name).read_bytes())
    if body_name:
        body = (CAPTURES / body_name).read_bytes()
    ct = headers["content-type"]
    client = SoapTestClient(app=node.app())
    try:
        # the body decides the endpoint; a wrong endpoint would be answered with ActionNotSupported
        action = next((a for a in ENDPOINT if a.encode() in body), None)
        assert action is not None
        reply = client.post_raw(ENDPOINT[action], body, ct)
    finally:
        client.close()
    assert reply.http_status == 200, reply.raw[:500]
    assert reply.status == status
    assert set(reply.error_codes) == set(codes)


def test_mtom_pnr_capture_keeps_its_document_intact(node):
    """The Axis2 MTOM provide-and-register capture: its attached document comes back byte for byte."""
    if not CAPTURES.is_dir():
        pytest.skip("corpus not present")
    from tests.repository.test_provide_and_retrieve import documents_of, retrieve
    from xds_node.soap.envelope import parse_envelope

    headers, body = split_http((CAPTURES / "common__data__httpParser__http-mtom-pnr.txt").read_bytes())
    request = parse_envelope(body, headers["content-type"])
    sent = {el.get("id"): request.binary(el) for el in request.body.iter(f"{{{v.XDSB}}}Document")}
    client = SoapTestClient(app=node.app())
    try:
        assert client.post_raw("/xds/repository", body, headers["content-type"]).status == v.ResponseStatus.SUCCESS
        uids = [node.repository.row_for_uid(uid) for uid in _unique_ids(request)]
        got = documents_of(retrieve(client, [(None, row["unique_id"]) for row in uids]))
        assert sorted(got.values()) == sorted(sent.values())
    finally:
        client.close()


def _unique_ids(request) -> list[str]:
    from xds_node.ebxml import rim

    sub = rim.read_submit_objects_request(request.body.find(f"{{{v.LCM}}}SubmitObjectsRequest"))
    return [de.unique_id for de in sub.documents]
