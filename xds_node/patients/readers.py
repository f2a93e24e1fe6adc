"""Readers that turn operator files and C-CDA headers into :class:`Patient` / :class:`Demographics`.

No database here: the index decides what a reading may change (see ``provenance``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lxml import etree

from xds_node.patients.model import (
    Address,
    Demographics,
    Patient,
    PatientId,
    cx,
    normalize_date,
    normalize_gender,
    parse_cx,
)

__all__ = ["demographics_from_cda", "read_addr", "read_csv", "read_jsonl", "read_name"]

HL7 = "urn:hl7-org:v3"
SSN_ROOT = "2.16.840.1.113883.4.1"


def _patient_id(raw: str, default_root: str | None, where: str) -> str:
    raw = (raw or "").strip()
    if not raw:
        raise ValueError(f"{where}: patient_id is empty")
    if parse_cx(raw):
        return raw
    if default_root:
        return cx(raw, default_root)
    raise ValueError(f"{where}: patient_id {raw!r} is not ext^^^&root&ISO and no default_root was given")


def _from_flat(row: dict[str, Any], default_root: str | None, source: str, where: str) -> Patient:
    def val(key: str) -> str | None:
        v = row.get(key)
        v = str(v).strip() if v is not None else ""
        return v or None

    addr = Address(
        street=[s.strip() for s in (val("street") or "").split("|") if s.strip()],
        city=val("city"), state=val("state"), postal_code=val("postal_code"), country=val("country"),
    )
    telecoms = []
    if phone := val("phone"):
        telecoms.append(phone if phone.startswith("tel:") else f"tel:{phone}")
    if email := val("email"):
        telecoms.append(email if email.startswith("mailto:") else f"mailto:{email}")
    demo = Demographics(
        given=(val("given") or "").split(),
        family=val("family"),
        gender=normalize_gender(val("gender")),
        birth_date=normalize_date(val("birth_date")),
        addresses=[] if addr.is_empty() else [addr],
        telecoms=telecoms,
        mothers_maiden_name=val("mothers_maiden_name"),
    )
    return Patient(_patient_id(val("patient_id") or "", default_root, where), demo, source)


def read_csv(path: Path, default_root: str | None, source: str) -> Iterator[Patient]:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        for n, row in enumerate(csv.DictReader(fh), start=2):
            yield _from_flat(row, default_root, source, f"{path.name}:{n}")


def read_jsonl(path: Path, default_root: str | None, source: str) -> Iterator[Patient]:
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path.name}:{n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not JSON ({exc.msg})") from exc
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: expected a JSON object")
            if isinstance(obj.get("demographics"), dict):
                pid = _patient_id(str(obj.get("patient_id") or ""), default_root, where)
                yield Patient(pid, Demographics.from_dict(obj["demographics"]), obj.get("source") or source)
            else:
                yield _from_flat(obj, default_root, source, where)


# --- C-CDA recordTarget ---------------------------------------------------------------------------


def _q(path: str) -> str:
    return "/".join(f"{{{HL7}}}{p}" for p in path.split("/"))


def _txt(el: etree._Element | None) -> str | None:
    if el is None:
        return None
    s = " ".join("".join(el.itertext()).split())
    return s or None


def read_addr(el: etree._Element) -> Address:
    """An HL7 V3 AD element -> Address (shared with the XCPD parser)."""
    return Address(
        street=[s for s in (_txt(x) for x in el.findall(_q("streetAddressLine"))) if s],
        city=_txt(el.find(_q("city"))),
        state=_txt(el.find(_q("state"))),
        postal_code=_txt(el.find(_q("postalCode"))),
        country=_txt(el.find(_q("country"))),
    )


def read_name(el: etree._Element) -> tuple[list[str], str | None]:
    """An HL7 V3 PN element -> (given names, family name); a bare text PN counts as family."""
    given = [g for g in (_txt(x) for x in el.findall(_q("given"))) if g]
    families = [f for f in (_txt(x) for x in el.findall(_q("family"))) if f]
    family = " ".join(families) if families else None
    if not given and not family and len(el) == 0:
        family = _txt(el)
    return given, family


def demographics_from_cda(data: bytes, *, prefer_root: str | None = None) -> tuple[str, Demographics]:
    """recordTarget/patientRole of a C-CDA -> (CX patient id, Demographics)."""
    from xds_node.cda import CdaError, parse_header

    try:
        root = parse_header(data)  # hardened, and stops before the body: recordTarget is in the header
    except CdaError as exc:
        raise ValueError(f"not a usable CDA document: {exc}") from exc
    role = root.find(_q("recordTarget/patientRole"))
    if role is None:
        raise ValueError("CDA document has no recordTarget/patientRole")
    ids = [PatientId(e.get("extension", "").strip(), e.get("root", "").strip()) for e in role.findall(_q("id"))]
    ids = [i for i in ids if i.extension and i.root]
    if not ids:
        raise ValueError("recordTarget/patientRole has no id with root and extension")
    chosen = next((i for i in ids if prefer_root and i.root == prefer_root), None)
    chosen = chosen or next((i for i in ids if i.root != SSN_ROOT), ids[0])

    pat = role.find(_q("patient"))
    given: list[str] = []
    family = gender = birth = None
    if pat is not None:
        names = pat.findall(_q("name"))
        name = next((n for n in names if "L" in (n.get("use") or "").split()), names[0] if names else None)
        if name is not None:
            given, family = read_name(name)
        g = pat.find(_q("administrativeGenderCode"))
        gender = normalize_gender(g.get("code")) if g is not None else None
        b = pat.find(_q("birthTime"))
        birth = normalize_date(b.get("value")) if b is not None else None
    addresses = [a for a in (read_addr(x) for x in role.findall(_q("addr"))) if not a.is_empty()]
    telecoms = [v for v in (x.get("value", "").strip() for x in role.findall(_q("telecom"))) if v]
    demo = Demographics(given=given, family=family, gender=gender, birth_date=birth, addresses=addresses,
                        telecoms=telecoms, ids=ids)
    return chosen.cx, demo
