"""Syslog sink against real sockets on 127.0.0.1: RFC 5424 messages, octet counting, reconnects."""

from __future__ import annotations

import contextlib
import queue
import re
import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta

import pytest
from lxml import etree

from xds_node.audit.events import AuditEvent
from xds_node.audit.store import AuditLog
from xds_node.audit.syslog import BOM, SyslogSink, UdpSyslogSink, format_rfc5424, frame_octet_counting
from xds_node.db import make_engine, metadata

HEADER = re.compile(rb"^<(\d+)>(\d) (\S+) (\S+) (\S+) (\S+) (\S+) (\S+) ")
PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
WAIT = 10  # generous upper bound for a message to arrive over loopback (never a timing assertion)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OctetCountingServer:
    """A tiny RFC 5425-style receiver: parses ``LEN SP MSG`` frames into a queue."""

    def __init__(self, port: int, tls: ssl.SSLContext | None = None):
        self.tls = tls
        self.messages: queue.Queue[bytes] = queue.Queue()
        self.connections = 0
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen()
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._stopping = False
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            self._conns.append(conn)
            t = threading.Thread(target=self._read, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _read(self, conn: socket.socket) -> None:
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except (OSError, ssl.SSLError):
                return
            self._conns.append(conn)
        buf = b""
        while True:
            try:
                chunk = conn.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b" " in buf:
                length, rest = buf.split(b" ", 1)
                assert length.isdigit(), f"bad frame length {length[:20]!r}"
                n = int(length)
                if len(rest) < n:
                    break
                self.messages.put(rest[:n])
                buf = rest[n:]

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        for t in self._threads:
            t.join(WAIT)


def parse(message: bytes) -> tuple[dict, etree._Element]:
    m = HEADER.match(message)
    assert m, message[:200]
    pri, version, ts, host, app, procid, msgid, sd = (g.decode() for g in m.groups())
    body = message[m.end() :]
    assert body.startswith(BOM)
    root = etree.fromstring(body[len(BOM) :], PARSER)
    return {"pri": pri, "version": version, "ts": ts, "host": host, "app": app, "procid": procid,
            "msgid": msgid, "sd": sd}, root  # fmt: skip


def ev(n: int, **kw) -> AuditEvent:
    return AuditEvent(transaction="ITI-55", patient_id=f"{n}^^^&1.2.3&ISO", partner_community="urn:oid:2.9", **kw)


def patient_of(root) -> str:
    return root.xpath("ParticipantObjectIdentification[@ParticipantObjectTypeCode='1']/@ParticipantObjectID")[0]


@pytest.fixture
def port():
    return free_port()


def test_format_and_framing():
    ts = datetime(2024, 3, 1, 9, 0, 0, 123456, tzinfo=UTC)
    msg = format_rfc5424(b"<AuditMessage/>", hostname="gw.va.example", app_name="xds node", procid="7", timestamp=ts)
    assert msg == b"<85>1 2024-03-01T09:00:00.123Z gw.va.example xdsnode 7 IHE+RFC-3881 - " + BOM + b"<AuditMessage/>"
    assert frame_octet_counting(b"hello") == b"5 hello"
    assert format_rfc5424(b"x", hostname="", app_name="", procid="", bom=False).split(b" ")[2:5] == [b"-"] * 3


def test_tcp_sink_delivers_framed_rfc5424(port):
    server = OctetCountingServer(port)
    sink = SyslogSink("127.0.0.1", port, hostname="gw.va.example", home_community_id="urn:oid:1.2.3")
    try:
        for i in range(3):
            sink.send(ev(i))
        got = [server.messages.get(timeout=WAIT) for _ in range(3)]
    finally:
        sink.close()
        server.stop()
    assert server.connections == 1  # one connection kept for all messages
    for i, message in enumerate(got):
        header, root = parse(message)
        assert header["pri"] == "85"  # facility 10 (authpriv) * 8 + severity 5 (notice)
        assert header["version"] == "1"
        assert header["host"] == "gw.va.example" and header["app"] == "xds-node"
        assert header["msgid"] == "IHE+RFC-3881" and header["sd"] == "-"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", header["ts"])
        assert root.tag == "AuditMessage"
        assert patient_of(root) == f"{i}^^^&1.2.3&ISO"
        assert root.find("AuditSourceIdentification").get("AuditEnterpriseSiteID") == "1.2.3"
    assert sink.sent == 3 and sink.dropped == 0


def test_tcp_sink_reconnects_after_server_restart(port):
    server = OctetCountingServer(port)
    sink = SyslogSink("127.0.0.1", port, hostname="h")
    try:
        sink.send(ev(1))
        assert patient_of(parse(server.messages.get(timeout=WAIT))[1]).startswith("1^")
        server.stop()

        server = OctetCountingServer(port)
        sink.send(ev(2))
        sink.send(ev(3))
        got = [patient_of(parse(server.messages.get(timeout=WAIT))[1]) for _ in range(2)]
        assert [g.split("^")[0] for g in got] == ["2", "3"]
        assert server.connections == 1
    finally:
        sink.close()
        server.stop()


def test_messages_queued_while_arr_is_down_are_delivered_when_it_returns(port):
    sink = SyslogSink("127.0.0.1", port, hostname="h")  # nothing listening yet
    server = None
    try:
        sink.send(ev(1))
        sink.send(ev(2))
        server = OctetCountingServer(port)
        got = [patient_of(parse(server.messages.get(timeout=WAIT))[1]) for _ in range(2)]
        assert [g.split("^")[0] for g in got] == ["1", "2"]
    finally:
        sink.close()
        if server:
            server.stop()


def test_dead_sink_never_breaks_record(tmp_path, port):
    engine = make_engine(f"sqlite:///{tmp_path}/x.db")
    metadata.create_all(engine)
    sink = SyslogSink("127.0.0.1", port, hostname="h", queue_size=2, timeout=1)  # nothing listens on port
    log = AuditLog(engine, sinks=[sink])
    for i in range(5):
        log.record(ev(i))  # must not raise, however many the sink cannot take
    assert len(log.list()) == 5
    log.close()  # gives up on the undeliverable messages instead of hanging
    assert sink.sent == 0
    assert sink.dropped == 5  # refused at the full queue or given up at close, each one counted
    sink.send(ev(9))  # after close: dropped, no exception
    assert sink.dropped == 6
    engine.dispose()


def test_flush_waits_for_delivery(port):
    server = OctetCountingServer(port)
    sink = SyslogSink("127.0.0.1", port, hostname="h")
    try:
        for i in range(20):
            sink.send(ev(i))
        assert sink.flush(WAIT)
        assert sink.sent == 20
    finally:
        sink.close()
        server.stop()


def test_udp_sink_sends_one_message_per_datagram():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(WAIT)
        sink = UdpSyslogSink("127.0.0.1", rx.getsockname()[1], hostname="h", app_name="xds-node")
        try:
            sink.send(ev(1))
            sink.send_xml(b"<AuditMessage><EventIdentification/></AuditMessage>")
            first, _ = rx.recvfrom(65535)
            second, _ = rx.recvfrom(65535)
        finally:
            sink.close()
    header, root = parse(first)
    assert header["pri"] == "85" and patient_of(root).startswith("1^")
    assert parse(second)[1][0].tag == "EventIdentification"
    assert not first[:10].split(b" ")[0].isdigit()  # no octet-count framing over UDP


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_file, key_file = tmp_path / "arr.pem", tmp_path / "arr.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return cert_file, key_file


def test_tls_sink_delivers_and_reconnects(tmp_path, port):
    cert_file, key_file = _self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_file, key_file)
    client_ctx = ssl.create_default_context(cafile=str(cert_file))  # verifies the ARR's certificate and name
    server = OctetCountingServer(port, tls=server_ctx)
    sink = SyslogSink("127.0.0.1", port, tls=client_ctx, server_hostname="localhost", hostname="h")
    try:
        sink.send(ev(1))
        sink.send(ev(2))
        got = [patient_of(parse(server.messages.get(timeout=WAIT))[1]) for _ in range(2)]
        assert [g.split("^")[0] for g in got] == ["1", "2"]
        assert server.connections == 1
        server.stop()
        server = OctetCountingServer(port, tls=server_ctx)
        sink.send(ev(3))
        assert patient_of(parse(server.messages.get(timeout=WAIT))[1]).startswith("3^")
    finally:
        sink.close()
        server.stop()


def test_tls_sink_refuses_an_untrusted_arr(tmp_path, port):
    cert_file, key_file = _self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_file, key_file)
    server = OctetCountingServer(port, tls=server_ctx)
    sink = SyslogSink("127.0.0.1", port, tls=ssl.create_default_context(), server_hostname="localhost", hostname="h")
    try:
        sink.send(ev(1))
        sink.close()
        assert sink.sent == 0 and sink.dropped == 1
        assert server.messages.empty()
    finally:
        server.stop()
