"""The demographic score and the match / ambiguous / none decision."""

from __future__ import annotations

import pytest

from xds_node.db import make_engine, metadata
from xds_node.patients.index import PatientIndex
from xds_node.patients.matching import (
    CANDIDATE_THRESHOLD,
    MATCH_THRESHOLD,
    jaro_winkler,
    match,
    score,
    score_breakdown,
)
from xds_node.patients.model import Address, Demographics, Patient, PatientId, cx

ROOT = "1.2.3.4.5.1000"


def person(ext: str, given: str, family: str, gender: str | None, dob: str | None, *,
           zip_code: str | None = None, phone: str | None = None, ids: list[PatientId] | None = None) -> Patient:
    return Patient(cx(ext, ROOT), Demographics(
        given=given.split(), family=family, gender=gender, birth_date=dob,
        addresses=[Address(["1 Main St"], "Montreal", "QC", zip_code, "CA")] if zip_code else [],
        telecoms=[phone] if phone else [], ids=ids or []))


def query(given: str, family: str, gender: str | None, dob: str | None, **kw) -> Demographics:
    return person("q", given, family, gender, dob, **kw).demographics


@pytest.fixture
def index(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/p.db")
    metadata.create_all(engine)
    yield PatientIndex(engine)
    engine.dispose()


CHIP = person("100", "Chip", "Moore", "M", "19849711", zip_code="H2X 1Y4", phone="tel:+1-514-555-0100")


# --- Jaro-Winkler -----------------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b", "expected"), [
    ("MARTHA", "MARHTA", 0.9611), ("DWAYNE", "DUANE", 0.84), ("DIXON", "DICKSONX", 0.8133),
    ("MOORE", "MOORE", 1.0), ("ABC", "XYZ", 0.0), ("", "A", 0.0),
])
def test_jaro_winkler_reference_values(a, b, expected):
    assert jaro_winkler(a, b) == pytest.approx(expected, abs=1e-4)
    assert jaro_winkler(b, a) == pytest.approx(expected, abs=1e-4)


# --- the score --------------------------------------------------------------------------------


def test_exact_name_birth_date_gender_is_a_confident_match():
    assert score(query("Chip", "Moore", "M", "19849711"), CHIP) == 0.90
    assert score(query("Chip", "Moore", "M", "19849711", zip_code="H2X1Y4", phone="514 555 0100"), CHIP) == 1.0


def test_normalization_ignores_case_accents_and_punctuation():
    p = person("1", "José", "O'Brien-Núñez", "M", "19700101")
    assert score_breakdown(query("JOSE", "obrien nunez", "M", "19700101"), p)["family"] == 30
    assert score_breakdown(query("JOSE", "obrien nunez", "M", "19700101"), p)["given"] == 20


def test_family_name_typo_counts_as_fuzzy_and_needs_corroboration():
    q = query("Chip", "Mooer", "M", "19849711")
    parts = score_breakdown(q, CHIP)
    assert parts["family"] == 20
    assert score(q, CHIP) == 0.80  # candidate, not a match on its own
    q2 = query("Chip", "Mooer", "M", "19849711", zip_code="H2X 1Y4", phone="tel:514-555-0100")
    assert score(q2, CHIP) == 0.90


def test_unrelated_family_name_scores_nothing_for_the_name():
    assert score_breakdown(query("Chip", "Johnson", "M", "19849711"), CHIP)["family"] == 0


def test_given_name_initial_and_nickname_typo():
    assert score_breakdown(query("C", "Moore", "M", "19849711"), CHIP)["given"] == 10
    assert score_breakdown(query("Chipp", "Moore", "M", "19849711"), CHIP)["given"] == 10
    assert score_breakdown(query("Bob", "Moore", "M", "19849711"), CHIP)["given"] == 0


def test_transposed_day_and_month():
    p = person("7", "Ann", "Lee", "F", "19840712")
    assert score_breakdown(query("Ann", "Lee", "F", "19841207"), p)["birth_date"] == 15
    assert score_breakdown(query("Ann", "Lee", "F", "19840729"), p)["birth_date"] == 10  # same year+month
    assert score_breakdown(query("Ann", "Lee", "F", "19850712"), p)["birth_date"] == 0


def test_gender_mismatch_is_a_veto():
    assert score(query("Chip", "Moore", "F", "19849711", zip_code="H2X 1Y4"), CHIP) == 0.0
    # unknown gender neither adds nor vetoes
    assert score(query("Chip", "Moore", "UN", "19849711"), CHIP) == 0.80


def test_identifier_match_is_decisive():
    q = Demographics(given=["Someone"], family="Else", ids=[PatientId("100", ROOT)])
    assert score(q, CHIP) == 1.0  # names may differ (aliases), the identifier decides
    contradicting = Demographics(given=["Someone"], family="Else", gender="F", ids=[PatientId("100", ROOT)])
    assert score(contradicting, CHIP) == 0.0  # but not against a stated gender that is not ours
    q_other_root = Demographics(ids=[PatientId("100", "9.9.9")])
    assert score(q_other_root, CHIP) == 0.0


# --- the decision -----------------------------------------------------------------------------


def test_match_exact(index):
    index.add(CHIP)
    index.add(person("200", "Dale", "Cooper", "M", "19540422"))
    r = match(query("Chip", "Moore", "M", "19849711"), index)
    assert r.outcome == "match" and r.patient.patient_id == CHIP.patient_id and r.score == 0.90
    assert r.score >= MATCH_THRESHOLD


def test_typo_alone_is_not_enough(index):
    index.add(CHIP)
    r = match(query("Chip", "Mooer", "M", "19849711"), index)
    assert r.outcome == "none" and r.patient is None
    assert CANDIDATE_THRESHOLD <= r.score < MATCH_THRESHOLD
    r = match(query("Chip", "Mooer", "M", "19849711", zip_code="H2X 1Y4", phone="+1 514 555 0100"), index)
    assert r.outcome == "match"


def test_transposed_birth_date_found_and_matched_with_corroboration(index):
    index.add(person("7", "Ann", "Lee", "F", "19840712", zip_code="02134", phone="617-555-0101"))
    r = match(query("Ann", "Lee", "F", "19841207", zip_code="02134", phone="617-555-0101"), index)
    assert r.outcome == "match" and r.score == 0.85


def test_gender_veto_means_no_match(index):
    index.add(CHIP)
    r = match(query("Chip", "Moore", "F", "19849711"), index)
    assert r.outcome == "none" and r.candidates == []


def test_twins_with_distinct_names_still_match(index):
    index.add(CHIP)
    index.add(person("101", "Dale", "Moore", "M", "19849711"))
    r = match(query("Chip", "Moore", "M", "19849711"), index)
    assert r.outcome == "match" and r.patient.patient_id == CHIP.patient_id
    assert [round(s, 2) for _, s in r.candidates] == [0.90, 0.70]


def test_twins_with_similar_names_are_ambiguous(index):
    index.add(person("300", "John", "Smith", "M", "19900101"))
    index.add(person("301", "Jon", "Smith", "M", "19900101"))
    for given in ("J", "John", "Jon"):
        r = match(query(given, "Smith", "M", "19900101"), index)
        assert r.outcome == "ambiguous", given
        assert r.patient is None
        assert len(r.candidates) == 2


def test_duplicate_records_are_ambiguous(index):
    index.add(person("400", "Mary", "Major", "F", "19700505"))
    index.add(person("401", "Mary", "Major", "F", "19700505"))
    assert match(query("Mary", "Major", "F", "19700505"), index).outcome == "ambiguous"


def test_identifier_shortcut_and_conflicting_identifiers(index):
    index.add(CHIP)
    index.add(person("500", "Kim", "Park", "F", "19880808", ids=[PatientId("999", "2.16.840.1.113883.4.1")]))
    r = match(Demographics(ids=[PatientId("100", ROOT)]), index)
    assert r.outcome == "match" and r.patient.patient_id == CHIP.patient_id and r.score == 1.0
    both = Demographics(ids=[PatientId("100", ROOT), PatientId("999", "2.16.840.1.113883.4.1")])
    assert match(both, index).outcome == "ambiguous"


def test_missing_birth_date(index):
    index.add(CHIP)
    r = match(query("Chip", "Moore", "M", None), index)
    assert r.outcome == "none" and r.reason == "birth_date_required"
    r = match(query("Chip", "Moore", "M", None), index, require_birth_date=False)
    assert r.outcome == "none" and r.reason is None and r.score == 0.60  # scored, but too weak
    r = match(query("Chip", "Moore", "M", None, zip_code="H2X 1Y4", phone="514.555.0100"), index,
              require_birth_date=False)
    assert r.outcome == "none" and r.score == 0.70


def test_unknown_patient(index):
    index.add(CHIP)
    assert match(query("Nobody", "Here", "F", "20010101"), index).outcome == "none"
