"""The Document Registry actor: validate-then-store registration, and stored queries.

Transaction modules (ITI-18, ITI-42, ITI-38 ...) call this with domain objects; it knows nothing
of SOAP. Profile differences (XDS vs XCA: ``home`` on results, error location) are passed in by
the caller, not decided here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import RegistryError, RegistryResponse, StoredQuery, Submission
from xds_node.ebxml.query import QUERIES, Params, QueryError, QuerySpec, parse_query
from xds_node.ebxml.validation import (
    FieldLimits,
    ValidationContext,
    assign_uuids,
    deprecations,
    validate_submission,
)
from xds_node.registry import limits as registry_limits
from xds_node.registry.store import DuplicateError, RegistryStore, Row, UniqueIdTaken
from xds_node.registry.stored_queries import QueryRunner, TooManyResults

log = logging.getLogger(__name__)


def now_dtm() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S")


@dataclass
class QueryOutcome:
    status: str
    rows: list[Row] = field(default_factory=list)
    errors: list[RegistryError] = field(default_factory=list)
    params: Params | None = None

    @property
    def leaf_class(self) -> bool:
        return self.params is None or self.params.leaf_class


class _Lookup:
    """The store seen through the RegistryLookup protocol, with the patient check switchable."""

    def __init__(self, store: RegistryStore, check_patients: bool):
        self._store = store
        self._check = check_patients

    def existing_unique_ids(self, unique_ids):
        return self._store.existing_unique_ids(unique_ids)

    def existing_ids(self, uuids):
        return self._store.existing_ids(uuids)

    def document_status(self, uuids):
        return self._store.document_status(uuids)

    def known_patient(self, patient_id: str) -> bool | None:
        return self._store.known_patient(patient_id) if self._check else None


class Registry:
    def __init__(self, store: RegistryStore, *, require_known_patient: bool = False,
                 max_query_results: int = 5000, home_community_id: str | None = None,
                 limits: FieldLimits | None = None):
        self.store = store
        #: per-field bounds of the storage: a value that cannot be stored is a metadata error
        self.limits = registry_limits.LIMITS if limits is None else limits
        self.lookup = _Lookup(store, require_known_patient)
        self.runner = QueryRunner(store, max_results=max_query_results)
        self.home_community_id = home_community_id

    # --- ITI-42 ---------------------------------------------------------------------------------
    def register(self, sub: Submission, *, transaction: str = "ITI-42", also=None, conn=None) -> RegistryResponse:
        """Validate ``sub`` completely, then store it atomically; every violation is reported.

        ``also(conn)`` runs inside the registration transaction (see RegistryStore.register);
        ``conn`` makes that transaction a savepoint of the caller's (bulk loading).
        """
        assign_uuids(sub)
        ctx = ValidationContext(transaction=transaction, lookup=self.lookup,
                                home_community_id=self.home_community_id, limits=self.limits)
        errors = validate_submission(sub, ctx)
        if any(e.is_error for e in errors):
            return RegistryResponse.from_errors(errors)
        now = now_dtm()
        for obj in sub.objects():
            obj.status = v.Status.APPROVED
            obj.home = None
        for folder in sub.folders:
            folder.last_update_time = now
        new_ids = {obj.id for obj in sub.objects()}
        existing_folders = {
            a.source for a in sub.associations
            if a.association_type == v.AssociationType.HAS_MEMBER and a.source not in new_ids
        }
        existing_folders &= {k for k, val in self.store.document_status(existing_folders).items()
                             if val[2] == "Folder"}
        replacements = [(a.source, a.target) for a in sub.associations
                        if a.association_type in v.REPLACING_TYPES and a.source and a.target]
        for _attempt in (1, 2):
            try:
                self.store.register(sub, deprecate=deprecations(sub), touched_folders=sorted(existing_folders),
                                    now=now, replacements=replacements, also=also, conn=conn)
                break
            except DuplicateError as exc:
                # A constraint saw what validation could not: a submission that committed meanwhile
                # (an entryUUID, a uniqueId, a DocumentEntry uniqueId with other content). Validate
                # again against what is committed now: that names the problem with its IHE code.
                log.info("registration rejected by a constraint: %s", exc)
                errors = validate_submission(sub, ctx)
                if any(e.is_error for e in errors):
                    return RegistryResponse.from_errors(errors)
                if isinstance(exc, UniqueIdTaken):
                    # taken in the caller's own uncommitted transaction (a bulk load's batch),
                    # which the validation's reads cannot see
                    return RegistryResponse.from_errors([RegistryError(
                        code=v.ErrorCode.NON_IDENTICAL_HASH, location=self.home_community_id,
                        context="A DocumentEntry uniqueId of this submission is already registered with "
                                "another hash or for another patient")])
                # nothing left to object to: the competitor rolled back; try once more
        else:
            return RegistryResponse.from_errors([RegistryError(
                code=v.ErrorCode.REGISTRY_ERROR, location=self.home_community_id,
                context="A uniqueId or entryUUID of this submission conflicts with what is already "
                        "stored; nothing was registered")])
        return RegistryResponse.from_errors(errors)  # warnings only -> Success

    # --- ITI-18 ---------------------------------------------------------------------------------
    def query(self, query: StoredQuery, queries: dict[str, QuerySpec] = QUERIES, *,
              visible: Callable[[Params, list[Row]], list[Row]] | None = None) -> QueryOutcome:
        """Run a stored query from ``queries``, the calling transaction's table (ITI-18/38:
        ``QUERIES``, ITI-51: ``MULTI_PATIENT_QUERIES``). ``visible`` (the XCA consent filter) drops
        what may not be disclosed before the single-patient rule is applied, so an error never
        tells of withheld objects."""
        try:
            params = parse_query(query, queries)
        except QueryError as exc:
            return QueryOutcome(v.ResponseStatus.FAILURE, errors=exc.errors)
        try:
            rows = self.runner.run(params)
        except TooManyResults as exc:
            return QueryOutcome(v.ResponseStatus.FAILURE, params=params,
                                errors=[RegistryError(code=v.ErrorCode.TOO_MANY_RESULTS, context=str(exc))])
        if visible is not None:
            rows = visible(params, rows)
        if params.leaf_class and not params.spec.multi_patient:
            patients = {r.patient_id for r in rows if r.patient_id}
            if len(patients) > 1:
                return QueryOutcome(v.ResponseStatus.FAILURE, params=params, errors=[RegistryError(
                    code=v.ErrorCode.RESULT_NOT_SINGLE_PATIENT,
                    context=f"{params.spec.name} would return objects of {len(patients)} different patients")])
        return QueryOutcome(v.ResponseStatus.SUCCESS, rows=rows, params=params)
