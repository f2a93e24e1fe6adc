"""The rule catalogue: every rule with its IHE error code, the objects it applies to and its source."""

from __future__ import annotations

from collections.abc import Iterable

from xds_node.ebxml.validation.base import (
    ASSOCIATION,
    DOCUMENT_ENTRY,
    FOLDER,
    META,
    REGISTRY_DEPRECATED_DOCUMENT_ERROR,
    SUBMISSION,
    SUBMISSION_SET,
    E,
    Rule,
)
from xds_node.ebxml.validation.fields import _required_rules

_TF3_ERRORS = "ITI TF-3 Table 4.2.4.1-2"
_HAS_MEMBER = "ITI TF-3 4.2.2.1"
_RELATIONS = "ITI TF-3 4.2.2.2; ITI TF-2b 3.42.4.1.3.5"
_TYPES = "ITI TF-3 4.2.3.1 (data types)"
_DE_ATTR = "ITI TF-3 4.2.3.2"
_OBJS = (SUBMISSION_SET, DOCUMENT_ENTRY, FOLDER)
_STORAGE = "ITI TF-3 Table 4.2.4.1-2 (XDSRegistryMetadataError); bounds: the registry's table columns"

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
    Rule("UID-nonidentical-size", E.NON_IDENTICAL_SIZE.value,
         "DocumentEntry {obj}: uniqueId {value} is already registered with the same hash but another size",
         (DOCUMENT_ENTRY,), reference=_TF3_ERRORS),
    Rule("UID-other-patient", E.PATIENT_ID_DOES_NOT_MATCH.value,
         "DocumentEntry {obj}: uniqueId {value} is already registered for patient {expected}",
         # An identical resubmission is the same document: it stays one patient's document, so
         # consent and audit, which look documents up by uniqueId (ITI-39/43), name one patient.
         (DOCUMENT_ENTRY,), reference=_TF3_ERRORS + " (XDSPatientIdDoesNotMatch)"),
    Rule("UID-registered-not-comparable", META,
         "DocumentEntry {obj}: uniqueId {value} is already registered to an object whose content"
         " cannot be compared (no hash: an On-Demand entry, a SubmissionSet or a Folder)",
         (DOCUMENT_ENTRY,), reference=_TF3_ERRORS),
    # --- storage limits (bounds from ``registry.limits``, derived from the table columns) ---------
    Rule("LIMIT-length", META,
         "{kind} {obj}: {attr} value {value} is {length} characters long; at most {max} are accepted",
         (*_OBJS, ASSOCIATION), reference=_STORAGE),
    Rule("LIMIT-range", META,
         "{kind} {obj}: {attr} {value} is outside the accepted range {minimum}..{maximum}",
         (*_OBJS, ASSOCIATION), reference=_STORAGE),
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
