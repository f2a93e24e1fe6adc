"""MTOM/XOP parsing against real captures and hand-made edge cases, and MTOM writing."""

from __future__ import annotations

from pathlib import Path

import pytest

from xds_node.soap.envelope import SoapResponse, parse_envelope, serialize_response
from xds_node.soap.fault import SoapFault
from xds_node.soap.mtom import (
    CHUNK_SIZE,
    Attachment,
    build_multipart,
    parse_content_type,
    parse_multipart,
    split_mtom,
)

CAPTURES = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "03-messages" / "nist-message-captures"
XDSB = "urn:ihe:iti:xds-b:2007"
PNR_ACTION = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"


def capture(name: str) -> bytes:
    path = CAPTURES / name
    if not path.exists():
        pytest.skip(f"corpus capture {name} not available")
    return path.read_bytes()


def split_http(raw: bytes) -> tuple[dict[str, str], bytes]:
    """Split a raw HTTP request capture (LF or CRLF) into lower-cased headers and body."""
    sep = b"\r\n\r\n" if b"\r\n\r\n" in raw[:4096] else b"\n\n"
    head, _, body = raw.partition(sep)
    headers = {}
    for line in head.decode("latin-1").splitlines()[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers, body


def document(req) -> bytes:  # type: ignore[no-untyped-def]
    doc = req.body.find(f"{{{XDSB}}}Document")
    assert doc is not None
    return req.binary(doc)


# --- real captures ----------------------------------------------------------------------------


def test_axis2_capture_lf_only_with_transport_padding() -> None:
    # Full HTTP capture: LF line endings, trailing blanks after boundaries and header values,
    # unquoted boundary, bracketed start parameter.
    headers, body = split_http(capture("common__data__httpParser__http-mtom-pnr.txt"))
    req = parse_envelope(body, headers["content-type"])
    assert req.mtom
    assert req.action == PNR_ACTION
    assert req.message_id == "urn:uuid:3D4B161591CD1DEC0C1286850962146"
    assert req.body.tag == f"{{{XDSB}}}ProvideAndRegisterDocumentSetRequest"
    assert list(req.attachments) == ["1.urn:uuid:3D4B161591CD1DEC0C1286850962319@apache.org"]
    data = document(req)
    assert data.startswith(b"Four score and seven years ago")
    # The LF before the closing delimiter belongs to the delimiter, not to the document.
    assert data.endswith(b"shall not perish from the earth.")


def test_config_datatypes_capture_quoted_boundary_and_start() -> None:
    headers, _ = split_http(capture("config-datatypes__src__test__resources__multipart.header.txt") + b"\n\n")
    body = capture("config-datatypes__src__test__resources__multipart.body.txt")
    media, params = parse_content_type(headers["content-type"])
    assert media == "multipart/related"
    assert params["boundary"] == "MIMEBoundary_ba2e384099b4a244bc1c7bab88c735b4f94aeb2925619b62"
    req = parse_envelope(body, headers["content-type"])
    assert req.action == PNR_ACTION
    assert document(req) == b"This is my document.\n\nIt is great!\n\n"


def test_sim_proxy_capture_first_part_is_root_and_dangling_reference_is_sender_fault() -> None:
    body = capture("sim-proxy__src__test__resources__sample_mtom_message.txt")
    # No start parameter: the first part is the root.
    ct = (
        "multipart/related; boundary=MIMEBoundary_494859fac46e21a68c012f8f4fe208a370fc32b6e07ae79f; "
        'type="application/xop+xml"'
    )
    req = parse_envelope(body, ct)
    assert req.action == PNR_ACTION
    cid = "2.694859fac46e21a68c012f8f4fe208a370fc32b6e07ae79f"
    assert set(req.attachments) == {cid}
    assert req.attachments[cid].read() == b"This is my document.\n\nIt is great!\n\n"
    # This capture's xop:Include names a Content-ID that no part carries.
    with pytest.raises(SoapFault) as err:
        document(req)
    assert err.value.code == "Sender"


def test_same_capture_with_crlf_framing() -> None:
    body = capture("sim-proxy__src__test__resources__sample_mtom_message.txt").replace(b"\n", b"\r\n")
    ct = 'multipart/related; boundary="MIMEBoundary_494859fac46e21a68c012f8f4fe208a370fc32b6e07ae79f"'
    req = parse_envelope(body, ct)
    (att,) = req.attachments.values()
    assert att.read() == b"This is my document.\r\n\r\nIt is great!\r\n\r\n"
    assert att.content_type == "text/plain"


# --- synthetic edge cases -------------------------------------------------------------------


def _mime(parts: list[tuple[list[str], bytes]], boundary: str = "b1", nl: bytes = b"\r\n") -> bytes:
    out = b"preamble text" + nl
    for headers, content in parts:
        out += b"--" + boundary.encode() + nl
        out += b"".join(h.encode() + nl for h in headers) + nl + content + nl
    return out + b"--" + boundary.encode() + b"--" + nl + b"epilogue"


def test_base64_transfer_encoding_and_binary_bytes_survive() -> None:
    payload = bytes(range(256)) * 3 + b"\r"  # ends in CR: must not be eaten under CRLF framing
    import base64

    body = _mime(
        [
            (["Content-Type: text/plain"], b"root"),
            (["Content-ID: <a@x>", "Content-Transfer-Encoding: base64"], base64.encodebytes(payload)),
            (["Content-ID: b@x", "Content-Transfer-Encoding: binary"], payload),
        ]
    )
    root, atts = split_mtom(body, {"boundary": "b1"})
    assert root.data == b"root"
    assert atts["a@x"].read() == payload
    assert atts["b@x"].read() == payload


def test_boundary_prefix_inside_content_is_not_a_delimiter() -> None:
    body = _mime([(["Content-ID: <r>"], b"x\r\n--b1xyz is not a boundary\r\ny")])
    (part,) = parse_multipart(body, "b1")
    assert part.data == b"x\r\n--b1xyz is not a boundary\r\ny"


def test_empty_part_and_folded_header() -> None:
    body = _mime([(["Content-ID: <r>"], b"<a/>"), (["Content-ID:", " <e@x>"], b"")])
    parts = parse_multipart(body, "b1")
    assert [p.content_id for p in parts] == ["r", "e@x"]
    assert parts[1].data == b""


@pytest.mark.parametrize(
    ("body", "params"),
    [
        (b"--b1\r\nContent-ID: <r>\r\n\r\n<a/>", {"boundary": "b1"}),  # truncated: no closing delimiter
        (b"no boundary at all", {"boundary": "b1"}),
        (b"--b1\r\n\r\n<a/>\r\n--b1--", {}),  # boundary parameter missing
        (
            b"--b1\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nzz\r\n--b1--",
            {"boundary": "b1"},
        ),
        (b"--b1\r\nContent-ID: <r>\r\n\r\n<a/>\r\n--b1--", {"boundary": "b1", "start": "<other>"}),
        (
            b"--b1\r\nContent-ID: <r>\r\n\r\n<a/>\r\n--b1\r\nContent-ID: <d>\r\n\r\n1\r\n"
            b"--b1\r\nContent-ID: <d>\r\n\r\n2\r\n--b1--",
            {"boundary": "b1"},
        ),  # duplicate Content-ID
    ],
)
def test_broken_multipart_is_sender_fault(body: bytes, params: dict[str, str]) -> None:
    with pytest.raises(SoapFault) as err:
        split_mtom(body, params)
    assert err.value.code == "Sender"


# --- writing --------------------------------------------------------------------------------


def test_build_multipart_in_memory_round_trips() -> None:
    atts = [
        Attachment("one@x", "application/pdf", data=b"%PDF\r\n--not a boundary"),
        Attachment("two@x", "text/plain", data=b""),
    ]
    body, ct = build_multipart(b"<root/>", atts, action="urn:a")
    assert isinstance(body, bytes)
    media, params = parse_content_type(ct)
    assert media == "multipart/related"
    assert params["type"] == "application/xop+xml"
    assert params["action"] == "urn:a"
    root, parsed = split_mtom(body, params)
    assert root.data == b"<root/>"
    assert root.content_type.startswith("application/xop+xml")
    assert {k: v.read() for k, v in parsed.items()} == {"one@x": b"%PDF\r\n--not a boundary", "two@x": b""}


def test_content_type_from_metadata_cannot_inject_headers() -> None:
    body, ct = build_multipart(b"<r/>", [Attachment("c@x", "text/plain\r\nX-Evil: 1", data=b"z")])
    assert isinstance(body, bytes)
    assert b"X-Evil" not in body
    _, atts = split_mtom(body, parse_content_type(ct)[1])
    assert atts["c@x"].content_type == "application/octet-stream"


def test_file_backed_attachment_is_streamed_in_chunks(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"\x00\x01" * (CHUNK_SIZE * 2))
    resp = SoapResponse("urn:a:Response", b"<r/>")
    include = resp.attach(big, "application/octet-stream")
    assert include.get("href") == f"cid:{resp.attachments[0].content_id}"
    body, ct = serialize_response(resp, relates_to="urn:uuid:x")
    assert not isinstance(body, bytes)
    chunks = list(body)
    assert max(len(c) for c in chunks) <= CHUNK_SIZE
    _, atts = split_mtom(b"".join(chunks), parse_content_type(ct)[1])
    assert atts[resp.attachments[0].content_id].read() == big.read_bytes()
