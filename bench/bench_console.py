"""Console page times with 100,000 documents and 1,000,000 audit rows (issue 13: each page under 200 ms).

    python -m bench.bench_console                          # SQLite in a temp directory
    python -m bench.bench_console --database-url postgresql://postgres@127.0.0.1:5432/bench
    python -m bench.bench_console --documents 10000 --audit 100000 --runs 50   # quicker

Seeds in bulk (driver-level executemany, one transaction per 50,000 rows): the sample veterans'
documents registered once, then copies of their registry rows under new entryUUIDs / uniqueIds
spread over 10,000 patients (each in the patient index), and audit rows over the last 90 days across
20 partners, all transactions and outcomes, inbound and outbound, the patients and some console rows.
Then every page is requested ``--runs`` times through the console app in-process (Starlette's
TestClient: routing, session and role checks, audit of the view, template; no socket) as a logged-in
administrator, and p50 / p99 are printed against the 200 ms target and as a ratio to the stylesheet
(no database work) measured in the same run, so a loaded machine shows in the baseline too.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
TARGET_MS = 200.0
PARTNERS = [f"partner-{i:02d}" for i in range(20)]
TRANSACTIONS = ["ITI-55", "ITI-38", "ITI-39", "ITI-18", "ITI-43", "ITI-41"]
OUTCOMES = ["success"] * 12 + ["partial", "denied", "failure", "error"]
PASSWORD = "benchmark console password"


def seed(node, documents: int, audit_rows: int, patients: int) -> tuple[list[str], str]:
    from sqlalchemy import func, select

    from xds_node.audit.store import audit_events
    from xds_node.db import insert_rows
    from xds_node.patients import tables as pt
    from xds_node.registry import tables as rt

    started = time.perf_counter()
    node.folder_indexer(ROOT / "sample_documents").sync()
    pids = [f"BENCH{i:06d}^^^&2.16.840.1.113883.4.349&ISO" for i in range(patients)]
    now = datetime.now(UTC)
    with node.engine.connect() as conn:
        template = dict(conn.execute(select(rt.documents).limit(1)).first()._mapping)
        have = conn.execute(select(func.count()).select_from(rt.documents)).scalar_one()
    batch: list[dict] = []
    with node.engine.begin() as conn:
        for i in range(max(0, documents - have)):
            uid = f"2.25.{uuid.uuid4().int}"
            batch.append(template | {"id": f"urn:uuid:{uuid.uuid4()}", "lid": None, "unique_id": uid,
                                     "patient_id": pids[i % patients]})
            if len(batch) >= 50_000:
                insert_rows(conn, rt.documents, batch)
                batch = []
        insert_rows(conn, rt.documents, batch)
        rows = [{"patient_id": p, "family": f"FAMILY{i % 997}", "given": f"GIVEN{i % 89}",
                 "family_norm": f"FAMILY{i % 997}", "given_norm": f"GIVEN{i % 89}", "gender": "MF"[i % 2],
                 "birth_date": f"19{40 + i % 50:02d}{1 + i % 12:02d}{1 + i % 28:02d}", "source": "bench",
                 "data": json.dumps({"family": f"FAMILY{i % 997}", "given": [f"GIVEN{i % 89}"]}),
                 "created": now, "updated": now} for i, p in enumerate(pids)]
        insert_rows(conn, pt.patient, rows)
    print(f"seeded {documents:,} documents, {patients:,} patients in {time.perf_counter() - started:.1f} s",
          flush=True)
    started = time.perf_counter()
    rnd = random.Random(13)
    span = 90 * 86400
    communities = {p: f"urn:oid:1.3.6.1.4.1.21367.2026.{100 + i}" for i, p in enumerate(PARTNERS)}
    with node.audit_engine.begin() as conn:  # the audit trail's own file on SQLite
        batch = []
        for i in range(audit_rows):
            partner = rnd.choice(PARTNERS)
            tx = rnd.choice(TRANSACTIONS)
            outbound = tx in ("ITI-55", "ITI-38") and rnd.random() < 0.3
            console = rnd.random() < 0.02
            batch.append({
                "event_id": f"{i:010d}-{rnd.getrandbits(32):08x}",
                "time": (now - timedelta(seconds=rnd.random() * span)).replace(tzinfo=None),
                "transaction": "console:patients:view" if console else tx, "action_code": "E",
                "outcome": rnd.choice(OUTCOMES), "direction": "outbound" if outbound else "inbound",
                "partner_community": "" if console else communities[partner], "partner_organization": partner,
                "partner_organization_id": "", "user_subject_id": f"Dr. {rnd.randrange(500)}",
                "user_role_code": "112247003", "user_role_display": "Medical doctor", "purpose_of_use": "TREATMENT",
                "patient_id": pids[rnd.randrange(patients)], "document_ids": "[]", "repository_unique_id": None,
                "query_id": None, "message_id": f"urn:uuid:{i}", "remote_address": "10.0.0.1",
                "endpoint": "/xca/query", "reason": "", "partner": partner, "caller_kind": "partner"})
            if len(batch) >= 50_000:
                insert_rows(conn, audit_events, batch)
                batch = []
        insert_rows(conn, audit_events, batch)
    print(f"seeded {audit_rows:,} audit rows in {time.perf_counter() - started:.1f} s", flush=True)
    return pids, communities[PARTNERS[0]]


def measure(client, path: str, runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        reply = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        if reply.status_code != 200:
            raise SystemExit(f"{path}: HTTP {reply.status_code}: {reply.text[:300]}")
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="")
    parser.add_argument("--documents", type=int, default=100_000)
    parser.add_argument("--audit", type=int, default=1_000_000)
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    os.environ["XDS_CONSOLE_ENABLED"] = "false"
    warnings.filterwarnings("ignore")
    from starlette.testclient import TestClient

    from xds_node.admin import init_keys
    from xds_node.config import load_settings
    from xds_node.console.app import create_console_app
    from xds_node.console.auth import UserStore
    from xds_node.node import Node

    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        settings = load_settings(env={}, data_dir=Path(tmp), database_url=args.database_url)
        if args.database_url:
            from xds_node.db import make_test_engine, metadata

            engine = make_test_engine(settings.db_url)
            import xds_node.node  # noqa: F401

            metadata.drop_all(engine)
            with engine.begin() as conn:
                conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
            engine.dispose()
        init_keys(settings)
        node = Node(settings)
        pids, _ = seed(node, args.documents, args.audit, args.patients)
        if node.engine.dialect.name == "postgresql":
            with node.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE")
        else:  # the registry's file (the audit trail's own file gets its statistics at every start)
            with node.engine.begin() as conn:
                conn.exec_driver_sql("ANALYZE")
            node.close()
            node = Node(settings)
        UserStore(node.engine).add("bench", "administrator", PASSWORD)
        client = TestClient(create_console_app(settings, node), client=("10.0.0.9", 1))
        token = re.search(r'name="csrf" value="([0-9a-f]{64})"', client.get("/login").text).group(1)
        client.post("/login", data={"csrf": token, "name": "bench", "password": PASSWORD})
        patient = quote(pids[7])
        with node.engine.connect() as conn:  # a real sample document (the seeded copies have no content)
            from xds_node.registry import tables as rt

            sample = conn.execute(rt.documents.select().where(rt.documents.c.unique_id.notlike("2.25.%"))
                                  .limit(1)).first().id
        since = (datetime.now(UTC) - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M")
        first = client.get("/audit").text
        cursor = re.search(r'after=([^"&]+)', first)
        pages = {
            "stylesheet (baseline: no database work)": "/static/console.css",
            "dashboard (24 h, grouped)": "/dashboard",
            "patients: search by name": "/patients?q=FAMILY123",
            "patients: search by birth date": "/patients?q=1955-04-04",
            "patients: search by identifier": f"/patients?q={quote('BENCH000007')}",
            "patients: one patient": f"/patients/show?patient={patient}",
            "accounting: one patient, 6 years": f"/accounting?patient={patient}",
            "accounting CSV": f"/accounting/csv?patient={patient}",
            "audit: newest 50": "/audit",
            "audit: next page (keyset)": f"/audit?after={cursor.group(1)}" if cursor else "/audit",
            "audit: by partner": f"/audit?partner={PARTNERS[3]}",
            "audit: by patient": f"/audit?patient={patient}",
            "audit: partner+outcome+3 days": f"/audit?partner={PARTNERS[5]}&outcome=error&since={since}",
            "audit: transaction (rare)": "/audit?transaction=ITI-41&direction=outbound",
            "partners (last success/failure)": "/partners",
            "conformance runs": "/conformance",
            "users": "/users",
            "documents: one patient's entries": f"/documents?patient={patient}",
            "documents: one entry (metadata)": f"/documents/entry/{quote(sample)}",
            "documents: one C-CDA rendered (frame)": f"/documents/entry/{quote(sample)}/view",
            "outside records: one patient": f"/outside?patient={patient}",
        }
        print(f"\n{node.engine.dialect.name}: {args.documents:,} documents, {args.audit:,} audit rows, "
              f"{args.runs} requests per page (in-process)\n")
        print(f"{'page':42} {'p50 ms':>8} {'p99 ms':>8} {'x base':>8}  target {TARGET_MS:.0f} ms")
        baseline = None
        failed = 0
        for name, path in pages.items():
            p50, p99 = measure(client, path, args.runs)
            baseline = baseline or p50
            ok = p99 < TARGET_MS
            failed += not ok
            print(f"{name:42} {p50:8.1f} {p99:8.1f} {p50 / baseline:8.1f}  {'ok' if ok else 'OVER'}", flush=True)
        node.close()
    print(f"\n{failed} page(s) over {TARGET_MS:.0f} ms at p99")
    return 0


if __name__ == "__main__":
    sys.exit(main())
