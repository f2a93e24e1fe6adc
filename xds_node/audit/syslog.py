"""Send audit messages to an Audit Record Repository (IHE ITI-20): RFC 5424 over TLS/TCP or UDP.

Each message is ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG`` with the DICOM
AuditMessage XML as MSG, facility 10 (security/authorization) and severity 5 (notice), so PRI is
``<85>``; MSGID is ``IHE+RFC-3881`` as ITI-20 requires. Over TCP and TLS, messages are framed by
octet counting (RFC 6587 / RFC 5425: ``LEN SP SYSLOG-MSG``); over UDP each datagram is one message
(RFC 5426).

A request must never wait for the ARR: :meth:`send` only puts the event on a bounded queue and a
background thread renders and writes it, keeping one connection open and reconnecting (with
backoff) when it breaks. When the queue is full the event is dropped and counted (it is still in
the node's own ``audit_event`` table). :meth:`close` flushes what is queued.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import socket
import ssl
import threading
from datetime import UTC, datetime

from xds_node.audit.atna import to_dicom_audit_message
from xds_node.audit.events import AuditEvent

log = logging.getLogger("xds_node.audit.syslog")

FACILITY_AUTHPRIV = 10
SEVERITY_NOTICE = 5
MSGID = "IHE+RFC-3881"
BOM = b"\xef\xbb\xbf"
_STOP = object()


def _header_field(value: str, limit: int) -> str:
    """An RFC 5424 header field: printable US-ASCII without spaces, ``-`` when empty."""
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


def format_rfc5424(
    msg: bytes,
    *,
    hostname: str,
    app_name: str,
    procid: str | None = None,
    msgid: str = MSGID,
    facility: int = FACILITY_AUTHPRIV,
    severity: int = SEVERITY_NOTICE,
    timestamp: datetime | None = None,
    bom: bool = True,
) -> bytes:
    """One RFC 5424 SYSLOG-MSG with no structured data; ``bom`` marks MSG as UTF-8 (RFC 5424 6.4)."""
    ts = (timestamp or datetime.now(UTC)).astimezone(UTC)
    stamp = ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"
    header = " ".join(
        [
            f"<{facility * 8 + severity}>1",
            stamp,
            _header_field(hostname, 255),
            _header_field(app_name, 48),
            _header_field(procid if procid is not None else str(os.getpid()), 128),
            _header_field(msgid, 32),
            "-",
        ]
    )
    return header.encode("ascii") + b" " + (BOM if bom else b"") + msg


def frame_octet_counting(message: bytes) -> bytes:
    """RFC 6587 3.4.1 / RFC 5425 4.3 framing: ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(message)).encode("ascii") + b" " + message


class _QueuedSink:
    """Bounded queue + one writer thread; subclasses provide ``_write`` and ``_disconnect``."""

    def __init__(
        self,
        *,
        app_name: str,
        hostname: str | None,
        source_id: str | None,
        home_community_id: str,
        queue_size: int,
        bom: bool,
    ):
        self.app_name = app_name
        self.hostname = hostname or socket.getfqdn() or socket.gethostname()
        self.source_id = source_id or f"{app_name}@{self.hostname}"
        self.home_community_id = home_community_id
        self.bom = bom
        self.sent = 0
        self.dropped = 0
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._closing = threading.Event()
        self._closed = False
        self._abandon = False
        self._thread = threading.Thread(target=self._run, name=f"{type(self).__name__}", daemon=True)
        self._thread.start()

    # --- producer side (request path) -------------------------------------------------------------
    def send(self, event: AuditEvent) -> None:
        """Queue an audit event; never blocks, never raises for a full queue or a dead ARR."""
        self._enqueue(event)

    def send_xml(self, xml: bytes) -> None:
        """Queue an already-rendered AuditMessage."""
        self._enqueue(xml)

    def _enqueue(self, item: AuditEvent | bytes) -> None:
        if self._closed:
            self.dropped += 1
            log.warning("audit syslog sink is closed; message dropped")
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("audit syslog queue full; %d message(s) dropped so far", self.dropped)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far was written or given up; True if the queue drained."""
        done = threading.Event()

        def _wait() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=_wait, daemon=True).start()
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Flush what is queued, then stop the writer thread.

        While closing, a message the ARR refuses gets one immediate retry and is then dropped (and
        counted), so closing with the ARR down does not hang; after ``timeout`` seconds whatever is
        still queued is dropped without further attempts.
        """
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_STOP)  # if full, the writer stops once it has drained the queue
        self._closing.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abandon = True
            self._thread.join(1.0)
        self._disconnect()

    # --- writer thread ----------------------------------------------------------------------------
    def render(self, item: AuditEvent | bytes) -> bytes:
        if isinstance(item, bytes):
            xml = item
        else:
            xml = to_dicom_audit_message(item, source_id=self.source_id, home_community_id=self.home_community_id)
        return format_rfc5424(xml, hostname=self.hostname, app_name=self.app_name, bom=self.bom)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                try:
                    message = self.render(item)
                except Exception:
                    log.exception("cannot render audit message; dropped")
                    self.dropped += 1
                    continue
                self._deliver(message)
            finally:
                self._queue.task_done()
            if self._closed and self._queue.empty():
                return

    def _deliver(self, message: bytes) -> None:
        delay = 0.05
        failures = 0
        while True:
            if self._abandon:
                self.dropped += 1
                return
            try:
                self._write(message)
                self.sent += 1
                if failures:
                    log.info("audit syslog delivery resumed after %d failed attempt(s)", failures)
                return
            except (OSError, ssl.SSLError) as exc:
                self._disconnect()
                failures += 1
                if failures == 1:
                    log.warning("audit syslog delivery failed (%s); retrying", exc)
                if self._closing.is_set() and failures >= 2:
                    self.dropped += 1
                    log.error("audit syslog sink closed while the ARR is unreachable; message dropped")
                    return
                # back off; close() cuts the wait short
                self._closing.wait(delay)
                delay = min(delay * 2, 5.0)

    def _write(self, message: bytes) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _disconnect(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class SyslogSink(_QueuedSink):
    """RFC 5424 audit messages over TCP, or TLS (RFC 5425) when ``tls`` is given, to one ARR."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        app_name: str = "xds-node",
        hostname: str | None = None,
        timeout: float = 5,
        source_id: str | None = None,
        home_community_id: str = "",
        queue_size: int = 10_000,
        server_hostname: str | None = None,
        bom: bool = True,
    ):
        self.host = host
        self.port = port
        self.tls = tls
        self.timeout = timeout
        self.server_hostname = server_hostname or host
        self._sock: socket.socket | None = None
        super().__init__(
            app_name=app_name,
            hostname=hostname,
            source_id=source_id,
            home_community_id=home_community_id,
            queue_size=queue_size,
            bom=bom,
        )

    def __repr__(self) -> str:
        return f"SyslogSink({self.host!r}, {self.port}, tls={self.tls is not None})"

    def _connect(self) -> socket.socket:
        raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
        try:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if self.tls is not None:
                return self.tls.wrap_socket(raw, server_hostname=self.server_hostname)
            return raw
        except BaseException:
            raw.close()
            raise

    def _peer_closed(self, sock: socket.socket) -> bool:
        """True if the ARR closed the connection (a syslog receiver never sends data).

        Checked before each write because a write into a half-closed TCP connection succeeds
        locally and the message would be silently lost.
        """
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        if not readable:
            return False
        sock.setblocking(False)
        try:
            return sock.recv(1) == b""
        except (ssl.SSLWantReadError, BlockingIOError):
            return False  # only TLS records such as session tickets arrived
        except OSError:
            return True
        finally:
            if sock.fileno() != -1:
                sock.settimeout(self.timeout)

    def _write(self, message: bytes) -> None:
        if self._sock is not None and self._peer_closed(self._sock):
            self._disconnect()
        if self._sock is None:
            self._sock = self._connect()
        self._sock.sendall(frame_octet_counting(message))

    def _disconnect(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


class UdpSyslogSink(_QueuedSink):
    """RFC 5426: one audit message per UDP datagram (no framing, no delivery guarantee)."""

    #: Largest UDP payload over IPv4; longer messages are sent anyway and may be truncated by the net.
    MAX_DATAGRAM = 65_507

    def __init__(
        self,
        host: str,
        port: int,
        *,
        app_name: str = "xds-node",
        hostname: str | None = None,
        source_id: str | None = None,
        home_community_id: str = "",
        queue_size: int = 10_000,
        bom: bool = True,
    ):
        self.host = host
        self.port = port
        self._sock: socket.socket | None = None
        super().__init__(
            app_name=app_name,
            hostname=hostname,
            source_id=source_id,
            home_community_id=home_community_id,
            queue_size=queue_size,
            bom=bom,
        )

    def __repr__(self) -> str:
        return f"UdpSyslogSink({self.host!r}, {self.port})"

    def _write(self, message: bytes) -> None:
        if len(message) > self.MAX_DATAGRAM:
            log.warning("audit message of %d bytes exceeds one UDP datagram", len(message))
        if self._sock is None:
            family = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0]
            self._sock = socket.socket(family[0], socket.SOCK_DGRAM)
            self._sock.connect(family[4])
        self._sock.send(message)

    def _disconnect(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
