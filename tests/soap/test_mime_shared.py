"""The one ``multipart/related`` parser (:class:`xds_node.soap.mtom.MultipartParser`): the server
feeds it a request body whole, the initiating gateway feeds it a partner's answer as it arrives.
Both ways must read the same parts and refuse the same bodies; the server path is driven over HTTP
with ITI-41 (the client path: tests/gateway/test_outbound_http.py)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from tests import factories as f
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml import xdsb
from xds_node.soap.envelope import build_request
from xds_node.soap.fault import SoapFault
from xds_node.soap.mtom import Attachment, MultipartParser, build_multipart, split_mtom

CAPTURES = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "03-messages" / "nist-message-captures"
XOP = "http://www.w3.org/2004/08/xop/include"


def _mime(parts: list[tuple[list[str], bytes]], boundary: str = "b1", nl: bytes = b"\r\n", pad: bytes = b"") -> bytes:
    out = b"preamble " + b"-" * 30 + nl
    for headers, content in parts:
        out += b"--" + boundary.encode() + pad + nl
        out += b"".join(h.encode() + nl for h in headers) + nl + content + nl
    return out + b"--" + boundary.encode() + b"--" + nl + b"epilogue --b1 --b1--"


BODIES: list[tuple[bytes, dict[str, str]]] = [
    (_mime([(["Content-ID: <r>"], b"<a/>"), (["Content-ID: <d@x>"], b"x\r\n--b1xyz not a delimiter\r\n\r")]),
     {"boundary": "b1"}),
    (_mime([(["Content-ID: <r>"], b"<a/>"), (["Content-ID: <d@x>"], b"x\n--b1xyz\ny\r")], nl=b"\n", pad=b" \t"),
     {"boundary": "b1"}),
    (_mime([(["Content-ID: <r>"], b"<a/>"), (["Content-ID:", " <e@x>"], b""),
            (["Content-ID: <b64@x>", "Content-Transfer-Encoding: base64"], base64.encodebytes(bytes(range(256))))]),
     {"boundary": "b1", "start": "<r>"}),
    (b"--b1\r\nContent-ID: <r>\r\n\r\n<a/>\r\n--b1\r\nContent-ID: <e@x>\r\n\r\n--b1--", {"boundary": "b1"}),
    # refused the same way by both
    (b"--b1\r\nContent-ID: <r>\r\n\r\n<a/>", {"boundary": "b1"}),
    (b"--b1\r\nContent-ID: <r>\r\n\r\n<a/>\r\n--b1\r\nContent-ID: <d>\r\n\r\n1\r\n--b1\r\nContent-ID: <d>"
     b"\r\n\r\n2\r\n--b1--", {"boundary": "b1"}),
    (b"--b1\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nzz\r\n--b1--", {"boundary": "b1"}),
    (b"--b1\r\n" + b"X: y\r\n" * 65 + b"\r\n<a/>\r\n--b1--", {"boundary": "b1"}),
]
for name, boundary in (("sim-proxy__src__test__resources__sample_mtom_message.txt",
                        "MIMEBoundary_494859fac46e21a68c012f8f4fe208a370fc32b6e07ae79f"),
                       ("config-datatypes__src__test__resources__multipart.body.txt",
                        "MIMEBoundary_ba2e384099b4a244bc1c7bab88c735b4f94aeb2925619b62")):
    if (CAPTURES / name).exists():
        BODIES.append(((CAPTURES / name).read_bytes(), {"boundary": boundary}))


def _outcome(run) -> object:
    try:
        root, atts = run()
    except SoapFault as exc:
        return ("fault", exc.code)
    root_data = root if isinstance(root, bytes) else root.data
    return root_data, {k: (a.content_type, a.read()) for k, a in atts.items()}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fed_in_any_pieces_it_reads_what_the_whole_body_reads(data, tmp_path):
    body, params = data.draw(st.sampled_from(BODIES))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=12)))
    spill = data.draw(st.sampled_from([None, 1, 64]))

    def streamed():
        parser = MultipartParser(params["boundary"], spool_dir=tmp_path if spill else None, memory_limit=spill)
        for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True):
            parser.feed(body[a:b])
        return parser.finish(params.get("start"))

    assert _outcome(streamed) == _outcome(lambda: split_mtom(body, params))


def test_limits_hold_on_both_paths(tmp_path):
    many = b"".join(b"--b1\r\nContent-ID: <%d>\r\n\r\nx\r\n" % i for i in range(1001)) + b"--b1--"
    long_head = b"--b1\r\nX: " + b"y" * (17 * 1024) + b"\r\n\r\n<a/>\r\n--b1--"
    big_part = b"--b1\r\nContent-ID: <r>\r\n\r\n<a/>\r\n--b1\r\nContent-ID: <big>\r\n\r\n" + b"z" * 5000 + b"\r\n--b1--"
    for body, reason, kw in ((many, "too many MIME parts", {}), (long_head, "headers too long", {}),
                             (big_part, "larger than 4096 bytes", {"max_part_bytes": 4096}),
                             (big_part, "in memory", {"max_memory_bytes": 4096, "memory_limit": None})):
        with pytest.raises(SoapFault, match=reason):
            split_mtom(body, {"boundary": "b1"}) if not kw else _feed(body, len(body), tmp_path, **kw)
        with pytest.raises(SoapFault, match=reason):
            _feed(body, 7, tmp_path, **kw)
    # spilled to disk the big part is fine in memory terms, still bounded by max_part_bytes
    _, atts = _feed(big_part, 100, tmp_path, max_memory_bytes=4096, memory_limit=1024)
    assert atts["big"].path is not None and atts["big"].read() == b"z" * 5000
    assert not [p for p in tmp_path.iterdir() if p != atts["big"].path]
    for boundary in ("", "x" * 201, "bö", "b\r\n1"):
        with pytest.raises(SoapFault, match="boundary"):
            MultipartParser(boundary)


def _feed(body: bytes, step: int, spool: Path, **kw):
    kw.setdefault("memory_limit", 1024)
    parser = MultipartParser("b1", spool_dir=spool, **kw)
    try:
        for i in range(0, len(body), step):
            parser.feed(body[i:i + step])
    except SoapFault:
        parser.discard()
        assert not list(spool.iterdir())  # a refused body leaves no spool files
        raise
    return parser.finish(None)


# --- the server path, over HTTP: ITI-41 with MTOM ---------------------------------------------------
def _provide_payload(n_docs: int = 1) -> tuple[bytes, str, list[bytes]]:
    sub = f.submission(f.patient(901), n_docs)
    for de in sub.documents:
        de.hash = de.size = de.repository_unique_id = None
    docs, atts, contents = {}, [], []
    for k, de in enumerate(sub.documents):
        el = etree.Element(f"{{{v.XDSB}}}Document", nsmap={"xdsb": v.XDSB})
        etree.SubElement(el, f"{{{XOP}}}Include").set("href", f"cid:doc{k}%40xds-node.test")  # percent-encoded
        data = f"<ClinicalDocument n='{k}'>{'x' * 3000}</ClinicalDocument>".encode()
        atts.append(Attachment(f"doc{k}@xds-node.test", "text/xml", data=data))
        contents.append(data)
        docs[de.id] = el
    payload, ct, _ = build_request(v.Action.ITI41, xdsb.write_provide_request(sub, docs), to="http://t/x",
                                   attachments=atts, mtom=True)
    assert isinstance(payload, bytes)
    return payload, ct, contents


def test_iti41_documents_referenced_by_xop_include_are_stored(client):
    payload, ct, _ = _provide_payload(2)
    reply = client.post_raw("/xds/repository", payload, ct)
    assert reply.status == v.ResponseStatus.SUCCESS, reply.raw[:800]


@pytest.mark.parametrize("breakage", ["truncated", "no-boundary-param", "wrong-boundary", "bad-header",
                                      "missing-part", "duplicate-cid"])
def test_malformed_mime_to_the_repository_is_a_sender_fault_and_stores_nothing(client, node, breakage):
    payload, ct, _ = _provide_payload(1)
    boundary = ct.split('boundary="')[1].split('"')[0]
    if breakage == "truncated":
        payload = payload[:-(len(boundary) + 8)]
    elif breakage == "no-boundary-param":
        ct = ct.replace(f'boundary="{boundary}"; ', "")
    elif breakage == "wrong-boundary":
        ct = ct.replace(boundary, boundary + "x")
    elif breakage == "bad-header":
        payload = payload.replace(b"Content-ID: <doc0", b"Content-ID <doc0", 1)
    elif breakage == "missing-part":
        payload = payload.replace(b"<doc0@xds-node.test>", b"<other@xds-node.test>", 1)
    elif breakage == "duplicate-cid":
        part = payload[payload.index(b"--" + boundary.encode(), 10):payload.rindex(b"--" + boundary.encode())]
        payload = payload.replace(part, part + part, 1)
    reply = client.post_raw("/xds/repository", payload, ct)
    assert reply.http_status in (400, 200), reply.raw[:500]
    if reply.http_status == 400:
        assert reply.is_fault
        assert reply.body.findtext(".//{http://www.w3.org/2003/05/soap-envelope}Value").endswith(":Sender")
    else:  # a RegistryResponse Failure (the document is what is missing)
        assert reply.status == v.ResponseStatus.FAILURE, reply.raw[:500]
    assert not [p for p in node.content_store.root.rglob("*") if p.is_file()]


def test_build_and_parse_agree_for_every_attachment_shape(tmp_path):
    atts = [Attachment("a@x", "application/pdf", data=b"%PDF\r\n--MIMEBoundary_not\r\n"),
            Attachment("e@x", "text/plain", data=b""), Attachment("f@x", "application/octet-stream",
                                                                     data=bytes(range(256)) * 50)]
    data, ct = build_multipart(b"<root/>", atts)
    assert isinstance(data, bytes)
    boundary = ct.split('boundary="')[1].split('"')[0]
    start = ct.split('start="')[1].split('"')[0]
    for step in (1, 3, 4096, len(data)):
        parser = MultipartParser(boundary, spool_dir=tmp_path, memory_limit=100)
        for i in range(0, len(data), step):
            parser.feed(data[i:i + step])
        root, got = parser.finish(start)
        assert root.data == b"<root/>"
        assert {k: a.read() for k, a in got.items()} == {a.content_id: a.data for a in atts}
        for a in got.values():
            if a.path is not None:
                Path(a.path).unlink()
