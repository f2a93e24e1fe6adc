"""MTOM/XOP: read ``multipart/related`` request bodies and write (streamable) MTOM responses.

Parsing is deliberately tolerant of what real IHE peers send (LF-only line endings, transport
padding after boundaries, quoted or bare boundary/start parameters, Content-IDs with or without
angle brackets) and strict about what matters for safety (bounded part count, unknown
transfer encodings, duplicate Content-IDs, missing root part). Everything here works on bytes;
no I/O except reading file-backed attachments while streaming a response.
"""

from __future__ import annotations

import binascii
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .fault import SoapFault

MAX_PARTS = 1000
MAX_PART_HEADER_LINES = 64
CHUNK_SIZE = 256 * 1024

_PARAM_RE = re.compile(r';\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))')
_UNESCAPE_RE = re.compile(r"\\(.)")
# A header value we write must be printable ASCII: anything else could split the MIME header.
_SAFE_HEADER_RE = re.compile(r"[\x20-\x7e]+")
_SAFE_CID_RE = re.compile(r"[!#$%&'*+\-./0-9=?A-Z^_`a-z{|}~@]+")


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """Split a Content-Type header into a lower-case media type and its (lower-case) parameters."""
    media, sep, rest = value.partition(";")
    params: dict[str, str] = {}
    if sep:
        for m in _PARAM_RE.finditer(";" + rest):
            quoted = m.group(2)
            if quoted is not None:
                params[m.group(1).lower()] = _UNESCAPE_RE.sub(r"\1", quoted) if "\\" in quoted else quoted
            else:
                params[m.group(1).lower()] = m.group(3)
    return media.strip().lower(), params


def normalize_cid(value: str) -> str:
    """Content-ID without surrounding whitespace, angle brackets or a ``cid:`` prefix."""
    value = value.strip()
    if value[:4].lower() == "cid:":
        value = value[4:]
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    return value.strip()


@dataclass(frozen=True, slots=True)
class Streamed:
    """Content produced while the response is written (e.g. read from the database chunk by
    chunk): its size, and a callable returning the chunks. Never loaded whole."""

    size: int
    chunks: Callable[[], Iterator[bytes]]


@dataclass(slots=True)
class Attachment:
    """One MTOM part: in memory (``data``), a file or a :class:`Streamed` source read when the
    response is written."""

    content_id: str
    content_type: str
    data: bytes | None = None
    path: Path | None = None
    size: int | None = None
    source: Streamed | None = None

    def __post_init__(self) -> None:
        if self.data is None and self.path is None and self.source is None:
            raise ValueError("Attachment needs data, path or source")
        if self.size is None:
            self.size = (len(self.data) if self.data is not None else self.source.size if self.source is not None
                         else Path(self.path).stat().st_size)

    def read(self) -> bytes:
        """The whole content (reads the file for file-backed attachments)."""
        if self.data is not None:
            return self.data
        if self.source is not None:
            return b"".join(self.source.chunks())
        assert self.path is not None
        return Path(self.path).read_bytes()

    def iter_chunks(self, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """The content in chunks, without loading a file-backed (or streamed) attachment whole."""
        if self.data is not None:
            yield self.data
            return
        if self.source is not None:
            yield from self.source.chunks()
            return
        assert self.path is not None
        with open(self.path, "rb") as fh:
            while chunk := fh.read(chunk_size):
                yield chunk


@dataclass(slots=True)
class MimePart:
    headers: dict[str, str]
    content_id: str | None
    content_type: str
    data: bytes


def _sender(reason: str) -> SoapFault:
    return SoapFault("Sender", reason)


def _next_delimiter(data: bytes, delim: bytes, start: int) -> tuple[int, int, bool]:
    """Find the next delimiter line at or after ``start``.

    Returns (index of the delimiter's leading "--", index just past its line, is_close).
    A delimiter starts a line; after it come optional transport padding and a line end, or
    "--" for the close delimiter. A line that merely starts with the boundary is not one.
    """
    pos = start
    while True:
        if pos == 0 and data.startswith(delim):
            i = 0
        else:
            j = data.find(b"\n" + delim, max(pos - 1, 0))
            if j < 0:
                raise _sender("MIME multipart body is truncated (missing boundary)")
            i = j + 1
        after = i + len(delim)
        if data.startswith(b"--", after):
            return i, after + 2, True
        k = after
        n = len(data)
        while k < n and data[k] in b" \t":
            k += 1
        if data.startswith(b"\r\n", k):
            return i, k + 2, False
        if data.startswith(b"\n", k):
            return i, k + 1, False
        pos = i + 1


def _parse_headers(data: bytes, start: int, end: int) -> tuple[dict[str, str], int]:
    headers: dict[str, str] = {}
    last: str | None = None
    p = start
    for _ in range(MAX_PART_HEADER_LINES):
        eol = data.find(b"\n", p, end)
        if eol < 0:
            raise _sender("MIME part headers are not terminated by an empty line")
        line = data[p:eol].rstrip(b"\r")
        p = eol + 1
        if not line.strip():
            return headers, p
        if line[:1] in (b" ", b"\t") and last is not None:
            headers[last] += " " + line.strip().decode("latin-1")
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            raise _sender("malformed MIME part header")
        last = name.strip().decode("latin-1").lower()
        headers[last] = value.strip().decode("latin-1")
    raise _sender("too many MIME part header lines")


def _decode(data: bytes, cte: str) -> bytes:
    cte = cte.strip().lower()
    if cte in ("", "binary", "8bit", "7bit"):
        return data
    if cte == "base64":
        try:
            return binascii.a2b_base64(data)
        except binascii.Error as exc:
            raise _sender("invalid base64 in MIME part") from exc
    if cte == "quoted-printable":
        return binascii.a2b_qp(data)
    raise _sender(f"unsupported Content-Transfer-Encoding: {cte[:40]}")


def parse_multipart(data: bytes, boundary: str) -> list[MimePart]:
    """Split a multipart body into decoded parts (CRLF or LF framing, padding tolerated)."""
    if not boundary or len(boundary) > 200:
        raise _sender("multipart/related without a valid boundary parameter")
    try:
        delim = b"--" + boundary.encode("ascii")
    except UnicodeEncodeError as exc:
        raise _sender("non-ASCII MIME boundary") from exc
    _, pos, close = _next_delimiter(data, delim, 0)
    # The framing is decided once from the first delimiter line: with CRLF framing the CR before
    # the next delimiter belongs to it, with LF framing a trailing CR is content.
    crlf = data[pos - 2 : pos] == b"\r\n"
    parts: list[MimePart] = []
    while not close:
        if len(parts) >= MAX_PARTS:
            raise _sender("too many MIME parts")
        nxt, nxt_pos, close = _next_delimiter(data, delim, pos)
        end = nxt - 1  # the LF before the delimiter
        if crlf and end > pos and data[end - 1] == 0x0D:
            end -= 1
        # An empty part may share the LF that ends its headers with the next delimiter.
        headers, body_start = _parse_headers(data, pos, nxt)
        body = data[body_start:end] if body_start < end else b""
        cid = headers.get("content-id")
        parts.append(
            MimePart(
                headers=headers,
                content_id=normalize_cid(cid) if cid else None,
                content_type=headers.get("content-type", "text/plain"),
                data=_decode(body, headers.get("content-transfer-encoding", "")),
            )
        )
        pos = nxt_pos
    if not parts:
        raise _sender("multipart body has no parts")
    return parts


def split_mtom(data: bytes, params: dict[str, str]) -> tuple[MimePart, dict[str, Attachment]]:
    """Root part (by ``start`` or else the first part) and the other parts keyed by Content-ID."""
    parts = parse_multipart(data, params.get("boundary", ""))
    start = params.get("start")
    root: MimePart | None = None
    if start:
        wanted = normalize_cid(start)
        root = next((p for p in parts if p.content_id == wanted), None)
        if root is None:
            raise _sender("multipart/related start part not found")
    else:
        root = parts[0]
    attachments: dict[str, Attachment] = {}
    for part in parts:
        if part is root or not part.content_id:
            continue
        if part.content_id in attachments:
            raise _sender("duplicate Content-ID in multipart message")
        attachments[part.content_id] = Attachment(part.content_id, part.content_type, data=part.data)
    return root, attachments


def new_content_id() -> str:
    """A fresh, globally unique Content-ID (addr-spec form, no brackets)."""
    return f"{uuid.uuid4().hex}@xds-node"


def _quote_param(value: str) -> str | None:
    if not _SAFE_HEADER_RE.fullmatch(value) or '"' in value or "\\" in value:
        return None
    return f'"{value}"'


def _safe_content_type(value: str) -> str:
    # Content types of stored documents come from submitters' metadata: never let one inject
    # header lines into our response.
    return value if value and _SAFE_HEADER_RE.fullmatch(value) else "application/octet-stream"


def build_multipart(
    root_xml: bytes,
    attachments: Sequence[Attachment],
    *,
    action: str | None = None,
    root_type: str = "application/soap+xml",
    chunk_size: int = CHUNK_SIZE,
) -> tuple[bytes | Iterator[bytes], str]:
    """Write an MTOM message: bytes if everything is in memory, else a chunk iterator.

    Returns (body, Content-Type header value).
    """
    boundary = f"MIMEBoundary_{uuid.uuid4().hex}"
    root_cid = f"root.{uuid.uuid4().hex}@xds-node"
    content_type = (
        f'multipart/related; boundary="{boundary}"; type="application/xop+xml"; '
        f'start="<{root_cid}>"; start-info="{root_type}"'
    )
    quoted_action = _quote_param(action) if action else None
    if quoted_action:
        content_type += f"; action={quoted_action}"
    head = (
        f"--{boundary}\r\n"
        f'Content-Type: application/xop+xml; charset=UTF-8; type="{root_type}"\r\n'
        "Content-Transfer-Encoding: binary\r\n"
        f"Content-ID: <{root_cid}>\r\n\r\n"
    ).encode("ascii")
    segments: list[bytes | Attachment] = [head, root_xml]
    streaming = False
    for att in attachments:
        if not _SAFE_CID_RE.fullmatch(att.content_id):
            raise ValueError(f"unsafe Content-ID: {att.content_id!r}")
        segments.append(
            (
                f"\r\n--{boundary}\r\n"
                f"Content-Type: {_safe_content_type(att.content_type)}\r\n"
                "Content-Transfer-Encoding: binary\r\n"
                f"Content-ID: <{att.content_id}>\r\n\r\n"
            ).encode("ascii")
        )
        if att.data is not None:
            segments.append(att.data)
        else:
            segments.append(att)
            streaming = True
    segments.append(f"\r\n--{boundary}--\r\n".encode("ascii"))
    if not streaming:
        return b"".join(segments), content_type  # type: ignore[arg-type]
    return ChunkStream(segments, chunk_size), content_type


#: File-backed parts up to this many bytes in total are read on the caller's thread: a page-cache
#: read of a few MB costs less than handing each chunk to a worker thread.
INLINE_READ_LIMIT = 4 * 1024 * 1024


class ChunkStream:
    """The chunks of a streamed MTOM message; ``blocking`` says whether reading may take long."""

    def __init__(self, segments: list[bytes | Attachment], chunk_size: int):
        self._it = _stream(segments, chunk_size)
        file_bytes = 0
        for seg in segments:
            if isinstance(seg, Attachment):
                # a streamed source (a database read per chunk) always counts as slow
                file_bytes += seg.size if seg.size is not None and seg.source is None else INLINE_READ_LIMIT + 1
        self.blocking = file_bytes > INLINE_READ_LIMIT

    def __iter__(self) -> ChunkStream:
        return self

    def __next__(self) -> bytes:
        return next(self._it)

    def close(self) -> None:
        self._it.close()


def _stream(segments: list[bytes | Attachment], chunk_size: int) -> Iterator[bytes]:
    """Yield the message; consecutive in-memory pieces (headers, the SOAP part) go out as one chunk."""
    pending: list[bytes] = []
    for seg in segments:
        if isinstance(seg, Attachment):
            if pending:
                yield b"".join(pending)
                pending = []
            yield from seg.iter_chunks(chunk_size)
        else:
            pending.append(seg)
    if pending:
        yield b"".join(pending)
