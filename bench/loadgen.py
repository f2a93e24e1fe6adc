"""A lean HTTP/1.1 keep-alive load generator for benchmarks (not a test).

Python HTTP clients cost more CPU per request than the server under test, which on a 2-core
machine would measure the client. This one pre-serializes requests and parses only the status
line and Content-Length, so its own cost is a few tens of microseconds per request.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float] = field(repr=False, default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        data = sorted(self.latencies_ms)
        k = min(len(data) - 1, max(0, round(p / 100 * (len(data) - 1))))
        return data[k]

    def summary(self) -> str:
        mean = statistics.fmean(self.latencies_ms) if self.latencies_ms else float("nan")
        return (f"{self.rps:8.1f} req/s  p50 {self.pct(50):6.2f} ms  p99 {self.pct(99):6.2f} ms  "
                f"mean {mean:6.2f} ms  errors {self.errors}  ({self.requests} requests in {self.seconds:.1f} s)")


def http_post(host: str, port: int, path: str, body: bytes, content_type: str) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n")
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, int]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        lname = name.strip().lower()
        if lname == b"content-length":
            length = int(value.strip())
        elif lname == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        total = 0
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            await reader.readexactly(size + 2)
            total += size
            if size == 0:
                return status, total
    if length:
        await reader.readexactly(length)
    return status, length


async def run_load(host: str, port: int, make_request: Callable[[random.Random], bytes], *,
                   concurrency: int, duration: float, warmup: float = 1.0, max_requests: int = 10_000_000,
                   ok: Sequence[int] = (200,)) -> LoadResult:
    """Closed-loop load: ``concurrency`` connections each send the next request when the last returns."""
    result = LoadResult(0, 0, 0.0)
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + duration
    last_answer = [start]

    async def worker(seed: int) -> None:
        rng = random.Random(seed)
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while True:
                now = time.perf_counter()
                if now >= stop_at or result.requests >= max_requests:
                    return
                try:
                    request = make_request(rng)
                except StopIteration:  # a finite supply of pre-built requests ran out
                    return
                writer.write(request)
                t0 = time.perf_counter()
                status, _ = await _read_response(reader)
                t1 = time.perf_counter()
                last_answer[0] = t1
                if t0 >= measure_from and t1 <= stop_at:
                    result.requests += 1
                    result.latencies_ms.append((t1 - t0) * 1000)
                    result.statuses[status] = result.statuses.get(status, 0) + 1
                    if status not in ok:
                        result.errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    result.seconds = min(time.perf_counter(), stop_at) - measure_from
    if result.latencies_ms and result.seconds > 0:
        # a run that ended early (supply exhausted) is measured up to its last answer
        result.seconds = max(min(result.seconds, last_answer[0] - measure_from), 1e-9)
    return result
