"""MTOM/XOP: read ``multipart/related`` bodies (requests to us and partners' answers, with one
streaming parser) and write (streamable) MTOM messages.

Parsing is deliberately tolerant of what real IHE peers send (LF-only line endings, transport
padding after boundaries, quoted or bare boundary/start parameters, Content-IDs with or without
angle brackets) and strict about what matters for safety (bounded part count, unknown
transfer encodings, duplicate Content-IDs, missing root part). Everything here works on bytes;
no I/O except reading file-backed attachments while streaming a response and spooling large parts
of a partner's answer (:class:`MultipartParser` with a ``spool_dir``).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .fault import SoapFault

MAX_PARTS = 1000
MAX_PART_HEADER_LINES = 64
MAX_PART_HEADER_BYTES = 16 * 1024
MAX_BOUNDARY = 200
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


class _Sink:
    """One part's bytes: in memory (chunks, joined once) up to ``spill_at``, then a file in
    ``spool_dir``. ``cap`` bounds the part; in-memory bytes also count against the parser's budget."""

    __slots__ = ("cap", "chunks", "fh", "parser", "path", "size", "spill_at")

    def __init__(self, parser: MultipartParser, spill_at: int | None, cap: int) -> None:
        self.parser = parser
        self.spill_at = spill_at
        self.cap = cap
        self.chunks: list[bytes] = []
        self.fh: IO[bytes] | None = None
        self.path: Path | None = None
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        n = len(data)
        if not n:
            return
        self.size += n
        if self.size > self.cap:
            raise _sender(f"MIME part larger than {self.cap} bytes")
        if self.fh is not None:
            self.fh.write(data)
            return
        self.parser._hold(n)
        self.chunks.append(bytes(data))
        if self.spill_at is not None and self.size > self.spill_at:
            spool = self.parser.spool_dir
            assert spool is not None
            spool.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix="part-", suffix=".bin", dir=spool)
            self.fh = os.fdopen(fd, "wb")
            self.path = Path(name)
            for chunk in self.chunks:
                self.fh.write(chunk)
            self.parser._hold(-self.size)
            self.chunks = []

    def data(self) -> bytes:
        chunks = self.chunks
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()

    def discard(self) -> None:
        self.close()
        self.chunks = []
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None


class MultipartParser:
    """The one ``multipart/related`` (MTOM/XOP) parser: the server feeds it a request body whole,
    the initiating gateway feeds it a partner's answer chunk by chunk as it arrives.

    Framing is tolerant of what real IHE peers send: CRLF or LF line ends (decided once, from the
    first delimiter line: with CRLF framing the CR before a delimiter belongs to it, with LF framing
    a trailing CR is content), transport padding after a boundary, a preamble and an epilogue, a line
    that merely starts with the boundary (``--b1xyz``) is content. Limits are the same on both paths:
    at most ``MAX_PARTS`` parts, ``MAX_PART_HEADER_LINES`` header lines and ``MAX_PART_HEADER_BYTES``
    per part, ``max_part_bytes`` per part, and ``max_memory_bytes`` held in memory across parts. With a
    ``spool_dir``, a binary part (not the root, which is the SOAP envelope, nor a base64 or
    quoted-printable one, which is decoded whole) spills to a file past ``memory_limit`` bytes.
    Every violation is a Sender :class:`SoapFault`; :meth:`discard` removes any spool files.
    """

    def __init__(self, boundary: str, *, spool_dir: Path | None = None, memory_limit: int | None = None,
                 max_part_bytes: int = 1 << 40, max_memory_bytes: int = 1 << 40) -> None:
        if not boundary or len(boundary) > MAX_BOUNDARY:
            raise _sender("multipart/related without a valid boundary parameter")
        try:
            self.delim = b"--" + boundary.encode("ascii")
        except UnicodeEncodeError as exc:
            raise _sender("non-ASCII MIME boundary") from exc
        if any(c in self.delim for c in b"\r\n"):
            raise _sender("multipart/related without a valid boundary parameter")
        self._nl_delim = b"\n" + self.delim
        self.spool_dir = spool_dir
        self.memory_limit = memory_limit if spool_dir is not None else None
        self.max_part_bytes = max_part_bytes
        self.max_memory_bytes = max_memory_bytes
        self.buf = bytearray()
        self.state = "preamble"
        self.crlf = True
        self.parts: list[tuple[dict[str, str], _Sink]] = []
        self.memory = 0
        self._scan = 0
        self._at_start = True
        self._fresh = False

    # -- feeding --
    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        """Take the next bytes of the body (any chunking); raises a Sender SoapFault when it breaks a rule."""
        if self.state == "done":
            return  # the epilogue
        self.buf += chunk
        while self._step():
            pass

    def _hold(self, n: int) -> None:
        self.memory += n
        if self.memory > self.max_memory_bytes:
            raise _sender(f"MIME parts larger than {self.max_memory_bytes} bytes in memory")

    def _delimiter_at(self, at: int) -> tuple[int, bool] | bool | None:
        """Whether a delimiter line starts at ``at`` (where ``buf`` holds the boundary): (index past
        the line, is_close); False when it is content after all (``--b1xyz``); None when more bytes
        are needed to tell."""
        buf = self.buf
        after = at + len(self.delim)
        if len(buf) < after + 2:
            return None
        if buf[after:after + 2] == b"--":
            return after + 2, True
        k, n = after, len(buf)
        while k < n and buf[k] in b" \t":
            k += 1
        if k - after > 1024:
            raise _sender("malformed MIME delimiter line")
        if k == n or (k == n - 1 and buf[k] == 0x0D):
            return None
        if buf[k] == 0x0A:
            return k + 1, False
        if buf[k] == 0x0D and buf[k + 1] == 0x0A:
            return k + 2, False
        return False

    def _step(self) -> bool:
        buf = self.buf
        if self.state == "preamble":
            while True:
                if self._at_start and buf.startswith(self.delim):
                    at = 0
                else:
                    if self._at_start and len(buf) < len(self.delim) and self.delim.startswith(buf):
                        return False  # the body may yet start with the boundary
                    self._at_start = False
                    j = buf.find(self._nl_delim, self._scan)
                    if j < 0:
                        keep = len(self._nl_delim)
                        if len(buf) > keep:  # the preamble is dropped as it arrives
                            n = len(buf) - keep
                            del buf[:n]
                            self._scan = max(0, self._scan - n)
                        return False
                    at = j + 1
                line = self._delimiter_at(at)
                if line is None:
                    self._scan = max(0, at - 1)
                    return False
                if line is False:
                    self._scan, self._at_start = at, False
                    continue
                end, close = line  # type: ignore[misc]
                self.crlf = buf[end - 2:end] == b"\r\n"
                del buf[:end]
                self._scan = 0
                self.state = "done" if close else "headers"
                if close:
                    buf.clear()
                return not close
        if self.state == "headers":
            if buf.startswith(b"\n") or buf.startswith(b"\r\n"):
                head, body_start = b"", (1 if buf.startswith(b"\n") else 2)
            else:
                found = [(j, n) for j, n in ((buf.find(b"\n\r\n"), 3), (buf.find(b"\n\n"), 2)) if j >= 0]
                if not found:
                    if len(buf) > MAX_PART_HEADER_BYTES:
                        raise _sender("MIME part headers too long")
                    return False
                j, n = min(found)
                if j > MAX_PART_HEADER_BYTES:
                    raise _sender("MIME part headers too long")
                head, body_start = bytes(buf[:j + 1]), j + n
            if len(self.parts) >= MAX_PARTS:
                raise _sender("too many MIME parts")
            headers = _parse_part_headers(head)
            is_root = not self.parts
            cte = headers.get("content-transfer-encoding", "").strip().lower()
            spill = None if is_root or cte in ("base64", "quoted-printable") else self.memory_limit
            self.parts.append((headers, _Sink(self, spill, self.max_part_bytes)))
            del buf[:body_start]
            self.state, self._scan, self._fresh = "body", 0, True
            return True
        if self.state == "body":
            sink = self.parts[-1][1]
            if self._fresh:
                if len(buf) < len(self.delim) and self.delim.startswith(buf):
                    return False
                if buf.startswith(self.delim):
                    # an empty part whose header block's last LF is also the delimiter's
                    line = self._delimiter_at(0)
                    if line is None:
                        return False
                    if line is not False:
                        return self._end_part(sink, 0, *line)  # type: ignore[misc]
                self._fresh = False
            while True:
                i = buf.find(self._nl_delim, self._scan)
                if i < 0:
                    keep = len(self._nl_delim) + 1  # the CR of a CRLF delimiter, the LF, the boundary
                    if len(buf) > keep:
                        n = len(buf) - keep
                        with memoryview(buf) as view:
                            sink.write(view[:n])
                        del buf[:n]
                        self._scan = max(0, self._scan - n)
                    return False
                line = self._delimiter_at(i + 1)
                if line is None:
                    self._scan = i
                    return False
                if line is False:
                    self._scan = i + 1
                    continue
                end_content = i
                if self.crlf and end_content > 0 and buf[end_content - 1] == 0x0D:
                    end_content -= 1
                return self._end_part(sink, end_content, *line)  # type: ignore[misc]
        return False

    def _end_part(self, sink: _Sink, end_content: int, end: int, close: bool) -> bool:
        with memoryview(self.buf) as view:
            sink.write(view[:end_content])
        sink.close()
        del self.buf[:end]
        self._scan = 0
        self.state = "done" if close else "headers"
        if close:
            self.buf.clear()
        return not close

    # -- results --
    def mime_parts(self) -> list[MimePart]:
        """Every part, decoded and in memory (for whole bodies; spooled parts are read back)."""
        self._check_complete()
        out = []
        for headers, sink in self.parts:
            data = sink.data() if sink.path is None else sink.path.read_bytes()
            cid = headers.get("content-id")
            out.append(MimePart(headers=headers, content_id=normalize_cid(cid) if cid else None,
                                content_type=headers.get("content-type", "text/plain"),
                                data=_decode(data, headers.get("content-transfer-encoding", ""))))
        return out

    def _check_complete(self) -> None:
        if self.state != "done":
            self.discard()
            raise _sender("MIME multipart body is truncated (missing boundary)")
        if not self.parts:
            raise _sender("multipart body has no parts")

    def finish(self, start: str | None) -> tuple[MimePart, dict[str, Attachment]]:
        """The root part (``start``, else the first) and the others keyed by Content-ID; spooled
        parts stay in their files (the caller owns them now). Parts without a Content-ID cannot be
        referenced and are dropped."""
        self._check_complete()
        try:
            root_index = 0
            if start:
                wanted = normalize_cid(start)
                root_index = next((k for k, (h, _) in enumerate(self.parts)
                                   if normalize_cid(h.get("content-id", "")) == wanted), -1)
                if root_index < 0:
                    raise _sender("multipart/related start part not found")
            headers, sink = self.parts[root_index]
            cid = headers.get("content-id")
            root = MimePart(headers=headers, content_id=normalize_cid(cid) if cid else None,
                            content_type=headers.get("content-type", "text/plain"),
                            data=_decode(sink.data(), headers.get("content-transfer-encoding", "")))
            attachments: dict[str, Attachment] = {}
            for k, (headers, sink) in enumerate(self.parts):
                cid = headers.get("content-id")
                if k == root_index or not cid:
                    continue
                cid = normalize_cid(cid)
                if cid in attachments:
                    raise _sender("duplicate Content-ID in multipart message")
                ctype = headers.get("content-type", "application/octet-stream")
                if sink.path is not None:
                    attachments[cid] = Attachment(cid, ctype, path=sink.path, size=sink.size)
                else:
                    attachments[cid] = Attachment(cid, ctype, data=_decode(sink.data(),
                                                  headers.get("content-transfer-encoding", "")))
        except SoapFault:
            self.discard()
            raise
        for k, (headers, sink) in enumerate(self.parts):  # files nobody can reference
            if sink.path is not None and (k == root_index or not headers.get("content-id")):
                sink.discard()
        self.parts = []
        return root, attachments

    def discard(self) -> None:
        """Drop every part and remove its spool file (a refused or abandoned body)."""
        for _, sink in self.parts:
            sink.discard()


def _parse_part_headers(head: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    last: str | None = None
    lines = head.split(b"\n")
    if len(lines) > MAX_PART_HEADER_LINES + 1:
        raise _sender("too many MIME part header lines")
    for raw in lines:
        line = raw.rstrip(b"\r")
        if not line.strip():
            continue
        if line[:1] in (b" ", b"\t") and last is not None:
            headers[last] += " " + line.strip().decode("latin-1")
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name.strip():
            raise _sender("malformed MIME part header")
        last = name.strip().decode("latin-1").lower()
        headers[last] = value.strip().decode("latin-1")
    return headers


def _decode(data: bytes, cte: str) -> bytes:
    cte = cte.strip().lower()
    if cte in ("", "binary", "8bit", "7bit"):
        return data
    if cte == "base64":
        try:
            return base64.b64decode(b"".join(data.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _sender("invalid base64 in MIME part") from exc
    if cte == "quoted-printable":
        return binascii.a2b_qp(data)
    raise _sender(f"unsupported Content-Transfer-Encoding: {cte[:40]}")


def parse_multipart(data: bytes, boundary: str) -> list[MimePart]:
    """Split a whole multipart body into decoded parts (the streaming parser, fed once)."""
    parser = MultipartParser(boundary)
    parser.feed(data)
    return parser.mime_parts()


def split_mtom(data: bytes, params: dict[str, str], *, max_part_bytes: int = 1 << 40) -> tuple[
        MimePart, dict[str, Attachment]]:
    """Root part (by ``start`` or else the first part) and the other parts keyed by Content-ID."""
    parser = MultipartParser(params.get("boundary", ""), max_part_bytes=max_part_bytes)
    parser.feed(data)
    return parser.finish(params.get("start"))


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
