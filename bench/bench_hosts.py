"""Workers and hosts on PostgreSQL: ITI-38 with full SAML verification, 1, 2 and 4 workers, and two
node processes (two "hosts") sharing one database. Not a test.

    python -m bench.bench_hosts --database-url postgresql://postgres@127.0.0.1/bench [--requests 3000]

Every configuration serves the same seeded registry (500 patients x 10 documents, all opted in) from
the same PostgreSQL database; each process has its own data directory, the partners file is shared
(as hosts would share it). Each message carries a new signed assertion (verification every time) and
is built and signed before the run, so the client's signing is not in the figures; a message is
sent once (replays are refused, across processes too). The floor, measured in the same run, is the
same query unsigned (security off) on 2 workers; every line prints its ratio to that floor and to
one worker. For two processes the clients are split evenly between the two ports.

The database must be a scratch one (the node's tables are dropped there; see bench_registry).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.bench_registry import empty_database, free_port, mark_seeded, seeded_size, start_server
from bench.loadgen import LoadResult, http_post, run_load
from tests import factories as f
from tests.responding.requester import Requester
from xds_node.admin import init_keys
from xds_node.config import load_settings
from xds_node.ebxml import rim
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import StoredQuery
from xds_node.soap.envelope import build_request

ROOT = Path(__file__).resolve().parents[1]
PATIENTS, DOCS = 500, 10


def seed(data: Path, url: str, env: dict[str, str], *, reset: bool) -> None:
    """Keys and the shared partners file in ``data``; the registry and consents in the database."""
    init_keys(load_settings(env=env, data_dir=data))
    if seeded_size(url, reset=reset) == PATIENTS * DOCS:
        return
    from xds_node.node import Node

    empty_database(url)
    node = Node(load_settings(env=env, data_dir=data))
    for p in range(PATIENTS):
        node.registry.register(f.submission(f.patient(p), DOCS))
        node.consent_store.grant(f.patient(p), source="bench")
    node.close()
    mark_seeded(url, PATIENTS * DOCS)


def serve(data: Path, port: int, workers: int, env: dict[str, str], *, insecure: bool = False) -> subprocess.Popen:
    extra = {**env, **({"XDS_INSECURE_NO_GATEWAY_SECURITY": "true"} if insecure else {})}
    return start_server(data, port, workers, extra.get("XDS_DATABASE_URL", ""), extra_env=extra)


def query(n: int):
    return rim.write_adhoc_query_request(StoredQuery(query_id=v.StoredQueryId.FIND_DOCUMENTS, slots={
        "$XDSDocumentEntryPatientId": [[f"'{f.patient(n % PATIENTS)}'"]],
        "$XDSDocumentEntryStatus": [["('Approved')"]]}))


def messages(port: int, n: int, requester: Requester | None) -> list[bytes]:
    """``n`` ready-to-send ITI-38 requests, each with its own freshly signed assertion (or unsigned)."""
    out = []
    for i in range(n):
        headers = [requester.header()] if requester is not None else []
        payload, ct, _ = build_request(v.Action.ITI38, query(i), to=f"http://127.0.0.1:{port}/xca/query",
                                       headers=headers)
        out.append(http_post("127.0.0.1", port, "/xca/query", payload, ct))
    return out


async def load(targets: list[tuple[int, list[bytes]]], concurrency: int) -> LoadResult:
    """Closed-loop load on every port at once (clients split evenly); one combined result."""
    share = max(1, concurrency // len(targets))

    def supply(msgs: list[bytes]):
        it = iter(msgs)
        return lambda _rng: next(it)

    parts = await asyncio.gather(*(run_load("127.0.0.1", port, supply(msgs), concurrency=share, duration=600,
                                            warmup=0.5) for port, msgs in targets))
    out = LoadResult(sum(p.requests for p in parts), sum(p.errors for p in parts), max(p.seconds for p in parts))
    for p in parts:
        out.latencies_ms.extend(p.latencies_ms)
        for k, c in p.statuses.items():
            out.statuses[k] = out.statuses.get(k, 0) + c
    return out


@dataclass
class Config:
    name: str
    processes: int
    workers: int
    signed: bool = True


CONFIGS = [Config("unsigned (security off), 2 workers: the floor", 1, 2, signed=False),
           Config("full verification, 1 worker", 1, 1), Config("full verification, 2 workers", 1, 2),
           Config("full verification, 4 workers", 1, 4),
           Config("full verification, two node processes x 1 worker", 2, 1),
           Config("full verification, two node processes x 2 workers", 2, 2)]


def measure(args) -> dict[str, LoadResult]:
    url = args.database_url
    root = Path(tempfile.mkdtemp(prefix="xds-bench-hosts-"))
    results: dict[str, LoadResult] = {}
    try:
        shared = root / "shared"
        shared.mkdir()
        env = {"XDS_DATABASE_URL": url, "XDS_PARTNERS_FILE": str(shared / "partners.toml"),
               "XDS_CLIENTS_FILE": str(shared / "clients.toml")}
        hosts = [root / "host-a", root / "host-b"]
        for h in hosts:
            h.mkdir()
        seed(hosts[0], url, env, reset=args.reset_database)
        requester = Requester.demo_partner(hosts[0] / "keys")
        per_process = args.requests
        for cfg in CONFIGS:
            ports = [free_port() for _ in range(cfg.processes)]
            t0 = time.perf_counter()
            targets = [(port, messages(port, per_process // cfg.processes, requester if cfg.signed else None))
                       for port in ports]
            sign_s = time.perf_counter() - t0
            procs = [serve(hosts[i], port, cfg.workers, env, insecure=not cfg.signed) for i, port in enumerate(ports)]
            try:
                res = asyncio.run(load(targets, args.concurrency))
            finally:
                for p in procs:
                    p.terminate()
                for p in procs:
                    p.wait(10)
            results[cfg.name] = res
            bad = {k: c for k, c in res.statuses.items() if k != 200}
            print(f"ITI-38 {cfg.name:52} {res.summary()}" + (f"  non-200: {bad}" if bad else "")
                  + f"  (signed beforehand in {sign_s:.0f} s)", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results


def table(results: dict[str, LoadResult], args) -> list[tuple[str, str, str]]:
    floor = results[CONFIGS[0].name].rps
    one = results[CONFIGS[1].name].rps
    rows = []
    print(f"\nPostgreSQL, {args.concurrency} clients, load generator on the same machine:")
    print(f"{'configuration':52} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'x floor':>8} {'x 1 worker':>10}")
    for cfg in CONFIGS:
        r = results[cfg.name]
        print(f"{cfg.name:52} {r.rps:8.0f} {r.pct(50):7.1f} {r.pct(99):7.1f} {r.rps / floor:8.2f} "
              f"{r.rps / one:10.2f}")
        if cfg.signed:
            rows.append((f"ITI-38 on PostgreSQL, {cfg.name}, {args.concurrency} clients",
                         f"{r.rps:,.0f} req/s, p99 {r.pct(99):.0f} ms = {r.rps / floor:.2f}x the unsigned floor "
                         f"({floor:,.0f} req/s), {r.rps / one:.2f}x one worker", ">= 0.5x of its floor (2 workers)"))
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--database-url", required=True, help="a scratch PostgreSQL database")
    ap.add_argument("--reset-database", action="store_true",
                    help="drop the node's tables there even if a bench did not seed them")
    ap.add_argument("--requests", type=int, default=3000, help="messages per configuration")
    ap.add_argument("--concurrency", type=int, default=32)
    return ap.parse_args(argv)


def issue14_rows(args) -> list[tuple[str, str, str]]:
    """(measure, measured, target) rows of issue 14's table for a lead's combined report."""
    return table(measure(args), args)


def main() -> None:
    args = parse_args()
    issue14_rows(args)


if __name__ == "__main__":
    main()
