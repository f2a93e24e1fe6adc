"""Register-time validation of XDS.b metadata (ITI-42, and ITI-41 which registers through it).

Like IPF, the rules are *data*: every :class:`Rule` has an id, the IHE error code it raises, the
object kinds and transactions it applies to, a human message template and the Technical
Framework text it comes from. The checking code below only decides *whether* a rule is broken;
what the error is called, and which transactions care, lives in :data:`RULES`. That keeps the
catalogue reviewable (``describe_rules()`` renders it for the docs) and makes every rule testable
on its own.

A response lists *every* violation found, not only the first: a Document Source fixes all of
its metadata in one round trip. Checks that need the registry (duplicates, relationship targets,
known patients) ask a :class:`RegistryLookup` in a handful of batched calls per submission.

Citations are to the IHE ITI Technical Framework: "TF-3" is Volume 3 (metadata), "TF-2b" is
Volume 2b (transactions ITI-41/42).
"""

from __future__ import annotations

import calendar
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from xds_node.ebxml import model as m
from xds_node.ebxml import vocabulary as v

E = v.ErrorCode

# --- object kinds and transactions ----------------------------------------------------------------
SUBMISSION = "Submission"
SUBMISSION_SET = "SubmissionSet"
DOCUMENT_ENTRY = "DocumentEntry"
FOLDER = "Folder"
ASSOCIATION = "Association"
KINDS = (SUBMISSION, SUBMISSION_SET, DOCUMENT_ENTRY, FOLDER, ASSOCIATION)

ITI41 = "ITI-41"
ITI42 = "ITI-42"
#: Transactions this validator serves. Queries never come here: XDSRegistryMetadataError belongs
#: to register / provide-and-register only (ITI TF-3 Table 4.2.4.1-2, transaction columns P and R).
TRANSACTIONS = (ITI41, ITI42)
REGISTER = TRANSACTIONS

#: ITI TF-3 Table 4.2.4.1-2 code that :class:`vocabulary.ErrorCode` does not carry yet.
REGISTRY_DEPRECATED_DOCUMENT_ERROR = "XDSRegistryDeprecatedDocumentError"
#: Every code a rule may raise.
ERROR_CODES = frozenset({c.value for c in E} | {REGISTRY_DEPRECATED_DOCUMENT_ERROR})

META = E.REGISTRY_METADATA_ERROR.value

#: "Actor name indicates where error was detected" (TF-3 Table 4.2.4.1-2): a Document Repository
#: checking an ITI-41 on its own reports the Repository flavour of the generic codes.
_ACTOR_CODES: dict[str, dict[str, str]] = {
    "registry": {},
    "repository": {
        E.REGISTRY_METADATA_ERROR.value: E.REPOSITORY_METADATA_ERROR.value,
        E.REGISTRY_DUPLICATE_UNIQUE_ID.value: E.REPOSITORY_DUPLICATE_UNIQUE_ID.value,
    },
}

_APPROVED = v.Status.APPROVED.value
_DEPRECATED = v.Status.DEPRECATED.value


# --- the rule type ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Rule:
    """One validation rule: what is checked is code, what it is called and raises is this data."""

    id: str
    code: str  # an ErrorCode value (or REGISTRY_DEPRECATED_DOCUMENT_ERROR)
    message: str  # str.format template; {obj} names the offending object
    applies_to: tuple[str, ...]  # object kinds (KINDS)
    transactions: tuple[str, ...] = REGISTER
    reference: str = ""  # where in the Technical Framework the rule comes from

    def applies(self, transaction: str) -> bool:
        return transaction in self.transactions


@dataclass(frozen=True, slots=True)
class Violation:
    """A broken rule on one object, with its message already rendered."""

    rule: Rule
    code: str  # rule.code, mapped for the detecting actor
    object_id: str | None
    message: str

    def to_error(self, location: str | None = None) -> m.RegistryError:
        return m.RegistryError(code=self.code, context=self.message, location=location)


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


_TF3_ERRORS = "ITI TF-3 Table 4.2.4.1-2"
_HAS_MEMBER = "ITI TF-3 4.2.2.1"
_RELATIONS = "ITI TF-3 4.2.2.2; ITI TF-2b 3.42.4.1.3.5"
_TYPES = "ITI TF-3 4.2.3.1 (data types)"
_DE_ATTR = "ITI TF-3 4.2.3.2"
_OBJS = (SUBMISSION_SET, DOCUMENT_ENTRY, FOLDER)

#: The rule catalogue. Order is documentation order.
RULES: tuple[Rule, ...] = (
    # --- structure ---------------------------------------------------------------------------------
    Rule("SUB-one-submission-set", META,
         "Submission: exactly one SubmissionSet is required, found {count}",
         (SUBMISSION,), reference="ITI TF-2b 3.42.4.1.3"),
    Rule("SUB-hasmember-missing", META,
         "{kind} {obj} is not linked from the SubmissionSet by a HasMember association",
         (DOCUMENT_ENTRY, FOLDER), reference=_HAS_MEMBER),
    Rule("ID-duplicate-in-submission", META,
         "{kind} {obj}: entryUUID is used by more than one object in the submission",
         (*_OBJS, ASSOCIATION),
         # TF-3 Table 4.2.4.1-2 defines the *DuplicateUniqueId* codes for uniqueId only; an id
         # clash is a plain metadata error (as in IPF's UUID_NOT_UNIQUE).
         reference=_TF3_ERRORS),
    Rule("ID-already-registered", META,
         "{kind} {obj}: entryUUID is already used by an object in the registry",
         (*_OBJS, ASSOCIATION), reference=_TF3_ERRORS),
    Rule("ID-invalid-uuid", META,
         "{kind} {obj}: entryUUID is not a valid urn:uuid",
         (*_OBJS, ASSOCIATION), reference="ITI TF-3 4.2.3.2 (entryUUID)"),
    Rule("HOME-format", META,
         "{kind} {obj}: homeCommunityId {value} is not of the form urn:oid:<OID>",
         (*_OBJS, ASSOCIATION), reference="ITI TF-3 4.2.3.2 (homeCommunityId)"),
    Rule("LIMITED-metadata", META,
         "{kind} {obj}: limitedMetadata is not accepted in an XDS register (XDR/XDM only)",
         _OBJS, reference="ITI TF-3 4.2.3.2 (limitedMetadata)"),
    # --- associations -----------------------------------------------------------------------------
    Rule("ASSOC-unknown-type", META,
         "Association {obj}: associationType {value} is not supported",
         (ASSOCIATION,), reference="ITI TF-3 4.2.2"),
    Rule("ASSOC-unresolved", META,
         "Association {obj}: {end} {value} is neither in the submission nor in the registry"
         " (UnresolvedReference)",
         (ASSOCIATION,), reference=_TF3_ERRORS),
    Rule("ASSOC-hasmember-source", META,
         "Association {obj}: HasMember source {value} must be the SubmissionSet or a Folder",
         (ASSOCIATION,), reference=_HAS_MEMBER),
    Rule("ASSOC-ss-status-missing", META,
         "Association {obj}: HasMember from the SubmissionSet to a DocumentEntry needs a"
         " SubmissionSetStatus slot",
         (ASSOCIATION,), reference=_HAS_MEMBER),
    Rule("ASSOC-ss-status-invalid", META,
         "Association {obj}: SubmissionSetStatus {value} is neither Original nor Reference",
         (ASSOCIATION,), reference=_HAS_MEMBER),
    Rule("ASSOC-ss-status-mismatch", META,
         "Association {obj}: SubmissionSetStatus {value} does not fit target {target}"
         " (Original for a DocumentEntry in this submission, Reference for a registered one)",
         (ASSOCIATION,), reference=_HAS_MEMBER),
    Rule("REL-source-not-new-document", META,
         "Association {obj}: source {value} of a {type} relationship must be a DocumentEntry in"
         " this submission",
         (ASSOCIATION,), reference=_RELATIONS),
    Rule("REL-target-not-registered", META,
         "Association {obj}: target {value} of a {type} relationship must be a DocumentEntry"
         " already in the registry",
         (ASSOCIATION,), reference=_RELATIONS),
    Rule("REL-target-deprecated", REGISTRY_DEPRECATED_DOCUMENT_ERROR,
         "Association {obj}: target {value} of a {type} relationship is Deprecated",
         # XDSReplaceFailed is deprecated by TF-3 Table 4.2.4.1-2 in favour of TF-2b 3.42.4.1.3.5,
         # which rejects associations referencing a deprecated document with this code.
         (ASSOCIATION,), reference=_RELATIONS),
    Rule("REL-target-not-approved", META,
         "Association {obj}: target {value} of a {type} relationship has status {status},"
         " not Approved",
         (ASSOCIATION,), reference=_RELATIONS),
    # --- cardinality --------------------------------------------------------------------------------
    Rule("DE-single-valued", META,
         "DocumentEntry {obj}: {attr} must have exactly one value",
         (DOCUMENT_ENTRY,), reference="ITI TF-3 Table 4.3.1-3"),
    Rule("SS-single-valued", META,
         "SubmissionSet {obj}: {attr} must have exactly one value",
         (SUBMISSION_SET,), reference="ITI TF-3 4.3.1"),
    Rule("FOL-single-valued", META,
         "Folder {obj}: {attr} must have exactly one value",
         (FOLDER,), reference="ITI TF-3 4.3.1"),
    # --- formats ------------------------------------------------------------------------------------
    Rule("DTM-format", META,
         "{kind} {obj}: {attr} {value} is not a UTC time YYYY[MM[DD[hh[mm[ss]]]]]",
         _OBJS, reference=_TYPES),
    Rule("DE-hash-format", META,
         "DocumentEntry {obj}: hash {value} is not 40 hexadecimal digits (SHA-1)",
         (DOCUMENT_ENTRY,), reference=_DE_ATTR + " (hash)"),
    Rule("DE-size-format", META,
         "DocumentEntry {obj}: size {value} is not a non-negative integer",
         (DOCUMENT_ENTRY,), reference=_DE_ATTR + " (size)"),
    Rule("DE-uniqueId-format", META,
         "DocumentEntry {obj}: uniqueId {value} is not an identifier of at most 128 characters"
         " (root^extension needs an OID root of at most 64)",
         (DOCUMENT_ENTRY,), reference=_DE_ATTR + " (uniqueId)"),
    Rule("OID-format", META,
         "{kind} {obj}: {attr} {value} is not an OID of at most 64 characters",
         _OBJS, reference=_TYPES),
    Rule("CX-patientId-format", META,
         "{kind} {obj}: {attr} {value} is not a CX id^^^&<OID>&ISO",
         _OBJS, reference=_TYPES + " (CX)"),
    Rule("DE-sourcePatientId-format", META,
         "DocumentEntry {obj}: sourcePatientId {value} needs an id and an assigning authority"
         " (id^^^authority)",
         (DOCUMENT_ENTRY,), reference=_DE_ATTR + " (sourcePatientId)"),
    Rule("DE-sourcePatientInfo-format", META,
         "DocumentEntry {obj}: sourcePatientInfo value {value} is not of the form PID-n|value",
         (DOCUMENT_ENTRY,), reference=_DE_ATTR + " (sourcePatientInfo)"),
    Rule("DE-mimeType-format", META,
         "DocumentEntry {obj}: mimeType {value} is not of the form type/subtype",
         (DOCUMENT_ENTRY,), reference=_DE_ATTR + " (mimeType)"),
    Rule("DE-languageCode-format", META,
         "DocumentEntry {obj}: languageCode {value} is not an RFC 3066 language tag",
         (DOCUMENT_ENTRY,), reference=_DE_ATTR + " (languageCode)"),
    Rule("DE-objectType", META,
         "DocumentEntry {obj}: objectType {value} is neither the stable nor the On-Demand type",
         (DOCUMENT_ENTRY,), reference=_DE_ATTR + " (objectType)"),
    Rule("DE-on-demand-hash-size", META,
         "DocumentEntry {obj}: an On-Demand entry must not carry {attr}",
         (DOCUMENT_ENTRY,), reference=_DE_ATTR + " (hash, size)"),
    Rule("CODE-incomplete", META,
         "{kind} {obj}: {attr} value {value} needs both a code (nodeRepresentation) and a"
         " codingScheme",
         _OBJS, reference=_TYPES + " (Code)"),
    Rule("AUTHOR-incomplete", META,
         "{kind} {obj}: an author needs an authorPerson, authorInstitution or"
         " authorTelecommunication",
         (SUBMISSION_SET, DOCUMENT_ENTRY), reference=_TYPES + " (author)"),
    Rule("XCN-format", META,
         "{kind} {obj}: {attr} {value} is not an XCN with an id (XCN.1) or a name (XCN.2-4)",
         (SUBMISSION_SET, DOCUMENT_ENTRY), reference=_TYPES + " (XCN)"),
    Rule("XON-format", META,
         "{kind} {obj}: {attr} {value} is not an XON with an organization name (XON.1)",
         (SUBMISSION_SET, DOCUMENT_ENTRY), reference=_TYPES + " (XON)"),
    # --- patient ------------------------------------------------------------------------------------
    Rule("PID-mismatch", E.PATIENT_ID_DOES_NOT_MATCH.value,
         "{kind} {obj}: patientId {value} differs from the SubmissionSet patientId {expected}",
         (DOCUMENT_ENTRY, FOLDER), reference="ITI TF-2b 3.42.4.1.3 (patient identity)"),
    Rule("PID-mismatch-folder-member", E.PATIENT_ID_DOES_NOT_MATCH.value,
         "Association {obj}: DocumentEntry {target} (patient {value}) cannot join Folder {source}"
         " (patient {expected})",
         (ASSOCIATION,), reference=_HAS_MEMBER),
    Rule("PID-mismatch-reference", E.PATIENT_ID_DOES_NOT_MATCH.value,
         "Association {obj}: referenced DocumentEntry {target} belongs to patient {value}, not"
         " the SubmissionSet patient {expected}",
         (ASSOCIATION,), reference=_HAS_MEMBER),
    Rule("PID-mismatch-relationship", E.PATIENT_ID_DOES_NOT_MATCH.value,
         "Association {obj}: {type} target {target} belongs to patient {value}, not {expected}",
         (ASSOCIATION,), reference=_RELATIONS),
    Rule("PID-unknown", E.UNKNOWN_PATIENT_ID.value,
         "{kind} {obj}: patientId {value} is not known to the registry",
         _OBJS, reference=_TF3_ERRORS),
    # --- uniqueId -----------------------------------------------------------------------------------
    Rule("UID-duplicate-in-submission", E.REGISTRY_DUPLICATE_UNIQUE_ID.value,
         "{kind} {obj}: uniqueId {value} is used more than once in the submission",
         _OBJS, reference=_TF3_ERRORS),
    Rule("UID-already-registered", E.DUPLICATE_UNIQUE_ID.value,
         "{kind} {obj}: uniqueId {value} is already registered",
         # TF-3 Table 4.2.4.1-2: XDSDuplicateUniqueIdInRegistry is for SubmissionSet and Folder
         # only; "this error cannot be thrown for DocumentEntry".
         (SUBMISSION_SET, FOLDER), reference=_TF3_ERRORS),
    Rule("UID-nonidentical-hash", E.NON_IDENTICAL_HASH.value,
         "DocumentEntry {obj}: uniqueId {value} is already registered with a different hash",
         # A DocumentEntry re-submitted with a known uniqueId is accepted when its hash matches
         # (TF-3 Table 4.2.4.1-2, XDSNonIdenticalHash / XDSNonIdenticalSize).
         (DOCUMENT_ENTRY,), reference=_TF3_ERRORS),
    Rule("UID-registered-not-comparable", META,
         "DocumentEntry {obj}: uniqueId {value} is already registered to an object whose content"
         " cannot be compared (no hash: an On-Demand entry, a SubmissionSet or a Folder)",
         (DOCUMENT_ENTRY,), reference=_TF3_ERRORS),
    *_required_rules(),
)

RULES_BY_ID: dict[str, Rule] = {r.id: r for r in RULES}
if len(RULES_BY_ID) != len(RULES):  # pragma: no cover - guards the catalogue itself
    raise RuntimeError("duplicate rule id in RULES")


def describe_rules(rules: Iterable[Rule] = RULES) -> str:
    """The catalogue as a Markdown table (for the docs)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("{", "`{").replace("}", "}`")

    lines = [
        "| rule | error code | applies to | transactions | message | reference |",
        "|---|---|---|---|---|---|",
    ]
    for r in rules:
        lines.append(
            f"| `{r.id}` | {r.code} | {', '.join(r.applies_to)} | {', '.join(r.transactions)}"
            f" | {cell(r.message)} | {cell(r.reference)} |"
        )
    return "\n".join(lines) + "\n"


# --- what validation needs to know about the registry -------------------------------------------------
class RegistryLookup(Protocol):
    """Read-only questions about what is already registered (``registry.store`` implements it)."""

    def existing_unique_ids(self, unique_ids: Iterable[str]) -> dict[str, tuple[str, str | None]]:
        """uniqueId -> (entryUUID, hash); hash is None for SubmissionSets, Folders, On-Demand."""
        ...

    def existing_ids(self, uuids: Iterable[str]) -> set[str]:
        """The entryUUIDs (of any object, associations included) that are registered."""
        ...

    def document_status(self, uuids: Iterable[str]) -> dict[str, tuple[str, str, str | None]]:
        """entryUUID -> (status URN, patientId, kind) for DocumentEntries, Folders, SubmissionSets."""
        ...

    def known_patient(self, patient_id: str) -> bool | None:
        """False: unknown patient; None: no patient identity source configured (skip the check)."""
        ...


@dataclass(slots=True)
class ValidationContext:
    transaction: str = ITI42  # ITI41 or ITI42
    lookup: RegistryLookup | None = None  # None: skip every check that needs the registry
    home_community_id: str | None = None  # reported as RegistryError.location
    actor: str = "registry"  # "repository": a stand-alone Repository checking an ITI-41


# --- formats (compiled once) -----------------------------------------------------------------------
_DTM = re.compile(r"\d{4}(?:\d{2}){0,5}")
_HASH = re.compile(r"[0-9a-fA-F]{40}")
_OID = re.compile(r"\d+(?:\.\d+)+")
_UUID_BODY = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_URN_UUID = re.compile(r"urn:uuid:" + _UUID_BODY.pattern, re.IGNORECASE)
_HOME = re.compile(r"urn:oid:\d+(?:\.\d+)+")
_CX_PID = re.compile(r"([^\^&~\\|]+)\^\^\^&(\d+(?:\.\d+)+)&ISO")
_CX_SOURCE = re.compile(r"[^\^]+\^[^\^]*\^[^\^]*\^[^\^]+")
_PID_INFO = re.compile(r"PID-([1-9]\d?)\|.*", re.DOTALL)
_MIME_PART = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
_MIME = re.compile(_MIME_PART + "/" + _MIME_PART)
_BAD_UID_CHARS = re.compile(r"[\s\x00-\x1f&~\\|]")
_LANGUAGE = re.compile(r"[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*")
_SS_STATUSES = frozenset({"Original", "Reference"})
_KNOWN_ASSOCIATIONS = frozenset(t.value for t in v.AssociationType)
_NEEDS_REGISTERED_TARGET = frozenset(v.RELATIONSHIP_TYPES - {v.AssociationType.SIGNS})


def valid_dtm(value: str) -> bool:
    """HL7 DTM as XDS uses it: UTC, no zone, precision year .. second, calendar-valid."""
    if not _DTM.fullmatch(value):
        return False
    n = len(value)
    if n >= 6:
        month = int(value[4:6])
        if not 1 <= month <= 12:
            return False
        if n >= 8 and not 1 <= int(value[6:8]) <= calendar.monthrange(int(value[:4]), month)[1]:
            return False
    return not (
        (n >= 10 and int(value[8:10]) > 23)
        or (n >= 12 and int(value[10:12]) > 59)
        or (n >= 14 and int(value[12:14]) > 59)
    )


def valid_oid(value: str, max_len: int = 64) -> bool:
    return len(value) <= max_len and _OID.fullmatch(value) is not None


def valid_document_unique_id(value: str) -> bool:
    """At most 128 characters; ``root^extension`` needs an OID (or UUID) root of <= 64 characters.

    TF-3 4.2.3.2 leaves the format to the document type (an OID for DICOM, root^extension for
    CDA, whose root may be a UUID), so a plain identifier is accepted: NIST's own registry test
    data registers ``urn:txt:bill:42.42.42`` and expects Success.
    """
    if not value or len(value) > 128 or _BAD_UID_CHARS.search(value):
        return False
    root, sep, ext = value.partition("^")
    if not sep:
        return True
    if not ext or "^" in ext:
        return False
    return valid_oid(root) or _UUID_BODY.fullmatch(root) is not None


def _xcn_ok(value: str) -> bool:
    """An identifier (XCN.1) or any name component (family, given, further given names).

    NIST's registry test data (DSUB_*-1015) registers ``^^Dsub^Author-Two^^^``, a given name only,
    and expects Success; refusing it would reject real Document Sources for no safety gain.
    """
    parts = value.split("^")
    return len(parts) <= 23 and any(p.strip() for p in parts[:4])


def _xon_ok(value: str) -> bool:
    parts = value.split("^")
    return len(parts) <= 10 and bool(parts[0].strip())


def _show(value: object) -> str:
    """Echo untrusted input in messages, bounded so an error response cannot balloon."""
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _missing(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, list):
        return not value or (isinstance(value[0], m.LocalizedString) and not any(s.value for s in value))
    return False


def _is_uuid_id(value: str) -> bool:
    return value[:9].lower() == "urn:uuid:"


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


# --- the checker ---------------------------------------------------------------------------------------
class _Out:
    __slots__ = ("codes", "items", "tx")

    def __init__(self, ctx: ValidationContext):
        self.tx = ctx.transaction
        self.codes = _ACTOR_CODES[ctx.actor]
        self.items: list[Violation] = []

    def add(self, rule_id: str, obj_id: str | None, **fields: object) -> None:
        rule = RULES_BY_ID[rule_id]
        if not rule.applies(self.tx):
            return
        shown = {k: _show(x) if isinstance(x, str) else x for k, x in fields.items()}
        message = rule.message.format(obj=_show(obj_id) if obj_id is not None else "", **shown)
        self.items.append(Violation(rule, self.codes.get(rule.code, rule.code), obj_id, message))


def _objects(sub: m.Submission) -> Iterator[tuple[str, m.RegistryObject]]:
    if sub.submission_set is not None:
        yield SUBMISSION_SET, sub.submission_set
    for d in sub.documents:
        yield DOCUMENT_ENTRY, d
    for f in sub.folders:
        yield FOLDER, f
    for a in sub.associations:
        yield ASSOCIATION, a


def _check_common(kind: str, o: m.RegistryObject, tx: str, out: _Out) -> None:
    """Required attributes and single-valued cardinality, straight from the tables."""
    required, slots, schemes, prefix = _KIND_TABLES[kind]
    on_demand = kind == DOCUMENT_ENTRY and o.object_type == v.ON_DEMAND_DOCUMENT_ENTRY
    for attr, rule_id, stable_only in required[tx]:
        if (
            _missing(getattr(o, attr))
            and not (stable_only and on_demand)
            and not (attr == "size" and o.slot("size") is not None)  # present but unreadable
        ):
            out.add(rule_id, o.id)
    single = f"{prefix}-single-valued"
    for s in o.extra_slots:
        if s.name == "size" and isinstance(o, m.DocumentEntry) and o.size is None:
            # The codec keeps a size it cannot read as an integer here, with no named value.
            out.add("DE-size-format", o.id, value=s.values[0] if s.values else "(empty)")
        elif s.name in slots:
            out.add(single, o.id, attr=slots[s.name])
    for c in o.extra_classifications:
        if c.scheme in schemes:
            out.add(single, o.id, attr=schemes[c.scheme])
    for e in o.extra_identifiers:
        if e.scheme in schemes:
            out.add(single, o.id, attr=schemes[e.scheme])
    if o.home is not None and not _HOME.fullmatch(o.home):
        out.add("HOME-format", o.id, kind=kind, value=o.home)
    if getattr(o, "limited_metadata", False):
        out.add("LIMITED-metadata", o.id, kind=kind)


def _check_time(kind: str, o: m.RegistryObject, attr: str, value: str | None, out: _Out) -> None:
    if value and not valid_dtm(value):
        out.add("DTM-format", o.id, kind=kind, attr=attr, value=value)


def _check_oid(kind: str, o: m.RegistryObject, attr: str, value: str | None, out: _Out) -> None:
    if value and not valid_oid(value):
        out.add("OID-format", o.id, kind=kind, attr=attr, value=value)


def _check_pid(kind: str, o: m.RegistryObject, value: str | None, out: _Out) -> None:
    if value and not (len(value) <= 256 and (mt := _CX_PID.fullmatch(value)) and len(mt.group(2)) <= 64):
        out.add("CX-patientId-format", o.id, kind=kind, attr="patientId", value=value)


def _check_code(kind: str, o: m.RegistryObject, attr: str, code: m.Code | None, out: _Out) -> None:
    if code is not None and not (code.code and code.code.strip() and code.scheme and code.scheme.strip()):
        out.add("CODE-incomplete", o.id, kind=kind, attr=attr, value=f"{code.code}^^{code.scheme}")


def _check_authors(kind: str, o: m.RegistryObject, authors: list[m.Author], out: _Out) -> None:
    for a in authors:
        if not (a.person or a.institutions or a.telecoms):
            out.add("AUTHOR-incomplete", o.id, kind=kind)
        if a.person and not _xcn_ok(a.person):
            out.add("XCN-format", o.id, kind=kind, attr="authorPerson", value=a.person)
        for inst in a.institutions:
            if not _xon_ok(inst):
                out.add("XON-format", o.id, kind=kind, attr="authorInstitution", value=inst)


def _check_document(d: m.DocumentEntry, tx: str, out: _Out) -> None:
    K = DOCUMENT_ENTRY
    _check_common(K, d, tx, out)
    if d.object_type not in v.DOCUMENT_ENTRY_TYPES:
        out.add("DE-objectType", d.id, value=str(d.object_type))
    for attr, value in (
        ("creationTime", d.creation_time),
        ("serviceStartTime", d.service_start_time),
        ("serviceStopTime", d.service_stop_time),
    ):
        _check_time(K, d, attr, value, out)
    if d.object_type == v.ON_DEMAND_DOCUMENT_ENTRY:
        if d.hash is not None:
            out.add("DE-on-demand-hash-size", d.id, attr="hash")
        if d.size is not None:
            out.add("DE-on-demand-hash-size", d.id, attr="size")
    if d.hash is not None and not _HASH.fullmatch(d.hash):
        out.add("DE-hash-format", d.id, value=d.hash)
    if d.size is not None and (type(d.size) is not int or d.size < 0):
        out.add("DE-size-format", d.id, value=str(d.size))
    if d.unique_id and not valid_document_unique_id(d.unique_id):
        out.add("DE-uniqueId-format", d.id, value=d.unique_id)
    _check_oid(K, d, "repositoryUniqueId", d.repository_unique_id, out)
    _check_pid(K, d, d.patient_id, out)
    if d.source_patient_id and not _CX_SOURCE.match(d.source_patient_id):
        out.add("DE-sourcePatientId-format", d.id, value=d.source_patient_id)
    for info in d.source_patient_info:
        if not _PID_INFO.fullmatch(info):
            out.add("DE-sourcePatientInfo-format", d.id, value=info)
    if d.mime_type and not _MIME.fullmatch(d.mime_type):
        out.add("DE-mimeType-format", d.id, value=d.mime_type)
    if d.language_code and not _LANGUAGE.fullmatch(d.language_code):
        out.add("DE-languageCode-format", d.id, value=d.language_code)
    for attr, name in _DE_CODES:
        _check_code(K, d, name, getattr(d, attr), out)
    for c in d.confidentiality_codes:
        _check_code(K, d, "confidentialityCode", c, out)
    for c in d.event_codes:
        _check_code(K, d, "eventCodeList", c, out)
    _check_authors(K, d, d.authors, out)
    if d.legal_authenticator and not _xcn_ok(d.legal_authenticator):
        out.add("XCN-format", d.id, kind=K, attr="legalAuthenticator", value=d.legal_authenticator)


def _check_submission_set(ss: m.SubmissionSet, tx: str, out: _Out) -> None:
    K = SUBMISSION_SET
    _check_common(K, ss, tx, out)
    _check_time(K, ss, "submissionTime", ss.submission_time, out)
    _check_oid(K, ss, "uniqueId", ss.unique_id, out)
    _check_oid(K, ss, "sourceId", ss.source_id, out)
    _check_pid(K, ss, ss.patient_id, out)
    _check_code(K, ss, "contentTypeCode", ss.content_type_code, out)
    _check_authors(K, ss, ss.authors, out)


def _check_folder(f: m.Folder, tx: str, out: _Out) -> None:
    K = FOLDER
    _check_common(K, f, tx, out)
    _check_time(K, f, "lastUpdateTime", f.last_update_time, out)
    _check_oid(K, f, "uniqueId", f.unique_id, out)
    _check_pid(K, f, f.patient_id, out)
    for c in f.codes:
        _check_code(K, f, "codeList", c, out)


def check_submission(sub: m.Submission, ctx: ValidationContext) -> list[Violation]:
    """Every rule violation in ``sub``, in discovery order ([] when the submission is valid)."""
    tx = ctx.transaction
    if tx not in TRANSACTIONS:
        raise ValueError(f"metadata validation serves {TRANSACTIONS}, not {tx!r}")
    out = _Out(ctx)
    lookup = ctx.lookup
    ss = sub.submission_set
    docs = {d.id: d for d in sub.documents}
    folders = {f.id: f for f in sub.folders}

    # --- one SubmissionSet; entryUUIDs ------------------------------------------------------------
    others = [c for c in sub.extra_objects if c.node == v.SUBMISSION_SET_NODE
              and (ss is None or c.classified_object != ss.id)]
    if ss is None or others:
        out.add("SUB-one-submission-set", None, count=len(others) + (ss is not None))
    local: dict[str, str] = {}  # entryUUID -> kind, for every object in the submission
    for kind, o in _objects(sub):
        if not o.id:  # an id-less (ebRS 2.1 style) association: assign_uuids gives it one
            continue
        if o.id in local:
            out.add("ID-duplicate-in-submission", o.id, kind=kind)
        else:
            local[o.id] = kind
        if _is_uuid_id(o.id) and not _URN_UUID.fullmatch(o.id):
            out.add("ID-invalid-uuid", o.id, kind=kind)

    # --- per-object attributes ------------------------------------------------------------------------
    if ss is not None:
        _check_submission_set(ss, tx, out)
    for d in sub.documents:
        _check_document(d, tx, out)
    for f in sub.folders:
        _check_folder(f, tx, out)
    for a in sub.associations:
        if a.home is not None and not _HOME.fullmatch(a.home):
            out.add("HOME-format", a.id, kind=ASSOCIATION, value=a.home)

    # --- patient consistency -------------------------------------------------------------------------
    ss_pid = ss.patient_id if ss is not None else None
    if ss_pid:
        for kind, objs in ((DOCUMENT_ENTRY, sub.documents), (FOLDER, sub.folders)):
            for o in objs:
                if o.patient_id and o.patient_id != ss_pid:
                    out.add("PID-mismatch", o.id, kind=kind, value=o.patient_id, expected=ss_pid)

    # --- what the registry knows (a few batched calls) ------------------------------------------------
    external = {r for a in sub.associations for r in (a.source, a.target) if r and r not in local}
    if lookup is not None:
        asked = external | {i for i in local if _is_uuid_id(i)}
        existing = lookup.existing_ids(asked) if asked else set()
        for i in sorted(existing & local.keys()):
            out.add("ID-already-registered", i, kind=local[i])
        resolved = external & existing
        status: dict[str, tuple[str, str, str | None]] | None = (
            lookup.document_status(resolved) if resolved else {}
        )
    else:  # no registry at hand: only symbolic references are surely unresolvable
        resolved = {r for r in external if _is_uuid_id(r)}
        status = None

    # --- associations --------------------------------------------------------------------------------
    linked: set[str] = set()
    for a in sub.associations:
        atype = a.association_type
        if atype not in _KNOWN_ASSOCIATIONS:
            out.add("ASSOC-unknown-type", a.id, value=atype)
            continue
        is_rel = atype != v.AssociationType.HAS_MEMBER
        for end, ref in (("sourceObject", a.source), ("targetObject", a.target)):
            if (not ref or (ref not in local and ref not in resolved)) and not (
                is_rel and end == "targetObject"
            ):
                out.add("ASSOC-unresolved", a.id, end=end, value=ref or "(empty)")
        if is_rel:
            _check_relationship(a, docs, local, resolved, status, out)
        else:
            _check_has_member(a, ss, docs, folders, local, status or {}, linked, out)
    if ss is not None:
        for kind, objs in ((DOCUMENT_ENTRY, sub.documents), (FOLDER, sub.folders)):
            for o in objs:
                if o.id not in linked:
                    out.add("SUB-hasmember-missing", o.id, kind=kind)

    # --- uniqueIds -----------------------------------------------------------------------------------
    by_uid: dict[str, tuple[str, m.RegistryObject]] = {}
    for kind, o in _objects(sub):
        uid = getattr(o, "unique_id", None)
        if not uid:
            continue
        if uid in by_uid:
            out.add("UID-duplicate-in-submission", o.id, kind=kind, value=uid)
        else:
            by_uid[uid] = (kind, o)
    if lookup is not None and by_uid:
        for uid, (entry_uuid, known_hash) in lookup.existing_unique_ids(by_uid.keys()).items():
            if uid not in by_uid:
                continue
            kind, d = by_uid[uid]
            if entry_uuid == d.id:  # the very object (reported as ID-already-registered)
                continue
            if not isinstance(d, m.DocumentEntry):
                out.add("UID-already-registered", d.id, kind=kind, value=uid)
                continue
            if known_hash is None or d.object_type == v.ON_DEMAND_DOCUMENT_ENTRY:
                out.add("UID-registered-not-comparable", d.id, value=uid)
            elif d.hash is not None and d.hash.lower() != known_hash.lower():
                out.add("UID-nonidentical-hash", d.id, value=uid)
            # no hash yet (ITI-41 before the Repository computed it): nothing to compare

    # --- known patients ------------------------------------------------------------------------------
    if lookup is not None:
        seen: set[str] = set()
        for kind, o in _objects(sub):
            pid = getattr(o, "patient_id", None)
            if pid and pid not in seen:
                seen.add(pid)
                if lookup.known_patient(pid) is False:
                    out.add("PID-unknown", o.id, kind=kind, value=pid)
    return out.items


def _check_has_member(
    a: m.Association,
    ss: m.SubmissionSet | None,
    docs: dict[str, m.DocumentEntry],
    folders: dict[str, m.Folder],
    local: dict[str, str],
    status: dict[str, tuple[str, str, str | None]],
    linked: set[str],
    out: _Out,
) -> None:
    src, tgt = a.source, a.target
    _, old_doc_pid, tgt_kind = status.get(tgt, ("", "", None))
    if ss is not None and src == ss.id:
        linked.add(tgt)
        tgt_is_new_doc = tgt in docs
        tgt_is_old_doc = tgt_kind == DOCUMENT_ENTRY
        if not (tgt_is_new_doc or tgt_is_old_doc):
            return
        sss = a.submission_set_status
        if not sss:
            out.add("ASSOC-ss-status-missing", a.id)
        elif sss not in _SS_STATUSES:
            out.add("ASSOC-ss-status-invalid", a.id, value=sss)
        elif (sss == "Original") != tgt_is_new_doc:
            out.add("ASSOC-ss-status-mismatch", a.id, value=sss, target=tgt)
        if tgt_is_old_doc and ss.patient_id and old_doc_pid and old_doc_pid != ss.patient_id:
            out.add("PID-mismatch-reference", a.id, target=tgt, value=old_doc_pid, expected=ss.patient_id)
        return
    ext_src = status.get(src)
    if src in folders:
        folder_pid = folders[src].patient_id
    elif ext_src is not None and ext_src[2] == FOLDER:
        folder_pid = ext_src[1]
    else:
        if src in local or ext_src is not None:  # resolved, but not something that has members
            out.add("ASSOC-hasmember-source", a.id, value=src)
        return
    if tgt in docs:
        doc_pid = docs[tgt].patient_id
    elif tgt_kind == DOCUMENT_ENTRY:
        doc_pid = old_doc_pid
    else:
        return
    if folder_pid and doc_pid and folder_pid != doc_pid:
        out.add("PID-mismatch-folder-member", a.id, target=tgt, source=src, value=doc_pid,
                expected=folder_pid)


def _check_relationship(
    a: m.Association,
    docs: dict[str, m.DocumentEntry],
    local: dict[str, str],
    resolved: set[str],
    status: dict[str, tuple[str, str, str | None]] | None,
    out: _Out,
) -> None:
    atype = a.association_type.rsplit(":", 1)[-1]
    source = docs.get(a.source)
    if source is None and (a.source in local or a.source in resolved):  # else: ASSOC-unresolved
        out.add("REL-source-not-new-document", a.id, value=a.source, type=atype)
    tgt = a.target
    if tgt in local:
        # A signature may sign a document of the same submission; every other relationship
        # points at something already registered (TF-3 4.2.2.2).
        if a.association_type in _NEEDS_REGISTERED_TARGET or local[tgt] != DOCUMENT_ENTRY:
            out.add("REL-target-not-registered", a.id, value=tgt, type=atype)
        return
    if tgt not in resolved:
        out.add("REL-target-not-registered", a.id, value=tgt or "(empty)", type=atype)
        return
    if status is None:  # no registry to ask: its status and patient are unknown
        return
    st = status.get(tgt)
    if st is None or st[2] != DOCUMENT_ENTRY:  # registered, but an association/folder/set
        out.add("REL-target-not-registered", a.id, value=tgt, type=atype)
        return
    target_status, target_pid, _kind = st
    target_status = v.normalize_status(target_status)
    if target_status == _DEPRECATED:
        out.add("REL-target-deprecated", a.id, value=tgt, type=atype)
    elif target_status != _APPROVED:
        out.add("REL-target-not-approved", a.id, value=tgt, type=atype,
                status=target_status.rsplit(":", 1)[-1])
    if source is not None and source.patient_id and target_pid and target_pid != source.patient_id:
        out.add("PID-mismatch-relationship", a.id, type=atype, target=tgt, value=target_pid,
                expected=source.patient_id)


def validate_submission(sub: m.Submission, ctx: ValidationContext) -> list[m.RegistryError]:
    """Every violation as a RegistryError (Error severity); [] when the submission is valid."""
    return [vi.to_error(ctx.home_community_id) for vi in check_submission(sub, ctx)]


def deprecations(sub: m.Submission) -> list[str]:
    """entryUUIDs the registry must set to Deprecated when ``sub`` is accepted (RPLC, XFRM_RPLC).

    The store applies it inside the registering transaction (TF-3 4.2.2.2).
    """
    seen: dict[str, None] = {}
    for a in sub.associations:
        if a.association_type in v.REPLACING_TYPES and a.target:
            seen.setdefault(a.target, None)
    return list(seen)


# --- symbolic ids -----------------------------------------------------------------------------------
def assign_uuids(sub: m.Submission) -> dict[str, str]:
    """Replace symbolic ids (anything not ``urn:uuid:``) with fresh UUIDs everywhere they occur.

    Document Sources may name new objects ``Document01``; the registry stores UUIDs (ebRS 3.0
    SubmitObjectsRequest id replacement). Declared ids are mapped, then every reference (association
    ends, classifiedObject, registryObject, lid, ObjectRefs) is rewritten through the same map.
    Real UUIDs are left alone, so a second call changes nothing. Returns symbolic -> UUID.
    """
    mapping: dict[str, str] = {}

    def declare(ident: str | None) -> str | None:
        if ident is None:
            return None
        if not ident:  # ebRS 2.1-style association without id: give it one of its own
            return uuid.uuid4().urn
        if _is_uuid_id(ident):
            return ident
        new = mapping.get(ident)
        if new is None:
            new = mapping[ident] = uuid.uuid4().urn
        return new

    ss = sub.submission_set
    objs: list[m.RegistryObject] = [*([ss] if ss is not None else []), *sub.documents, *sub.folders,
                                    *sub.associations]
    for o in objs:
        o.id = declare(o.id)  # type: ignore[assignment]
        for c in o.extra_classifications:
            c.id = declare(c.id)
        for e in o.extra_identifiers:
            e.id = declare(e.id)
        for attr in ("unique_id_ident_id", "patient_id_ident_id", "source_id_ident_id",
                     "node_classification_id"):
            if hasattr(o, attr):
                setattr(o, attr, declare(getattr(o, attr)))
        for code in _codes_of(o):
            code.id = declare(code.id)
        for author in getattr(o, "authors", ()):
            author.id = declare(author.id)
    for c in sub.extra_objects:
        c.id = declare(c.id)

    def ref(ident: str | None) -> str | None:
        return mapping.get(ident, ident) if ident else ident

    for o in objs:
        o.lid = ref(o.lid)
        for c in o.extra_classifications:
            c.classified_object = ref(c.classified_object)
        for e in o.extra_identifiers:
            e.registry_object = ref(e.registry_object)
        if isinstance(o, m.Association):
            o.source = ref(o.source) or o.source
            o.target = ref(o.target) or o.target
    for c in sub.extra_objects:
        c.classified_object = ref(c.classified_object)
    for r in sub.object_refs:
        r.id = ref(r.id) or r.id
    return mapping


def _codes_of(o: m.RegistryObject) -> Iterator[m.Code]:
    if isinstance(o, m.DocumentEntry):
        for attr, _ in _DE_CODES:
            code = getattr(o, attr)
            if code is not None:
                yield code
        yield from o.confidentiality_codes
        yield from o.event_codes
    elif isinstance(o, m.SubmissionSet):
        if o.content_type_code is not None:
            yield o.content_type_code
    elif isinstance(o, m.Folder):
        yield from o.codes
