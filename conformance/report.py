"""Reports of a conformance run: JUnit XML (for CI) and one self-contained HTML page (for people).

The HTML page has no external assets: CSS is inline and every step's request and response are
embedded (escaped, capped in size, binary MIME parts shown as their first bytes), so the page can be
mailed to a partner as the evidence of what was sent, what came back and which expectation failed.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from lxml import etree

from .runner import MAX_REPORT_BYTES, CaseResult, Exchange, RunResult, StepResult

__all__ = ["write_html", "write_junit"]


def _text(data: bytes, limit: int = MAX_REPORT_BYTES) -> str:
    """Bytes as readable text: undecodable bytes replaced, long bodies cut with a note."""
    cut = len(data) > limit
    text = data[:limit].decode("utf-8", "replace")
    text = "".join(ch if ch.isprintable() or ch in "\r\n\t" else "\N{REPLACEMENT CHARACTER}" for ch in text)
    return text + (f"\n... ({len(data) - limit} more bytes not shown)" if cut else "")


def _step_lines(step: StepResult) -> list[str]:
    lines = [f"step {step.id} ({step.transaction} -> {step.role or '?'})"]
    if step.skipped:
        lines.append(f"  skipped: {step.skipped}")
    if step.observed:
        lines.append(f"  answer: {step.observed}")
    lines.extend(f"  FAILED: {f}" for f in step.failures)
    lines.extend(f"  note: {n}" for n in step.notes)
    return lines


def write_junit(results: Sequence[RunResult], path: Path) -> Path:
    """One <testsuite> per run, one <testcase> per case; failures carry every step's reasons."""
    root = etree.Element("testsuites")
    for run in results:
        suite = etree.SubElement(root, "testsuite", name=run.suite, tests=str(len(run.cases)),
                                 failures=str(run.count("failed")),
                                 skipped=str(run.count("skipped") + run.count("xfail")),
                                 time=f"{run.seconds:.3f}", hostname=run.target)
        for case in run.cases:
            tc = etree.SubElement(suite, "testcase", classname=f"conformance.{run.suite}", name=case.id,
                                  time=f"{case.seconds:.3f}")
            detail = "\n".join(line for s in case.steps for line in _step_lines(s))
            if case.outcome == "failed":
                el = etree.SubElement(tc, "failure" if case.required else "skipped",
                                      message=case.reason[:1000])
                el.text = detail
            elif case.outcome in ("skipped", "xfail"):
                etree.SubElement(tc, "skipped", message=(case.reason or case.outcome)[:1000])
            out = etree.SubElement(tc, "system-out")
            out.text = f"{case.title}\n{detail}"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True))
    return path


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:2em}
table{border-collapse:collapse;margin:1em 0} td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}
.passed{color:#16702e}.failed{color:#b00020;font-weight:bold}.skipped,.xfail{color:#8a6d00}
details{margin:.4em 0;border:1px solid #ddd;border-radius:4px;padding:.3em .6em}
summary{cursor:pointer} .why{color:#b00020;margin:.3em 0} .note{color:#555}
pre{background:#f6f8fa;padding:.6em;overflow:auto;max-height:30em;font-size:.8em;white-space:pre-wrap;word-break:break-all}
"""


def _e(s: object) -> str:
    return html.escape(str(s))


def _exchange_html(ex: Exchange) -> str:
    parts = [f"<p>POST {_e(ex.url)} &mdash; action <code>{_e(ex.action)}</code> &mdash; "
             f"HTTP {_e(ex.status if ex.status is not None else 'none')} in {ex.seconds:.3f} s</p>"]
    if ex.error:
        parts.append(f"<p class='why'>{_e(ex.error)}</p>")
    parts.append(f"<details><summary>request ({len(ex.request)} bytes, {_e(ex.request_content_type)})</summary>"
                 f"<pre>{_e(_text(ex.request))}</pre></details>")
    parts.append(f"<details><summary>response ({len(ex.response)} bytes, {_e(ex.response_content_type)})"
                 f"</summary><pre>{_e(_text(ex.response))}</pre></details>")
    return "".join(parts)


def _case_html(case: CaseResult) -> str:
    open_attr = " open" if case.outcome == "failed" else ""
    req = "" if case.required else " (optional)"
    out = [f"<details{open_attr}><summary><span class='{case.outcome}'>{case.outcome.upper()}</span> "
           f"<b>{_e(case.id)}</b>{req} &mdash; {_e(case.title)}</summary>"]
    if case.reason:
        out.append(f"<p class='{'why' if case.outcome == 'failed' else 'note'}'>{_e(case.reason)}</p>")
    for step in case.steps:
        out.append(f"<h4>step {_e(step.id)} &mdash; {_e(step.transaction)} to {_e(step.role or '?')}</h4>")
        if step.skipped:
            out.append(f"<p class='note'>not run: {_e(step.skipped)}</p>")
        for failure in step.failures:
            out.append(f"<p class='why'>&#10007; {_e(failure)}</p>")
        if step.observed:
            out.append(f"<p>answer: {_e(step.observed)}</p>")
        for note in step.notes:
            out.append(f"<p class='note'>{_e(note)}</p>")
        if step.exchange is not None:
            out.append(_exchange_html(step.exchange))
    out.append("</details>")
    return "".join(out)


def write_html(results: Sequence[RunResult], path: Path) -> Path:
    """A single HTML file with the summary table and every case, step, request and response."""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    rows = "".join(
        f"<tr><td>{_e(r.suite)}</td><td>{_e(r.target)}</td><td>{len(r.cases)}</td>"
        f"<td class='passed'>{r.count('passed')}</td><td class='failed'>{r.count('failed')}</td>"
        f"<td class='skipped'>{r.count('skipped') + r.count('xfail')}</td><td>{r.seconds:.1f} s</td>"
        f"<td class='{'passed' if r.ok else 'failed'}'>{'OK' if r.ok else 'FAILED'}</td></tr>"
        for r in results)
    body = [f"<h1>xds-node conformance report</h1><p>generated {now}</p>",
            "<table><tr><th>suite</th><th>target</th><th>cases</th><th>passed</th><th>failed</th>"
            f"<th>skipped</th><th>time</th><th>result</th></tr>{rows}</table>"]
    for run in results:
        body.append(f"<h2>{_e(run.title)} <small>({_e(run.suite)})</small></h2>")
        body.extend(_case_html(c) for c in run.cases)
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>conformance report</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
