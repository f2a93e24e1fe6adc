"""Required attributes and cardinality per object type: ITI TF-3 4.3.1 tables as data."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.validation.base import (
    DOCUMENT_ENTRY,
    FOLDER,
    ITI41,
    ITI42,
    META,
    SUBMISSION_SET,
    TRANSACTIONS,
    Rule,
)


# --- required attributes, as tables ------------------------------------------------------------------
class FieldSpec(NamedTuple):
    """One row of the TF-3 4.3.1 optionality tables (XDS Document Source / Registry columns).

    ``iti41``/``iti42`` are R (required), R2 (required if known: not checkable), O (optional).
    ``slot``/``scheme`` name where a single-valued attribute travels in ebRIM, so that a second
    value (which the codec keeps in ``extra_*``) is reported as a cardinality error.
    """

    name: str
    iti41: str
    iti42: str
    cardinality: str  # "1", "0..1", "1..*", "0..*"
    slot: str | None = None
    scheme: str | None = None
    stable_only: bool = False  # hash/size describe stored bytes: On-Demand entries have none


#: ITI TF-3 Table 4.3.1-3 (DocumentEntry). hash, size and repositoryUniqueId are required in a
#: Register (ITI-42) but not from a Document Source in ITI-41: the Repository computes/adds them
#: (ITI TF-2b 3.41.4.1.3).
DOCUMENT_ENTRY_FIELDS: dict[str, FieldSpec] = {
    "patient_id": FieldSpec("patientId", "R", "R", "1", scheme=v.DOC_PATIENT_ID),
    "unique_id": FieldSpec("uniqueId", "R", "R", "1", scheme=v.DOC_UNIQUE_ID),
    "creation_time": FieldSpec("creationTime", "R", "R", "1", slot="creationTime"),
    "hash": FieldSpec("hash", "O", "R", "1", slot="hash", stable_only=True),
    "size": FieldSpec("size", "O", "R", "1", slot="size", stable_only=True),
    "language_code": FieldSpec("languageCode", "R", "R", "1", slot="languageCode"),
    "mime_type": FieldSpec("mimeType", "R", "R", "1"),
    "source_patient_id": FieldSpec("sourcePatientId", "R", "R", "1", slot="sourcePatientId"),
    "class_code": FieldSpec("classCode", "R", "R", "1", scheme=v.DOC_CLASS_CODE),
    "type_code": FieldSpec("typeCode", "R", "R", "1", scheme=v.DOC_TYPE_CODE),
    "format_code": FieldSpec("formatCode", "R", "R", "1", scheme=v.DOC_FORMAT_CODE),
    "healthcare_facility_type_code": FieldSpec(
        "healthcareFacilityTypeCode", "R", "R", "1", scheme=v.DOC_HEALTHCARE_FACILITY_TYPE_CODE
    ),
    "practice_setting_code": FieldSpec(
        "practiceSettingCode", "R", "R", "1", scheme=v.DOC_PRACTICE_SETTING_CODE
    ),
    "confidentiality_codes": FieldSpec("confidentialityCode", "R", "R", "1..*"),
    "repository_unique_id": FieldSpec("repositoryUniqueId", "O", "R", "1", slot="repositoryUniqueId"),
    "authors": FieldSpec("author", "R2", "R2", "0..*"),
    "service_start_time": FieldSpec("serviceStartTime", "R2", "R2", "0..1", slot="serviceStartTime"),
    "service_stop_time": FieldSpec("serviceStopTime", "R2", "R2", "0..1", slot="serviceStopTime"),
    "title": FieldSpec("title", "O", "O", "0..1"),
    "comments": FieldSpec("comments", "O", "O", "0..1"),
    "legal_authenticator": FieldSpec("legalAuthenticator", "O", "O", "0..1", slot="legalAuthenticator"),
    "source_patient_info": FieldSpec("sourcePatientInfo", "O", "O", "0..*"),
    "event_codes": FieldSpec("eventCodeList", "O", "O", "0..*"),
    "uri": FieldSpec("URI", "O", "O", "0..1", slot="URI"),
    "document_availability": FieldSpec("documentAvailability", "O", "O", "0..1", slot="documentAvailability"),
    "reference_ids": FieldSpec("referenceIdList", "O", "O", "0..*"),
}

#: ITI TF-3 4.3.1, SubmissionSet table.
SUBMISSION_SET_FIELDS: dict[str, FieldSpec] = {
    "unique_id": FieldSpec("uniqueId", "R", "R", "1", scheme=v.SS_UNIQUE_ID),
    "source_id": FieldSpec("sourceId", "R", "R", "1", scheme=v.SS_SOURCE_ID),
    "patient_id": FieldSpec("patientId", "R", "R", "1", scheme=v.SS_PATIENT_ID),
    "submission_time": FieldSpec("submissionTime", "R", "R", "1", slot="submissionTime"),
    "content_type_code": FieldSpec("contentTypeCode", "R", "R", "1", scheme=v.SS_CONTENT_TYPE_CODE),
    "authors": FieldSpec("author", "R2", "R2", "0..*"),
    "title": FieldSpec("title", "O", "O", "0..1"),
    "comments": FieldSpec("comments", "O", "O", "0..1"),
    "intended_recipients": FieldSpec("intendedRecipient", "O", "O", "0..*"),
}

#: ITI TF-3 4.3.1, Folder table (lastUpdateTime is set by the registry, not submitted).
FOLDER_FIELDS: dict[str, FieldSpec] = {
    "unique_id": FieldSpec("uniqueId", "R", "R", "1", scheme=v.FOLDER_UNIQUE_ID),
    "patient_id": FieldSpec("patientId", "R", "R", "1", scheme=v.FOLDER_PATIENT_ID),
    "codes": FieldSpec("codeList", "R", "R", "1..*"),
    "title": FieldSpec("title", "R", "R", "0..1"),
    "comments": FieldSpec("comments", "O", "O", "0..1"),
    "last_update_time": FieldSpec("lastUpdateTime", "O", "O", "0..1", slot="lastUpdateTime"),
}

_FIELD_TABLES = (
    (DOCUMENT_ENTRY, "DE", DOCUMENT_ENTRY_FIELDS, "ITI TF-3 Table 4.3.1-3"),
    (SUBMISSION_SET, "SS", SUBMISSION_SET_FIELDS, "ITI TF-3 4.3.1 (SubmissionSet table)"),
    (FOLDER, "FOL", FOLDER_FIELDS, "ITI TF-3 4.3.1 (Folder table)"),
)


def _required_rules() -> Iterator[Rule]:
    for kind, prefix, table, ref in _FIELD_TABLES:
        for spec in table.values():
            txs = tuple(t for t, usage in ((ITI41, spec.iti41), (ITI42, spec.iti42)) if usage == "R")
            if not txs:
                continue
            many = " (at least one value)" if spec.cardinality == "1..*" else ""
            only = " for a stable entry" if spec.stable_only else ""
            yield Rule(
                f"{prefix}-required-{spec.name}", META,
                f"{kind} {{obj}}: {spec.name} is required{only}{many}",
                (kind,), txs, ref,
            )


# --- per-kind data derived from the tables (built once) ------------------------------------------------
def _required(table: dict[str, FieldSpec], prefix: str) -> dict[str, tuple[tuple[str, str, bool], ...]]:
    out: dict[str, tuple[tuple[str, str, bool], ...]] = {}
    for tx in TRANSACTIONS:
        out[tx] = tuple(
            (attr, f"{prefix}-required-{spec.name}", spec.stable_only)
            for attr, spec in table.items()
            if (spec.iti41 if tx == ITI41 else spec.iti42) == "R"
        )
    return out


def _singles(table: dict[str, FieldSpec]) -> tuple[dict[str, str], dict[str, str]]:
    """ebRIM slot names / schemes of single-valued attributes -> attribute name."""
    slots = {s.slot: s.name for s in table.values() if s.slot and s.cardinality in ("1", "0..1")}
    schemes = {s.scheme: s.name for s in table.values() if s.scheme and s.cardinality in ("1", "0..1")}
    return slots, schemes


_KIND_TABLES = {
    DOCUMENT_ENTRY: (_required(DOCUMENT_ENTRY_FIELDS, "DE"), *_singles(DOCUMENT_ENTRY_FIELDS), "DE"),
    SUBMISSION_SET: (_required(SUBMISSION_SET_FIELDS, "SS"), *_singles(SUBMISSION_SET_FIELDS), "SS"),
    FOLDER: (_required(FOLDER_FIELDS, "FOL"), *_singles(FOLDER_FIELDS), "FOL"),
}

_DE_CODES = (
    ("class_code", "classCode"),
    ("type_code", "typeCode"),
    ("format_code", "formatCode"),
    ("healthcare_facility_type_code", "healthcareFacilityTypeCode"),
    ("practice_setting_code", "practiceSettingCode"),
)
