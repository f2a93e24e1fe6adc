"""PatientIndex on a temporary SQLite database: storage, candidates, import, C-CDA, correlations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xds_node.db import make_engine, metadata
from xds_node.patients.index import PatientIndex, demographics_from_cda
from xds_node.patients.model import Address, Demographics, Patient, PatientId, cx, parse_cx

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
CCD1 = CORPUS / "04-ccda" / "hl7-c-cda-examples" / "Documents" / "CCD" / "CCD 1" / "CCD.XML"
ROOT = "1.3.6.1.4.1.21367.2026.1.9"
SSN = "2.16.840.1.113883.4.1"


@pytest.fixture
def index(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/p.db")
    metadata.create_all(engine)
    yield PatientIndex(engine)
    engine.dispose()


def pat(ext: str, given: str, family: str, dob: str | None, gender: str = "F", **kw) -> Patient:
    return Patient(cx(ext, ROOT), Demographics(given=given.split(), family=family, gender=gender, birth_date=dob,
                                               **kw), source="test")


def test_cx_helpers():
    assert cx("100", "1.2.3") == "100^^^&1.2.3&ISO"
    assert parse_cx("100^^^&1.2.3&ISO") == PatientId("100", "1.2.3")
    assert parse_cx("100^^^1.2.3") is None
    assert parse_cx("") is None


def test_add_get_update_roundtrip(index):
    p = pat("1", "Eve Marie", "Everywoman", "19750501",
            addresses=[Address(["2222 Home Street", "Apt 3"], "Beaverton", "OR", "97867", "US")],
            telecoms=["tel:+1(555)555-2003", "mailto:eve@example.org"], ids=[PatientId("444222222", SSN)],
            mothers_maiden_name="Smith")
    assert index.add(p) == "created"
    got = index.get(p.patient_id)
    assert got == p
    p.demographics.family = "Betterhalf"
    assert index.add(p) == "updated"
    assert index.get(p.patient_id).demographics.family == "Betterhalf"
    assert index.count() == 1
    assert index.get("nope^^^&1.2&ISO") is None


def test_find_by_identifier_primary_and_secondary(index):
    p = pat("1", "Eve", "Everywoman", "19750501", ids=[PatientId("444222222", SSN)])
    index.add(p)
    assert index.find_by_identifier(ROOT, "1").patient_id == p.patient_id
    assert index.find_by_identifier(SSN, "444222222").patient_id == p.patient_id
    assert index.find_by_identifier(SSN, "000000000") is None
    # an update replaces the secondary identifiers
    p.demographics.ids = []
    index.add(p)
    assert index.find_by_identifier(SSN, "444222222") is None


def test_identifier_claimed_by_two_patients_stays_with_the_first(index):
    index.add(pat("1", "Eve", "Everywoman", "19750501", ids=[PatientId("444222222", SSN)]))
    index.add(pat("2", "Eva", "Everyman", "19750502", ids=[PatientId("444222222", SSN)]))
    assert index.find_by_identifier(SSN, "444222222").patient_id == cx("1", ROOT)
    assert index.find_by_identifier(ROOT, "2") is not None


def test_remove(index):
    index.add(pat("1", "Eve", "Everywoman", "19750501"))
    assert index.remove(cx("1", ROOT)) is True
    assert index.get(cx("1", ROOT)) is None and index.find_by_identifier(ROOT, "1") is None
    assert index.remove(cx("1", ROOT)) is False


def test_candidates_use_every_lookup(index):
    index.add(pat("1", "Ann", "Lee", "19840712"))
    index.add(pat("2", "Bo", "Leigh", "19840712"))  # same birth date, other family name
    index.add(pat("3", "Cy", "Lee", "19990101"))  # same family name, other birth date
    index.add(pat("4", "Di", "Other", "19000101", ids=[PatientId("X1", "9.8.7")]))
    index.add(pat("5", "Ed", "Nobody", "19500505"))

    def ids(d: Demographics, limit: int = 50) -> list[str]:
        return [parse_cx(p.patient_id).extension for p in index.candidates(d, limit=limit)]

    assert ids(Demographics(family="LEE", birth_date="19840712")) == ["1", "2", "3"]  # most specific first
    assert ids(Demographics(family="Lea", birth_date="19841207")) == ["1", "2"]  # transposed date
    assert ids(Demographics(family="lee")) == ["1", "3"]
    assert ids(Demographics(family="Zzz", ids=[PatientId("X1", "9.8.7")])) == ["4"]
    assert ids(Demographics(family="LEE", birth_date="19840712"), limit=2) == ["1", "2"]
    assert ids(Demographics(given=["Ed"])) == []  # no indexed criterion, no scan


def test_import_csv(index, tmp_path):
    f = tmp_path / "patients.csv"
    f.write_text(
        "patient_id,family,given,gender,birth_date,street,city,state,postal_code,country,phone,email\n"
        "100,Moore,Chip,M,1984-07-11,1 Rue Sainte-Catherine,Montreal,QC,H2X 1Y4,CA,+1-514-555-0100,\n"
        f"200^^^&{ROOT}&ISO,Núñez,José Luis,male,19700101,,,,,,,jl@example.org\n",
        encoding="utf-8",
    )
    assert index.import_file(f, default_root="1.2.3.4.5.1000") == {"created": 2, "updated": 0, "unchanged": 0}
    chip = index.get(cx("100", "1.2.3.4.5.1000"))
    assert chip.demographics.birth_date == "19840711"
    assert chip.demographics.addresses[0].postal_code == "H2X 1Y4"
    assert chip.demographics.telecoms == ["tel:+1-514-555-0100"]
    jose = index.get(cx("200", ROOT))
    assert jose.demographics.given == ["José", "Luis"] and jose.demographics.gender == "M"
    assert jose.demographics.telecoms == ["mailto:jl@example.org"] and jose.source == "patients.csv"
    # importing the same file again changes nothing, and says so
    assert index.import_file(f, default_root="1.2.3.4.5.1000") == {"created": 0, "updated": 0, "unchanged": 2}


def test_import_csv_needs_a_root_for_bare_ids(index, tmp_path):
    f = tmp_path / "p.csv"
    f.write_text("patient_id,family,given,gender,birth_date\n100,Moore,Chip,M,19840711\n")
    with pytest.raises(ValueError, match=r"p\.csv:2"):
        index.import_file(f)
    assert index.count() == 0


def test_import_json_lines(index, tmp_path):
    f = tmp_path / "p.jsonl"
    full = {"patient_id": cx("1", ROOT), "demographics": {"given": ["Ann"], "family": "Lee", "gender": "F",
                                                           "birth_date": "19840712", "ids": [
                                                               {"extension": "123", "root": SSN}]}}
    flat = {"patient_id": "2", "family": "Cooper", "given": "Dale", "gender": "M", "birth_date": "19540422",
            "postal_code": "98065"}
    f.write_text(json.dumps(full) + "\n\n" + json.dumps(flat) + "\n")
    assert index.import_file(f, default_root=ROOT) == {"created": 2, "updated": 0, "unchanged": 0}
    assert index.find_by_identifier(SSN, "123").patient_id == cx("1", ROOT)
    assert index.get(cx("2", ROOT)).demographics.addresses[0].postal_code == "98065"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        index.import_file(bad)


@pytest.mark.skipif(not CCD1.is_file(), reason="../shared/corpus not present")
def test_add_from_cda_reads_the_record_target(index):
    p = index.add_from_cda(CCD1.read_bytes())
    assert p.patient_id == cx("444222222", SSN)  # the only patientRole/id of this example
    d = index.get(p.patient_id).demographics
    assert d.given == ["Eve"] and d.family == "Betterhalf"  # the legal (use="L") name
    assert d.gender == "F" and d.birth_date == "19750501"
    assert d.addresses == [Address(["2222 Home Street"], "Beaverton", "OR", "97867", "US")]
    assert d.telecoms == ["tel:+1(555)555-2003"]
    assert index.find_by_identifier(SSN, "444222222") is not None


def test_cda_patient_id_prefers_a_non_ssn_root_and_rejects_dtds():
    doc = f"""<ClinicalDocument xmlns="urn:hl7-org:v3"><recordTarget><patientRole>
      <id root="{SSN}" extension="111"/><id root="{ROOT}" extension="MRN7"/>
      <patient><name><given>A</given><family>B</family></name><birthTime value="20000229"/></patient>
      </patientRole></recordTarget></ClinicalDocument>""".encode()
    pid, demo = demographics_from_cda(doc)
    assert pid == cx("MRN7", ROOT) and demo.birth_date == "20000229" and demo.gender is None
    assert demographics_from_cda(doc, prefer_root=SSN)[0] == cx("111", SSN)
    evil = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>' + doc
    with pytest.raises(ValueError):
        demographics_from_cda(evil)
    with pytest.raises(ValueError, match="recordTarget"):
        demographics_from_cda(b'<ClinicalDocument xmlns="urn:hl7-org:v3"/>')


def test_correlations_crud(index):
    local = cx("1", ROOT)
    index.save_correlation(local, "urn:oid:1.2.3.928.955", "R-1", "1.2.3.928.955.1")
    index.save_correlation(local, "urn:oid:2.2.2", "Z9", "2.2.2.1")
    first = index.correlations_for(local)
    assert [(c.community_id, c.remote_patient_id) for c in first] == [("urn:oid:1.2.3.928.955", "R-1"),
                                                                      ("urn:oid:2.2.2", "Z9")]
    assert first[0].remote_cx == "R-1^^^&1.2.3.928.955.1&ISO"
    # same (local, community) again: updated in place, not duplicated
    index.save_correlation(local, "urn:oid:1.2.3.928.955", "R-2", "1.2.3.928.955.1")
    again = index.correlations_for(local)
    assert len(again) == 2 and again[0].remote_patient_id == "R-2"
    assert again[0].last_confirmed >= again[0].created
    assert index.local_for("urn:oid:1.2.3.928.955", "R-2") == local
    assert index.local_for("urn:oid:1.2.3.928.955", "R-1") is None
    assert index.delete_correlation(local, "urn:oid:2.2.2") is True
    assert index.delete_correlation(local, "urn:oid:2.2.2") is False
    assert len(index.correlations_for(local)) == 1
