"""In-process CPU of checking one signed ITI-38 message, next to the envelope parse it rides on.

    python -m bench.bench_verify [--messages 2000]

What issue 14's ratio targets leave for security: a message under a cached assertion and one with
a new assertion each go through the node's own ``InboundVerifier.check`` (every check but replay)
and, separately, a replay admission against an in-memory store and against the node's database
store (one transaction each, the path a round replaces). Thread CPU per message, median of 3
passes, printed beside the parse of the same envelopes: no HTTP, no handler, no audit row.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench import bench_gateway as bg
from xds_node.security.replay import MemoryReplayStore
from xds_node.soap.envelope import parse_envelope

WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"


def _bodies(msgs: list[bytes]) -> list[tuple[bytes, str]]:
    out = []
    for m in msgs:
        head, body = m.split(b"\r\n\r\n", 1)
        ct = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-type"))
        out.append((body, ct.decode("latin-1")))
    return out


def _cpu_per(fn, items) -> float:
    """Median thread CPU (us) per item of 3 passes over ``items`` (each pass its own third)."""
    third = len(items) // 3
    runs = []
    for k in range(3):
        part = items[k * third:(k + 1) * third]
        t = time.thread_time()
        for it in part:
            fn(it)
        runs.append((time.thread_time() - t) / len(part) * 1e6)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=2000)
    args = ap.parse_args()
    from xds_node.node import Node

    data = Path(tempfile.mkdtemp(prefix="bench-verify-")) / "data"
    bg.init_keys(bg.load_settings(env={}, data_dir=data))
    node = Node(bg.load_settings(env={}, data_dir=data))
    supply = bg.Supply(data, 1, args.messages)
    verifier = node.access.partners
    rows = []
    for name, msgs in (("cached assertion", supply.reused()), ("new assertion", supply.fresh())):
        bodies = _bodies(msgs)
        parse = _cpu_per(lambda b: parse_envelope(*b), bodies)
        reqs = [parse_envelope(*b) for b in bodies]
        checked: list = []
        check = _cpu_per(lambda r, out=checked: out.append(verifier.check(
            r.header_block(WSSE, "Security"), r.envelope, request_digest=str(id(r)))), reqs)
        memory = MemoryReplayStore()
        in_memory = _cpu_per(lambda c, m=memory: m.admit(c._partner, c._keys, c._digest, c._now), checked)
        database = _cpu_per(lambda c: c.admit(), checked)  # the node's store: one transaction each
        rows.append((name, parse, check, in_memory, database))
    node.close()
    print(f"ITI-38 messages, thread CPU per message in-process (us), median of 3 passes of {args.messages // 3}:")
    print(f"{'':18} {'parse':>7} {'check':>7} {'replay (memory)':>16} {'replay (own SQLite transaction)':>32}")
    for name, parse, check, in_memory, database in rows:
        print(f"{name:18} {parse:7.0f} {check:7.0f} {in_memory:16.0f} {database:32.0f}")


if __name__ == "__main__":
    main()
