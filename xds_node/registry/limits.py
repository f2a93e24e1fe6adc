"""Per-field bounds of the registry's storage, read off the table columns so they cannot drift.

Every bounded column (a VARCHAR length, an integer type) is either listed here against the
metadata field that fills it, or in :data:`EXEMPT` with the reason no submitted value reaches it;
``tests/registry/test_limits.py`` fails when a column is in neither.
"""

from __future__ import annotations

from sqlalchemy import Column

from xds_node.db import column_bound
from xds_node.ebxml.validation import ASSOCIATION, DOCUMENT_ENTRY, FOLDER, SUBMISSION_SET, Bound, FieldLimits
from xds_node.registry import tables as t

#: (kind, metadata field) -> the columns its values are written to.
COLUMNS: dict[tuple[str, str], tuple[Column, ...]] = {
    (DOCUMENT_ENTRY, "entryUUID"): (t.documents.c.id, t.codes.c.obj_id, t.authors.c.obj_id,
                                    t.reference_ids.c.doc_id),
    (DOCUMENT_ENTRY, "lid"): (t.documents.c.lid,),
    (DOCUMENT_ENTRY, "uniqueId"): (t.documents.c.unique_id,),
    (DOCUMENT_ENTRY, "patientId"): (t.documents.c.patient_id,),
    (DOCUMENT_ENTRY, "mimeType"): (t.documents.c.mime_type,),
    (DOCUMENT_ENTRY, "hash"): (t.documents.c.hash,),
    (DOCUMENT_ENTRY, "size"): (t.documents.c.size,),
    (DOCUMENT_ENTRY, "repositoryUniqueId"): (t.documents.c.repository_unique_id,),
    (DOCUMENT_ENTRY, "creationTime"): (t.documents.c.creation_time,),
    (DOCUMENT_ENTRY, "serviceStartTime"): (t.documents.c.service_start_time,),
    (DOCUMENT_ENTRY, "serviceStopTime"): (t.documents.c.service_stop_time,),
    **{(DOCUMENT_ENTRY, name): (t.codes.c.key,) for name in (
        "classCode", "typeCode", "formatCode", "healthcareFacilityTypeCode", "practiceSettingCode",
        "confidentialityCode", "eventCodeList")},
    (DOCUMENT_ENTRY, "referenceIdList"): (t.reference_ids.c.value,),
    (DOCUMENT_ENTRY, "author"): (t.authors.c.person,),
    (SUBMISSION_SET, "entryUUID"): (t.submission_sets.c.id, t.codes.c.obj_id, t.authors.c.obj_id),
    (SUBMISSION_SET, "uniqueId"): (t.submission_sets.c.unique_id,),
    (SUBMISSION_SET, "sourceId"): (t.submission_sets.c.source_id,),
    (SUBMISSION_SET, "patientId"): (t.submission_sets.c.patient_id,),
    (SUBMISSION_SET, "submissionTime"): (t.submission_sets.c.submission_time,),
    (SUBMISSION_SET, "contentTypeCode"): (t.codes.c.key,),
    (SUBMISSION_SET, "author"): (t.authors.c.person,),
    (FOLDER, "entryUUID"): (t.folders.c.id, t.codes.c.obj_id),
    (FOLDER, "uniqueId"): (t.folders.c.unique_id,),
    (FOLDER, "patientId"): (t.folders.c.patient_id,),
    (FOLDER, "codeList"): (t.codes.c.key,),
    (ASSOCIATION, "entryUUID"): (t.associations.c.id,),
    (ASSOCIATION, "associationType"): (t.associations.c.type,),
    (ASSOCIATION, "sourceObject"): (t.associations.c.source,),
    (ASSOCIATION, "targetObject"): (t.associations.c.target,),
}

#: Bounded columns no submitted value is written to unchecked, and why.
EXEMPT: dict[Column, str] = {
    t.documents.c.status: "set by the registry (Approved, Deprecated)",
    t.documents.c.object_type: "one of the two DocumentEntry types (DE-objectType)",
    t.submission_sets.c.status: "set by the registry",
    t.folders.c.status: "set by the registry",
    t.folders.c.last_update_time: "set by the registry at registration",
    t.associations.c.status: "set by the registry",
    t.codes.c.scheme: "a classification scheme UUID of the vocabulary",
    t.patients.c.patient_id: "patient identity feed, not registration",
}


def bound_of(columns: tuple[Column, ...]) -> Bound:
    """The tightest bound over every column a field is written to."""
    bound = Bound()
    for col in columns:
        bound = bound.tighter(Bound(*column_bound(col)))
    return bound


#: What the registry can store, per metadata field (only fields with a bound).
LIMITS: FieldLimits = {key: b for key, cols in COLUMNS.items() if (b := bound_of(cols)) != Bound()}
