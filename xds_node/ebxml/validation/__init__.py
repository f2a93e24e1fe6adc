"""Register-time validation of XDS.b metadata (ITI-42, and ITI-41 which registers through it).

Like IPF, the rules are *data*: every :class:`Rule` has an id, the IHE error code it raises, the
object kinds and transactions it applies to, a human message template and the Technical
Framework text it comes from. The checking code (``engine``) only decides *whether* a rule is broken;
what the error is called, and which transactions care, lives in :data:`RULES`. That keeps the
catalogue reviewable (``describe_rules()`` renders it for the docs) and makes every rule testable
on its own.

A response lists *every* violation found, not only the first: a Document Source fixes all of
its metadata in one round trip. Checks that need the registry (duplicates, relationship targets,
known patients) ask a :class:`RegistryLookup` in a handful of batched calls per submission.

Citations are to the IHE ITI Technical Framework: "TF-3" is Volume 3 (metadata), "TF-2b" is
Volume 2b (transactions ITI-41/42).

The package is in parts, each saying what it is:

``base``       object kinds, transactions, error codes, the Rule and Violation types
``fields``     required attributes and cardinality per object type (TF-3 4.3.1 tables)
``catalogue``  every rule as data (id, IHE error code, objects, message, reference)
``limits``     what the storage can hold per metadata field (lengths, integer ranges)
``formats``    value formats (DTM, OID, CX, XCN, ...)
``engine``     the checker: which catalogued rules a submission breaks
``ids``        rewrites applied to a valid submission (UUIDs for symbolic ids, deprecations)
"""

from __future__ import annotations

from xds_node.ebxml.validation.base import (
    ASSOCIATION,
    DOCUMENT_ENTRY,
    ERROR_CODES,
    FOLDER,
    ITI41,
    ITI42,
    KINDS,
    META,
    REGISTER,
    REGISTRY_DEPRECATED_DOCUMENT_ERROR,
    SUBMISSION,
    SUBMISSION_SET,
    TRANSACTIONS,
    Rule,
    Violation,
)
from xds_node.ebxml.validation.catalogue import RULES, RULES_BY_ID, describe_rules
from xds_node.ebxml.validation.engine import (
    RegistryLookup,
    ValidationContext,
    check_storage_limits,
    check_submission,
    validate_submission,
)
from xds_node.ebxml.validation.fields import (
    DOCUMENT_ENTRY_FIELDS,
    FOLDER_FIELDS,
    SUBMISSION_SET_FIELDS,
    FieldSpec,
)
from xds_node.ebxml.validation.formats import valid_document_unique_id, valid_dtm, valid_oid
from xds_node.ebxml.validation.ids import assign_uuids, deprecations
from xds_node.ebxml.validation.limits import FIELD_VALUES, Bound, FieldLimits, check_limits

__all__ = [
    "ASSOCIATION", "DOCUMENT_ENTRY", "DOCUMENT_ENTRY_FIELDS", "ERROR_CODES", "FIELD_VALUES", "FOLDER",
    "FOLDER_FIELDS", "ITI41", "ITI42", "KINDS", "META", "REGISTER", "REGISTRY_DEPRECATED_DOCUMENT_ERROR",
    "RULES", "RULES_BY_ID", "SUBMISSION", "SUBMISSION_SET", "SUBMISSION_SET_FIELDS", "TRANSACTIONS", "Bound",
    "FieldLimits", "FieldSpec", "RegistryLookup", "Rule", "ValidationContext", "Violation", "assign_uuids",
    "check_limits", "check_storage_limits", "check_submission", "deprecations", "describe_rules",
    "valid_document_unique_id", "valid_dtm", "valid_oid", "validate_submission",
]  # fmt: skip
