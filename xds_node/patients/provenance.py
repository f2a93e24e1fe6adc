"""What a document may change in the patient index: the rules, as pure functions.

A registered C-CDA's recordTarget is a claim about a patient, made by whoever submitted it. It may
introduce a patient we do not know; it may complete one it *corroborates* (same family name, a
compatible birth date); it may never *contradict* one, because the index decides which of our
patients an XCPD answer discloses. A contradiction is kept as a :class:`Discrepancy` for a human.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from xds_node.patients.model import Demographics, normalize_date, normalize_gender, normalize_name

__all__ = ["Discrepancy", "DocumentOutcome", "Version", "contradictions", "corroborates", "fill_in"]


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
