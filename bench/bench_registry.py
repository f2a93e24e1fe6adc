"""Registry benchmark: registration rate, then ITI-18 FindDocuments over HTTP under load.

    python -m bench.bench_registry                    # 10k and 100k documents, 32 clients
    python -m bench.bench_registry --docs 2000 --duration 5
    python -m bench.bench_registry --database-url postgresql://postgres@127.0.0.1/bench   # PostgreSQL beside SQLite
    python -m bench.bench_registry --docs 10000 --baseline-tree /tmp/base   # this tree vs another checkout

For each registry size it registers synthetic documents (10 per patient, one ITI-42-style
submission per patient, through the same Registry.register the ITI-42 endpoint calls), starts
``xds-node serve`` on 127.0.0.1 and drives FindDocuments (LeafClass, 10 documents per answer)
with closed-loop concurrent clients. In the same run it measures the floor: bare lxml parse +
serialize of the same request and response bytes, and prints the ratio.

With ``--database-url`` every size is measured twice in the same run, on SQLite (the baseline) and
on that database, and printed side by side with the ratio. The database must be a scratch one:
the bench drops the node's tables in it (it refuses a database holding node tables it did not seed
itself unless ``--reset-database`` is given) and reuses what it seeded when the size matches.
``issue14_rows(args)`` returns the rows of the issue-14 table for a lead's combined report.

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


#: Marks a database this bench seeded (and may therefore empty again): the number of documents.
MARKER = "bench_registry_seed"


def seed(data_dir: Path, n_docs: int, database_url: str = "") -> tuple[float, int]:
    """Register n_docs documents; returns (documents per second, number of patients)."""
    from xds_node.node import Node

    node = Node(load_settings(env={}, data_dir=data_dir, database_url=database_url or None))
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


def seeded_size(url: str, *, reset: bool) -> int | None:
    """How many documents this bench seeded into the database at ``url`` (None: nothing usable).

    A database holding node tables without the bench's marker is refused unless ``reset``: the
    bench would otherwise drop somebody's registry.
    """
    from sqlalchemy import inspect

    from xds_node.db import make_test_engine

    engine = make_test_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        names = set(inspect(engine).get_table_names())
        if MARKER in names:
            with engine.connect() as conn:
                return conn.exec_driver_sql(f"SELECT n_docs FROM {MARKER}").scalar()
        if names - {"alembic_version"} and not reset:
            raise SystemExit(f"{url}: holds tables this bench did not seed; give a scratch database "
                             "or --reset-database to drop the node's tables there")
        return None
    finally:
        engine.dispose()


def empty_database(url: str) -> None:
    """Drop every node table (and the bench's marker) so the next seed starts from nothing."""
    from xds_node.db import make_test_engine
    from xds_node.migrations import target_metadata  # every table, the console's included

    metadata = target_metadata()

    engine = make_test_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        metadata.drop_all(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {MARKER}")
    finally:
        engine.dispose()


def mark_seeded(url: str, n_docs: int) -> None:
    from xds_node.db import make_test_engine

    engine = make_test_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE TABLE {MARKER} (n_docs INTEGER NOT NULL)")
            conn.exec_driver_sql(f"INSERT INTO {MARKER} VALUES ({int(n_docs)})")
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")  # fresh statistics, as a long-running registry has
    finally:
        engine.dispose()


def start_server(data_dir: Path, port: int, workers: int, database_url: str = "",
                 tree: Path = ROOT, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """``xds-node serve`` from ``tree``, returned once /health answers (other benches use it too)."""
    env = {**os.environ, "XDS_DATA_DIR": str(data_dir), "XDS_DATABASE_URL": database_url, **(extra_env or {})}
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


def bench_size(n_docs: int, args, database_url: str = "") -> dict:
    """One registry size on one database: SQLite in the data directory, or ``database_url``."""
    label = "PostgreSQL" if database_url else "SQLite"
    cached = Path(args.data_cache) / f"registry-{n_docs}" if args.data_cache and not database_url else None
    work = cached or Path(tempfile.mkdtemp(prefix=f"xds-bench-{n_docs}-"))
    try:
        patients = n_docs // DOCS_PER_PATIENT
        if database_url and seeded_size(database_url, reset=args.reset_database) == n_docs:
            rate = float("nan")  # reuse: registration not re-measured
        elif database_url:
            empty_database(database_url)
            rate, patients = seed(work, n_docs, database_url)
            mark_seeded(database_url, n_docs)
        elif cached is not None and (cached / "registry.db").exists():
            rate = float("nan")  # reuse: registration not re-measured
        else:
            rate, patients = seed(work, n_docs)
        print(f"\n== {n_docs} documents ({patients} patients), {label} ==")
        print(f"registration: {rate:8.1f} documents/s (ITI-42 Registry.register, 10 documents per submission)")
        port = free_port()
        proc = start_server(work, port, args.workers, database_url)
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
        return {"docs": n_docs, "db": label, "rps": result.rps, "p50": result.pct(50), "p99": result.pct(99),
                "register_rate": rate, "floor_us": fl, "errors": result.errors}
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
            procs[k] = start_server(work[k], ports[k], args.workers, tree=tree)
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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--docs", default="10000,100000")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data-cache", help="keep seeded SQLite databases here and reuse them (skips registration)")
    ap.add_argument("--database-url", default="",
                    help="also measure on this (scratch) PostgreSQL database, beside SQLite in the same run")
    ap.add_argument("--reset-database", action="store_true",
                    help="drop the node's tables in --database-url even if this bench did not seed them")
    ap.add_argument("--baseline-tree", help="another checkout (e.g. a git worktree of an older commit): "
                    "run both side by side, load alternating, and print this/baseline ratios")
    ap.add_argument("--rounds", type=int, default=4, help="alternating windows per tree with --baseline-tree")
    return ap.parse_args(argv)


def compare(args) -> list[tuple[dict, dict | None]]:
    """Each size on SQLite, then (with --database-url) on that database; side by side with the ratio."""
    pairs = []
    for n in args.docs.split(","):
        base = bench_size(int(n), args)
        other = bench_size(int(n), args, args.database_url) if args.database_url else None
        pairs.append((base, other))
    if args.database_url:
        print(f"\nFindDocuments, {args.concurrency} clients, {args.workers} workers: "
              "PostgreSQL beside SQLite (same run)")
        print(f"{'documents':>10} | {'SQLite req/s':>12} {'p50':>6} {'p99':>6} | {'PostgreSQL req/s':>16} {'p50':>6} "
              f"{'p99':>6} | {'PG/SQLite':>9}")
        for base, other in pairs:
            assert other is not None
            print(f"{base['docs']:>10} | {base['rps']:12.0f} {base['p50']:6.1f} {base['p99']:6.1f} | "
                  f"{other['rps']:16.0f} {other['p50']:6.1f} {other['p99']:6.1f} | {other['rps'] / base['rps']:8.2f}x")
    return pairs


def issue14_rows(args) -> list[tuple[str, str, str]]:
    """(measure, measured, target) rows for issue 14's table: FindDocuments on PostgreSQL against
    SQLite in the same run, at the largest size of ``args.docs`` (``args`` from :func:`parse_args`;
    without ``args.database_url`` there is nothing to compare and no row)."""
    if not args.database_url:
        return []
    base, other = compare(args)[-1]
    assert other is not None
    measured = (f"{other['rps'] / base['rps']:.2f}x ({other['rps']:,.0f} vs {base['rps']:,.0f} req/s), "
                f"p99 {other['p99']:.1f} ms (SQLite {base['p99']:.1f} ms)")
    return [(f"FindDocuments on PostgreSQL / on SQLite, same run, {base['docs']:,} docs, "
             f"{args.concurrency} clients, {args.workers} workers", measured, ">= 0.6x, p99 <= 25 ms")]


def main() -> None:
    args = parse_args()
    if args.baseline_tree:
        for n in args.docs.split(","):
            compare_trees(int(n), args)
        return
    pairs = compare(args)
    for i in (0, 1):
        results = [pair[i] for pair in pairs if pair[i] is not None]
        if len(results) > 1:
            small, big = results[0], results[-1]
            print(f"\n{big['db']}: latency growth {small['docs']} -> {big['docs']} documents: "
                  f"p50 x{big['p50'] / small['p50']:.2f}, p99 x{big['p99'] / small['p99']:.2f}; "
                  f"throughput x{big['rps'] / small['rps']:.2f}")


if __name__ == "__main__":
    main()
