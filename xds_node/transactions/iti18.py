"""ITI-18 Registry Stored Query: AdhocQueryRequest in, AdhocQueryResponse out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lxml import etree

from xds_node.ebxml import rim
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.query import QUERIES
from xds_node.ebxml.rim import MetadataParseError
from xds_node.registry.service import QueryOutcome, Registry
from xds_node.soap.envelope import SoapRequest, SoapResponse
from xds_node.transactions import Audited, blocking, expect_body, notify

ACTION = v.Action.ITI18


def outcome_bytes(outcome: QueryOutcome, *, home: str | None = None, location: str | None = None) -> bytes:
    """Serialize a query outcome; ``home``/``location`` are the XCA additions (ITI-38)."""
    errors = outcome.errors
    if location:
        for e in errors:
            e.location = location
    if outcome.leaf_class:
        return rim.adhoc_query_response_bytes(outcome.status, fragments=[r.rim for r in outcome.rows],
                                              errors=errors, home=home)
    return rim.adhoc_query_response_bytes(outcome.status, refs=[r.id for r in outcome.rows],
                                          errors=errors, home=home)


def run_query(registry: Registry, body: etree._Element) -> QueryOutcome:
    return run_query_audited(registry, body)[0]


def run_query_audited(registry: Registry, body: etree._Element,
                      queries=QUERIES) -> tuple[QueryOutcome, Audited]:
    """The query's outcome and what the audit trail records of it (patients, document entries).

    ``queries`` is the transaction's stored-query table (ITI-51 passes its multi-patient one).
    The documents are kept per patient, so an answer spanning patients is audited once for each:
    every patient's accounting of disclosures then shows it.
    """
    expect_body(body, v.QUERY, "AdhocQueryRequest")
    try:
        query = rim.read_adhoc_query_request(body)
    except MetadataParseError as exc:
        from xds_node.ebxml.model import RegistryError

        outcome = QueryOutcome(v.ResponseStatus.FAILURE,
                               errors=[RegistryError(code=v.ErrorCode.REGISTRY_ERROR, context=str(exc))])
        return outcome, Audited(outcome.status, errors=[e.code for e in outcome.errors])
    outcome = registry.query(query, queries)
    spec = queries.get(query.query_id)
    pid = outcome.params.one(spec.patient_param) if outcome.params is not None and spec and spec.patient_param \
        and not spec.multi_patient else None
    patients = [pid] if pid else sorted({r.patient_id for r in outcome.rows if r.patient_id})
    by_patient: dict[str, list[str]] = {p: [] for p in patients}
    for r in outcome.rows:
        if r.kind == "doc" and r.patient_id in by_patient:
            by_patient[r.patient_id].append(r.id)
    return outcome, Audited(outcome.status, query_id=query.query_id, patient_ids=patients,
                            document_ids=[r.id for r in outcome.rows if r.kind == "doc"],
                            errors=[e.code for e in outcome.errors], documents_by_patient=by_patient)


def make_handler(registry: Registry, *, audit: Callable[[SoapRequest, str, Any], Any] | None = None):
    """``audit(req, "ITI-18", Audited)`` runs (through ``notify``) before the answer leaves."""
    async def handle(req: SoapRequest) -> SoapResponse:
        outcome, audited = await blocking(run_query_audited, registry, req.body)
        await notify(audit, req, "ITI-18", audited)
        return SoapResponse(action=v.response_action(ACTION), body=outcome_bytes(outcome))

    return handle
