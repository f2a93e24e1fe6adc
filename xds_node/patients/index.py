"""The patient index: our community's patients, their identifiers, and partner correlations.

Writes keep the searchable columns (normalized names, birth date, identifiers, postal codes,
phone digits) in step with the JSON copy of the demographics, so that :meth:`PatientIndex.candidates`
is a handful of indexed lookups and the (Python) matcher only ever scores a few dozen rows.

Who may change a patient: the operator (``patients add|import``) replaces demographics; a
registered document may create a patient the index does not know yet, and a document that names
the patient as we do (same family name and birth date) may fill in what the current version
lacks; a document that *contradicts* the current version (family or first given name, birth
date, gender) changes nothing: a matching answer must not be steerable by whoever can submit a
C-CDA. Each change is a new row of ``patient_version``; each contradiction a row of
``patient_discrepancy`` for a human to resolve (with ``patients add``).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from lxml import etree
from sqlalchemy import Connection, Engine, and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from xds_node.db import metadata
from xds_node.patients import tables as t
from xds_node.patients.model import (
    Address,
    Demographics,
    Patient,
    PatientId,
    cx,
    digits,
    normalize_date,
    normalize_gender,
    normalize_name,
    parse_cx,
)

__all__ = [
    "Correlation",
    "Discrepancy",
    "DocumentOutcome",
    "PatientIndex",
    "Version",
    "contradictions",
    "corroborates",
    "demographics_from_cda",
    "fill_in",
]

log = logging.getLogger("xds_node.patients")

HL7 = "urn:hl7-org:v3"
SSN_ROOT = "2.16.840.1.113883.4.1"
_TABLES = [t.patient, t.patient_identifier, t.patient_address, t.patient_telecom, t.patient_correlation,
           t.patient_version, t.patient_discrepancy]
#: The demographics a document may not contradict (they decide XCPD matching).
CORE_FIELDS = ("family", "given", "gender", "birth_date")


@dataclass(frozen=True)
class Version:
    """One entry of a patient's demographics history (newest has the highest number)."""

    patient_id: str
    version: int
    source: str  # what: "cli", an import file name, "cda", ...
    actor: str  # who: the operator, or the document that made the change
    recorded: datetime
    demographics: Demographics


@dataclass(frozen=True)
class Discrepancy:
    """A registered document's recordTarget disagreeing with the index (which stays as it was)."""

    patient_id: str
    field: str
    indexed_value: str
    document_value: str
    document_unique_id: str = ""
    entry_uuid: str = ""
    source: str = ""
    recorded: datetime | None = None


@dataclass
class DocumentOutcome:
    """What indexing one document's recordTarget did."""

    patient_id: str
    outcome: Literal["created", "updated", "unchanged", "contradicted"]
    discrepancies: list[Discrepancy] = field(default_factory=list)


@dataclass
class Correlation:
    """A partner community's id for one of our patients (learned through ITI-55)."""

    local_patient_id: str
    community_id: str
    remote_patient_id: str
    remote_root: str
    created: datetime
    last_confirmed: datetime

    @property
    def remote_cx(self) -> str:
        return cx(self.remote_patient_id, self.remote_root)


def _now() -> datetime:
    return datetime.now(UTC)


def _transposed(birth_date: str) -> str | None:
    """YYYYMMDD with day and month swapped, when that is still a plausible date."""
    if len(birth_date) != 8:
        return None
    mm, dd = birth_date[4:6], birth_date[6:8]
    if mm == dd or not dd.isdigit() or not 1 <= int(dd) <= 12:
        return None
    return birth_date[:4] + dd + mm


class PatientIndex:
    """Patients of our community, stored with SQLAlchemy Core (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def create_schema(self) -> None:
        metadata.create_all(self.engine, tables=_TABLES)

    # --- patients ---------------------------------------------------------------------------

    def add(self, patient: Patient, *, actor: str = "") -> Literal["created", "updated", "unchanged"]:
        """Insert or replace one patient (demographics, identifiers, addresses, telecoms) as a new
        version: the operator's way to create a patient or correct one."""
        with self.engine.begin() as conn:
            return self._add(conn, patient, actor=actor)

    def add_many(self, patients: Iterable[Patient], *, actor: str = "") -> dict[str, int]:
        """Bulk load in one transaction; returns ``{"created": n, "updated": m, "unchanged": k}``."""
        counts = {"created": 0, "updated": 0, "unchanged": 0}
        with self.engine.begin() as conn:
            for p in patients:
                counts[self._add(conn, p, actor=actor)] += 1
        return counts

    def _add(self, conn: Connection, patient: Patient, *, stored: Any = False, actor: str = ""
             ) -> Literal["created", "updated", "unchanged"]:
        """Insert or replace, and append the new version; ``stored`` is the row the caller already
        read (False: read it here)."""
        d = patient.demographics
        data = json.dumps(d.to_dict(), separators=(",", ":"))
        pid = _checked_id(patient.patient_id)
        if stored is False:
            stored = self._stored(conn, pid)
        if stored is not None and stored.data == data and stored.source == _clip(patient.source, 200):
            return "unchanged"  # ingest sees the same recordTarget in every document of a patient
        now = _now()
        row = {
            "family": _clip(d.family, 200) or None,
            "given": _clip(" ".join(d.given), 400) or None,
            "family_norm": _clip(normalize_name(d.family), 200),
            "given_norm": _clip(" ".join(normalize_name(g) for g in d.given), 400),
            "gender": normalize_gender(d.gender),
            "birth_date": normalize_date(d.birth_date),
            "source": _clip(patient.source, 200),
            "data": data,
            "updated": now,
        }
        exists = stored is not None
        if exists:
            conn.execute(update(t.patient).where(t.patient.c.patient_id == pid).values(**row))
            for child in (t.patient_identifier, t.patient_address, t.patient_telecom):
                conn.execute(delete(child).where(child.c.patient_id == pid))
        else:
            conn.execute(insert(t.patient).values(patient_id=pid, created=now, **row))
        # after the write above: on PostgreSQL the patient row is locked (or newly inserted) by now,
        # so a concurrent writer of the same patient waits here and then sees this version
        last = conn.scalar(select(func.max(t.patient_version.c.version)).where(t.patient_version.c.patient_id == pid))
        conn.execute(insert(t.patient_version), [{
            "patient_id": pid, "version": (last or 0) + 1, "source": row["source"], "actor": _clip(actor, 400),
            "recorded": now, "data": data}])

        ids: list[PatientId] = []
        primary = parse_cx(pid)
        for ident in ([primary] if primary else []) + list(d.ids):
            if ident not in ids and ident.extension and ident.root and len(ident.root) <= 128 \
                    and len(ident.extension) <= 256:
                ids.append(ident)
        for ident in ids:
            owner = conn.scalar(
                select(t.patient_identifier.c.patient_id).where(
                    t.patient_identifier.c.root == ident.root, t.patient_identifier.c.extension == ident.extension
                )
            )
            if owner is not None and owner != pid:
                # Two records claiming one identifier is a data-quality problem for a human; never
                # let it silently merge or re-point the identifier.
                log.warning("identifier %s already belongs to %s; not indexed for %s", ident.cx, owner, pid)
                continue
            conn.execute(insert(t.patient_identifier).values(patient_id=pid, root=ident.root,
                                                             extension=ident.extension))
        addresses = [a for a in d.addresses if not a.is_empty()]
        if addresses:
            conn.execute(insert(t.patient_address), [
                {"patient_id": pid, "street": _clip(", ".join(a.street), 400) or None, "city": _clip(a.city, 200),
                 "state": _clip(a.state, 100), "postal_code": _clip(a.postal_code, 40),
                 "country": _clip(a.country, 100)} for a in addresses
            ])
        if d.telecoms:
            conn.execute(insert(t.patient_telecom), [
                {"patient_id": pid, "value": _clip(tel, 400),
                 "digits": digits(tel) if not tel.startswith("mailto:") else ""}
                for tel in d.telecoms
            ])
        return "updated" if exists else "created"

    def remove(self, patient_id: str) -> bool:
        with self.engine.begin() as conn:
            for child in (t.patient_identifier, t.patient_address, t.patient_telecom):
                conn.execute(delete(child).where(child.c.patient_id == patient_id))
            return conn.execute(delete(t.patient).where(t.patient.c.patient_id == patient_id)).rowcount > 0

    def get(self, patient_id: str) -> Patient | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(t.patient).where(t.patient.c.patient_id == patient_id)).first()
        return _patient(row) if row is not None else None

    def count(self) -> int:
        with self.engine.connect() as conn:
            return conn.scalar(select(func.count()).select_from(t.patient)) or 0

    def find_by_identifier(self, root: str, extension: str) -> Patient | None:
        j = t.patient.join(t.patient_identifier, t.patient.c.patient_id == t.patient_identifier.c.patient_id)
        stmt = select(t.patient).select_from(j).where(
            t.patient_identifier.c.root == root, t.patient_identifier.c.extension == extension
        )
        with self.engine.connect() as conn:
            row = conn.execute(stmt).first()
        return _patient(row) if row is not None else None

    def candidates(self, demographics: Demographics, limit: int = 50) -> list[Patient]:
        """Cheap, indexed pre-selection for the matcher, most specific lookups first.

        Identifier hits, then family name + birth date (also day/month transposed), then birth
        date alone (catches misspelled family names), then family name alone (catches wrong
        birth dates). Never a table scan.
        """
        found: dict[str, Patient] = {}

        def take(rows: Iterable[Any]) -> None:
            for row in rows:
                if len(found) >= limit:
                    return
                if row.patient_id not in found:
                    found[row.patient_id] = _patient(row)

        fam = normalize_name(demographics.family)
        bd = normalize_date(demographics.birth_date)
        dates = [x for x in (bd, _transposed(bd) if bd else None) if x]
        p = t.patient.c
        with self.engine.connect() as conn:
            if demographics.ids:
                pi = t.patient_identifier.c
                cond = or_(*(and_(pi.root == i.root, pi.extension == i.extension) for i in demographics.ids))
                j = t.patient.join(t.patient_identifier, p.patient_id == pi.patient_id)
                take(conn.execute(select(t.patient).select_from(j).where(cond).limit(limit)))
            steps = []
            if fam and dates:
                steps.append(and_(p.family_norm == fam, p.birth_date.in_(dates)))
            if dates:
                steps.append(p.birth_date.in_(dates))
            if fam:
                steps.append(p.family_norm == fam)
            for cond in steps:
                if len(found) >= limit:
                    break
                take(conn.execute(select(t.patient).where(cond).order_by(p.patient_id).limit(limit)))
        return list(found.values())

    # --- bulk import --------------------------------------------------------------------------

    def import_file(self, path: str | Path, *, default_root: str | None = None, source: str | None = None,
                    actor: str = "") -> dict[str, int]:
        """Load a CSV (header: patient_id, family, given, gender, birth_date, street, city, state,
        postal_code, country, phone, email) or JSON lines (same keys, or ``{"patient_id",
        "demographics": {...}}``). A bare ``patient_id`` needs ``default_root`` to become a CX."""
        path = Path(path)
        src = source or path.name
        if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
            patients = list(_read_jsonl(path, default_root, src))
        else:
            patients = list(_read_csv(path, default_root, src))
        return self.add_many(patients, actor=actor)

    def add_from_cda(self, data: bytes, *, source: str = "cda", prefer_root: str | None = None,
                     conn: Connection | None = None, document_unique_id: str = "",
                     entry_uuid: str = "") -> DocumentOutcome:
        """Index the recordTarget of a registered C-CDA (in ``conn``'s transaction when given).

        Creates an unknown patient and fills in what the current version lacks; a recordTarget
        that contradicts the current version changes nothing and is recorded as discrepancies.
        The common case (the same demographics again) is one indexed read and no write.
        """
        patient_id, demo = demographics_from_cda(data, prefer_root=prefer_root)
        _checked_id(patient_id)
        observed = Patient(patient_id, demo, source)
        doc = (document_unique_id or "", entry_uuid or "")
        if conn is not None:
            return self._observe(conn, observed, doc)
        try:
            with self.engine.begin() as own:
                return self._observe(own, observed, doc)
        except IntegrityError:  # another process created the same patient first: compare with it
            with self.engine.begin() as own:
                return self._observe(own, observed, doc)

    def _observe(self, conn: Connection, patient: Patient, doc: tuple[str, str]) -> DocumentOutcome:
        pid = patient.patient_id
        actor = f"document {doc[0]}" if doc[0] else "document"
        row = self._stored(conn, pid)
        if row is None:
            return DocumentOutcome(pid, self._add(conn, patient, stored=None, actor=actor))
        held = Demographics.from_dict(json.loads(row.data))
        found = contradictions(held, patient.demographics)
        if found:
            now = _now()
            discrepancies = [Discrepancy(pid, f, ih, dv, doc[0], doc[1], patient.source, now) for f, ih, dv in found]
            conn.execute(insert(t.patient_discrepancy), [{
                "patient_id": pid, "document_unique_id": _clip(d.document_unique_id, 256),
                "entry_uuid": _clip(d.entry_uuid, 64), "field": d.field, "indexed_value": _clip(d.indexed_value, 400),
                "document_value": _clip(d.document_value, 400), "source": _clip(d.source, 200),
                "recorded": now} for d in discrepancies])
            log.warning("patient %s: document %r contradicts the index (%s); the index is unchanged",
                        pid, doc[0], ", ".join(f"{f}: indexed {ih!r}, document {dv!r}" for f, ih, dv in found))
            return DocumentOutcome(pid, "contradicted", discrepancies)
        if not corroborates(held, patient.demographics):
            return DocumentOutcome(pid, "unchanged")  # says too little about who it is to add anything
        merged = fill_in(held, patient.demographics)
        if merged == held:
            return DocumentOutcome(pid, "unchanged")
        return DocumentOutcome(pid, self._add(conn, Patient(pid, merged, patient.source), stored=row, actor=actor))

    def history(self, patient_id: str) -> list[Version]:
        """Every version of a patient's demographics, oldest first."""
        v = t.patient_version.c
        stmt = select(t.patient_version).where(v.patient_id == patient_id).order_by(v.version)
        with self.engine.connect() as conn:
            return [Version(r.patient_id, r.version, r.source, r.actor or "", r.recorded,
                            Demographics.from_dict(json.loads(r.data))) for r in conn.execute(stmt)]

    def discrepancies(self, patient_id: str) -> list[Discrepancy]:
        """Documents that contradicted the index for this patient, oldest first."""
        d = t.patient_discrepancy.c
        stmt = select(t.patient_discrepancy).where(d.patient_id == patient_id).order_by(d.recorded, d.id)
        with self.engine.connect() as conn:
            return [Discrepancy(r.patient_id, r.field, r.indexed_value, r.document_value, r.document_unique_id,
                                r.entry_uuid, r.source, r.recorded) for r in conn.execute(stmt)]

    @staticmethod
    def _stored(conn: Connection, patient_id: str):
        return conn.execute(select(t.patient.c.patient_id, t.patient.c.data, t.patient.c.source)
                            .where(t.patient.c.patient_id == patient_id)).first()

    # --- correlations (initiating gateway) -----------------------------------------------------

    def save_correlation(self, local_patient_id: str, community_id: str, remote_patient_id: str,
                         remote_root: str) -> None:
        """Remember (or re-confirm) the partner's id for one of our patients."""
        c = t.patient_correlation.c
        now = _now()
        values = {"remote_patient_id": remote_patient_id, "remote_root": remote_root, "last_confirmed": now}
        where = and_(c.local_patient_id == local_patient_id, c.community_id == community_id)
        for _ in range(2):  # a concurrent insert of the same pair turns into an update on retry
            try:
                with self.engine.begin() as conn:
                    if conn.execute(update(t.patient_correlation).where(where).values(**values)).rowcount:
                        return
                    conn.execute(insert(t.patient_correlation).values(
                        local_patient_id=local_patient_id, community_id=community_id, created=now, **values))
                    return
            except IntegrityError:
                continue

    def correlations_for(self, local_patient_id: str) -> list[Correlation]:
        c = t.patient_correlation.c
        stmt = select(t.patient_correlation).where(c.local_patient_id == local_patient_id).order_by(c.community_id)
        with self.engine.connect() as conn:
            return [_correlation(r) for r in conn.execute(stmt)]

    def local_for(self, community_id: str, remote_patient_id: str) -> str | None:
        c = t.patient_correlation.c
        stmt = select(c.local_patient_id).where(c.community_id == community_id,
                                                c.remote_patient_id == remote_patient_id)
        with self.engine.connect() as conn:
            return conn.scalar(stmt.limit(1))

    def delete_correlation(self, local_patient_id: str, community_id: str) -> bool:
        c = t.patient_correlation.c
        with self.engine.begin() as conn:
            res = conn.execute(delete(t.patient_correlation).where(
                c.local_patient_id == local_patient_id, c.community_id == community_id))
            return res.rowcount > 0


# --- row <-> model ------------------------------------------------------------------------------


def _first_given(d: Demographics) -> str:
    return normalize_name(d.given[0]) if d.given else ""


def _known_gender(value: str | None) -> str | None:
    g = normalize_gender(value)
    return g if g in ("M", "F") else None  # UN says nothing


def contradictions(held: Demographics, doc: Demographics) -> list[tuple[str, str, str]]:
    """``(field, indexed value, document value)`` for each core field both sides state differently.

    A missing value is never a contradiction; neither is a less precise birth date (1978 vs
    19780412), an initial for a given name (A vs Alex), nor gender UN. Names compare normalized
    (case, accents and punctuation ignored).
    """
    out: list[tuple[str, str, str]] = []
    hf, df = normalize_name(held.family), normalize_name(doc.family)
    if hf and df and hf != df:
        out.append(("family", held.family or "", doc.family or ""))
    hg, dg = _first_given(held), _first_given(doc)
    if hg and dg and hg != dg and not (len(dg) == 1 and hg.startswith(dg)) and not (len(hg) == 1 and dg.startswith(hg)):
        out.append(("given", " ".join(held.given), " ".join(doc.given)))
    hx, dx = _known_gender(held.gender), _known_gender(doc.gender)
    if hx and dx and hx != dx:
        out.append(("gender", hx, dx))
    hb, db = normalize_date(held.birth_date), normalize_date(doc.birth_date)
    if hb and db and not (hb.startswith(db) or db.startswith(hb)):
        out.append(("birth_date", hb, db))
    return out


def corroborates(held: Demographics, doc: Demographics) -> bool:
    """Whether a (non-contradicting) document names the patient as we do: the same family name
    and, when we hold one, a birth date. Only such a document may complete the index, so one that
    states nothing (or only an identifier) cannot attach identifiers or phones to a patient."""
    hf = normalize_name(held.family)
    if not hf or hf != normalize_name(doc.family):
        return False
    hb, db = normalize_date(held.birth_date), normalize_date(doc.birth_date)
    return not hb or bool(db and (hb.startswith(db) or db.startswith(hb)))


def fill_in(held: Demographics, doc: Demographics) -> Demographics:
    """``held`` completed from a document that does not contradict it: core fields only where
    ``held`` has none (or a less precise birth date), every new address, phone and identifier
    added. Never replaces a value: folding the same document in again changes nothing."""
    def union(a: list, b: list) -> list:
        out = list(a)
        for item in b:
            if item not in out:
                out.append(item)
        return out

    hb, db = normalize_date(held.birth_date), normalize_date(doc.birth_date)
    return Demographics(
        given=held.given or doc.given,
        family=held.family or doc.family,
        gender=held.gender if _known_gender(held.gender) else (doc.gender or held.gender),
        birth_date=db if hb and db and len(db) > len(hb) and db.startswith(hb) else (hb or db),
        addresses=union(held.addresses, [a for a in doc.addresses if not a.is_empty()]),
        telecoms=union(held.telecoms, doc.telecoms),
        ids=union(held.ids, doc.ids),
        mothers_maiden_name=held.mothers_maiden_name or doc.mothers_maiden_name,
    )


def _clip(value: str | None, limit: int) -> str:
    """At most ``limit`` characters, so a long value from a document never fails a write on
    PostgreSQL (which refuses what SQLite would store); the JSON copy keeps the whole value."""
    value = value or ""
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _checked_id(patient_id: str) -> str:
    if not patient_id or len(patient_id) > 256:
        raise ValueError(f"patient id of {len(patient_id or '')} characters (1 to 256 allowed)")
    return patient_id


def _patient(row: Any) -> Patient:
    return Patient(row.patient_id, Demographics.from_dict(json.loads(row.data)), row.source or "")


def _correlation(row: Any) -> Correlation:
    return Correlation(row.local_patient_id, row.community_id, row.remote_patient_id, row.remote_root,
                       row.created, row.last_confirmed)


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


def _read_csv(path: Path, default_root: str | None, source: str) -> Iterator[Patient]:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        for n, row in enumerate(csv.DictReader(fh), start=2):
            yield _from_flat(row, default_root, source, f"{path.name}:{n}")


def _read_jsonl(path: Path, default_root: str | None, source: str) -> Iterator[Patient]:
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
