"""Audit group commit: rows/s and rows per transaction on SQLite and PostgreSQL (not a test).

    python -m bench.bench_audit [--seconds 3] [--concurrency 32] [--database-url postgresql://...]

``concurrency`` coroutines on one event loop each record an event and wait for its commit, over
and over, as requests do (``AuditLog.record_async``). The floor beside it, in the same run: the
same rows committed one transaction each (``AuditLog.record``), as a request did before group
commit. Each figure is the rate at which rows become committed, so every one could have answered.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from xds_node.audit.events import AuditEvent
from xds_node.audit.store import AuditLog
from xds_node.db import make_engine


def _event(i: int) -> AuditEvent:
    return AuditEvent(transaction="ITI-18", outcome="success", caller_kind="anonymous",
                      patient_id=f"p{i % 1000}^^^&1.2.3&ISO", document_ids=[f"1.2.3.{i}"],
                      message_id=f"urn:uuid:{i:032d}", endpoint="/xds/registry", remote_address="127.0.0.1")


def grouped(log: AuditLog, seconds: float, concurrency: int) -> tuple[float, float]:
    async def run() -> int:
        stop = time.perf_counter() + seconds
        done = 0

        async def client(k: int) -> None:
            nonlocal done
            i = k
            while time.perf_counter() < stop:
                await log.record_async(_event(i))
                done += 1
                i += concurrency

        await asyncio.gather(*(client(k) for k in range(concurrency)))
        return done

    before = log.rounds
    t0 = time.perf_counter()
    n = asyncio.run(run())
    dt = time.perf_counter() - t0
    return n / dt, n / max(1, log.rounds - before)


def one_by_one(log: AuditLog, seconds: float) -> float:
    stop = time.perf_counter() + seconds
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() < stop:
        log.record(_event(n))
        n += 1
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--database-url", action="append", default=[],
                    help="a database to measure (repeatable; default: a temporary SQLite file)")
    args = ap.parse_args()
    urls = args.database_url or [f"sqlite:///{Path(tempfile.mkdtemp(prefix='xds-bench-audit-')) / 'audit.db'}"]
    for url in urls:
        engine = make_engine(url)
        log = AuditLog(engine)
        log.create_schema()
        floor = one_by_one(log, args.seconds)
        rate, per_tx = grouped(log, args.seconds, args.concurrency)
        print(f"{engine.dialect.name:10}: group commit {rate:8.0f} rows/s ({per_tx:5.1f} rows per transaction, "
              f"{args.concurrency} waiting requests) | one transaction per row {floor:8.0f} rows/s | "
              f"ratio {rate / floor:.1f}")
        engine.dispose()


if __name__ == "__main__":
    main()
