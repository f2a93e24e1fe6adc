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

from bench.loadgen import http_post
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


SIZES = {"10 KB": 10 * 1024, "1 MB": 1 << 20, "20 MB": 20 << 20}


def seed_retrieve(work: Path, sizes: dict[str, int]) -> dict[str, str]:
    """One random document per size in ``work``'s content store and registry; label -> uniqueId.
    (Also run as ``python bench/bench_repository.py --seed-retrieve DIR`` with another tree's
    PYTHONPATH, so each tree seeds with its own code.)"""
    from sqlalchemy import insert

    from xds_node.node import Node
    from xds_node.repository import tables as rt

    node = Node(load_settings(env={}, data_dir=work))
    uids: dict[str, str] = {}
    for label, size in sizes.items():
        data = os.urandom(size)
        sub = f.submission(f.patient(1), 1)
        de = sub.documents[0]
        de.hash = de.size = de.repository_unique_id = None
        node.repository.check_documents(sub, {de.id: data})
        locator, _ = node.content_store.put(data, de.hash)
        row = {"unique_id": de.unique_id, "repository_unique_id": node.repository.unique_id,
               "entry_uuid": de.id, "source": "store", "locator": locator, "mime_type": "application/octet-stream",
               "size": size, "sha1": de.hash, "mtime_ns": None, "state": "current", "version": 1}
        resp = node.registry.register(sub, also=lambda conn, row=row: conn.execute(insert(rt.documents), [row]))
        assert resp.status == v.ResponseStatus.SUCCESS, resp.errors
        uids[label] = de.unique_id
    node.close()
    return uids


def start_node(work: Path, port: int, tree: Path = ROOT) -> subprocess.Popen:
    env = {**os.environ, "XDS_DATA_DIR": str(work)}
    if tree != ROOT:
        env["PYTHONPATH"] = str(tree)
    proc = subprocess.Popen([sys.executable, "-m", "xds_node.cli", "serve", "--port", str(port)], cwd=tree,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait(f"http://127.0.0.1:{port}/health")
    return proc


def start_plain(path: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "XDS_BENCH_FILE": str(path)}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "bench.plain_file_server:app", "--port", str(port),
                             "--log-level", "warning", "--no-access-log", "--loop", "uvloop", "--http", "httptools"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait(f"http://127.0.0.1:{port}/")
    return proc


def _wait(url: str) -> None:
    for _ in range(300):
        try:
            httpx.get(url, timeout=5)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer: the server did not start")


def retrieve_message(port: int, uid: str) -> bytes:
    req = xdsb.write_retrieve_request([xdsb.DocumentRequest(load_settings(env={}).repository_unique_id, uid)])
    payload, ct, _ = build_request(v.Action.ITI43, req, to=f"http://127.0.0.1:{port}/xds/repository")
    return http_post("127.0.0.1", port, "/xds/repository", payload, ct)


def stored_file(work: Path, size: int) -> Path:
    return next(p for p in (work / "documents").rglob("*") if p.is_file() and p.stat().st_size == size)


def compare_retrieve(label: str, size: int, args, trees: dict[str, Path] | None = None) -> dict:
    """ITI-43 of one document size against plain HTTP of the same bytes, windows alternating (and
    against each tree in ``trees`` when given: "this" and "baseline"); the Series per name."""
    from bench import abtree

    trees = trees or {"this": ROOT}
    works = {k: Path(tempfile.mkdtemp(prefix=f"xds-bench-retrieve-{k}-")) for k in trees}
    procs: dict[str, subprocess.Popen] = {}
    try:
        uids = {}
        for k, tree in trees.items():
            if tree == ROOT:
                uids[k] = seed_retrieve(works[k], {label: size})[label]
            else:  # the other tree seeds with its own code (this file run with its PYTHONPATH)
                done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--seed-retrieve",
                                       str(works[k]), "--size", str(size)], cwd=tree, env=abtree.tree_env(tree),
                                      capture_output=True, text=True, timeout=600)
                if done.returncode != 0:
                    raise SystemExit(done.stderr[-2000:])
                uids[k] = done.stdout.strip().splitlines()[-1]
        ports = {k: abtree.free_port() for k in [*trees, "plain"]}
        for k, tree in trees.items():
            procs[k] = start_node(works[k], ports[k], tree)
        procs["plain"] = start_plain(stored_file(works["this"], size), ports["plain"])
        msgs = {k: retrieve_message(ports[k], uids[k]) for k in trees}
        msgs["plain"] = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{ports['plain']}\r\n\r\n".encode()
        conc = getattr(args, "concurrency", 4)
        runs = [(k, lambda k=k: abtree.window(ports[k], procs[k].pid, lambda _r, k=k: msgs[k], concurrency=conc,
                                              duration=args.duration)) for k in msgs]
        return abtree.alternate(runs, getattr(args, "rounds", 3))
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(10)
        for w in works.values():
            shutil.rmtree(w, ignore_errors=True)


def issue14_rows(args) -> list[tuple[str, str, str]]:
    """(measure, measured, target) rows for the performance issue's table: ITI-43 of a 10 KB
    document against plain HTTP of the same bytes, measured now (``args.duration`` seconds per
    window, ``args.rounds`` alternating windows; defaults 5 and 3)."""
    from bench import abtree

    ns = argparse.Namespace(duration=getattr(args, "duration", 5.0), rounds=getattr(args, "rounds", 3),
                            concurrency=getattr(args, "concurrency", 4))
    series = compare_retrieve("10 KB", SIZES["10 KB"], ns)
    ratio = abtree.pair_ratio(series["this"], series["plain"])
    return [("ITI-43 10 KB / plain HTTP of the same bytes",
             f"{ratio:.2f}x ({series['this'].median('rps'):.0f} vs {series['plain'].median('rps'):.0f} req/s; "
             f"server CPU {series['this'].median('cpu_us'):.0f} vs {series['plain'].median('cpu_us'):.0f} us/request)",
             ">= 0.3x")]


def bench_retrieve_ab(args) -> None:
    """Every size: this tree, the baseline tree and plain HTTP, windows alternating."""
    from bench import abtree

    trees = {"this": ROOT, "baseline": Path(args.baseline_tree).resolve()}
    for label, size in SIZES.items():
        series = compare_retrieve(label, size, args, trees)
        for k, s in series.items():
            print(f"retrieve {label:6} {k:8}: {abtree.describe(s)}  {s.median('rps') * size / 1e6:8.1f} MB/s")
        print(f"retrieve {label:6} this/baseline x{abtree.pair_ratio(series['this'], series['baseline']):.2f} "
              f"(CPU x{abtree.pair_ratio(series['this'], series['baseline'], 'cpu_us'):.2f}); "
              f"this/plain x{abtree.pair_ratio(series['this'], series['plain']):.2f}, "
              f"baseline/plain x{abtree.pair_ratio(series['baseline'], series['plain']):.2f} "
              f"(load average {abtree.load_average()})")


def ingest_ab(args) -> None:
    """C-CDA ingest in each tree, alternating rounds (each with its own code)."""
    import statistics

    from bench import abtree

    trees = {"this": ROOT, "baseline": Path(args.baseline_tree).resolve()}
    rates: dict[str, list[float]] = {k: [] for k in trees}
    cpu: dict[str, list[float]] = {k: [] for k in trees}  # CPU seconds of the whole ingest (copies included)
    for _ in range(args.rounds):
        for k, tree in trees.items():
            code = ("import contextlib, io, time; from bench.bench_repository import bench_ingest\n"
                    "t = time.process_time()\n"
                    f"with contextlib.redirect_stdout(io.StringIO()): r = bench_ingest({args.ingest})\n"
                    "print(r, time.process_time() - t)")
            rate, used = abtree.run_in_tree(tree, code).split()
            rates[k].append(float(rate))
            cpu[k].append(float(used))
    ratio = statistics.median(a / b for a, b in zip(rates["this"], rates["baseline"], strict=True))
    cpu_ratio = statistics.median(a / b for a, b in zip(cpu["this"], cpu["baseline"], strict=True))
    print(f"ingest ({args.ingest} C-CDA files): this {statistics.median(rates['this']):.0f} documents/s, baseline "
          f"{statistics.median(rates['baseline']):.0f} documents/s, this/baseline x{ratio:.2f}; CPU per document "
          f"this {statistics.median(cpu['this']) / args.ingest * 1e3:.2f} ms, baseline "
          f"{statistics.median(cpu['baseline']) / args.ingest * 1e3:.2f} ms, x{cpu_ratio:.2f} "
          f"(medians of {args.rounds} alternating rounds; load average {abtree.load_average()})")


def bench_retrieve(duration: float) -> None:
    from bench import abtree

    work = Path(tempfile.mkdtemp(prefix="xds-bench-retrieve-"))
    try:
        uids = seed_retrieve(work, SIZES)
        port = 30000 + os.getpid() % 20000
        proc = start_node(work, port)
        try:
            base_rss = rss_now_kb(proc.pid)
            for label, size in SIZES.items():
                msg = retrieve_message(port, uids[label])
                plain = start_plain(stored_file(work, size), port + 1)
                try:  # ITI-43 and the floor in alternating windows: the same machine state for both
                    series = abtree.alternate(
                        [("this", lambda msg=msg: abtree.window(port, proc.pid, lambda _r: msg, concurrency=4,
                                                                duration=duration / 2)),
                         ("plain", lambda plain=plain: abtree.window(
                             port + 1, plain.pid, lambda _r: f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port + 1}\r\n\r\n"
                             .encode(), concurrency=4, duration=duration / 2))], 2)
                finally:
                    plain.terminate()
                    plain.wait(10)
                this, floor = series["this"], series["plain"]
                mbps = this.median("rps") * size / 1e6
                print(f"retrieve {label:6}: {this.median('rps'):8.1f} req/s {mbps:8.1f} MB/s  "
                      f"p50 {this.median('p50'):7.2f} ms  p99 {this.median('p99'):7.2f} ms  CPU "
                      f"{this.median('cpu_us'):6.0f} us | same bytes as plain HTTP "
                      f"{floor.median('rps') * size / 1e6:8.1f} MB/s, CPU {floor.median('cpu_us'):6.0f} us | "
                      f"ratio {abtree.pair_ratio(this, floor):.2f}")
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
    ap.add_argument("--baseline-tree", help="another checkout (e.g. a git worktree of an older commit): run both "
                    "side by side, windows alternating, and print this/baseline ratios")
    ap.add_argument("--rounds", type=int, default=3, help="alternating windows per server with --baseline-tree")
    ap.add_argument("--issue14", action="store_true", help="print only issue14_rows (ITI-43 10 KB / plain HTTP)")
    ap.add_argument("--seed-retrieve", help=argparse.SUPPRESS)  # DIR: seed one document (for another tree)
    ap.add_argument("--size", type=int, default=10 * 1024, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.seed_retrieve:
        print(seed_retrieve(Path(args.seed_retrieve), {"doc": args.size})["doc"])
    elif args.issue14:
        for row in issue14_rows(args):
            print(" | ".join(row))
    elif args.baseline_tree:
        from bench import abtree

        abtree.check_tree(Path(args.baseline_tree))
        ingest_ab(args)
        bench_retrieve_ab(args)
    else:
        bench_ingest(args.ingest)
        bench_retrieve(args.duration)


if __name__ == "__main__":
    main()
