"""C-CDA renderer benchmark: what reading a document in the console costs.

    python -m bench.bench_render              # every sample and HL7 example, plus a synthetic large one
    python -m bench.bench_render --runs 50

Figures per document: milliseconds to render (``xds_node.cda.render.render``) and, as the baseline
measured in the same run on the same bytes, milliseconds for lxml alone to parse them with the
project's hardened parser; the ratio says what the translation adds over reading the XML at all.
A synthetic document with a 5,000-row results table shows how it scales. Machine load moves the
absolute figures; the ratios are the part to compare between runs.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from pathlib import Path

from lxml import etree

from xds_node import safexml
from xds_node.cda.render import render

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_documents"
EXAMPLES = ROOT.parent / "shared" / "corpus" / "04-ccda"


def large_document(rows: int = 5000) -> bytes:
    base = (SAMPLES / "alex-testpatient" / "lab-report-2025.xml").read_text(encoding="utf-8")
    table = "<table><thead><tr><th>test</th><th>value</th><th>date</th></tr></thead><tbody>" + "".join(
        f"<tr><td><content styleCode='Bold'>Analyte {i}</content></td><td>{i * 0.1:.1f} mg/dL</td>"
        f"<td>2025-02-12</td></tr>" for i in range(rows)) + "</tbody></table>"
    return re.sub(r"(<section>.*?<text>).*?(</text>)", lambda m: m.group(1) + table + m.group(2), base,
                  count=1, flags=re.S).encode("utf-8")


def median_ms(fn, data: bytes, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(data)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def parse_only(data: bytes) -> None:
    etree.fromstring(data, safexml.parser(remove_pis=True, remove_comments=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    docs = [(p.name, p.read_bytes()) for p in sorted(SAMPLES.rglob("*.xml"))]
    docs += [(p.name, p.read_bytes()) for p in sorted(EXAMPLES.rglob("*.xml"))] if EXAMPLES.is_dir() else []
    docs.append(("synthetic 5,000-row table", large_document()))
    print(f"{'document':48} {'bytes':>9} {'parse ms':>9} {'render ms':>10} {'ratio':>6} {'html bytes':>11}")
    ratios = []
    for name, data in docs:
        base = median_ms(parse_only, data, args.runs)
        took = median_ms(render, data, args.runs)
        ratios.append(took / base)
        print(f"{name[:48]:48} {len(data):9,} {base:9.2f} {took:10.2f} {took / base:6.1f} {len(render(data).html):11,}")
    print(f"median render/parse ratio over {len(docs)} documents: {statistics.median(ratios):.1f}")


if __name__ == "__main__":
    main()
