"""Registry benchmark: registration rate, then ITI-18 FindDocuments over HTTP under load.

    python -m bench.bench_registry                    # 10k and 100k documents, 32 clients
    python -m bench.bench_registry --docs 2000 --duration 5
    python -m bench.bench_registry --docs 10000 --baseline-tree /tmp/base   # this tree vs another checkout

For each registry size it registers synthetic documents (10 per patient, one ITI-42-style
submission per patient, through the same Registry.register the ITI-42 endpoint calls), starts
``xds-node serve`` on 127.0.0.1 and drives FindDocuments (LeafClass, 10 documents per answer)
with closed-loop concurrent clients. In the same run it measures the floor: bare lxml parse +
serialize of the same request and response bytes, and prints the ratio.

With ``--baseline-tree PATH`` it seeds and serves this checkout and the other one side by side
(each with its own code) and alternates FindDocuments windows between them (bench.abtree):
registration rate, throughput, latency and server CPU per request, each with its ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from lxml import etree

from bench.loadgen import http_post, run_load
from tests import factories as f
from xds_node.config import load_settings
from xds_node.demo import find_documents_envelope

ROOT = Path(__file__).resolve().parents[1]
DOCS_PER_PATIENT = 10


def seed(data_dir: Path, n_docs: int) -> tuple[float, int]:
    """Register n_docs documents; returns (documents per second, number of patients)."""
    from xds_node.node import Node

    node = Node(load_settings(env={}, data_dir=data_dir))
    patients = max(1, n_docs // DOCS_PER_PATIENT)
    t0 = time.perf_counter()
    for p in range(patients):
        sub = f.submission(f.patient(p), DOCS_PER_PATIENT)
        resp = node.registry.register(sub)
        if resp.status.rsplit(":", 1)[1] != "Success":
            raise SystemExit(f"seed failed: {resp.errors}")
    rate = patients * DOCS_PER_PATIENT / (time.perf_counter() - t0)
    node.close()
    return rate, patients


def start_server(data_dir: Path, port: int, workers: int, tree: Path = ROOT) -> subprocess.Popen:
    env = {**os.environ, "XDS_DATA_DIR": str(data_dir)}
    if tree != ROOT:
        env["PYTHONPATH"] = str(tree)
    proc = subprocess.Popen([sys.executable, "-m", "xds_node.cli", "serve", "--host", "127.0.0.1", "--port",
                             str(port), "--workers", str(workers)], cwd=tree, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not start")


def request_bytes(port: int, patient_no: int) -> bytes:
    url = f"http://127.0.0.1:{port}/xds/registry"
    env = find_documents_envelope(url, f.patient(patient_no)).encode()
    return http_post("127.0.0.1", port, "/xds/registry", env, "application/soap+xml; charset=UTF-8")


def floor_us(request: bytes, response: bytes, rounds: int = 2000) -> float:
    """Bare lxml parse + serialize of one request and one response, in microseconds."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    t0 = time.perf_counter()
    for _ in range(rounds):
        etree.tostring(etree.fromstring(request, parser), encoding="UTF-8")
        etree.tostring(etree.fromstring(response, parser), encoding="UTF-8")
    return (time.perf_counter() - t0) / rounds * 1e6


def bench_size(n_docs: int, args) -> dict:
    cached = Path(args.data_cache) / f"registry-{n_docs}" if args.data_cache else None
    work = cached or Path(tempfile.mkdtemp(prefix=f"xds-bench-{n_docs}-"))
    try:
        if cached is not None and (cached / "registry.db").exists():
            rate, patients = float("nan"), n_docs // DOCS_PER_PATIENT  # reuse: registration not re-measured
        else:
            rate, patients = seed(work, n_docs)
        print(f"\n== {n_docs} documents ({patients} patients) ==")
        print(f"registration: {rate:8.1f} documents/s (ITI-42 Registry.register, 10 documents per submission)")
        port = f.uid().__hash__() % 20000 + 30000
        proc = start_server(work, port, args.workers)
        try:
            # one real answer for the floor measurement and a sanity check
            env = find_documents_envelope(f"http://127.0.0.1:{port}/xds/registry", f.patient(0))
            reply = httpx.post(f"http://127.0.0.1:{port}/xds/registry", content=env.encode(),
                               headers={"Content-Type": "application/soap+xml"})
            assert reply.status_code == 200 and reply.content.count(b"<rim:ExtrinsicObject") == DOCS_PER_PATIENT
            requests = [request_bytes(port, i) for i in range(min(patients, 5000))]
            result = asyncio.run(run_load("127.0.0.1", port, lambda rng: rng.choice(requests),
                                          concurrency=args.concurrency, duration=args.duration))
        finally:
            proc.terminate()
            proc.wait(10)
        body = env.encode()
        fl = floor_us(body, reply.content)
        print(f"FindDocuments over HTTP, {args.concurrency} clients, {args.workers} workers: {result.summary()}")
        print(f"floor (lxml parse+serialize of the same request and response): {fl:7.1f} us = "
              f"{1e6 / fl:8.1f} ops/s per core; measured/floor = {result.rps / (1e6 / fl):.2f}")
        return {"docs": n_docs, "rps": result.rps, "p50": result.pct(50), "p99": result.pct(99),
                "register_rate": rate, "floor_us": fl}
    finally:
        if cached is None:
            shutil.rmtree(work, ignore_errors=True)


#: Registers patients [lo, hi) as :func:`seed` does, in whichever tree runs it; prints documents/s.
_REGISTER_CHUNK = """
import time
from pathlib import Path
from tests import factories as f
from xds_node.config import load_settings
from xds_node.node import Node
import itertools
f._seq = itertools.count(10_000_000 + {lo} * 100)  # uniqueIds never repeat across chunk processes
node = Node(load_settings(env={{}}, data_dir=Path({data!r})))
subs = [f.submission(f.patient(p), {per}) for p in range({lo}, {hi})]
t0, c0 = time.perf_counter(), time.process_time()
for sub in subs:
    assert node.registry.register(sub).status.endswith("Success")
print(len(subs) * {per} / (time.perf_counter() - t0), time.process_time() - c0)
node.close()
"""


def compare_trees(n_docs: int, args) -> None:
    """This checkout against ``args.baseline_tree``: both seeded and served, load alternating."""
    from bench import abtree

    base = Path(args.baseline_tree).resolve()
    abtree.check_tree(base)
    trees = {"this": ROOT, "baseline": base}
    work = {k: Path(tempfile.mkdtemp(prefix=f"xds-bench-ab-{k}-")) for k in trees}
    procs: dict[str, subprocess.Popen] = {}
    try:
        print(f"\n== {n_docs} documents: this tree {ROOT} vs baseline {base} (load average {abtree.load_average()}) ==")
        # each tree registers with its own code, in chunks alternating between the trees
        patients = max(1, n_docs // DOCS_PER_PATIENT)
        chunks = max(1, min(args.rounds, patients))
        rates: dict[str, list[float]] = {k: [] for k in trees}
        cpu: dict[str, list[float]] = {k: [] for k in trees}
        for c in range(chunks):
            lo, hi = c * patients // chunks, (c + 1) * patients // chunks
            for k, tree in trees.items():
                rate, used = abtree.run_in_tree(tree, _REGISTER_CHUNK.format(
                    data=str(work[k]), lo=lo, hi=hi, per=DOCS_PER_PATIENT)).split()
                rates[k].append(float(rate))
                cpu[k].append(float(used) / ((hi - lo) * DOCS_PER_PATIENT) * 1e6)
        med = statistics.median
        rate_ratio = med(a / b for a, b in zip(rates["this"], rates["baseline"], strict=True))
        print(f"registration: this {med(rates['this']):8.1f} documents/s, baseline {med(rates['baseline']):8.1f} "
              f"documents/s, this/baseline x{rate_ratio:.2f}; "
              f"CPU per document {med(cpu['this']):.0f} / {med(cpu['baseline']):.0f} us, "
              f"x{med(a / b for a, b in zip(cpu['this'], cpu['baseline'], strict=True)):.2f} "
              f"(medians of {chunks} alternating chunks)")
        ports = {k: abtree.free_port() for k in trees}
        for k, tree in trees.items():
            procs[k] = start_server(work[k], ports[k], args.workers, tree)
        patients = max(1, n_docs // DOCS_PER_PATIENT)
        reqs = {k: [request_bytes(ports[k], i) for i in range(min(patients, 5000))] for k in trees}
        runs = [(k, lambda k=k: abtree.window(ports[k], procs[k].pid, lambda rng, k=k: rng.choice(reqs[k]),
                                              concurrency=args.concurrency, duration=args.duration))
                for k in trees]
        series = abtree.alternate(runs, args.rounds)
        for k in trees:
            print(f"FindDocuments {k:8}: {abtree.describe(series[k])}")
        print(f"FindDocuments this/baseline: throughput x{abtree.pair_ratio(series['this'], series['baseline']):.2f}, "
              f"CPU per request x{abtree.pair_ratio(series['this'], series['baseline'], 'cpu_us'):.2f} "
              f"(medians of {args.rounds} alternating windows of {args.duration:g} s; "
              f"load average {abtree.load_average()})")
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(10)
        for w in work.values():
            shutil.rmtree(w, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", default="10000,100000")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data-cache", help="keep seeded databases here and reuse them (skips registration)")
    ap.add_argument("--baseline-tree", help="another checkout (e.g. a git worktree of an older commit): "
                    "run both side by side, load alternating, and print this/baseline ratios")
    ap.add_argument("--rounds", type=int, default=4, help="alternating windows per tree with --baseline-tree")
    args = ap.parse_args()
    if args.baseline_tree:
        for n in args.docs.split(","):
            compare_trees(int(n), args)
        return
    results = [bench_size(int(n), args) for n in args.docs.split(",")]
    if len(results) > 1:
        small, big = results[0], results[-1]
        print(f"\nlatency growth {small['docs']} -> {big['docs']} documents: p50 x{big['p50'] / small['p50']:.2f}, "
              f"p99 x{big['p99'] / small['p99']:.2f}; throughput x{big['rps'] / small['rps']:.2f}")


if __name__ == "__main__":
    main()
