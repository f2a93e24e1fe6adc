"""ITI-38 Cross Gateway Query, responding side: ITI-18 over the local registry under XCA rules.

XCA adds to ITI-18 (ITI TF-2b 3.38.4.1.3): every returned object carries ``home`` (our
homeCommunityId); a query not keyed by patient id must name our community in ``home``
(XDSMissingHomeCommunityId when absent, XDSUnknownCommunity when not ours); every RegistryError
names us as its ``location``. Consent: a patient who has not opted in is answered exactly like an
unknown one (Failure, XDSUnknownPatientId), and objects of such patients never leave: a query keyed
by object ids returns only objects (associations included) whose every patient may be disclosed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from xds_node.ebxml import rim
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import RegistryError
from xds_node.ebxml.query import QUERIES, Params
from xds_node.registry.service import QueryOutcome, Registry
from xds_node.registry.store import Row
from xds_node.security.trust import normalize_hcid
from xds_node.soap.envelope import SoapRequest, SoapResponse
from xds_node.transactions import blocking, iti18, notify

log = logging.getLogger(__name__)
ACTION = v.Action.ITI38
E = v.ErrorCode

@dataclass
class XcaQueryResult:
    """What the gateway answered, for the audit trail."""

    status: str
    query_id: str | None = None
    patient_ids: list[str] = field(default_factory=list)
    document_ids: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    withheld: bool = False


def _unknown_patient(home: str) -> QueryOutcome:
    return QueryOutcome(v.ResponseStatus.FAILURE, errors=[RegistryError(
        code=E.UNKNOWN_PATIENT_ID, context="No information is available for the requested patient", location=home)])


def respond(registry: Registry, body: etree._Element, *, home: str,
            consent: Callable[[str], bool]) -> tuple[bytes, XcaQueryResult]:
    iti18.expect_body(body, v.QUERY, "AdhocQueryRequest")
    try:
        query = rim.read_adhoc_query_request(body)
    except rim.MetadataParseError as exc:
        outcome = QueryOutcome(v.ResponseStatus.FAILURE, errors=[RegistryError(E.REGISTRY_ERROR, str(exc))])
        return iti18.outcome_bytes(outcome, home=home, location=home), XcaQueryResult(outcome.status)
    result = XcaQueryResult(v.ResponseStatus.FAILURE, query_id=query.query_id)
    spec = QUERIES.get(query.query_id)
    if spec is not None and not spec.patient_keyed:
        if not query.home:
            outcome = QueryOutcome(v.ResponseStatus.FAILURE, errors=[RegistryError(
                E.MISSING_HOME_COMMUNITY_ID, f"{spec.name} is not keyed by patient id: homeCommunityId is required")])
            return _finish(outcome, home, result)
        if normalize_hcid(query.home) != normalize_hcid(home):
            outcome = QueryOutcome(v.ResponseStatus.FAILURE, errors=[RegistryError(
                E.UNKNOWN_COMMUNITY, f"homeCommunityId {query.home} is not this community")])
            return _finish(outcome, home, result)

    def visible(params: Params, rows: list[Row]) -> list[Row]:
        if params.spec.patient_keyed:
            return rows  # one patient, decided below
        return _withhold_by_object(registry, rows, result, consent)

    outcome = registry.query(query, visible=visible)
    if outcome.params is not None and spec is not None and spec.patient_keyed:
        pid = outcome.params.one(spec.patient_param)
        result.patient_ids = [pid] if pid else []
        allowed = consent(pid) if pid else True
        if pid and (not allowed or (outcome.status == v.ResponseStatus.SUCCESS and not outcome.rows
                                    and not registry.store.has_patient(pid))):
            result.withheld = not allowed
            return _finish(_unknown_patient(home), home, result)
    result.document_ids = [r.id for r in outcome.rows if r.kind == "doc"]
    return _finish(outcome, home, result)


def _withhold_by_object(registry: Registry, rows: list[Row], result: XcaQueryResult,
                        consent: Callable[[str], bool]) -> list[Row]:
    """Id-keyed queries name objects, not a patient: keep an object only when every patient it
    reveals may be disclosed. An association reveals the patients of both its ends, so
    GetAssociations (and every association in a *AndContents / Related answer) is checked too;
    an object whose patient cannot be told is withheld (fail closed). Withheld objects are
    answered exactly like unknown ids: they are simply not there."""
    reveals = registry.store.patients_of_objects([r.id for r in rows])
    patients: set[str] = set().union(*reveals.values())
    refused = {p for p in patients if not consent(p)}
    kept = [r for r in rows if r.id in reveals and not reveals[r.id] & refused]
    result.withheld = len(kept) != len(rows)
    result.patient_ids = sorted({p for r in kept for p in reveals[r.id]})
    return kept


def _finish(outcome: QueryOutcome, home: str, result: XcaQueryResult) -> tuple[bytes, XcaQueryResult]:
    result.status = outcome.status
    result.errors = [e.code for e in outcome.errors]
    return iti18.outcome_bytes(outcome, home=home, location=home), result



def make_handler(registry: Registry, *, home: str, consent: Callable[[str], bool],
                 audit: Callable[[SoapRequest, str, Any], Any] | None = None):
    async def handle(req: SoapRequest) -> SoapResponse:
        body, result = await blocking(respond, registry, req.body, home=home, consent=consent)
        await notify(audit, req, "ITI-38", result)
        return SoapResponse(action=v.response_action(ACTION), body=body)

    return handle
