"""XDS.b register-time metadata validation (xds_node.ebxml.validation).

One valid submission (1 SubmissionSet, 2 documents, 1 folder, one RPLC against a fake registry),
then one case per rule that breaks exactly one thing and expects exactly that rule.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pytest

from xds_node.ebxml import model as m
from xds_node.ebxml import validation as V
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.validation import formats
from xds_node.registry import limits as registry_limits

PID = "SELF-5^^^&1.3.6.1.4.1.21367.2005.3.7&ISO"
OTHER_PID = "OTHER-9^^^&1.3.6.1.4.1.21367.2005.3.7&ISO"
OLD_DOC = "urn:uuid:0b4c6f8e-4f7e-4b9a-9a55-0c1a3f9e2d11"
EXISTING_FOLDER = "urn:uuid:6f0e7d1a-2b3c-4d5e-8f90-a1b2c3d4e5f6"
EXISTING_REF_DOC = "urn:uuid:11111111-2222-4333-8444-555555555555"
UNKNOWN_UUID = "urn:uuid:99999999-8888-4777-8666-555555555555"
HAS_MEMBER = v.AssociationType.HAS_MEMBER.value
RPLC = v.AssociationType.RPLC.value
APPROVED = v.Status.APPROVED.value


@dataclass
class FakeRegistry:
    """In-memory RegistryLookup."""

    objects: dict[str, tuple[str, str, str | None]] = field(default_factory=dict)  # id -> status, pid, kind
    unique_ids: dict[str, tuple[str, str | None, str]] = field(default_factory=dict)  # uid -> id, hash, pid
    association_ids: set[str] = field(default_factory=set)
    patients: set[str] | None = field(default_factory=lambda: {PID, OTHER_PID})

    def existing_unique_ids(self, unique_ids: Iterable[str]) -> dict[str, tuple[str, str | None, str]]:
        return {u: self.unique_ids[u] for u in unique_ids if u in self.unique_ids}

    def existing_ids(self, uuids: Iterable[str]) -> set[str]:
        return {u for u in uuids if u in self.objects or u in self.association_ids}

    def document_status(self, uuids: Iterable[str]) -> dict[str, tuple[str, str, str | None]]:
        return {u: self.objects[u] for u in uuids if u in self.objects}

    def known_patient(self, patient_id: str) -> bool | None:
        return None if self.patients is None else patient_id in self.patients


def make_registry() -> FakeRegistry:
    reg = FakeRegistry()
    reg.objects[OLD_DOC] = (APPROVED, PID, V.DOCUMENT_ENTRY)
    reg.unique_ids["1.2.840.99.1.1"] = (OLD_DOC, "a" * 40, PID)
    return reg


def code(c: str, scheme: str, display: str | None = None) -> m.Code:
    return m.Code(code=c, scheme=scheme, display=display)


def make_document(doc_id: str, unique_id: str) -> m.DocumentEntry:
    return m.DocumentEntry(
        id=doc_id,
        title=[m.LocalizedString("Physical")],
        mime_type="text/xml",
        unique_id=unique_id,
        patient_id=PID,
        creation_time="20041224",
        hash="fbe2351a6a8ceba1a04ba3f832a12a53befeb04c",
        size=36,
        language_code="en-us",
        repository_unique_id="1.19.6.24.109.42.1",
        service_start_time="200412230800",
        service_stop_time="200412241600",
        source_patient_id="89765a87b^^^&1.2.3.4.5&ISO",
        source_patient_info=["PID-3|pid1^^^&1.2.3&ISO", "PID-5|Doe^John^^^", "PID-7|19560527"],
        legal_authenticator="^Welby^Marcus^^^Dr",
        authors=[m.Author(person="^Smitty^Gerald^^^", institutions=["Cleveland Clinic"], roles=["Attending"])],
        class_code=code("11488-4", "2.16.840.1.113883.6.1", "Consult note"),
        type_code=code("11488-4", "2.16.840.1.113883.6.1", "Consult note"),
        format_code=code("urn:ihe:pcc:xphr:2007", "1.3.6.1.4.1.19376.1.2.3"),
        healthcare_facility_type_code=code("44860005", "2.16.840.1.113883.6.96"),
        practice_setting_code=code("309927009", "2.16.840.1.113883.6.96"),
        confidentiality_codes=[code("N", "2.16.840.1.113883.5.25")],
        event_codes=[code("T-D4909", "SNM3")],
    )


def assoc(aid: str, source: str, target: str, atype: str = HAS_MEMBER, status: str | None = None) -> m.Association:
    return m.Association(id=aid, association_type=atype, source=source, target=target,
                         submission_set_status=status)


def make_submission() -> m.Submission:
    ss = m.SubmissionSet(
        id="SubmissionSet01",
        unique_id="1.3.6.1.4.1.21367.2005.3.9999.33",
        source_id="1.3.6.1.4.1.21367.2005.3.9999",
        patient_id=PID,
        submission_time="20041225235050",
        content_type_code=code("34133-9", "2.16.840.1.113883.6.1", "Summary of episode note"),
        authors=[m.Author(person="^Dopplemeyer^Sherry^^^", institutions=["Cleveland Clinic"])],
    )
    folder = m.Folder(
        id="Folder01",
        title=[m.LocalizedString("Referrals")],
        unique_id="1.3.6.1.4.1.21367.2005.3.9999.34",
        patient_id=PID,
        codes=[code("Referrals", "1.3.6.1.4.1.21367.2017.3")],
    )
    return m.Submission(
        submission_set=ss,
        documents=[make_document("Document01", "1.3.6.1.4.1.21367.2005.3.9999.35"),
                   make_document("Document02", "1.3.6.1.4.1.21367.2005.3.9999.36^v2")],
        folders=[folder],
        associations=[
            assoc("a-ss-doc1", "SubmissionSet01", "Document01", status="Original"),
            assoc("a-ss-doc2", "SubmissionSet01", "Document02", status="Original"),
            assoc("a-ss-fol", "SubmissionSet01", "Folder01"),
            assoc("a-fol-doc1", "Folder01", "Document01"),
            assoc("a-ss-foldoc", "SubmissionSet01", "a-fol-doc1"),
            assoc("a-rplc", "Document02", OLD_DOC, atype=RPLC),
        ],
    )


def check(sub: m.Submission, reg: FakeRegistry | None, **ctx: object) -> list[V.Violation]:
    return V.check_submission(sub, V.ValidationContext(lookup=reg, **ctx))  # type: ignore[arg-type]


def doc(sub: m.Submission, i: int = 0) -> m.DocumentEntry:
    return sub.documents[i]


def association(sub: m.Submission, aid: str) -> m.Association:
    return next(a for a in sub.associations if a.id == aid)


# --- the valid baseline ------------------------------------------------------------------------------
def test_valid_submission_has_no_violations_in_register_and_provide_and_register() -> None:
    assert check(make_submission(), make_registry()) == []
    assert check(make_submission(), make_registry(), transaction=V.ITI41) == []
    ctx = V.ValidationContext(transaction=V.ITI42, lookup=make_registry())
    assert V.validate_submission(make_submission(), ctx) == []


def test_valid_submission_without_registry_lookup() -> None:
    assert check(make_submission(), None) == []


def test_iti41_does_not_need_what_the_repository_adds() -> None:
    sub = make_submission()
    for d in sub.documents:
        d.hash = d.size = d.repository_unique_id = None
    assert check(sub, make_registry(), transaction=V.ITI41) == []
    ids = sorted({vi.rule.id for vi in check(sub, make_registry(), transaction=V.ITI42)})
    assert ids == ["DE-required-hash", "DE-required-repositoryUniqueId", "DE-required-size"]


def test_on_demand_entry_needs_no_hash_or_size_in_register() -> None:
    sub = make_submission()
    d = doc(sub)
    d.object_type = v.ON_DEMAND_DOCUMENT_ENTRY
    d.hash = d.size = None
    assert check(sub, make_registry()) == []


def test_resubmitted_document_with_identical_hash_is_accepted() -> None:
    reg = make_registry()
    d = doc(make_submission())
    sub = make_submission()
    reg.unique_ids[d.unique_id] = ("urn:uuid:aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee", d.hash.upper(), PID)  # type: ignore[arg-type,union-attr]
    assert check(sub, reg) == []


def test_signs_may_target_a_document_of_the_same_submission() -> None:
    sub = make_submission()
    sub.associations.append(assoc("a-sig", "Document02", "Document01", atype=v.AssociationType.SIGNS.value))
    assert check(sub, make_registry()) == []


# --- one case per rule --------------------------------------------------------------------------------
Breaker = Callable[[m.Submission, FakeRegistry], "dict[str, object] | None"]


def _set_patient_everywhere(sub: m.Submission, reg: FakeRegistry, pid: str) -> None:
    assert sub.submission_set is not None
    sub.submission_set.patient_id = pid
    for o in [*sub.documents, *sub.folders]:
        o.patient_id = pid
    status, _, kind = reg.objects[OLD_DOC]
    reg.objects[OLD_DOC] = (status, pid, kind)
    assert reg.patients is not None
    reg.patients.add(pid)


def _b_second_ss(sub: m.Submission, reg: FakeRegistry) -> None:
    sub.extra_objects.append(m.Classification(node=v.SUBMISSION_SET_NODE, classified_object="SubmissionSet02"))


def _b_unlinked_folder(sub: m.Submission, reg: FakeRegistry) -> None:
    sub.associations.remove(association(sub, "a-ss-fol"))


def _b_duplicate_entry_uuid(sub: m.Submission, reg: FakeRegistry) -> None:
    association(sub, "a-ss-foldoc").id = "a-ss-fol"


def _b_entry_uuid_registered(sub: m.Submission, reg: FakeRegistry) -> None:
    V.assign_uuids(sub)
    reg.association_ids.add(sub.associations[0].id)


def _b_invalid_uuid(sub: m.Submission, reg: FakeRegistry) -> None:
    association(sub, "a-rplc").id = "urn:uuid:not-a-uuid"


def _b_home(sub: m.Submission, reg: FakeRegistry) -> None:
    doc(sub).home = "1.3.6.1.4.1.21367.2026.1.1"


def _b_limited(sub: m.Submission, reg: FakeRegistry) -> None:
    doc(sub).limited_metadata = True


def _b_unknown_assoc_type(sub: m.Submission, reg: FakeRegistry) -> None:
    sub.associations.append(assoc("a-upd", "SubmissionSet01", "Document01",
                                  atype="urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus"))


def _b_unresolved(sub: m.Submission, reg: FakeRegistry) -> None:
    association(sub, "a-ss-foldoc").target = UNKNOWN_UUID


def _b_hasmember_source(sub: m.Submission, reg: FakeRegistry) -> None:
    association(sub, "a-fol-doc1").source = "Document02"


def _b_ss_status_missing(sub: m.Submission, reg: FakeRegistry) -> None:
    association(sub, "a-ss-doc1").submission_set_status = None


def _b_ss_status_invalid(sub: m.Submission, reg: FakeRegistry) -> None:
    association(sub, "a-ss-doc1").submission_set_status = "Copy"


def _b_ss_status_mismatch(sub: m.Submission, reg: FakeRegistry) -> None:
    association(sub, "a-ss-doc1").submission_set_status = "Reference"


def _b_rel_source(sub: m.Submission, reg: FakeRegistry) -> None:
    association(sub, "a-rplc").source = "Folder01"


def _b_rel_target_missing(sub: m.Submission, reg: FakeRegistry) -> None:
    association(sub, "a-rplc").target = UNKNOWN_UUID


def _b_rel_target_deprecated(sub: m.Submission, reg: FakeRegistry) -> None:
    reg.objects[OLD_DOC] = (v.Status.DEPRECATED.value, PID, V.DOCUMENT_ENTRY)


def _b_rel_target_submitted(sub: m.Submission, reg: FakeRegistry) -> None:
    reg.objects[OLD_DOC] = ("Submitted", PID, V.DOCUMENT_ENTRY)  # short form, as some stores keep it


def _b_de_single(sub: m.Submission, reg: FakeRegistry) -> None:
    doc(sub).extra_slots.append(m.Slot("creationTime", ["20050101"]))


def _b_ss_single(sub: m.Submission, reg: FakeRegistry) -> None:
    assert sub.submission_set is not None
    sub.submission_set.extra_classifications.append(
        m.Classification(scheme=v.SS_CONTENT_TYPE_CODE, node_representation="x"))


def _b_fol_single(sub: m.Submission, reg: FakeRegistry) -> None:
    sub.folders[0].extra_identifiers.append(m.ExternalIdentifier(v.FOLDER_UNIQUE_ID, "1.2.3.9"))


def _b_dtm(sub: m.Submission, reg: FakeRegistry) -> None:
    doc(sub).creation_time = "20040231"


def _b_hash(sub: m.Submission, reg: FakeRegistry) -> None:
    doc(sub).hash = "fbe2351a6a8ceba1a04ba3f832a12a53befeb04"  # 39 digits


def _b_size(sub: m.Submission, reg: FakeRegistry) -> None:
    doc(sub).size = -1


def _b_doc_uid(sub: m.Submission, reg: FakeRegistry) -> None:
    doc(sub).unique_id = "1.3.6.1.4.1.21367.2005.3.9999.35^"  # empty extension


def _b_oid(sub: m.Submission, reg: FakeRegistry) -> None:
    assert sub.submission_set is not None
    sub.submission_set.source_id = "1.2.abc"


def _b_cx(sub: m.Submission, reg: FakeRegistry) -> dict[str, object]:
    _set_patient_everywhere(sub, reg, "SELF-5^^^MRN&1.2.3&L")
    return {}


def _b_source_pid(sub: m.Submission, reg: FakeRegistry) -> None:
    doc(sub).source_patient_id = "89765a87b"


def _b_source_info(sub: m.Submission, reg: FakeRegistry) -> None:
    doc(sub).source_patient_info.append("PID5|Doe^John")


def _b_mime(sub: m.Submission, reg: FakeRegistry) -> None:
    doc(sub).mime_type = "text xml"


def _b_language(sub: m.Submission, reg: FakeRegistry) -> None:
    doc(sub).language_code = "en_US"


def _b_object_type(sub: m.Submission, reg: FakeRegistry) -> None:
    doc(sub).object_type = "urn:uuid:00000000-0000-4000-8000-000000000000"


def _b_on_demand_hash(sub: m.Submission, reg: FakeRegistry) -> None:
    doc(sub).object_type = v.ON_DEMAND_DOCUMENT_ENTRY


def _b_code(sub: m.Submission, reg: FakeRegistry) -> None:
    doc(sub).class_code.scheme = ""  # type: ignore[union-attr]


def _b_author(sub: m.Submission, reg: FakeRegistry) -> None:
    doc(sub).authors.append(m.Author(roles=["Attending"]))


def _b_xcn(sub: m.Submission, reg: FakeRegistry) -> None:
    assert sub.submission_set is not None
    sub.submission_set.authors[0].person = "^^^^^Dr^^^&1.2.3&ISO"  # a title and an authority, no id, no name


def _b_xon(sub: m.Submission, reg: FakeRegistry) -> None:
    doc(sub).authors[0].institutions = ["^^^^^^^^^1.2.3"]


def _b_pid_mismatch(sub: m.Submission, reg: FakeRegistry) -> None:
    sub.documents[1].patient_id = OTHER_PID
    status, _, kind = reg.objects[OLD_DOC]
    reg.objects[OLD_DOC] = (status, OTHER_PID, kind)  # keep the RPLC consistent with its source


def _b_folder_member(sub: m.Submission, reg: FakeRegistry) -> None:
    reg.objects[EXISTING_FOLDER] = (APPROVED, OTHER_PID, V.FOLDER)
    sub.associations.append(assoc("a-exfol-doc1", EXISTING_FOLDER, "Document01"))


def _b_reference(sub: m.Submission, reg: FakeRegistry) -> None:
    reg.objects[EXISTING_REF_DOC] = (APPROVED, OTHER_PID, V.DOCUMENT_ENTRY)
    sub.associations.append(assoc("a-ss-ref", "SubmissionSet01", EXISTING_REF_DOC, status="Reference"))


def _b_rel_patient(sub: m.Submission, reg: FakeRegistry) -> None:
    reg.objects[OLD_DOC] = (APPROVED, OTHER_PID, V.DOCUMENT_ENTRY)


def _b_unknown_patient(sub: m.Submission, reg: FakeRegistry) -> None:
    reg.patients = {OTHER_PID}


def _b_uid_in_message(sub: m.Submission, reg: FakeRegistry) -> None:
    sub.documents[1].unique_id = sub.documents[0].unique_id


def _b_uid_registered(sub: m.Submission, reg: FakeRegistry) -> None:
    assert sub.submission_set is not None and sub.submission_set.unique_id
    reg.unique_ids[sub.submission_set.unique_id] = ("urn:uuid:aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee", None, PID)


def _b_uid_hash(sub: m.Submission, reg: FakeRegistry) -> None:
    reg.unique_ids[doc(sub).unique_id] = ("urn:uuid:aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee", "0" * 40, PID)  # type: ignore[index]


def _b_uid_size(sub: m.Submission, reg: FakeRegistry) -> None:
    """Same hash, another size: XDSNonIdenticalSize (ITI TF-3 Table 4.2.4.1-2)."""
    d = doc(sub)
    reg.unique_ids[d.unique_id] = ("urn:uuid:aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee", d.hash, PID, (d.size or 0) + 1)  # type: ignore[assignment]


def _b_uid_other_patient(sub: m.Submission, reg: FakeRegistry) -> None:
    """The same document (same hash) registered for another patient: a uniqueId names one
    patient's document (consent and audit look documents up by uniqueId)."""
    d = doc(sub)
    reg.unique_ids[d.unique_id] = ("urn:uuid:aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee", d.hash, OTHER_PID)  # type: ignore[index]


def _b_uid_not_comparable(sub: m.Submission, reg: FakeRegistry) -> None:
    reg.unique_ids[doc(sub).unique_id] = ("urn:uuid:aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee", None, PID)  # type: ignore[index]


def _b_too_long(sub: m.Submission, reg: FakeRegistry) -> dict:
    doc(sub).class_code = code("x" * 300, "1.2.3")  # stored as code^^scheme: 306 characters
    return {"limits": registry_limits.LIMITS}


def _b_out_of_range(sub: m.Submission, reg: FakeRegistry) -> dict:
    doc(sub).size = 10**23
    return {"limits": registry_limits.LIMITS}


#: rule id -> (breaker, other rules the same break legitimately triggers)
CASES: dict[str, tuple[Callable[..., object], frozenset[str]]] = {
    "SUB-one-submission-set": (_b_second_ss, frozenset()),
    "SUB-hasmember-missing": (_b_unlinked_folder, frozenset()),
    "ID-duplicate-in-submission": (_b_duplicate_entry_uuid, frozenset()),
    "ID-already-registered": (_b_entry_uuid_registered, frozenset()),
    "ID-invalid-uuid": (_b_invalid_uuid, frozenset()),
    "HOME-format": (_b_home, frozenset()),
    "LIMITED-metadata": (_b_limited, frozenset()),
    "ASSOC-unknown-type": (_b_unknown_assoc_type, frozenset()),
    "ASSOC-unresolved": (_b_unresolved, frozenset()),
    "ASSOC-hasmember-source": (_b_hasmember_source, frozenset()),
    "ASSOC-ss-status-missing": (_b_ss_status_missing, frozenset()),
    "ASSOC-ss-status-invalid": (_b_ss_status_invalid, frozenset()),
    "ASSOC-ss-status-mismatch": (_b_ss_status_mismatch, frozenset()),
    "REL-source-not-new-document": (_b_rel_source, frozenset()),
    "REL-target-not-registered": (_b_rel_target_missing, frozenset()),
    "REL-target-deprecated": (_b_rel_target_deprecated, frozenset()),
    "REL-target-not-approved": (_b_rel_target_submitted, frozenset()),
    "DE-single-valued": (_b_de_single, frozenset()),
    "SS-single-valued": (_b_ss_single, frozenset()),
    "FOL-single-valued": (_b_fol_single, frozenset()),
    "DTM-format": (_b_dtm, frozenset()),
    "DE-hash-format": (_b_hash, frozenset()),
    "DE-size-format": (_b_size, frozenset()),
    "DE-uniqueId-format": (_b_doc_uid, frozenset()),
    "OID-format": (_b_oid, frozenset()),
    "CX-patientId-format": (_b_cx, frozenset()),
    "DE-sourcePatientId-format": (_b_source_pid, frozenset()),
    "DE-sourcePatientInfo-format": (_b_source_info, frozenset()),
    "DE-mimeType-format": (_b_mime, frozenset()),
    "DE-languageCode-format": (_b_language, frozenset()),
    "DE-objectType": (_b_object_type, frozenset()),
    "DE-on-demand-hash-size": (_b_on_demand_hash, frozenset()),
    "CODE-incomplete": (_b_code, frozenset()),
    "AUTHOR-incomplete": (_b_author, frozenset()),
    "XCN-format": (_b_xcn, frozenset()),
    "XON-format": (_b_xon, frozenset()),
    "PID-mismatch": (_b_pid_mismatch, frozenset()),
    "PID-mismatch-folder-member": (_b_folder_member, frozenset()),
    "PID-mismatch-reference": (_b_reference, frozenset()),
    "PID-mismatch-relationship": (_b_rel_patient, frozenset()),
    "PID-unknown": (_b_unknown_patient, frozenset()),
    "UID-duplicate-in-submission": (_b_uid_in_message, frozenset()),
    "UID-already-registered": (_b_uid_registered, frozenset()),
    "UID-nonidentical-hash": (_b_uid_hash, frozenset()),
    "UID-other-patient": (_b_uid_other_patient, frozenset()),
    "UID-nonidentical-size": (_b_uid_size, frozenset()),
    "UID-registered-not-comparable": (_b_uid_not_comparable, frozenset()),
    "LIMIT-length": (_b_too_long, frozenset()),
    "LIMIT-range": (_b_out_of_range, frozenset()),
}

_REQUIRED = {r.id: r for r in V.RULES if "-required-" in r.id}
_TABLES = {"DE": V.DOCUMENT_ENTRY_FIELDS, "SS": V.SUBMISSION_SET_FIELDS, "FOL": V.FOLDER_FIELDS}


def _required_breaker(rule_id: str) -> Callable[[m.Submission, FakeRegistry], None]:
    prefix, _, name = rule_id.split("-", 2)
    attr = next(a for a, spec in _TABLES[prefix].items() if spec.name == name)

    def br(sub: m.Submission, reg: FakeRegistry) -> None:
        target = {"DE": doc(sub), "SS": sub.submission_set, "FOL": sub.folders[0]}[prefix]
        setattr(target, attr, [] if isinstance(getattr(target, attr), list) else None)

    return br


def _assert_readable(vi: V.Violation) -> None:
    assert vi.message and "{" not in vi.message and "}" not in vi.message
    if vi.object_id is not None:
        assert vi.object_id in vi.message
    assert vi.code == vi.rule.code


@pytest.mark.parametrize("rule_id", sorted(CASES))
def test_each_rule_is_reported_alone(rule_id: str) -> None:
    sub, reg = make_submission(), make_registry()
    breaker, also = CASES[rule_id]
    ctx = breaker(sub, reg) or {}
    found = check(sub, reg, **ctx)
    assert {vi.rule.id for vi in found} == {rule_id} | also, [vi.message for vi in found]
    rule = V.RULES_BY_ID[rule_id]
    assert rule.code in {vi.code for vi in found}
    for vi in found:
        _assert_readable(vi)


@pytest.mark.parametrize("rule_id", sorted(_REQUIRED))
def test_each_required_attribute_is_reported(rule_id: str) -> None:
    sub, reg = make_submission(), make_registry()
    _required_breaker(rule_id)(sub, reg)
    tx = V.ITI42 if V.ITI42 in V.RULES_BY_ID[rule_id].transactions else V.ITI41
    found = check(sub, reg, transaction=tx)
    assert [vi.rule.id for vi in found] == [rule_id]
    assert found[0].code == v.ErrorCode.REGISTRY_METADATA_ERROR
    _assert_readable(found[0])


def test_every_rule_has_a_case() -> None:
    assert set(CASES) | set(_REQUIRED) == set(V.RULES_BY_ID)


def test_rules_catalogue_is_well_formed() -> None:
    ids = [r.id for r in V.RULES]
    assert len(ids) == len(set(ids))
    for r in V.RULES:
        assert r.code in V.ERROR_CODES, r.id
        assert r.code not in {"XDSStoredQueryMissingParam", "XDSResultNotSinglePatient"}
        assert r.message.strip() and r.reference.strip(), r.id
        assert r.applies_to and set(r.applies_to) <= set(V.KINDS), r.id
        assert r.transactions and set(r.transactions) <= set(V.TRANSACTIONS), r.id
        names = {f for _, f, _, _ in string.Formatter().parse(r.message) if f}
        r.message.format(**dict.fromkeys(names, "x"))  # every placeholder is a plain name


def test_describe_rules_lists_every_rule() -> None:
    table = V.describe_rules()
    assert table.startswith("| rule | error code |")
    assert len(table.strip().splitlines()) == len(V.RULES) + 2
    for r in V.RULES:
        assert f"`{r.id}`" in table


# --- behaviour across rules ---------------------------------------------------------------------------
def test_all_violations_are_reported_not_just_the_first() -> None:
    sub, reg = make_submission(), make_registry()
    doc(sub).creation_time = "2004"  # fine: year precision
    doc(sub).hash = "zz"
    doc(sub).mime_type = None
    sub.documents[1].patient_id = OTHER_PID
    sub.folders[0].codes = []
    reg.unique_ids[sub.folders[0].unique_id] = (EXISTING_FOLDER, None, PID)  # type: ignore[index]
    errors = V.validate_submission(sub, V.ValidationContext(lookup=reg, home_community_id="urn:oid:1.2.3"))
    codes = [e.code for e in errors]
    assert codes.count(v.ErrorCode.REGISTRY_METADATA_ERROR) == 3  # hash, mimeType, codeList
    assert v.ErrorCode.PATIENT_ID_DOES_NOT_MATCH in codes  # document 2 and its RPLC target
    assert v.ErrorCode.DUPLICATE_UNIQUE_ID in codes
    assert all(e.is_error and e.location == "urn:oid:1.2.3" for e in errors)
    assert any("Document01" in e.context and "hash" in e.context for e in errors)


def test_missing_submission_set_is_reported() -> None:
    sub = make_submission()
    sub.submission_set = None
    ids = {vi.rule.id for vi in check(sub, make_registry())}
    assert "SUB-one-submission-set" in ids
    assert "ASSOC-unresolved" in ids  # the associations from the vanished set dangle


def test_repository_actor_reports_repository_codes() -> None:
    sub = make_submission()
    doc(sub).mime_type = None
    sub.documents[1].unique_id = doc(sub).unique_id
    codes = {e.code for e in V.validate_submission(
        sub, V.ValidationContext(transaction=V.ITI41, lookup=None, actor="repository"))}
    assert codes == {v.ErrorCode.REPOSITORY_METADATA_ERROR, v.ErrorCode.REPOSITORY_DUPLICATE_UNIQUE_ID}


def test_without_registry_only_symbolic_external_references_are_unresolved() -> None:
    sub = make_submission()
    sub.associations.append(assoc("a-x", "Folder01", UNKNOWN_UUID))
    assert check(sub, None) == []  # cannot know; the registry will
    sub.associations.append(assoc("a-y", "Folder01", "NoSuchDocument"))
    assert [vi.rule.id for vi in check(sub, None)] == ["ASSOC-unresolved"]


def test_patient_check_is_skipped_without_identity_source() -> None:
    reg = make_registry()
    reg.patients = None
    sub = make_submission()
    _set_patient_everywhere(sub, make_registry(), "NEW-1^^^&1.3.6.1.4.1.21367.2005.3.7&ISO")
    reg.objects[OLD_DOC] = (APPROVED, "NEW-1^^^&1.3.6.1.4.1.21367.2005.3.7&ISO", V.DOCUMENT_ENTRY)
    assert check(sub, reg) == []


def test_unknown_transaction_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        check(make_submission(), None, transaction="ITI-18")


def test_size_the_codec_could_not_read_is_a_format_error() -> None:
    sub = make_submission()
    doc(sub).size = None
    doc(sub).extra_slots.append(m.Slot("size", ["36 bytes"]))  # what rim keeps for a non-integer size
    (vi,) = check(sub, make_registry())
    assert vi.rule.id == "DE-size-format" and "36 bytes" in vi.message


def test_untrusted_values_are_truncated_in_messages() -> None:
    sub = make_submission()
    doc(sub).mime_type = "x" * 5000
    (vi,) = check(sub, make_registry())
    assert len(vi.message) < 300 and vi.message.count("x") < 100


@pytest.mark.parametrize(
    ("value", "ok"),
    [("2004", True), ("200402", True), ("20040229", True), ("20050229", False), ("2004122423", True),
     ("20041224235959", True), ("20041224240000", False), ("200412246", False), ("20041324", False),
     ("2004-12-24", False), ("20041224000000.5", False), ("200412241260", False), ("", False)],
)
def test_dtm(value: str, ok: bool) -> None:
    assert V.valid_dtm(value) is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [("1.2.3", True), ("1.2.3^abc", True), ("db734647-fc99-424c-a864-7e3cda82e703^1", True),
     ("db734647-fc99-424c-a864-7e3cda82e703", True),
     ("1.2." + "1" * 62 + "^x", False), ("1.2.3^", False), ("1.2.3^a^b", False), ("abc", True),
     ("urn:txt:bill:42.42.42", True), ("a b", False), ("x^y", False), ("", False), ("x" * 129, False),
     ("1.2.3^" + "x" * 122, True), ("1.2.3^" + "x" * 123, False)],
)
def test_document_unique_id(value: str, ok: bool) -> None:
    assert V.valid_document_unique_id(value) is ok


# --- deprecations and symbolic ids --------------------------------------------------------------------
def test_deprecations_lists_replaced_targets_once() -> None:
    sub = make_submission()
    sub.associations.append(assoc("a-xr", "Document01", OLD_DOC, atype=v.AssociationType.XFRM_RPLC.value))
    sub.associations.append(assoc("a-apnd", "Document01", EXISTING_REF_DOC, atype=v.AssociationType.APND.value))
    assert V.deprecations(sub) == [OLD_DOC]


def test_assign_uuids_maps_symbols_everywhere() -> None:
    sub = make_submission()
    ss = sub.submission_set
    assert ss is not None
    ss.lid = "SubmissionSet01"
    ss.unique_id_ident_id = "ei-ss-uid"
    doc(sub).class_code.id = "cl-class"  # type: ignore[union-attr]
    doc(sub).authors[0].id = "cl-author"
    doc(sub).extra_classifications.append(m.Classification(scheme="urn:x", id="cl-x", classified_object="Document01"))
    doc(sub).extra_identifiers.append(m.ExternalIdentifier("urn:y", "v", id="ei-y", registry_object="Document01"))
    sub.extra_objects.append(m.Classification(node=v.SUBMISSION_SET_NODE, id="cl-ss",
                                              classified_object="SubmissionSet01"))
    sub.object_refs.append(m.ObjectRef(OLD_DOC))
    sub.associations.append(m.Association(id="", association_type=HAS_MEMBER, source="SubmissionSet01",
                                          target="a-rplc"))

    mapping = V.assign_uuids(sub)

    expected = {"SubmissionSet01", "Document01", "Document02", "Folder01", "a-ss-doc1", "a-ss-doc2",
                "a-ss-fol", "a-fol-doc1", "a-ss-foldoc", "a-rplc", "ei-ss-uid", "cl-class", "cl-author",
                "cl-x", "ei-y", "cl-ss"}
    assert set(mapping) == expected
    assert len(set(mapping.values())) == len(mapping)
    assert all(formats._URN_UUID.fullmatch(u) for u in mapping.values())
    d1 = mapping["Document01"]
    assert doc(sub).id == d1 and ss.id == mapping["SubmissionSet01"] == ss.lid
    assert association(sub, mapping["a-fol-doc1"]).source == mapping["Folder01"]
    assert association(sub, mapping["a-fol-doc1"]).target == d1
    assert association(sub, mapping["a-ss-foldoc"]).target == mapping["a-fol-doc1"]
    rplc = association(sub, mapping["a-rplc"])
    assert (rplc.source, rplc.target) == (mapping["Document02"], OLD_DOC)
    assert doc(sub).extra_classifications[0].classified_object == d1
    assert doc(sub).extra_identifiers[0].registry_object == d1
    assert sub.extra_objects[0].classified_object == ss.id
    assert doc(sub).class_code.id == mapping["cl-class"]  # type: ignore[union-attr]
    assert ss.unique_id_ident_id == mapping["ei-ss-uid"]
    assert sub.object_refs[0].id == OLD_DOC
    assert sub.associations[-1].id.startswith("urn:uuid:")  # the id-less association got its own
    assert check(sub, make_registry()) == []

    before = [(o.id, getattr(o, "source", None), getattr(o, "target", None)) for o in sub.objects()]
    assert V.assign_uuids(sub) == {}
    assert [(o.id, getattr(o, "source", None), getattr(o, "target", None)) for o in sub.objects()] == before


def test_xcn_with_a_given_name_only_is_accepted():
    """NIST registry test data (DSUB_*-1015) registers such authors and expects Success."""
    from xds_node.ebxml.validation.formats import _xcn_ok

    assert _xcn_ok("^^Dsub^Author-Two^^^") and _xcn_ok("^Smitty^Gerald^^^") and _xcn_ok("123^^^^^^^^&1.2&ISO")
    assert not _xcn_ok("^^^^^Dr") and not _xcn_ok("")
