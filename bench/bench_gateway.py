"""Responding-gateway benchmark: ITI-38 FindDocuments with signed SAML, over HTTP, concurrent clients.

    python -m bench.bench_gateway [--requests 2000] [--concurrency 32]

Three runs against `xds-node serve` (2 workers) on the same data, in the same session:
  * unsigned: a node started with XDS_INSECURE_NO_GATEWAY_SECURITY (the floor of the rest),
  * full verification: every request carries a new assertion (signature verified every time),
  * cached: one assertion reused with a fresh signed Timestamp per message (the assertion's
    verification is cached by digest until it expires; the per-message Timestamp signature,
    replay check and attribute rules still run).
Every message is built and signed before the run (a message can be sent only once: replays are
refused), so the client's signing cost is not in the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.loadgen import http_post, run_load
from tests import factories as f
from tests.responding.requester import Requester
from xds_node.admin import init_keys
from xds_node.config import load_settings
from xds_node.ebxml import rim
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import StoredQuery
from xds_node.security.saml import sign_assertion, unsigned_assertion
from xds_node.security.wss import build_security_header
from xds_node.soap.envelope import build_request

ROOT = Path(__file__).resolve().parents[1]
PATIENTS, DOCS = 500, 10


def seed(data: Path) -> None:
    from xds_node.node import Node

    init_keys(load_settings(env={}, data_dir=data))
    node = Node(load_settings(env={}, data_dir=data))
    for p in range(PATIENTS):
        node.registry.register(f.submission(f.patient(p), DOCS))
        node.consent_store.grant(f.patient(p), source="bench")
    node.close()


def serve(data: Path, port: int, workers: int, insecure: bool) -> subprocess.Popen:
    env = {**os.environ, "XDS_DATA_DIR": str(data)}
    if insecure:
        env["XDS_INSECURE_NO_GATEWAY_SECURITY"] = "true"
    proc = subprocess.Popen([sys.executable, "-m", "xds_node.cli", "serve", "--port", str(port), "--workers",
                             str(workers)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not start")


def query(n: int):
    return rim.write_adhoc_query_request(StoredQuery(query_id=v.StoredQueryId.FIND_DOCUMENTS, slots={
        "$XDSDocumentEntryPatientId": [[f"'{f.patient(n % PATIENTS)}'"]],
        "$XDSDocumentEntryStatus": [["('Approved')"]]}))


def messages(port: int, n: int, headers) -> list[bytes]:
    out = []
    for i in range(n):
        payload, ct, _ = build_request(v.Action.ITI38, query(i), to=f"http://127.0.0.1:{port}/xca/query",
                                       headers=[headers(i)] if headers else [])
        out.append(http_post("127.0.0.1", port, "/xca/query", payload, ct))
    return out


def run(port: int, msgs: list[bytes], concurrency: int):
    it = iter(msgs)
    # the first half second (connections, caches, first assertions) is warmup, as in the other benches
    return asyncio.run(run_load("127.0.0.1", port, lambda _rng: next(it), concurrency=concurrency, duration=600,
                                warmup=0.5))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    data = Path(tempfile.mkdtemp(prefix="xds-bench-gw-"))
    try:
        seed(data)
        req = Requester.demo_partner(data / "keys")
        port = 30000 + os.getpid() % 20000
        t0 = time.perf_counter()
        fresh = messages(port, args.requests, lambda i: req.header())
        sign_ms = (time.perf_counter() - t0) / args.requests * 1000
        issuer = req.cert.subject.rfc4514_string()  # the partner checks the Issuer is its certificate
        a = sign_assertion(unsigned_assertion(req.ctx, req.cert, issuer=issuer, lifetime=__import__(
            "datetime").timedelta(hours=1)), req.key, req.cert)
        t0 = time.perf_counter()
        reused = messages(port, args.requests, lambda i: build_security_header(a, req.key, req.cert))
        ts_ms = (time.perf_counter() - t0) / args.requests * 1000
        print(f"client side (not in the figures): new assertion + Timestamp {sign_ms:.2f} ms/message, "
              f"Timestamp only {ts_ms:.2f} ms/message")
        results = {}
        for name, insecure, msgs in (("unsigned (security off)", True, messages(port, args.requests, None)),
                                     ("full verification", False, fresh), ("cached assertion", False, reused)):
            proc = serve(data, port, args.workers, insecure)
            try:
                res = run(port, msgs, args.concurrency)
            finally:
                proc.terminate()
                proc.wait(10)
            results[name] = res
            bad = {k: c for k, c in res.statuses.items() if k != 200}
            print(f"ITI-38 {name:24} {res.summary()}" + (f"  non-200: {bad}" if bad else ""))
        base = results["unsigned (security off)"].rps
        for name in ("full verification", "cached assertion"):
            print(f"  {name}: {results[name].rps / base:.2f}x the unsigned throughput")
    finally:
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
