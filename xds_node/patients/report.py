"""``xds-node patients show``: one patient's current demographics, version history and the
documents that contradicted them, as text for a terminal or as JSON.

Names and document values come from outside (any C-CDA a client registered), so the text form
escapes every control, format and separator character: a value cannot move the cursor, forge an
extra line or reverse the text around it on the operator's screen.
"""

from __future__ import annotations

import json
import unicodedata
from datetime import UTC, datetime
from typing import Any

from xds_node.patients.index import Discrepancy, PatientIndex, Version
from xds_node.patients.model import Demographics, Patient

__all__ = ["discrepancy_report", "escape", "patient_report", "render_discrepancies", "render_json", "render_text"]

_UNSAFE = {"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"}


def escape(value: object) -> str:
    """``value`` as one printable line: backslash and unsafe characters as Python-style escapes."""
    out = []
    for ch in str(value):
        if ch == "\\":
            out.append("\\\\")
        elif unicodedata.category(ch) in _UNSAFE:
            n = ord(ch)
            out.append(f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}")
        else:
            out.append(ch)
    return "".join(out)


def patient_report(index: PatientIndex, patient_id: str) -> dict[str, Any] | None:
    """Everything the index holds about one patient; None when it has never heard of them."""
    current = index.get(patient_id)
    versions = index.history(patient_id)
    discrepancies = index.discrepancies(patient_id)
    if current is None and not versions and not discrepancies:
        return None
    return {
        "patient_id": patient_id,
        "in_index": current is not None,
        "current": _current(current, versions),
        "versions": [_version(v) for v in reversed(versions)],  # newest first
        "discrepancies": [_discrepancy(d) for d in discrepancies],
    }


def _when(value: datetime | None) -> str | None:
    """ISO 8601 in UTC (SQLite hands back the naive UTC time we stored)."""
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat(timespec="seconds")


def _demo(d: Demographics) -> dict[str, Any]:
    return d.to_dict()


def _current(patient: Patient | None, versions: list[Version]) -> dict[str, Any] | None:
    if patient is None:
        return None
    latest = versions[-1] if versions else None
    return {"version": latest.version if latest else None, "source": patient.source,
            "demographics": _demo(patient.demographics)}


def _version(v: Version) -> dict[str, Any]:
    return {"version": v.version, "recorded": _when(v.recorded), "source": v.source, "actor": v.actor,
            "demographics": _demo(v.demographics)}


def _discrepancy(d: Discrepancy) -> dict[str, Any]:
    return {"recorded": _when(d.recorded), "field": d.field, "indexed_value": d.indexed_value,
            "document_value": d.document_value, "document_unique_id": d.document_unique_id,
            "entry_uuid": d.entry_uuid, "source": d.source}


def render_json(report: dict[str, Any]) -> str:
    """JSON with every non-ASCII and control character as a ``\\u`` escape."""
    return json.dumps(report, indent=2, ensure_ascii=True)


def _summary(demo: dict[str, Any]) -> str:
    parts = [f"family={demo.get('family') or ''}", f"given={' '.join(demo.get('given') or [])}",
             f"gender={demo.get('gender') or ''}", f"birth_date={demo.get('birth_date') or ''}"]
    return " ".join(parts)


def _field_text(key: str, value: Any) -> str:
    if key == "addresses":
        return "; ".join(", ".join(x for x in (*a["street"], a["city"], a["state"], a["postal_code"], a["country"])
                                   if x) for a in value)
    if key == "ids":
        return ", ".join(f"{i['extension']}^^^&{i['root']}&ISO" for i in value)
    if isinstance(value, list):
        return " ".join(str(x) for x in value)
    return "" if value is None else str(value)


def _quoted(value: object) -> str:
    return "'" + escape(value).replace("'", "\\'") + "'"


def render_text(report: dict[str, Any]) -> str:
    """The report for a terminal: every value escaped, one item per line."""
    e = escape
    lines = [f"patient              {e(report['patient_id'])}"]
    cur = report["current"]
    if cur is None:
        lines.append("                     not in the patient index (removed); history below")
    else:
        lines.append(f"version              {cur['version'] or '-'} (source {e(cur['source'])})")
        for key, value in cur["demographics"].items():
            lines.append(f"{key:20} {e(_field_text(key, value))}")
    lines.append("")
    lines.append(f"versions ({len(report['versions'])}, newest first; matching uses the newest):")
    for v in report["versions"]:
        lines.append(f"  {v['version']:>3}  {v['recorded']}  {e(v['source'])}  by {e(v['actor'] or '-')}  "
                     f"{e(_summary(v['demographics']))}")
    lines.append("")
    lines.append(f"discrepancies ({len(report['discrepancies'])}; documents that contradict the index, "
                 "not used for matching):")
    for d in report["discrepancies"]:
        lines.append(f"  {d['recorded']}  {e(d['field'])}: indexed {_quoted(d['indexed_value'])}, "
                     f"document says {_quoted(d['document_value'])}  (document {e(d['document_unique_id'] or '-')}, "
                     f"entry {e(d['entry_uuid'] or '-')}, source {e(d['source'])})")
    if report["discrepancies"]:
        lines.append("  to correct the index: xds-node patients add PATIENT --family ... (a new version)")
    return "\n".join(lines)


def discrepancy_report(index: PatientIndex, limit: int = 200) -> list[dict[str, Any]]:
    """The newest discrepancies across every patient (what an operator reviews)."""
    return [{"patient_id": d.patient_id, **_discrepancy(d)} for d in index.discrepancies(limit=limit)]


def render_discrepancies(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no document has contradicted the patient index"
    return "\n".join(f"{r['recorded']}  {escape(r['patient_id'])}  {escape(r['field'])}: indexed "
                     f"{_quoted(r['indexed_value'])}, document says {_quoted(r['document_value'])}  "
                     f"(document {escape(r['document_unique_id'] or '-')}, source {escape(r['source'])})"
                     for r in rows)
