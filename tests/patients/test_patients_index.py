"""PatientIndex on a temporary SQLite database: storage, candidates, import, C-CDA, correlations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xds_node.db import make_engine, metadata
from xds_node.patients.index import PatientIndex, contradictions, demographics_from_cda, fill_in
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


# --- documents may add, never contradict (issue 9, finding 8) ------------------------------------


def cda(ext: str, given: list[str], family: str | None, gender: str | None, birth: str | None, *,
        root: str = ROOT, extra_ids: str = "", telecom: str = "", street: str = "") -> bytes:
    names = "".join(f"<given>{g}</given>" for g in given) + (f"<family>{family}</family>" if family else "")
    return f"""<ClinicalDocument xmlns="urn:hl7-org:v3"><recordTarget><patientRole>
      <id root="{root}" extension="{ext}"/>{extra_ids}
      {f'<addr><streetAddressLine>{street}</streetAddressLine></addr>' if street else ''}
      {f'<telecom value="{telecom}"/>' if telecom else ''}
      <patient><name use="L">{names}</name>
      {f'<administrativeGenderCode code="{gender}"/>' if gender else ''}
      {f'<birthTime value="{birth}"/>' if birth else ''}</patient>
      </patientRole></recordTarget></ClinicalDocument>""".encode()


@pytest.fixture
def node_index(node):
    """The index of a full node: SQLite, and PostgreSQL when XDS_TEST_POSTGRES_URL is set."""
    return node.patients


def test_contradiction_rules():
    held = Demographics(given=["Alex", "Q"], family="Testpatient", gender="M", birth_date="19780412")
    assert contradictions(held, held) == []
    # missing values, less precision, initials, UN, case/accents/punctuation: no contradiction
    assert contradictions(held, Demographics()) == []
    assert contradictions(held, Demographics(given=["A"], family="TEST-PATIENT", gender="UN",
                                             birth_date="1978")) == []
    assert contradictions(Demographics(given=["A"], birth_date="1978"),
                          Demographics(given=["Alex"], birth_date="19780412")) == []
    mallory = Demographics(given=["Mallory"], family="Intruder", gender="F", birth_date="19900101")
    assert contradictions(held, mallory) == [("family", "Testpatient", "Intruder"), ("given", "Alex Q", "Mallory"),
                                             ("gender", "M", "F"), ("birth_date", "19780412", "19900101")]
    assert [f for f, *_ in contradictions(held, Demographics(birth_date="19780413"))] == ["birth_date"]
    assert [f for f, *_ in contradictions(held, Demographics(birth_date="1979"))] == ["birth_date"]


def test_fill_in_completes_but_never_replaces():
    held = Demographics(given=["Alex"], family="Testpatient", gender="UN", birth_date="1978",
                        telecoms=["tel:1"])
    doc = Demographics(given=["Alexander"], family="Other", gender="M", birth_date="19780412",
                       telecoms=["tel:2"], addresses=[Address(["1 Main St"])])
    got = fill_in(held, doc)
    assert (got.given, got.family, got.gender, got.birth_date) == (["Alex"], "Testpatient", "M", "19780412")
    assert got.telecoms == ["tel:1", "tel:2"] and got.addresses == [Address(["1 Main St"])]
    assert fill_in(got, doc) == got


def test_mallory_document_changes_nothing_and_is_recorded(node_index):
    index = node_index
    pid = cx("VET9", ROOT)
    assert index.add_from_cda(cda("VET9", ["Alex"], "Testpatient", "M", "19780412"),
                              document_unique_id="1.2.3.1", entry_uuid="urn:uuid:a").outcome == "created"
    before = index.get(pid)
    evil = cda("VET9", ["Mallory"], "Intruder", "F", "19900101", extra_ids=f'<id root="{SSN}" extension="666"/>',
               telecom="tel:+1-555-666-0000")
    out = index.add_from_cda(evil, source="cda:ehr", document_unique_id="1.2.3.2", entry_uuid="urn:uuid:b")
    assert out.outcome == "contradicted" and len(out.discrepancies) == 4
    assert index.get(pid) == before  # not one field, phone or identifier from the document
    assert index.find_by_identifier(SSN, "666") is None
    assert index.candidates(Demographics(family="Intruder", birth_date="19900101")) == []
    recorded = index.discrepancies(pid)
    assert [(d.field, d.indexed_value, d.document_value) for d in recorded] == [
        ("family", "Testpatient", "Intruder"), ("given", "Alex", "Mallory"), ("gender", "M", "F"),
        ("birth_date", "19780412", "19900101")]
    assert {(d.document_unique_id, d.entry_uuid, d.source) for d in recorded} == {("1.2.3.2", "urn:uuid:b", "cda:ehr")}
    assert all(d.recorded is not None for d in recorded)
    assert [(v.version, v.source, v.actor) for v in index.history(pid)] == [(1, "cda", "document 1.2.3.1")]


def test_same_demographics_again_writes_nothing(node_index):
    index = node_index
    doc = cda("VET9", ["Alex"], "Testpatient", "M", "19780412", telecom="tel:1")
    assert index.add_from_cda(doc).outcome == "created"
    for _ in range(3):
        assert index.add_from_cda(doc).outcome == "unchanged"
    assert len(index.history(cx("VET9", ROOT))) == 1 and index.discrepancies(cx("VET9", ROOT)) == []


def test_a_corroborating_document_completes_a_vague_one_adds_nothing(node_index):
    index = node_index
    pid = cx("VET9", ROOT)
    index.add(Patient(pid, Demographics(given=["Alex"], family="Testpatient", gender="M", birth_date="19780412"),
                      "cli"), actor="alice")
    # names the patient as we do: its phone, address and identifier are added, as a new version
    good = cda("VET9", ["Alex"], "Testpatient", "M", "19780412", telecom="tel:+1-555-010-1001",
               street="12 Imaginary Lane", extra_ids=f'<id root="{SSN}" extension="123"/>')
    assert index.add_from_cda(good, document_unique_id="1.2.3.3").outcome == "updated"
    assert index.find_by_identifier(SSN, "123").patient_id == pid
    # states no name or birth date: cannot attach an identifier or a phone
    vague = cda("VET9", [], None, None, None, telecom="tel:+1-555-666-0000",
                extra_ids=f'<id root="{SSN}" extension="666"/>')
    assert index.add_from_cda(vague).outcome == "unchanged"
    assert index.find_by_identifier(SSN, "666") is None
    assert index.get(pid).demographics.telecoms == ["tel:+1-555-010-1001"]
    assert [(v.version, v.source, v.actor) for v in index.history(pid)] == [
        (1, "cli", "alice"), (2, "cda", "document 1.2.3.3")]


def test_operator_versions_and_matching_uses_the_newest(node_index):
    from xds_node.patients.matching import match

    index = node_index
    pid = cx("VET9", ROOT)
    first = Demographics(given=["Alex"], family="Testpatient", gender="M", birth_date="19780412")
    assert index.add(Patient(pid, first, "cli"), actor="alice") == "created"
    assert index.add(Patient(pid, first, "cli"), actor="alice") == "unchanged"
    second = Demographics(given=["Alex"], family="Rivera", gender="M", birth_date="19780412")
    assert index.add(Patient(pid, second, "cli"), actor="bob") == "updated"
    history = index.history(pid)
    assert [(v.version, v.actor, v.demographics.family) for v in history] == [(1, "alice", "Testpatient"),
                                                                               (2, "bob", "Rivera")]
    assert history[0].recorded <= history[1].recorded
    assert match(second, index).outcome == "match" and match(first, index).outcome == "none"
    # removing a patient keeps its history (append-only); adding it again continues the numbering
    assert index.remove(pid)
    assert len(index.history(pid)) == 2
    index.add(Patient(pid, first, "import.csv"))
    assert [v.version for v in index.history(pid)] == [1, 2, 3]


def test_long_values_from_a_document_do_not_fail_the_write(node_index):
    """PostgreSQL refuses a value longer than its column where SQLite would store it."""
    index = node_index
    long_family = "X" * 1000
    assert index.add_from_cda(cda("VET9", ["Alex"], long_family, "M", "19780412")).outcome == "created"
    assert index.get(cx("VET9", ROOT)).demographics.family == long_family  # the JSON copy is whole
    out = index.add_from_cda(cda("VET9", ["Alex"], "Y" * 1000, "M", "19780412"), document_unique_id="9" * 999)
    assert out.outcome == "contradicted"
    (d,) = index.discrepancies(cx("VET9", ROOT))
    assert len(d.document_value) <= 400 and len(d.indexed_value) <= 400 and len(d.document_unique_id) <= 256
    with pytest.raises(ValueError, match="patient id"):
        index.add_from_cda(cda("V" * 300, ["Alex"], "Testpatient", "M", "19780412"))


def test_a_patient_created_concurrently_is_compared_not_overwritten(node_index, monkeypatch):
    """Two workers registering a first document for one patient: the loser's INSERT fails on the
    primary key, and its document is then compared with what the winner stored."""
    index = node_index
    pid = cx("VET9", ROOT)
    index.add_from_cda(cda("VET9", ["Alex"], "Testpatient", "M", "19780412"))  # the winner
    real_stored = PatientIndex._stored
    calls = []

    def not_yet_visible(conn, patient_id):  # the loser read before the winner committed
        calls.append(patient_id)
        return None if len(calls) == 1 else real_stored(conn, patient_id)

    monkeypatch.setattr(PatientIndex, "_stored", staticmethod(not_yet_visible))
    out = index.add_from_cda(cda("VET9", ["Mallory"], "Intruder", "F", "19900101"))
    assert out.outcome == "contradicted" and len(calls) == 2
    monkeypatch.undo()
    assert index.get(pid).demographics.family == "Testpatient"
    assert [v.version for v in index.history(pid)] == [1]


def test_patients_stored_before_versioning_get_their_first_version(node_index):
    from sqlalchemy import delete

    from xds_node.patients import tables as t

    index = node_index
    index.add(pat("1", "Eve", "Everywoman", "19750501"))
    index.add(pat("2", "Ann", "Lee", "19840712"))
    with index.engine.begin() as conn:  # as a database from before this table existed
        conn.execute(delete(t.patient_version))
    index.create_schema()  # what every start does
    for ext, family in (("1", "Everywoman"), ("2", "Lee")):
        (v,) = index.history(cx(ext, ROOT))
        assert (v.version, v.source, v.actor, v.demographics.family) == (1, "test", "before versioning", family)
    index.create_schema()
    assert len(index.history(cx("1", ROOT))) == 1
    index.add(pat("1", "Eve", "Betterhalf", "19750501"))
    assert [v.version for v in index.history(cx("1", ROOT))] == [1, 2]
