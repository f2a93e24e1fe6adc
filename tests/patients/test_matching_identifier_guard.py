"""An identifier alone must not disclose a person whose stated demographics contradict ours."""

from xds_node.patients.matching import contradicts, score_breakdown
from xds_node.patients.model import Demographics, Patient, PatientId


def _ours() -> Patient:
    return Patient("V1^^^&1.2.3&ISO", Demographics(given=["Alex"], family="Testpatient", gender="M",
                                                   birth_date="19780412", ids=[PatientId("V1", "1.2.3")]))


def test_identifier_with_consistent_or_missing_demographics_matches():
    q = Demographics(ids=[PatientId("V1", "1.2.3")])
    assert score_breakdown(q, _ours()) == {"identifier": 100}
    q = Demographics(ids=[PatientId("V1", "1.2.3")], gender="M", birth_date="19780412")
    assert score_breakdown(q, _ours()) == {"identifier": 100}


def test_identifier_with_contradicting_demographics_does_not_shortcut():
    wrong_sex = Demographics(ids=[PatientId("V1", "1.2.3")], gender="F", birth_date="19780412")
    wrong_birth = Demographics(ids=[PatientId("V1", "1.2.3")], gender="M", birth_date="19900101")
    assert contradicts(wrong_sex, _ours()) and contradicts(wrong_birth, _ours())
    assert score_breakdown(wrong_sex, _ours()) == {"veto": 0}
    assert "identifier" not in score_breakdown(wrong_birth, _ours())


def test_documents_of_one_patient_merge_into_the_index(tmp_path):
    from pathlib import Path

    from xds_node.db import make_engine, metadata
    from xds_node.patients.index import PatientIndex

    engine = make_engine(f"sqlite:///{tmp_path}/p.db")
    metadata.create_all(engine)
    index = PatientIndex(engine)
    docs = sorted((Path(__file__).resolve().parents[2] / "sample_documents").rglob("*.xml"))
    one_patient = [d for d in docs if d.parent == docs[0].parent]
    for d in one_patient:
        index.add_from_cda(d.read_bytes())
    merged = index.get(index.add_from_cda(one_patient[0].read_bytes()).patient_id)
    # every address and phone any of the documents gave is kept; indexing again changes nothing
    assert merged.demographics.addresses and merged.demographics.telecoms
    before = merged.demographics.to_dict()
    for d in one_patient:
        index.add_from_cda(d.read_bytes())
    assert index.get(merged.patient_id).demographics.to_dict() == before
