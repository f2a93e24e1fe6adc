"""Repository benchmark: C-CDA ingest, ITI-43 retrieve throughput and memory.

    python -m bench.bench_repository [--ingest 1000] [--duration 5]

* ingest: copies of the sample C-CDA documents (each with its own document id) indexed in place by
  the folder adapter, as `xds-node load` does: documents per second, end to end (parse, metadata,
  validation, registration, repository index, patient index).
* retrieve: ITI-43 over loopback HTTP against `xds-node serve` (1 worker), MTOM responses, for
  10 KB, 1 MB and 20 MB documents, with 4 concurrent clients: requests/s and MB/s, next to the
  same bytes served as a plain HTTP response by uvicorn in the same run (the floor: no SOAP, no
  MTOM, no database); and the server's peak RSS growth while it serves 20 MB documents.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.loadgen import http_post, run_load
from tests import factories as f
from xds_node.config import load_settings
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml import xdsb
from xds_node.soap.envelope import build_request

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_documents"
_DOC_ID = re.compile(rb'(<ClinicalDocument[^>]*>.*?<id root=")([^"]+)(")', re.S)


def make_copies(target: Path, n: int) -> int:
    samples = sorted(SAMPLES.rglob("*.xml"))
    total = 0
    for i in range(n):
        data = samples[i % len(samples)].read_bytes()
        data = _DOC_ID.sub(lambda m: m.group(1) + f"2.25.{random.getrandbits(100)}".encode() + m.group(3), data, 1)
        (target / f"doc{i:06d}.xml").write_bytes(data)
        total += len(data)
    return total


def bench_ingest(n: int) -> float:
    from xds_node.node import Node

    work = Path(tempfile.mkdtemp(prefix="xds-bench-ingest-"))
    try:
        folder = work / "source"
        folder.mkdir()
        size = make_copies(folder, n)
        node = Node(load_settings(env={}, data_dir=work / "data"))
        t0 = time.perf_counter()
        report = node.folder_indexer(folder).sync()
        dt = time.perf_counter() - t0
        node.close()
        assert len(report.registered) == n and not report.rejected, report.summary()
        rate = n / dt
        print(f"ingest: {n} C-CDA files ({size / n / 1024:.0f} KB average) in {dt:.1f} s = {rate:.0f} documents/s")
        return rate
    finally:
        shutil.rmtree(work, ignore_errors=True)


def rss_peak_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def rss_now_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def plain_http_floor(path: Path, port: int, duration: float) -> float:
    """MB/s of the same file served as a plain HTTP response by uvicorn, same clients (the floor)."""
    env = {**os.environ, "XDS_BENCH_FILE": str(path)}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "bench.plain_file_server:app", "--port", str(port),
                             "--log-level", "warning", "--no-access-log", "--loop", "uvloop", "--http", "httptools"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        get = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        res = asyncio.run(run_load("127.0.0.1", port, lambda _r: get, concurrency=4, duration=duration, warmup=0.5))
        return res.rps * path.stat().st_size / 1e6
    finally:
        proc.terminate()
        proc.wait(10)


def bench_retrieve(duration: float) -> None:
    from xds_node.node import Node

    work = Path(tempfile.mkdtemp(prefix="xds-bench-retrieve-"))
    try:
        node = Node(load_settings(env={}, data_dir=work))
        sizes = {"10 KB": 10 * 1024, "1 MB": 1 << 20, "20 MB": 20 << 20}
        uids: dict[str, str] = {}
        for label, size in sizes.items():
            data = os.urandom(size)
            sub = f.submission(f.patient(1), 1)
            de = sub.documents[0]
            de.hash = de.size = de.repository_unique_id = None
            node.repository.check_documents(sub, {de.id: data})
            locator, _ = node.content_store.put(data, de.hash)
            from sqlalchemy import insert

            from xds_node.repository import tables as rt

            row = {"unique_id": de.unique_id, "repository_unique_id": node.repository.unique_id,
                   "entry_uuid": de.id, "source": "store", "locator": locator, "mime_type": "application/octet-stream",
                   "size": size, "sha1": de.hash, "mtime_ns": None, "state": "current", "version": 1}
            resp = node.registry.register(sub, also=lambda conn, row=row: conn.execute(insert(rt.documents), [row]))
            assert resp.status == v.ResponseStatus.SUCCESS, resp.errors
            uids[label] = de.unique_id
        node.close()
        port = 30000 + os.getpid() % 20000
        env = {**os.environ, "XDS_DATA_DIR": str(work)}
        proc = subprocess.Popen([sys.executable, "-m", "xds_node.cli", "serve", "--port", str(port)], cwd=ROOT,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(300):
                try:
                    httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            base_rss = rss_now_kb(proc.pid)
            for label, size in sizes.items():
                req = xdsb.write_retrieve_request([xdsb.DocumentRequest(load_settings(env={}).repository_unique_id,
                                                                        uids[label])])
                payload, ct, _ = build_request(v.Action.ITI43, req, to=f"http://127.0.0.1:{port}/xds/repository")
                msg = http_post("127.0.0.1", port, "/xds/repository", payload, ct)
                res = asyncio.run(run_load("127.0.0.1", port, lambda _r, msg=msg: msg, concurrency=4,
                                           duration=duration, warmup=0.5))
                mbps = res.rps * size / 1e6
                path = next(p for p in (work / "documents").rglob("*") if p.is_file() and p.stat().st_size == size)
                floor = plain_http_floor(path, port + 1, duration)
                print(f"retrieve {label:6}: {res.rps:8.1f} req/s {mbps:8.1f} MB/s  p50 {res.pct(50):7.2f} ms  "
                      f"p99 {res.pct(99):7.2f} ms | same bytes as plain HTTP {floor:8.1f} MB/s | "
                      f"ratio {mbps / floor:.2f}")
            peak = rss_peak_kb(proc.pid)
            print(f"server RSS: {base_rss / 1024:.0f} MB at start, peak {peak / 1024:.0f} MB after the 20 MB "
                  f"retrieves: growth {(peak - base_rss) / 1024:.0f} MB = {(peak - base_rss) * 1024 / (20 << 20):.2f}x "
                  "the document size")
        finally:
            proc.terminate()
            proc.wait(10)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ingest", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=5.0)
    args = ap.parse_args()
    bench_ingest(args.ingest)
    bench_retrieve(args.duration)


if __name__ == "__main__":
    main()
