"""Stored-query parameters: the per-query parameter table and the ITI-18 value syntax.

The table (:data:`QUERIES`) is the single statement of which parameters each of the 14 stored
queries takes, which are required, which take several values, and which pairs are mutually
exclusive; :func:`parse_query` checks a request against it and returns typed parameters, or the
IHE errors (XDSUnknownStoredQuery, XDSStoredQueryMissingParam, XDSStoredQueryParamNumber, ...).
:data:`MULTI_PATIENT_QUERIES` is the same for the two ITI-51 queries; each transaction parses
against its own table, so an ITI-51 query id sent as ITI-18/38 is unknown there, and vice versa.

Value syntax (ITI TF-2a 3.18.4.1.2.3.4): a Value is ``'text'``, a number, or a list ``('a','b')``;
values within one Slot are ORed; repeating a Slot (only for the code-list parameters that allow
it) ANDs the groups.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum

from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import RegistryError, StoredQuery

Q = v.StoredQueryId


class Kind(Enum):
    STRING = "string"  # free text (ids, uuids, patient id)
    CODE = "code"  # code^^scheme
    TIME = "time"  # DTM
    STATUS = "status"  # availabilityStatus (short or URN)
    LIKE = "like"  # SQL LIKE pattern (author person)


@dataclass(frozen=True)
class Param:
    name: str
    kind: Kind = Kind.STRING
    required: bool = False
    multiple: bool = False
    and_or: bool = False  # may repeat the Slot to AND value groups
    max_values: int | None = None  # most values one Slot may carry (None: no limit of its own)


@dataclass(frozen=True)
class QuerySpec:
    name: str
    params: tuple[Param, ...]
    #: groups of parameters of which exactly one must be given
    one_of: tuple[tuple[str, ...], ...] = ()
    #: the parameter that carries the patient id, for queries keyed by patient (XCA: no ``home``
    #: needed; gateways route and check consent on it)
    patient_param: str | None = None
    #: a LeafClass answer may span patients (ITI-51); otherwise XDSResultNotSinglePatient
    multi_patient: bool = False

    @property
    def patient_keyed(self) -> bool:
        return self.patient_param is not None


def _doc_filters(prefix: str = "$XDSDocumentEntry") -> tuple[Param, ...]:
    return (
        Param(f"{prefix}FormatCode", Kind.CODE, multiple=True),
        Param(f"{prefix}ConfidentialityCode", Kind.CODE, multiple=True, and_or=True),
        Param(f"{prefix}Type", Kind.STRING, multiple=True),
    )


_FIND_DOCUMENTS_PARAMS = (
    Param("$XDSDocumentEntryPatientId", required=True),
    Param("$XDSDocumentEntryClassCode", Kind.CODE, multiple=True),
    Param("$XDSDocumentEntryTypeCode", Kind.CODE, multiple=True),
    Param("$XDSDocumentEntryPracticeSettingCode", Kind.CODE, multiple=True),
    Param("$XDSDocumentEntryCreationTimeFrom", Kind.TIME),
    Param("$XDSDocumentEntryCreationTimeTo", Kind.TIME),
    Param("$XDSDocumentEntryServiceStartTimeFrom", Kind.TIME),
    Param("$XDSDocumentEntryServiceStartTimeTo", Kind.TIME),
    Param("$XDSDocumentEntryServiceStopTimeFrom", Kind.TIME),
    Param("$XDSDocumentEntryServiceStopTimeTo", Kind.TIME),
    Param("$XDSDocumentEntryHealthcareFacilityTypeCode", Kind.CODE, multiple=True),
    Param("$XDSDocumentEntryEventCodeList", Kind.CODE, multiple=True, and_or=True),
    Param("$XDSDocumentEntryAuthorPerson", Kind.LIKE, multiple=True),
    Param("$XDSDocumentEntryStatus", Kind.STATUS, required=True, multiple=True),
    *_doc_filters(),
)

_DOC_ID = (Param("$XDSDocumentEntryEntryUUID", multiple=True), Param("$XDSDocumentEntryUniqueId", multiple=True))
_DOC_ID_SINGLE = (Param("$XDSDocumentEntryEntryUUID"), Param("$XDSDocumentEntryUniqueId"))
_HOME = Param("$homeCommunityId")
_ONE_DOC = (("$XDSDocumentEntryEntryUUID", "$XDSDocumentEntryUniqueId"),)

_FIND_FOLDERS_PARAMS = (
    Param("$XDSFolderPatientId", required=True),
    Param("$XDSFolderLastUpdateTimeFrom", Kind.TIME),
    Param("$XDSFolderLastUpdateTimeTo", Kind.TIME),
    Param("$XDSFolderCodeList", Kind.CODE, multiple=True, and_or=True),
    Param("$XDSFolderStatus", Kind.STATUS, required=True, multiple=True),
)

QUERIES: dict[str, QuerySpec] = {
    Q.FIND_DOCUMENTS: QuerySpec("FindDocuments", _FIND_DOCUMENTS_PARAMS,
                                patient_param="$XDSDocumentEntryPatientId"),
    Q.FIND_DOCUMENTS_BY_REFERENCE_ID: QuerySpec(
        "FindDocumentsByReferenceId",
        (*_FIND_DOCUMENTS_PARAMS,
         Param("$XDSDocumentEntryReferenceIdList", required=True, multiple=True, and_or=True)),
        patient_param="$XDSDocumentEntryPatientId",
    ),
    Q.FIND_SUBMISSION_SETS: QuerySpec(
        "FindSubmissionSets",
        (
            Param("$XDSSubmissionSetPatientId", required=True),
            Param("$XDSSubmissionSetSourceId", multiple=True),
            Param("$XDSSubmissionSetSubmissionTimeFrom", Kind.TIME),
            Param("$XDSSubmissionSetSubmissionTimeTo", Kind.TIME),
            Param("$XDSSubmissionSetAuthorPerson", Kind.LIKE),
            Param("$XDSSubmissionSetContentType", Kind.CODE, multiple=True),
            Param("$XDSSubmissionSetStatus", Kind.STATUS, required=True, multiple=True),
        ),
        patient_param="$XDSSubmissionSetPatientId",
    ),
    Q.FIND_FOLDERS: QuerySpec("FindFolders", _FIND_FOLDERS_PARAMS, patient_param="$XDSFolderPatientId"),
    Q.GET_ALL: QuerySpec(
        "GetAll",
        (
            Param("$patientId", required=True),
            Param("$XDSDocumentEntryStatus", Kind.STATUS, required=True, multiple=True),
            Param("$XDSSubmissionSetStatus", Kind.STATUS, required=True, multiple=True),
            Param("$XDSFolderStatus", Kind.STATUS, required=True, multiple=True),
            *_doc_filters(),
        ),
        patient_param="$patientId",
    ),
    Q.GET_DOCUMENTS: QuerySpec("GetDocuments", (*_DOC_ID, _HOME), _ONE_DOC),
    Q.GET_FOLDERS: QuerySpec(
        "GetFolders",
        (Param("$XDSFolderEntryUUID", multiple=True), Param("$XDSFolderUniqueId", multiple=True), _HOME),
        (("$XDSFolderEntryUUID", "$XDSFolderUniqueId"),),
    ),
    Q.GET_ASSOCIATIONS: QuerySpec("GetAssociations", (Param("$uuid", required=True, multiple=True), _HOME)),
    Q.GET_DOCUMENTS_AND_ASSOCIATIONS: QuerySpec("GetDocumentsAndAssociations", (*_DOC_ID, _HOME), _ONE_DOC),
    Q.GET_SUBMISSION_SETS: QuerySpec("GetSubmissionSets", (Param("$uuid", required=True, multiple=True), _HOME)),
    Q.GET_SUBMISSION_SET_AND_CONTENTS: QuerySpec(
        "GetSubmissionSetAndContents",
        (Param("$XDSSubmissionSetEntryUUID"), Param("$XDSSubmissionSetUniqueId"), *_doc_filters(), _HOME),
        (("$XDSSubmissionSetEntryUUID", "$XDSSubmissionSetUniqueId"),),
    ),
    Q.GET_FOLDER_AND_CONTENTS: QuerySpec(
        "GetFolderAndContents",
        (Param("$XDSFolderEntryUUID"), Param("$XDSFolderUniqueId"), *_doc_filters(), _HOME),
        (("$XDSFolderEntryUUID", "$XDSFolderUniqueId"),),
    ),
    Q.GET_FOLDERS_FOR_DOCUMENT: QuerySpec("GetFoldersForDocument", (*_DOC_ID_SINGLE, _HOME), _ONE_DOC),
    Q.GET_RELATED_DOCUMENTS: QuerySpec(
        "GetRelatedDocuments",
        (*_DOC_ID_SINGLE, Param("$AssociationTypes", required=True, multiple=True),
         Param("$XDSDocumentEntryType", multiple=True), _HOME),
        _ONE_DOC,
    ),
}

#: Slot occurrences an AND-able parameter (event codes, confidentiality codes, reference ids,
#: folder codes) may have: each is a sub-query, and thousands made SQLite refuse the statement
#: (a 500) and PostgreSQL plan for seconds. Real queries AND a handful.
MAX_AND_GROUPS = 10
#: Patterns a LIKE parameter (author person) may carry: each is an OR'ed LIKE, and about a
#: thousand exceeded SQLite's expression depth (a 500).
MAX_LIKE_VALUES = 100

#: Patient ids one ITI-51 request may list: bounds the SQL it becomes (SQLite allows ~32k bound
#: values per statement) and the work one internal consumer can ask for in a single call.
MAX_PATIENT_IDS = 1000


def _patient_list(params: tuple[Param, ...], name: str) -> tuple[Param, ...]:
    """ITI-51: the patient id parameter becomes optional and multi-valued (a list of patients, ORed)."""
    return tuple(Param(name, multiple=True, max_values=MAX_PATIENT_IDS) if p.name == name else p for p in params)


#: ITI-51 Multi-Patient Stored Query (ITI TF-2b 3.51.4.1.2.3): FindDocuments / FindFolders with an
#: optional patient list; every other parameter keeps its ITI-18 rules.
MULTI_PATIENT_QUERIES: dict[str, QuerySpec] = {
    Q.FIND_DOCUMENTS_FOR_MULTIPLE_PATIENTS: QuerySpec(
        "FindDocumentsForMultiplePatients",
        _patient_list(_FIND_DOCUMENTS_PARAMS, "$XDSDocumentEntryPatientId"), multi_patient=True),
    Q.FIND_FOLDERS_FOR_MULTIPLE_PATIENTS: QuerySpec(
        "FindFoldersForMultiplePatients",
        _patient_list(_FIND_FOLDERS_PARAMS, "$XDSFolderPatientId"), multi_patient=True),
}

QUERY_NAMES = {spec.name: qid for qid, spec in QUERIES.items()}
#: query id -> the parameter carrying the patient id, for the patient-keyed queries
PATIENT_PARAM = {qid: spec.patient_param for qid, spec in QUERIES.items() if spec.patient_param}


@dataclass
class Params:
    """Typed parameters of one stored query request.

    ``values[name]`` is a list of OR-groups (one per Slot occurrence), each a list of strings;
    a single-valued parameter is ``values[name][0][0]`` (see :meth:`one`).
    """

    spec: QuerySpec
    query: StoredQuery
    values: dict[str, list[list[str]]] = field(default_factory=dict)

    def has(self, name: str) -> bool:
        return name in self.values

    def one(self, name: str) -> str | None:
        groups = self.values.get(name)
        return groups[0][0] if groups else None

    def flat(self, name: str) -> list[str]:
        return [value for group in self.values.get(name, []) for value in group]

    def groups(self, name: str) -> list[list[str]]:
        return self.values.get(name, [])

    @property
    def leaf_class(self) -> bool:
        return self.query.return_type != "ObjectRef"


class QueryError(Exception):
    def __init__(self, errors: list[RegistryError]):
        super().__init__("; ".join(e.context for e in errors))
        self.errors = errors


_TIME = re.compile(r"^\d{4}(\d{2}){0,5}$")
_CODE = re.compile(r"^[^^]+\^\^[^^]+$")


_ITEM = re.compile(r"\s*(?:'((?:[^']|'')*)'|([^,'()]+?))\s*(?:,|$)")


def split_values(raw: str) -> list[str]:
    """``'a'`` -> [a]; ``('a', 'b')`` -> [a, b]; ``123`` -> [123]; quotes doubled inside are unescaped."""
    text = raw.strip()
    if text.startswith("(") and text.endswith(")"):
        text = text[1:-1]
    if len(text) > 1 and text[0] == "'" and text[-1] == "'" and "'" not in text[1:-1]:
        return [text[1:-1]]  # the common case: one quoted value
    out = []
    for quoted, bare in _ITEM.findall(text):
        value = quoted.replace("''", "'") if quoted else bare.strip()
        if value:
            out.append(value)
    return out


def _err(code: str, context: str) -> RegistryError:
    return RegistryError(code=code, context=context)


def parse_query(query: StoredQuery, queries: dict[str, QuerySpec] = QUERIES) -> Params:
    """Check ``query`` against its spec in ``queries`` (the transaction's table); raise QueryError
    listing every problem found."""
    spec = queries.get(query.query_id)
    if spec is None:
        raise QueryError([_err(v.ErrorCode.UNKNOWN_STORED_QUERY, f"Unknown stored query id {query.query_id!r}")])
    errors: list[RegistryError] = []
    params = Params(spec=spec, query=query)
    by_name = {p.name: p for p in spec.params}
    for name, occurrences in query.slots.items():
        param = by_name.get(name)
        if param is None:
            continue  # ITI TF-2a: parameters a query does not define are ignored
        groups = [[value for raw in values for value in split_values(raw)] for values in occurrences]
        groups = [g for g in groups if g]
        if not groups:
            continue
        if len(groups) > 1 and not param.and_or:
            errors.append(_err(v.ErrorCode.STORED_QUERY_PARAM_NUMBER,
                               f"{spec.name}: parameter {name} may appear only once"))
            continue
        if not param.multiple and len(groups[0]) > 1:
            errors.append(_err(v.ErrorCode.STORED_QUERY_PARAM_NUMBER,
                               f"{spec.name}: parameter {name} takes a single value, got {len(groups[0])}"))
            continue
        if param.and_or and len(groups) > MAX_AND_GROUPS:
            errors.append(_err(v.ErrorCode.STORED_QUERY_PARAM_NUMBER,
                               f"{spec.name}: parameter {name} may appear at most {MAX_AND_GROUPS} times, "
                               f"got {len(groups)}"))
            continue
        if param.kind is Kind.LIKE and sum(map(len, groups)) > MAX_LIKE_VALUES:
            errors.append(_err(v.ErrorCode.STORED_QUERY_PARAM_NUMBER,
                               f"{spec.name}: parameter {name} takes at most {MAX_LIKE_VALUES} patterns"))
            continue
        if param.max_values is not None and len(groups[0]) > param.max_values:
            errors.append(_err(v.ErrorCode.STORED_QUERY_PARAM_NUMBER,
                               f"{spec.name}: parameter {name} takes at most {param.max_values} values, "
                               f"got {len(groups[0])}"))
            continue
        for group in groups:
            for value in group:
                problem = _check_value(param, value)
                if problem:
                    errors.append(_err(v.ErrorCode.REGISTRY_ERROR, f"{spec.name}: parameter {name}: {problem}"))
        if param.kind is Kind.STATUS:
            groups = [[v.normalize_status(x) for x in g] for g in groups]
        params.values[name] = groups
    for param in spec.params:
        if param.required and param.name not in params.values and not any(
            e.context.startswith(f"{spec.name}: parameter {param.name}") for e in errors
        ):
            errors.append(_err(v.ErrorCode.STORED_QUERY_MISSING_PARAM,
                               f"{spec.name}: required parameter {param.name} is missing"))
    for group in spec.one_of:
        present = [name for name in group if name in params.values]
        if not present:
            errors.append(_err(v.ErrorCode.STORED_QUERY_MISSING_PARAM,
                               f"{spec.name}: one of {', '.join(group)} is required"))
        elif len(present) > 1:
            errors.append(_err(v.ErrorCode.STORED_QUERY_PARAM_NUMBER,
                               f"{spec.name}: only one of {', '.join(group)} may be given"))
    if errors:
        raise QueryError(errors)
    return params


def _check_value(param: Param, value: str) -> str | None:
    if param.kind is Kind.TIME and not _TIME.match(value):
        return f"{value!r} is not an HL7 DTM time (YYYY[MM[DD[hh[mm[ss]]]]])"
    if param.kind is Kind.CODE and not _CODE.match(value):
        return f"{value!r} is not in code^^scheme form"
    return None


def pad_time(value: str, *, upper: bool = False) -> str:
    """Bring a DTM to 14 digits so times of different precision compare as strings."""
    return value.ljust(14, "9" if upper else "0")[:14]
