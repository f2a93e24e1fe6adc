"""Deterministic demographic matching for XCPD (ITI-55) queries.

A partner asks "do you know this person?"; a wrong "yes" discloses someone else's records, a
wrong "no" only costs a missed document. So the score is simple, explainable and conservative:
integer points (0-100, reported as 0.00-1.00), no learned weights, no randomness, the same answer
for the same data on every node.

Score (points out of 100)
=========================

=============================  ======  =============================================================
Criterion                      Points  Rule
=============================  ======  =============================================================
Identifier                     100     a query ``livingSubjectId`` (root + extension) equals one of
                                       the patient's identifiers and the query's gender / full birth
                                       date, when given, do not contradict ours: match at once
Family name, exact             30      equal after normalization (uppercase, accents and
                                       punctuation removed: "O'Brien" = "OBRIEN")
Family name, fuzzy             20      Jaro-Winkler similarity >= 0.92 (typos, transpositions)
Given name, exact              20      first given names equal after normalization
Given name, partial            10      initial only ("J" vs "JOHN"), Jaro-Winkler >= 0.92, or the
                                       first given name of one is another given name of the other
Birth date, exact              30      YYYYMMDD equal
Birth date, day/month swapped  15      YYYYDDMM equal (a classic data-entry error)
Birth date, year + month       10      YYYYMM equal
Gender                         10      equal (M/F); a M/F **mismatch is a veto**: score 0
Postal code                    5       first 5 characters of any postal code equal
Phone                          5       last 10 digits of any phone number equal
=============================  ======  =============================================================

Outcome (``MATCH_THRESHOLD`` = 0.85, ``CANDIDATE_THRESHOLD`` = 0.70, closeness margin 0.10):

* **match** - the best candidate scores >= 0.85 and no other candidate scores within 0.10 of it
  (and >= 0.70). Exact family + given + birth date + gender = 0.90 is the usual match; a typo in
  the family name (0.80) needs a corroborating postal code and phone to reach 0.90.
* **ambiguous** - two or more candidates score >= 0.70 within 0.10 of the best one (twins with
  similar names, duplicate records). We answer "AnswerNotAvailable" rather than guess.
* **none** - anything else, including a single candidate between 0.70 and 0.85, and (with
  ``require_birth_date``, the default) a query without a birth date: IHE XCPD lets a responding
  gateway require it, and the NIST 15500 "DOB missing" case expects no match. Identifier matches
  are exempt from that requirement (the shared-identifier query mode has no demographics).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from xds_node.patients.index import PatientIndex
from xds_node.patients.model import (
    Demographics,
    Patient,
    PatientId,
    digits,
    normalize_date,
    normalize_gender,
    normalize_name,
    parse_cx,
)

__all__ = [
    "CANDIDATE_THRESHOLD",
    "CLOSE_MARGIN",
    "MATCH_THRESHOLD",
    "MatchResult",
    "jaro_winkler",
    "match",
    "score",
    "score_breakdown",
]

MATCH_THRESHOLD = 0.85
CANDIDATE_THRESHOLD = 0.70
CLOSE_MARGIN = 0.10
FUZZY = 0.92

# points, so that sums and comparisons are exact integers
_MATCH = 85
_CANDIDATE = 70
_MARGIN = 10

Outcome = Literal["match", "none", "ambiguous"]


@dataclass
class MatchResult:
    outcome: Outcome
    patient: Patient | None = None
    score: float = 0.0
    candidates: list[tuple[Patient, float]] = field(default_factory=list)  # best first
    reason: str | None = None  # e.g. "birth_date_required"


def jaro_winkler(a: str, b: str, prefix_scale: float = 0.1) -> float:
    """Jaro-Winkler similarity in [0, 1] (1 = identical); common prefix up to 4 characters boosts."""
    if a == b:
        return 1.0 if a else 0.0
    la, lb = len(a), len(b)
    if not la or not lb:
        return 0.0
    window = max(max(la, lb) // 2 - 1, 0)
    a_hit = [False] * la
    b_hit = [False] * lb
    matches = 0
    for i, ch in enumerate(a):
        for j in range(max(0, i - window), min(lb, i + window + 1)):
            if not b_hit[j] and b[j] == ch:
                a_hit[i] = b_hit[j] = True
                matches += 1
                break
    if not matches:
        return 0.0
    a_seq = [ch for ch, hit in zip(a, a_hit, strict=True) if hit]
    b_seq = [ch for ch, hit in zip(b, b_hit, strict=True) if hit]
    transpositions = sum(x != y for x, y in zip(a_seq, b_seq, strict=True)) / 2
    jaro = (matches / la + matches / lb + (matches - transpositions) / matches) / 3
    prefix = 0
    for x, y in zip(a[:4], b[:4], strict=False):
        if x != y:
            break
        prefix += 1
    return jaro + prefix * prefix_scale * (1 - jaro)


def _ids(patient: Patient) -> set[PatientId]:
    ids = set(patient.demographics.ids)
    primary = parse_cx(patient.patient_id)
    if primary:
        ids.add(primary)
    return ids


def _family(q: str, c: str) -> int:
    if not q or not c:
        return 0
    if q == c:
        return 30
    return 20 if jaro_winkler(q, c) >= FUZZY else 0


def _given(qs: list[str], cs: list[str]) -> int:
    if not qs or not cs:
        return 0
    q, c = qs[0], cs[0]
    if q == c:
        return 20
    if (len(q) == 1 or len(c) == 1) and q[0] == c[0]:
        return 10
    if jaro_winkler(q, c) >= FUZZY or q in cs or c in qs:
        return 10
    return 0


def _birth(q: str | None, c: str | None) -> int:
    if not q or not c:
        return 0
    if len(q) == 8 and len(c) == 8:
        if q == c:
            return 30
        if q[:4] == c[:4] and q[4:6] == c[6:8] and q[6:8] == c[4:6]:
            return 15
    return 10 if len(q) >= 6 and len(c) >= 6 and q[:6] == c[:6] else 0


def contradicts(query: Demographics, candidate: Patient) -> bool:
    """Demographics the query states that our record flatly denies (M/F gender, full birth date).

    An identifier match still needs this to be False: a caller who guesses (or mistypes) one of
    our record numbers must not get another person's demographics back.
    """
    c = candidate.demographics
    qg, cg = normalize_gender(query.gender), normalize_gender(c.gender)
    if qg in ("M", "F") and cg in ("M", "F") and qg != cg:
        return True
    qb, cb = normalize_date(query.birth_date), normalize_date(c.birth_date)
    return bool(qb and cb and len(qb) == 8 and len(cb) == 8 and qb != cb)


def score_breakdown(query: Demographics, candidate: Patient) -> dict[str, int]:
    """Points per criterion (see the module table); ``{"identifier": 100}`` or ``{"veto": 0}``."""
    if query.ids and set(query.ids) & _ids(candidate) and not contradicts(query, candidate):
        return {"identifier": 100}
    c = candidate.demographics
    qg, cg = normalize_gender(query.gender), normalize_gender(c.gender)
    if qg in ("M", "F") and cg in ("M", "F") and qg != cg:
        return {"veto": 0}
    parts = {
        "family": _family(normalize_name(query.family), normalize_name(c.family)),
        "given": _given([n for n in map(normalize_name, query.given) if n],
                        [n for n in map(normalize_name, c.given) if n]),
        "birth_date": _birth(normalize_date(query.birth_date), normalize_date(c.birth_date)),
        "gender": 10 if qg in ("M", "F") and qg == cg else 0,
    }
    q_zip = {a.postal_code.replace(" ", "")[:5].upper() for a in query.addresses if a.postal_code}
    c_zip = {a.postal_code.replace(" ", "")[:5].upper() for a in c.addresses if a.postal_code}
    parts["postal_code"] = 5 if q_zip & c_zip else 0
    q_tel = {d for d in map(digits, query.telecoms) if len(d) >= 7}
    c_tel = {d for d in map(digits, c.telecoms) if len(d) >= 7}
    parts["phone"] = 5 if q_tel & c_tel else 0
    return parts


def _points(query: Demographics, candidate: Patient) -> int:
    return min(sum(score_breakdown(query, candidate).values()), 100)


def score(query: Demographics, candidate: Patient) -> float:
    """The candidate's score in [0, 1]."""
    return _points(query, candidate) / 100


def match(query: Demographics, index: PatientIndex, *, require_birth_date: bool = True,
          limit: int = 50) -> MatchResult:
    """Find the one patient of ours that ``query`` describes, or say why not (module docstring)."""
    pool = index.candidates(query, limit=limit)
    if query.ids:
        hits = sorted((p for p in pool if set(query.ids) & _ids(p) and not contradicts(query, p)),
                      key=lambda p: p.patient_id)
        if len(hits) == 1:
            return MatchResult("match", hits[0], 1.0, [(hits[0], 1.0)])
        if len(hits) > 1:  # the query's identifiers point at different patients of ours
            return MatchResult("ambiguous", None, 1.0, [(p, 1.0) for p in hits])
    if require_birth_date and not normalize_date(query.birth_date):
        return MatchResult("none", reason="birth_date_required")

    scored = sorted(((p, _points(query, p)) for p in pool), key=lambda x: (-x[1], x[0].patient_id))
    scored = [(p, pts) for p, pts in scored if pts > 0]
    candidates = [(p, pts / 100) for p, pts in scored]
    if not scored:
        return MatchResult("none")
    best, best_pts = scored[0]
    close = [pts for _, pts in scored[1:] if pts >= _CANDIDATE and pts >= best_pts - _MARGIN]
    if best_pts >= _MATCH and not close:
        return MatchResult("match", best, best_pts / 100, candidates)
    if best_pts >= _CANDIDATE and close:
        return MatchResult("ambiguous", None, best_pts / 100, candidates)
    return MatchResult("none", None, best_pts / 100, candidates)
