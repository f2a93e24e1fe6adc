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

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Connection, Engine, and_, delete, func, insert, literal, or_, select, update
from sqlalchemy.exc import IntegrityError

from xds_node.db import metadata
from xds_node.patients import tables as t
from xds_node.patients.model import (
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
from xds_node.patients.provenance import (
    Discrepancy,
    DocumentOutcome,
    Version,
    contradictions,
    corroborates,
    fill_in,
)
from xds_node.patients.readers import demographics_from_cda, read_addr, read_csv, read_jsonl, read_name

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
    "read_addr",
    "read_name",
]

log = logging.getLogger("xds_node.patients")

_TABLES = [t.patient, t.patient_identifier, t.patient_address, t.patient_telecom, t.patient_correlation,
           t.patient_version, t.patient_discrepancy]


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

    def __init__(self, engine: Engine, reader: Engine | None = None):
        self.engine = engine
        #: the lookups XCPD runs per request (get, identifiers, candidates, correlations) read here:
        #: on PostgreSQL an autocommit read-only pool (db.make_read_engine)
        self.reader = reader or engine

    def create_schema(self) -> None:
        metadata.create_all(self.engine, tables=_TABLES)
        try:
            with self.engine.begin() as conn:
                self.backfill_versions(conn)
        except IntegrityError:  # another worker starting at the same moment backfilled them first
            pass

    @staticmethod
    def backfill_versions(conn: Connection) -> int:
        """Give every patient stored before versioning existed its current demographics as
        version 1, so the history starts where the index stood (one anti-join; none after)."""
        p, v = t.patient.c, t.patient_version.c
        missing = select(p.patient_id, literal(1), p.source, literal("before versioning"), p.updated, p.data).where(
            ~select(v.id).where(v.patient_id == p.patient_id).exists())
        return conn.execute(insert(t.patient_version).from_select(
            ["patient_id", "version", "source", "actor", "recorded", "data"], missing)).rowcount or 0

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
        v = t.patient_version.c
        conn.execute(insert(t.patient_version).from_select(
            ["patient_id", "version", "source", "actor", "recorded", "data"],
            select(literal(pid), func.coalesce(func.max(v.version), 0) + 1, literal(row["source"]),
                   literal(_clip(actor, 400)), literal(now, t.patient_version.c.recorded.type), literal(data))
            .where(v.patient_id == pid)))

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
        with self.reader.connect() as conn:
            row = conn.execute(select(t.patient).where(t.patient.c.patient_id == patient_id)).first()
        return _patient(row) if row is not None else None

    def count(self) -> int:
        with self.engine.connect() as conn:
            return conn.scalar(select(func.count()).select_from(t.patient)) or 0

    def listing(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Every patient's id and main demographics, by id (``xds-node patients list``)."""
        c = t.patient.c
        stmt = select(c.patient_id, c.family, c.given, c.gender, c.birth_date, c.source, c.updated
                      ).order_by(c.patient_id).limit(limit)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(stmt)]

    def find_by_identifier(self, root: str, extension: str) -> Patient | None:
        j = t.patient.join(t.patient_identifier, t.patient.c.patient_id == t.patient_identifier.c.patient_id)
        stmt = select(t.patient).select_from(j).where(
            t.patient_identifier.c.root == root, t.patient_identifier.c.extension == extension
        )
        with self.reader.connect() as conn:
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
        with self.reader.connect() as conn:
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
            patients = list(read_jsonl(path, default_root, src))
        else:
            patients = list(read_csv(path, default_root, src))
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

    def discrepancies(self, patient_id: str | None = None, *, limit: int | None = None) -> list[Discrepancy]:
        """Documents that contradicted the index: for one patient oldest first, or (without
        ``patient_id``) the newest ``limit`` for every patient, newest first."""
        d = t.patient_discrepancy.c
        if patient_id is not None:
            stmt = select(t.patient_discrepancy).where(d.patient_id == patient_id).order_by(d.recorded, d.id)
        else:
            stmt = select(t.patient_discrepancy).order_by(d.recorded.desc(), d.id.desc()).limit(limit or 200)
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
        with self.reader.connect() as conn:
            return [_correlation(r) for r in conn.execute(stmt)]

    def local_for(self, community_id: str, remote_patient_id: str) -> str | None:
        c = t.patient_correlation.c
        stmt = select(c.local_patient_id).where(c.community_id == community_id,
                                                c.remote_patient_id == remote_patient_id)
        with self.reader.connect() as conn:
            return conn.scalar(stmt.limit(1))

    def delete_correlation(self, local_patient_id: str, community_id: str) -> bool:
        c = t.patient_correlation.c
        with self.engine.begin() as conn:
            res = conn.execute(delete(t.patient_correlation).where(
                c.local_patient_id == local_patient_id, c.community_id == community_id))
            return res.rowcount > 0


def correlation_fits(community: str, extension: str, root: str) -> bool:
    """Whether a partner's id for one of our patients fits the correlation table. The id is the
    partner's text (XCPD query-and-feed, XCPD answers): one that does not fit is not recorded,
    rather than failing the request (PostgreSQL refuses it; SQLite would store it unbounded)."""
    c = t.patient_correlation.c
    return all(value and len(value) <= col.type.length for value, col in (
        (community, c.community_id), (extension, c.remote_patient_id), (root, c.remote_root)))


# --- row <-> model ------------------------------------------------------------------------------


# --- row <-> model ------------------------------------------------------------------------------


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


def _patient(row: Any) -> Patient:
    return Patient(row.patient_id, Demographics.from_dict(json.loads(row.data)), row.source or "")


def _correlation(row: Any) -> Correlation:
    return Correlation(row.local_patient_id, row.community_id, row.remote_patient_id, row.remote_root,
                       row.created, row.last_confirmed)
