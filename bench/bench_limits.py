"""Limits benchmark: what unauthenticated attackers can make `xds-node serve` hold, next to a baseline.

    python -m bench.bench_limits [--bodies 20] [--body-mb 60] [--idle 1100] [--xml-mib 64]

Each scenario starts its own `xds-node serve` (1 worker, default settings) under a 1,024
file-descriptor limit, as in the original finding, and measures the unattacked baseline first:

* withheld bodies: 20 connections each announce 60 MB and send all but the last byte; the
  server's RSS while they are held (bodies spool to disk past ``body_spool_bytes``), and what the
  clients get in the end (408 after ``body_idle_timeout_seconds``).
* idle connections: 1,100 connections that send nothing; then ITI-18 requests, each on a new
  connection, p50/p99 latency next to the same requests without the idle sockets; and how many
  idle sockets the server closed to make room (``max_connections``).
* tiny elements: one 64 MiB body of ``<x/>`` elements; the answer, the server's peak RSS, and
  the longest /health latency while it is being refused (the event loop stays free).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from tests import factories as f
from xds_node.ebxml import rim
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import StoredQuery
from xds_node.soap.envelope import build_request

ROOT = Path(__file__).resolve().parents[1]
SERVER_NOFILE = 1024


def proc_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Server:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="xds-bench-limits-"))
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (SERVER_NOFILE, SERVER_NOFILE))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xds_node.cli", "serve", "--port", str(self.port)], cwd=ROOT,
            env={**os.environ, "XDS_DATA_DIR": str(self.work), **(env or {})},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=limit)
        for _ in range(300):
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        for _ in range(20):  # warm up the query path
            query(self.port)

    def rss_mb(self) -> float:
        return proc_kb(self.proc.pid, "VmRSS") / 1024

    def peak_mb(self) -> float:
        return proc_kb(self.proc.pid, "VmHWM") / 1024

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.work, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_QUERY: bytes | None = None


def query(port: int) -> tuple[int, float]:
    """One ITI-18 FindDocuments on a new connection: (status, milliseconds)."""
    global _QUERY
    if _QUERY is None:
        q = StoredQuery(query_id=v.StoredQueryId.FIND_DOCUMENTS, slots={
            "$XDSDocumentEntryPatientId": [[f"'{f.patient(1)}'"]],
            "$XDSDocumentEntryStatus": [["('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved')"]]})
        body, ct, _ = build_request(v.Action.ITI18, rim.write_adhoc_query_request(q))
        _QUERY = (f"POST /xds/registry HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ct}\r\n"
                  f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
    t0 = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(_QUERY)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except OSError:
        return 0, (time.perf_counter() - t0) * 1000
    status = int(data[9:12]) if data.startswith(b"HTTP/1.1 ") else 0
    return status, (time.perf_counter() - t0) * 1000


def latencies(port: int, n: int) -> tuple[float, float, int]:
    times, failures = [], 0
    for _ in range(n):
        status, ms = query(port)
        times.append(ms)
        failures += status != 200
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1], failures


def raise_own_fd_limit(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))


# --- scenarios ----------------------------------------------------------------------------


def bench_withheld(n: int, size_mb: int) -> None:
    server = Server()
    try:
        base = server.rss_mb()
        size = size_mb * 1_000_000
        head = (b"POST /xds/repository HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/related; boundary=b\r\n"
                b"Content-Length: %d\r\n\r\n" % size)
        piece = b"\0" * (1 << 20)
        socks = [socket.create_connection(("127.0.0.1", server.port), timeout=120) for _ in range(n)]

        def push(sock: socket.socket) -> None:
            sock.sendall(head)
            left = size - 1
            while left:
                k = min(left, len(piece))
                sock.sendall(piece[:k])
                left -= k

        t0 = time.perf_counter()
        threads = [threading.Thread(target=push, args=(s,)) for s in socks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sent = time.perf_counter() - t0
        time.sleep(1.0)  # let the server take in what is in the socket buffers
        held = server.rss_mb()
        status, ms = query(server.port)
        answers = []
        for s in socks:
            try:
                answers.append(s.recv(64)[:12].decode(errors="replace"))
            except OSError as exc:
                answers.append(type(exc).__name__)
            s.close()
        print(f"withheld bodies: {n} x {size_mb} MB sent in {sent:.1f} s, last byte withheld | server RSS "
              f"{base:.0f} MB unattacked, {held:.0f} MB while held (peak {server.peak_mb():.0f} MB) | "
              f"a query meanwhile: HTTP {status} in {ms:.1f} ms | clients finally got: "
              f"{', '.join(sorted(set(answers)))}")
    finally:
        server.stop()


def bench_idle(n: int, requests: int) -> None:
    raise_own_fd_limit(n + 256)
    server = Server()
    idle: list[socket.socket] = []
    try:
        p50, p99, fail = latencies(server.port, requests)
        for _ in range(n):
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=30))
        time.sleep(0.5)
        a50, a99, afail = latencies(server.port, requests)
        closed = 0
        for s in idle:
            s.setblocking(False)
            try:
                closed += s.recv(1) == b""
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
        print(f"idle connections: {n} open against a {SERVER_NOFILE}-descriptor server | ITI-18 on a new "
              f"connection: p50 {p50:.2f} ms / p99 {p99:.2f} ms unattacked ({fail} failed), "
              f"p50 {a50:.2f} ms / p99 {a99:.2f} ms with the idle sockets ({afail} failed) | "
              f"idle sockets closed by the server: {closed}")
    finally:
        for s in idle:
            s.close()
        server.stop()


def bench_tiny_elements(mib: int) -> None:
    server = Server()
    try:
        base = server.rss_mb()
        head, ct, _ = build_request(v.Action.ITI18, b"<q:W xmlns:q='urn:q'>@@</q:W>")
        assert isinstance(head, bytes)
        before, after = head.split(b"@@")
        count = ((mib << 20) - len(head)) // 4
        body = before + b"<x/>" * count + after
        worst = [0.0]
        done = threading.Event()

        def ping() -> None:
            with httpx.Client(base_url=server.url, timeout=60) as c:
                while not done.is_set():
                    t0 = time.perf_counter()
                    c.get("/health")
                    worst[0] = max(worst[0], (time.perf_counter() - t0) * 1000)
                    time.sleep(0.01)

        pinger = threading.Thread(target=ping)
        pinger.start()
        t0 = time.perf_counter()
        resp = httpx.post(server.url + "/xds/registry", content=body, headers={"content-type": ct}, timeout=120)
        took = time.perf_counter() - t0
        done.set()
        pinger.join()
        reason = resp.text.split("<soap:Text", 1)[-1].split(">", 1)[-1].split("<", 1)[0] if resp.text else ""
        print(f"tiny elements: {len(body) / (1 << 20):.0f} MiB body, {count:,} <x/> elements | answer HTTP "
              f"{resp.status_code} '{reason}' in {took:.2f} s | server RSS {base:.0f} MB unattacked, peak "
              f"{server.peak_mb():.0f} MB | longest /health meanwhile {worst[0]:.0f} ms")
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bodies", type=int, default=20)
    ap.add_argument("--body-mb", type=int, default=60)
    ap.add_argument("--idle", type=int, default=1100)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--xml-mib", type=int, default=64)
    args = ap.parse_args()
    bench_withheld(args.bodies, args.body_mb)
    bench_idle(args.idle, args.requests)
    bench_tiny_elements(args.xml_mib)


if __name__ == "__main__":
    main()
