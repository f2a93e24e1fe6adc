"""PostgreSQL read path: the ways a worker can run FindDocuments, measured side by side (not a test).

    python -m bench.bench_pg_reads --database-url postgresql://postgres@127.0.0.1/bench

Needs a database ``bench.bench_registry --database-url`` seeded. One event loop (as one worker)
runs ``--concurrency`` closed-loop tasks, each issuing the FindDocuments SELECT the registry runs
for a random seeded patient, through:

- ``pooled-tx``: the engine the node used for every read before issue 14 (``pool_pre_ping``, so a
  ping per checkout, and BEGIN ... ROLLBACK around each read), on a worker thread per query;
- ``autocommit-thread``: the read engine (:func:`xds_node.db.make_read_engine`: autocommit,
  read-only session, no ping, no reset), on a worker thread per query;
- ``autocommit-inline``: the same engine called on the event loop itself (no thread hand-off; every
  query blocks the loop, so concurrency is one);
- ``async-pool``: psycopg 3's ``AsyncConnectionPool`` of autocommit connections on the loop.

It prints queries per second, mean/p99 latency and the process CPU per query, each as a ratio of
the first mode's figures from the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time

from bench.bench_registry import DOCS_PER_PATIENT, seeded_size
from tests import factories as f
from xds_node.db import Sql, make_engine, make_read_engine


def find_documents_sql(paramstyle: str, patient: str) -> Sql:
    """The SELECT QueryRunner.find_documents builds for a plain FindDocuments (Approved, stable)."""
    sql = Sql(paramstyle)
    sql += "SELECT id, patient_id, rim, status FROM xds_document WHERE patient_id = " + sql.p(patient)
    sql += " AND status IN " + sql.in_(["urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"])
    sql += " AND object_type IN " + sql.in_(["urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"])
    sql += " LIMIT 5001"
    return sql


def run_sync(engine, sql: Sql) -> int:
    with engine.connect() as conn:
        cursor = conn.connection.cursor()
        try:
            cursor.execute(sql.text, sql.bound)
            return len(cursor.fetchall())
        finally:
            cursor.close()


async def drive(query, *, concurrency: int, duration: float, patients: int) -> dict:
    """Closed loop: ``concurrency`` tasks each awaiting ``query(patient)`` back to back."""
    latencies: list[float] = []
    stop = time.perf_counter() + duration

    async def task(seed: int) -> None:
        rng = random.Random(seed)
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            n = await query(f.patient(rng.randrange(patients)))
            latencies.append((time.perf_counter() - t0) * 1000)
            assert n == DOCS_PER_PATIENT, n

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(task(i) for i in range(concurrency)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    latencies.sort()
    return {"qps": len(latencies) / wall, "mean": statistics.fmean(latencies),
            "p99": latencies[int(0.99 * (len(latencies) - 1))], "cpu_us": cpu / len(latencies) * 1e6}


async def main_async(args) -> None:
    try:
        from psycopg_pool import AsyncConnectionPool
    except ImportError:  # not a dependency of the node (measured, not adopted): pip install psycopg-pool
        AsyncConnectionPool = None
        print("psycopg-pool is not installed: the async-pool mode is skipped (pip install psycopg-pool)")

    url = args.database_url.replace("postgresql+psycopg://", "postgresql://")
    patients = (seeded_size(url, reset=False) or 0) // DOCS_PER_PATIENT
    if not patients:
        raise SystemExit(f"{url} is not seeded: run bench.bench_registry --database-url {url} first")
    writer = make_engine(url)
    reader = make_read_engine(writer)
    style = writer.dialect.paramstyle

    async def pooled_tx(pid: str) -> int:
        return await asyncio.to_thread(run_sync, writer, find_documents_sql(style, pid))

    async def autocommit_thread(pid: str) -> int:
        return await asyncio.to_thread(run_sync, reader, find_documents_sql(style, pid))

    async def autocommit_inline(pid: str) -> int:
        return run_sync(reader, find_documents_sql(style, pid))

    pool = None
    if AsyncConnectionPool is not None:
        pool = AsyncConnectionPool(url, min_size=args.pool, max_size=args.pool, open=False,
                                   kwargs={"autocommit": True}, check=None)
        await pool.open(wait=True)

    async def async_pool(pid: str) -> int:
        sql = find_documents_sql("pyformat", pid)
        async with pool.connection() as conn:
            cur = await conn.execute(sql.text, sql.bound)
            return len(await cur.fetchall())

    modes = [("pooled-tx", pooled_tx), ("autocommit-thread", autocommit_thread),
             ("autocommit-inline", autocommit_inline)] + ([("async-pool", async_pool)] if pool is not None else [])
    results: dict[str, list[dict]] = {name: [] for name, _ in modes}
    for _ in range(args.rounds):  # interleaved rounds: machine noise hits every mode alike
        for name, query in modes:
            await drive(query, concurrency=args.concurrency, duration=0.5, patients=patients)  # warm up
            results[name].append(await drive(query, concurrency=args.concurrency, duration=args.duration,
                                             patients=patients))
    if pool is not None:
        await pool.close()
    writer.dispose()
    reader.dispose()

    best = {name: max(runs, key=lambda r: r["qps"]) for name, runs in results.items()}
    base = best["pooled-tx"]
    print(f"FindDocuments SELECT, {args.concurrency} tasks on one event loop, best of {args.rounds} rounds "
          f"of {args.duration:.0f} s ({patients} patients)")
    print(f"{'mode':<18} {'queries/s':>10} {'mean ms':>8} {'p99 ms':>8} {'CPU us/q':>9} | {'x qps':>6} {'x CPU':>6}")
    for name, r in best.items():
        print(f"{name:<18} {r['qps']:10.0f} {r['mean']:8.2f} {r['p99']:8.2f} {r['cpu_us']:9.0f} | "
              f"{r['qps'] / base['qps']:6.2f} {r['cpu_us'] / base['cpu_us']:6.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--database-url", required=True)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pool", type=int, default=4, help="connections of the async pool")
    args = ap.parse_args()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
