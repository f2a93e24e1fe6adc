"""Initiating-gateway benchmark: ITI-38 fan-out to many partners, ITI-39 retrieve of large documents.

    python -m bench.bench_fanout                      # 50 and 200 partners, 100 x 1 MB from 10
    python -m bench.bench_fanout --partners 50 --runs 3
    python -m bench.bench_fanout --no-retrieve --signing-threads 0   # Timestamps signed on the loop
    python -m bench.bench_fanout --no-retrieve --partners 200 --httpx   # aiohttp against tuned httpx

The partner calls go through the maintained client (aiohttp, ``xds_node/gateway/http.py``); ``--httpx``
runs the same fan-outs through httpx with a pool per partner, for comparison. Unless ``--no-proxy``,
the largest fan-out is also run against https partners, directly and then through a local forward
proxy process (``tests/forward_proxy.py``, CONNECT tunnels), and the overhead is printed.
:func:`issue14_rows` returns the outbound rows of the performance issue's table.

One helper process (``--serve``) plays every partner: an asyncio HTTP/1.1 server listening on one
127.0.0.1 port per partner, answering each ITI-38 with a canned AdhocQueryResponse (5 documents,
``home`` set) and each ITI-39 with an MTOM answer of the requested 1 MB documents, always after
``--delay`` seconds (200 ms). The partner side does no security checks: only our side is measured.

Figures: wall time of one whole fan-out (first run with new connections, then the median of the
warm runs), our CPU per partner call (process time / calls), the cost of signing an assertion
(once per requester and partner audience, reused for its lifetime) versus the per-message
Timestamp signature (timed where it runs: on the signing threads, so it includes waiting for a
core), and for the retrieve its wall time, throughput and peak RSS
(``resource.getrusage``). The floor is the partner delay: no fan-out can finish faster.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = "urn:oid:1.3.6.1.4.1.21367.2026.99.1"
LOCAL = "VET0001^^^&1.3.6.1.4.1.21367.2026.1.9&ISO"
DOC_SIZE = 1 << 20


def hcid(i: int) -> str:
    return f"urn:oid:1.3.6.1.4.1.21367.2026.99.100.{i}"


# --- the simulated partners (helper process) ----------------------------------------------------
def _query_answer(home: str) -> bytes:
    from tests import factories as f
    from xds_node.ebxml import rim
    from xds_node.ebxml import vocabulary as v

    frags = [rim.render(f.document(LOCAL, f"urn:uuid:{i:08d}-0000-4000-8000-000000000000",
                                   id=f"urn:uuid:{i:08d}-0000-4000-8000-{abs(hash(home)) % 10**12:012d}"))
             for i in range(5)]
    body = rim.adhoc_query_response_bytes(v.ResponseStatus.SUCCESS, fragments=frags, home=home)
    return _envelope(v.response_action(v.Action.ITI38), body)


def _envelope(action: str, body: bytes) -> bytes:
    return (b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
            b'xmlns:a="http://www.w3.org/2005/08/addressing"><s:Header><a:Action>' + action.encode()
            + b"</a:Action></s:Header><s:Body>" + body + b"</s:Body></s:Envelope>")


async def serve(n: int, delay: float, tls: tuple[str, str] | None = None) -> None:
    answers = [_query_answer(hcid(i)) for i in range(n)]
    document = os.urandom(DOC_SIZE)
    clen = re.compile(rb"(?i)content-length:\s*(\d+)")
    uid_re = re.compile(rb"DocumentUniqueId>([^<]+)<")
    boundary = b"MIMEBoundary_bench"

    def retrieve_answer(i: int, body: bytes) -> list[bytes]:
        uids = uid_re.findall(body)
        parts = []
        docs = b"".join(
            b"<xdsb:DocumentResponse><xdsb:HomeCommunityId>" + hcid(i).encode() + b"</xdsb:HomeCommunityId>"
            b"<xdsb:RepositoryUniqueId>1.2.3</xdsb:RepositoryUniqueId><xdsb:DocumentUniqueId>" + u
            + b"</xdsb:DocumentUniqueId><xdsb:mimeType>application/octet-stream</xdsb:mimeType><xdsb:Document>"
            b'<xop:Include xmlns:xop="http://www.w3.org/2004/08/xop/include" href="cid:doc' + str(k).encode()
            + b'@bench"/></xdsb:Document></xdsb:DocumentResponse>' for k, u in enumerate(uids))
        root = _envelope("urn:ihe:iti:2007:CrossGatewayRetrieveResponse",
                         b'<xdsb:RetrieveDocumentSetResponse xmlns:xdsb="urn:ihe:iti:xds-b:2007" '
                         b'xmlns:rs="urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0"><rs:RegistryResponse '
                         b'status="urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"/>' + docs
                         + b"</xdsb:RetrieveDocumentSetResponse>")
        parts.append(b"--" + boundary + b"\r\nContent-Type: application/xop+xml; type=\"application/soap+xml\"\r\n"
                     b"Content-ID: <root@bench>\r\n\r\n" + root)
        for k in range(len(uids)):
            parts.append(b"\r\n--" + boundary + b"\r\nContent-Type: application/octet-stream\r\n"
                         b"Content-Transfer-Encoding: binary\r\nContent-ID: <doc" + str(k).encode()
                         + b"@bench>\r\n\r\n")
            parts.append(document)
        parts.append(b"\r\n--" + boundary + b"--\r\n")
        return parts

    def handler(i: int):
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    m = clen.search(head)
                    body = await reader.readexactly(int(m.group(1))) if m else b""
                    await asyncio.sleep(delay)
                    if b"CrossGatewayRetrieve" in head:
                        parts = retrieve_answer(i, body)
                        ct = (b'multipart/related; boundary="' + boundary + b'"; type="application/xop+xml"; '
                              b'start="<root@bench>"; start-info="application/soap+xml"')
                    else:
                        parts, ct = [answers[i]], b"application/soap+xml; charset=UTF-8"
                    size = sum(len(p) for p in parts)
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: " + ct + b"\r\nContent-Length: "
                                 + str(size).encode() + b"\r\n\r\n")
                    for p in parts:
                        writer.write(p)
                        await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
                pass
            finally:
                writer.close()

        return handle

    ssl_ctx = None
    if tls is not None:
        import ssl

        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.load_cert_chain(*tls)
    servers = [await asyncio.start_server(handler(i), "127.0.0.1", 0, backlog=1024, ssl=ssl_ctx) for i in range(n)]
    print(json.dumps([s.sockets[0].getsockname()[1] for s in servers]), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin


# --- our side -----------------------------------------------------------------------------------
class PerPartnerHttpx:
    """httpx tuned for the comparison: a keep-alive pool per partner (one shared pool is scanned whole
    per request, which makes a 200-partner fan-out quadratic), no cookies, no redirects."""

    def __new__(cls, verify):  # an httpx transport, built lazily so importing the bench needs no httpx
        import ssl

        import httpx

        if not isinstance(verify, ssl.SSLContext):  # one context for all pools (each costs ~20 ms to build)
            verify = ssl.create_default_context()

        class _T(httpx.AsyncBaseTransport):
            def __init__(self) -> None:
                self.pools: dict[tuple[str, int], httpx.AsyncHTTPTransport] = {}

            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                key = (request.url.host, request.url.port or 0)
                pool = self.pools.get(key)
                if pool is None:
                    pool = self.pools[key] = httpx.AsyncHTTPTransport(
                        verify=verify, limits=httpx.Limits(max_connections=8, max_keepalive_connections=8,
                                                           keepalive_expiry=30.0))
                return await pool.handle_async_request(request)

            async def aclose(self) -> None:
                for pool in self.pools.values():
                    await pool.aclose()

        return _T()


def _world(ports: list[int], tmp: Path, keys, signing_threads: int = 2, *, client: str = "aiohttp",
           proxy: str | None = None, tls_ca: Path | None = None):
    from xds_node.db import make_engine
    from xds_node.gateway.initiating import InitiatingGateway
    from xds_node.gateway.outbound import AssertionCache, OutboundClient, ProxySettings, make_ssl_context
    from xds_node.patients.index import PatientIndex
    from xds_node.security.consent import ConsentPolicy, ConsentStore
    from xds_node.security.trust import Partner, TrustStore

    trust = TrustStore()
    index = PatientIndex(make_engine(f"sqlite:///{tmp / f'ig-{len(ports)}-{os.urandom(4).hex()}.db'}"))
    index.create_schema()
    scheme = "https" if tls_ca else "http"
    for i, port in enumerate(ports):
        base = f"{scheme}://127.0.0.1:{port}"
        trust.add(Partner(f"partner-{i}", hcid(i), endpoints={"xca_query": base + "/xca/query",
                                                               "xca_retrieve": base + "/xca/retrieve"},
                          timeout=30.0, proxy=proxy))
        index.save_correlation(LOCAL, hcid(i), "VET0001", "1.3.6.1.4.1.21367.2026.1.9")
    assertions = AssertionCache(keys[0], keys[1], issuer="CN=bench")
    verify = make_ssl_context(ca_file=str(tls_ca)) if tls_ca else True
    transport = PerPartnerHttpx(verify) if client == "httpx" else None
    client_ = OutboundClient(assertions, max_connections=max(512, 2 * len(ports)), spool_dir=tmp / "spool",
                             signing_threads=signing_threads, transport=transport, verify=verify,
                             proxies=ProxySettings({}))
    consent = ConsentStore(index.engine)
    consent.create_schema()
    consent.grant(LOCAL, source="bench")
    return (InitiatingGateway(client_, trust=trust, home_community_id=OURS, patients=index,
                              consent=ConsentPolicy(consent)), assertions, client_)


def _ctx():
    from xds_node.security.saml import RequesterContext

    return RequesterContext(subject_id="Dr. Bench", organization="VA bench", organization_id=OURS,
                            home_community_id=OURS, role=("112247003", "2.16.840.1.113883.6.96", "Medical doctor"),
                            purpose_of_use=("TREATMENT", "2.16.840.1.113883.3.18.7.1", "Treatment"))


async def bench_fanout(ports: list[int], runs: int, tmp: Path, keys, signing_threads: int = 2, **world) -> dict:
    from xds_node.ebxml import vocabulary as v

    gw, assertions, client = _world(ports, tmp, keys, signing_threads, **world)
    ctx = _ctx()
    walls, cpus = [], []
    try:
        for _ in range(runs + 1):
            c0, t0 = time.process_time(), time.perf_counter()
            result = await gw.query(LOCAL, ctx)
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
            assert result.status == v.ResponseStatus.SUCCESS, result.errors[:3]
            assert len(result.objects) == 5 * len(ports)
    finally:
        await client.aclose()
    n = len(ports)
    return {"partners": n, "cold_ms": walls[0] * 1000, "warm_ms": statistics.median(walls[1:]) * 1000,
            "cpu_per_call_ms": statistics.median(cpus[1:]) / n * 1000,
            "assertions_signed": assertions.signed, "assertion_sign_ms": assertions.sign_seconds / assertions.signed
            * 1000, "header_ms": client.header_seconds / client.headers_built * 1000,
            "headers": client.headers_built}


async def bench_retrieve(ports: list[int], docs_per_partner: int, tmp: Path, keys) -> dict:
    from xds_node.ebxml import vocabulary as v
    from xds_node.ebxml.xdsb import DocumentRequest

    gw, _, client = _world(ports, tmp, keys)
    refs = [DocumentRequest("1.2.3", f"1.2.3.{i}.{k}", hcid(i)) for i in range(len(ports))
            for k in range(docs_per_partner)]
    dest = tmp / "retrieved"
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        c0, t0 = time.process_time(), time.perf_counter()
        result = await gw.retrieve(refs, _ctx(), dest=dest)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        await client.aclose()
    assert result.status == v.ResponseStatus.SUCCESS, result.errors[:3]
    total = sum(p.stat().st_size for p in dest.iterdir())
    assert total == len(refs) * DOC_SIZE
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"documents": len(refs), "partners": len(ports), "wall_ms": wall * 1000, "cpu_ms": cpu * 1000,
            "mb_per_s": total / wall / 1e6, "rss_before_mb": rss0 / 1024, "peak_rss_mb": rss / 1024}


def start_partners(n: int, delay: float, tls: tuple[Path, Path] | None = None) -> tuple[subprocess.Popen, list[int]]:
    extra = ["--tls", str(tls[0]), str(tls[1])] if tls else []
    proc = subprocess.Popen([sys.executable, "-m", "bench.bench_fanout", "--serve", str(n), "--delay", str(delay),
                             *extra], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    ports = json.loads(proc.stdout.readline())
    return proc, ports


def stop(proc: subprocess.Popen) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def retrieve(args: argparse.Namespace, tmp: Path, keys, floor: float) -> None:
    proc, ports = start_partners(args.retrieve_partners, args.delay)
    try:
        r = asyncio.run(bench_retrieve(ports, args.retrieve_docs // args.retrieve_partners, tmp, keys))
    finally:
        stop(proc)
    print(f"retrieve {r['documents']} x 1 MB from {r['partners']} partners: {r['wall_ms']:.0f} ms wall "
          f"(floor {floor:.0f} ms), {r['cpu_ms']:.0f} ms CPU, {r['mb_per_s']:.0f} MB/s, "
          f"peak RSS {r['peak_rss_mb']:.0f} MB (before: {r['rss_before_mb']:.0f} MB; target <= 200 MB)")


def run_fanout(n: int, args: argparse.Namespace, tmp: Path, keys, *, tls: tuple[Path, Path] | None = None,
               proxy_args: tuple[str, ...] | None = None, **world) -> dict:
    """One fan-out benchmark against ``n`` fresh partners (``tls``: https partners with this
    certificate; ``proxy_args``: through a forward proxy process started for the run)."""
    proc, ports = start_partners(n, args.delay, tls)
    proxy = None
    try:
        if proxy_args is not None:
            sys.path.insert(0, str(ROOT))
            from tests.forward_proxy import ProxyProcess

            proxy = ProxyProcess(tmp, *proxy_args)
            world["proxy"] = proxy.url
        f = asyncio.run(bench_fanout(ports, args.runs, tmp, keys, args.signing_threads,
                                     tls_ca=tls[0] if tls else None, **world))
        if proxy is not None:
            records = proxy.records()
            f["proxied"] = sum(1 for r in records if r.get("method") == "CONNECT" or r.get("action"))
    finally:
        if proxy is not None:
            proxy.stop()
        stop(proc)
    return f


def _line(label: str, n: int, f: dict, floor: float, target: int | None) -> str:
    return (f"{label} to {n} partners: cold {f['cold_ms']:.0f} ms, warm {f['warm_ms']:.0f} ms "
            f"(floor {floor:.0f} ms, overhead {f['warm_ms'] - floor:.0f} ms"
            + (f", target <= {target} ms" if target else "") + f"); CPU {f['cpu_per_call_ms']:.2f} ms per call; "
            f"{f['assertions_signed']} assertion(s) signed at {f['assertion_sign_ms']:.2f} ms, "
            f"{f['headers']} Timestamp signatures at {f['header_ms']:.2f} ms each")


def _keys(tmp: Path):
    from xds_node.security.keys import generate_demo_keys, load_key_and_cert

    keys = load_key_and_cert(*generate_demo_keys(tmp / "keys", common_name="bench initiating gateway"))
    # the partners' TLS certificate (SAN 127.0.0.1), trusted as our CA file for the https runs
    tls = generate_demo_keys(tmp / "partner-tls", common_name="bench partner")
    return keys, (tls[1], tls[0])


def issue14_rows(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """The outbound rows of the performance issue's table: (measure, figure, target), each with its
    floor or baseline measured in the same run."""
    import shutil

    tmp = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    try:
        keys, tls = _keys(tmp)
        n = max(args.partners)
        floor = args.delay * 1000
        rows = []
        f = run_fanout(n, args, tmp, keys)
        rows.append((f"fan-out to {n} partners at {floor:.0f} ms latency, through the maintained client (aiohttp)",
                     f"{f['warm_ms']:.0f} ms warm ({f['cold_ms']:.0f} cold; floor {floor:.0f} ms), "
                     f"CPU {f['cpu_per_call_ms']:.2f} ms per call", "<= 450 ms, CPU per call <= 1 ms"))
        if args.httpx:
            h = run_fanout(n, args, tmp, keys, client="httpx")
            rows.append(("same through httpx (pool per partner), for comparison",
                         f"{h['warm_ms']:.0f} ms warm, CPU {h['cpu_per_call_ms']:.2f} ms per call "
                         f"({h['cpu_per_call_ms'] / f['cpu_per_call_ms']:.2f}x aiohttp's)", ""))
        if not args.no_proxy:
            d = run_fanout(n, args, tmp, keys, tls=tls)
            p = run_fanout(n, args, tmp, keys, tls=tls, proxy_args=())
            rows.append((f"fan-out to {n} https partners through a local forward proxy (CONNECT)",
                         f"{p['warm_ms']:.0f} ms warm vs {d['warm_ms']:.0f} ms direct in the same run "
                         f"({p['warm_ms'] / d['warm_ms']:.2f}x; cold {p['cold_ms']:.0f} vs {d['cold_ms']:.0f} ms), "
                         f"CPU {p['cpu_per_call_ms']:.2f} vs {d['cpu_per_call_ms']:.2f} ms per call; "
                         f"{p['proxied']} tunnels", "works; overhead reported"))
        return rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--tls", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--delay", type=float, default=0.2, help="partner answer delay in seconds (the floor)")
    ap.add_argument("--partners", type=int, nargs="+", default=[50, 200])
    ap.add_argument("--runs", type=int, default=5, help="warm fan-outs per size (after one cold run)")
    ap.add_argument("--retrieve-partners", type=int, default=10)
    ap.add_argument("--retrieve-docs", type=int, default=100, help="documents of 1 MB in all")
    ap.add_argument("--signing-threads", type=int, default=2, help="Timestamp signing threads (0: on the loop)")
    ap.add_argument("--no-retrieve", action="store_true", help="only the fan-outs")
    ap.add_argument("--httpx", action="store_true", help="the fan-outs through httpx too (for comparison)")
    ap.add_argument("--no-proxy", action="store_true", help="skip the https fan-out through a forward proxy")
    ap.add_argument("--issue14", action="store_true", help="print only the outbound rows of the performance table")
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.delay, tuple(args.tls) if args.tls else None))
        return
    if args.issue14:
        print("| measure | figure | target |\n|---|---|---|")
        for row in issue14_rows(args):
            print("| " + " | ".join(row) + " |")
        return
    import shutil

    tmp = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    keys, tls = _keys(tmp)
    floor = args.delay * 1000
    targets = {50: 300, 200: 450}
    print(f"floor: every partner answers after {floor:.0f} ms")
    try:
        # retrieve first, so the peak RSS is the retrieve's and not the fan-out's
        if not args.no_retrieve:
            retrieve(args, tmp, keys, floor)
        for n in args.partners:
            f = run_fanout(n, args, tmp, keys)
            print(_line("fan-out ITI-38 (aiohttp)", n, f, floor, targets.get(n)))
            if args.httpx:
                h = run_fanout(n, args, tmp, keys, client="httpx")
                print(_line("fan-out ITI-38 (httpx, pool per partner)", n, h, floor, targets.get(n))
                      + f"; {h['cpu_per_call_ms'] / f['cpu_per_call_ms']:.2f}x aiohttp's CPU")
        if not args.no_proxy:
            n = max(args.partners)
            d = run_fanout(n, args, tmp, keys, tls=tls)
            print(_line("fan-out ITI-38 over https, direct", n, d, floor, None))
            p = run_fanout(n, args, tmp, keys, tls=tls, proxy_args=())
            print(_line("fan-out ITI-38 over https, through a forward proxy (CONNECT)", n, p, floor, None)
                  + f"; {p['proxied']} tunnels; {p['warm_ms'] / d['warm_ms']:.2f}x direct wall time, "
                  f"{p['cpu_per_call_ms'] / d['cpu_per_call_ms']:.2f}x its CPU per call")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
