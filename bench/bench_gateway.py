"""Responding-gateway benchmark: ITI-38 FindDocuments with signed SAML, over HTTP, concurrent clients.

    python -m bench.bench_gateway [--requests 4000] [--concurrency 32] [--workers 2] [--runs 3]
    python -m bench.bench_gateway --database-url postgresql://... --reset-database

Every figure is printed beside its floor, measured in the same run against the same data:

* full verification / unsigned: every request carries a new assertion (its signature verified
  every time) against a node started with XDS_INSECURE_NO_GATEWAY_SECURITY (no WS-Security at all);
* cached / unsigned: one assertion reused with a fresh signed Timestamp per message (the
  assertion's verification is cached by digest; the Timestamp signature, replay check, consent and
  audit still run per message);
* 2 workers / 1 worker, full verification, ``--runs`` times (order alternated run to run), with the
  split of the keep-alive connections over the workers.

Each line also gives the server's CPU time per request (all its processes, from /proc), which moves
far less than throughput when other work shares the machine. Every message is built and signed
before the runs (a message can be sent only once: replays are refused), so the client's signing
cost is not in the figures. SQLite in a fresh data directory unless ``--database-url`` names a
database (it must be empty, or ``--reset-database`` lets the bench drop the node's tables there).

:func:`issue14_rows` returns the issue's target rows (measure, figure, target) for a combined table.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.loadgen import LoadResult, http_post, run_load
from bench.procnet import connection_split, descendants
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


# --- the node under test ----------------------------------------------------------------------
def prepare_database(url: str, reset: bool) -> None:
    """An external database must hold no node tables (or the caller allows dropping them)."""
    from sqlalchemy import inspect

    from xds_node.db import make_test_engine
    from xds_node.migrations import target_metadata  # every table, the console's included

    metadata = target_metadata()

    engine = make_test_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        tables = inspect(engine).get_table_names()
        if tables and not reset:
            raise SystemExit(f"{len(tables)} tables already in {url.split('@')[-1]}: pass --reset-database "
                             "to let the bench drop the node's tables there")
        metadata.drop_all(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
    finally:
        engine.dispose()


def seed(data: Path, database_url: str = "") -> None:
    from xds_node.node import Node

    init_keys(load_settings(env={}, data_dir=data))
    node = Node(load_settings(env={}, data_dir=data, database_url=database_url))
    for p in range(PATIENTS):
        node.registry.register(f.submission(f.patient(p), DOCS))
        node.consent_store.grant(f.patient(p), source="bench")
    node.close()


def serve(data: Path, port: int, workers: int, insecure: bool, database_url: str = "",
          probe: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "XDS_DATA_DIR": str(data)}
    if probe is not None:  # see bench/tailprobe: GC passes and database call times, per process
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "bench" / "tailprobe"), str(ROOT),
                                             env.get("PYTHONPATH", "")])
        env["XDS_TAILPROBE_DIR"] = str(probe)
    if database_url:
        env["XDS_DATABASE_URL"] = database_url
    if insecure:
        env["XDS_INSECURE_NO_GATEWAY_SECURITY"] = "true"
    proc = subprocess.Popen([sys.executable, "-m", "xds_node.cli", "serve", "--port", str(port), "--workers",
                             str(workers)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    answered = 0
    while time.monotonic() < deadline:
        try:
            # each probe is a new connection, which the kernel hashes to one worker's socket: 8 in a
            # row answered within a second each means every worker is up (a late one stalls a probe)
            answered = answered + 1 if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200 \
                else 0
            if answered >= (1 if workers == 1 else 8):
                return proc
        except httpx.HTTPError:
            answered = 0
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not start")


def _cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of ``pids`` (Linux /proc; 0 elsewhere)."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / tick


# --- messages ---------------------------------------------------------------------------------
def query(n: int):
    return rim.write_adhoc_query_request(StoredQuery(query_id=v.StoredQueryId.FIND_DOCUMENTS, slots={
        "$XDSDocumentEntryPatientId": [[f"'{f.patient(n % PATIENTS)}'"]],
        "$XDSDocumentEntryStatus": [["('Approved')"]]}))


def messages(port: int, n: int, headers: Callable[[int], object] | None) -> list[bytes]:
    out = []
    for i in range(n):
        payload, ct, _ = build_request(v.Action.ITI38, query(i), to=f"http://127.0.0.1:{port}/xca/query",
                                       headers=[headers(i)] if headers else [])
        out.append(http_post("127.0.0.1", port, "/xca/query", payload, ct))
    return out


class Supply:
    """Signed messages made on demand, each handed out once (the node refuses a replay)."""

    def __init__(self, data: Path, port: int, n: int) -> None:
        self.port, self.n = port, n
        self.req = Requester.demo_partner(data / "keys")
        issuer = self.req.cert.subject.rfc4514_string()  # the partner checks the Issuer is its certificate
        self.assertion = sign_assertion(unsigned_assertion(self.req.ctx, self.req.cert, issuer=issuer,
                                                           lifetime=dt.timedelta(hours=1)), self.req.key, self.req.cert)

    def unsigned(self) -> list[bytes]:
        return messages(self.port, self.n, None)

    def fresh(self) -> list[bytes]:
        return messages(self.port, self.n, lambda i: self.req.header())

    def reused(self) -> list[bytes]:
        return messages(self.port, self.n, lambda i: build_security_header(self.assertion, self.req.key,
                                                                            self.req.cert))


# --- one measured run -------------------------------------------------------------------------
@dataclass
class Run:
    name: str
    workers: int
    load: LoadResult
    cpu_ms: float  # server CPU per request
    split: list[int] | None = field(default=None)

    @property
    def rps(self) -> float:
        return self.load.rps

    def line(self) -> str:
        bad = {k: c for k, c in self.load.statuses.items() if k != 200}
        split = f"  connections per worker {self.split}" if self.split and self.workers > 1 else ""
        return (f"ITI-38 {self.name:24} {self.workers}w {self.load.summary()}  server CPU {self.cpu_ms:.2f} ms/req"
                + split + (f"  non-200: {bad}" if bad else ""))


def measure(name: str, data: Path, port: int, workers: int, msgs: list[bytes], concurrency: int, *,
            insecure: bool = False, database_url: str = "", probe: Path | None = None) -> Run:
    proc = serve(data, port, workers, insecure, database_url, probe)
    window = [0.0, 0.0]
    split: list[int] | None = None
    try:
        pids = descendants(proc.pid)
        cpu0 = _cpu_seconds(pids)
        it = iter(msgs)
        sent = [0]

        def next_message(_rng) -> bytes:
            sent[0] += 1
            return next(it)

        async def load() -> LoadResult:
            async def sample() -> None:  # the connection split, once every client is connected
                nonlocal split
                await asyncio.sleep(1.0)
                split = await asyncio.to_thread(connection_split, proc.pid, port)

            sampler = asyncio.create_task(sample())
            window[0] = time.time() + 0.5
            # the first half second (connections, caches, first assertions) is warmup, as in the other benches
            result = await run_load("127.0.0.1", port, next_message, concurrency=concurrency,
                                    duration=600, warmup=0.5)
            window[1] = time.time()
            sampler.cancel()
            return result

        res = asyncio.run(load())
        cpu = _cpu_seconds(pids) - cpu0
    finally:
        proc.terminate()
        proc.wait(15)
    run = Run(name, workers, res, cpu / max(sent[0], 1) * 1000, split)
    print(run.line(), flush=True)
    if probe is not None:
        print(tail_breakdown(probe, *window), flush=True)
    return run


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))] if values else 0.0


def tail_breakdown(probe: Path, start: float, end: float) -> str:
    """What the probed server processes spent in garbage collection and in database calls (on
    SQLite these run on the event loop: a wait for the write lock stalls every request queued on
    that worker) during the measured window."""
    import json

    lines = [f"  tail breakdown over the {end - start:.1f} s measured:"]
    for path in sorted(probe.glob("probe-*.json")):
        stats = json.loads(path.read_text())
        db = [(kind, ms) for kind, ms, t in stats["db"] if start <= t <= end]
        gcs = [(gen, ms) for gen, ms, t in stats["gc"] if start <= t <= end]
        if not db and not gcs:
            continue
        slow = [ms for _, ms in db if ms > 5]
        parts = [f"    process {stats['pid']}: GC passes {len(gcs)} ({sum(ms for _, ms in gcs):.0f} ms, "
                 f"longest {max((ms for _, ms in gcs), default=0):.1f} ms)"]
        parts.append(f"database calls {len(db)}, {sum(ms for _, ms in db):.0f} ms = "
                     f"{sum(ms for _, ms in db) / 10 / max(end - start, 1e-9):.0f} % of the window")
        for kind in ("round_on_loop", "commit", "execute", "executemany"):
            times = [ms for k, ms in db if k == kind]
            if times:
                parts.append(f"{kind} p50 {_pct(times, 50):.2f} / p99 {_pct(times, 99):.1f} / max {max(times):.0f} ms")
        parts.append(f"calls over 5 ms: {len(slow)} ({sum(slow):.0f} ms)")
        lines.append("; ".join(parts))
    return "\n".join(lines)


# --- the issue's table ------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=4000, help="messages per run")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2, help="workers for the ratio rows")
    ap.add_argument("--runs", type=int, default=3, help="2 workers / 1 worker comparisons")
    ap.add_argument("--database-url", default="", help="run on this database (e.g. PostgreSQL) instead of SQLite")
    ap.add_argument("--reset-database", action="store_true", help="drop the node's tables in --database-url first")
    ap.add_argument("--breakdown", action="store_true",
                    help="also probe the servers (GC passes, database call times) and print where the tail goes")
    return ap.parse_args(argv)


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min) / {five:.1f} (5 min) on {os.cpu_count()} cores"


def issue14_rows(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """Run the benchmark; return the issue's rows as (measure, figure, target), figures beside their
    floors from the same run."""
    db = "PostgreSQL" if args.database_url.startswith("postgres") else ("SQLite" if not args.database_url
                                                                        else "the given database")
    print(f"ITI-38 FindDocuments, {args.concurrency} clients, {db}; {_load()}", flush=True)
    data = Path(tempfile.mkdtemp(prefix="xds-bench-gw-"))
    try:
        if args.database_url:
            prepare_database(args.database_url, args.reset_database)
        seed(data, args.database_url)
        port = 30000 + os.getpid() % 20000
        supply = Supply(data, port, args.requests)
        t0 = time.perf_counter()
        sets = {"unsigned": supply.unsigned(), "full": supply.fresh(), "cached": supply.reused()}
        print(f"(client side, not in the figures: {len(sets) * args.requests} messages signed in "
              f"{time.perf_counter() - t0:.0f} s)", flush=True)

        def run(name: str, workers: int, msgs: list[bytes], insecure: bool = False) -> Run:
            probe = Path(tempfile.mkdtemp(prefix="probe-", dir=data)) if getattr(args, "breakdown", False) else None
            return measure(name, data, port, workers, msgs, args.concurrency, insecure=insecure,
                           database_url=args.database_url, probe=probe)

        floor = run("unsigned (security off)", args.workers, sets["unsigned"], insecure=True)
        full = run("full verification", args.workers, sets["full"])
        cached = run("cached assertion", args.workers, sets["cached"])
        scale: list[tuple[Run, Run]] = []
        for i in range(args.runs):
            order = (1, 2) if i % 2 == 0 else (2, 1)
            pair = {w: run("full verification", w, supply.fresh()) for w in order}
            scale.append((pair[2], pair[1]))
        print(f"done; {_load()}", flush=True)
    finally:
        shutil.rmtree(data, ignore_errors=True)

    def ratio(a: Run, b: Run) -> str:
        # the CPU ratio is what throughput would be where the server has the cores to itself
        return (f"{a.rps / b.rps:.2f}x ({a.rps:,.0f} / {b.rps:,.0f} req/s; by server CPU per request "
                f"{b.cpu_ms / a.cpu_ms:.2f}x)")

    w = f"{args.workers} worker{'s' if args.workers > 1 else ''}"
    full_target = ">= 0.6x, p99 <= 40 ms" if db == "SQLite" else ">= 0.5x of its own unsigned floor"
    return [
        (f"ITI-38 full verification / unsigned, {args.concurrency} clients, {db}, {w}",
         f"{ratio(full, floor)}, p50 {full.load.pct(50):.1f} / p99 {full.load.pct(99):.1f} ms "
         f"(unsigned p50 {floor.load.pct(50):.1f} / p99 {floor.load.pct(99):.1f} ms); server CPU "
         f"{full.cpu_ms:.2f} vs {floor.cpu_ms:.2f} ms/req", full_target),
        (f"ITI-38 cached assertion / unsigned, {db}, {w}",
         f"{ratio(cached, floor)}, p50 {cached.load.pct(50):.1f} / p99 {cached.load.pct(99):.1f} ms; server CPU "
         f"{cached.cpu_ms:.2f} ms/req", ">= 0.8x"),
        (f"2 workers / 1 worker, ITI-38 full verification, {db} ({args.runs} runs)",
         ", ".join(f"{two.rps / one.rps:.2f}x" for two, one in scale) + "; connections per worker "
         + " ".join(str(two.split) for two, _ in scale), f">= 1.4x, in every one of {args.runs} runs"),
    ]


def main(argv: Sequence[str] | None = None) -> None:
    rows = issue14_rows(parse_args(argv))
    print()
    print("| measure | figure | target |")
    print("|---|---|---|")
    for measure_, figure, target in rows:
        print(f"| {measure_} | {figure} | {target} |")


if __name__ == "__main__":
    main()
