"""ITI-18 Registry Stored Query: AdhocQueryRequest in, AdhocQueryResponse out."""

from __future__ import annotations

from lxml import etree

from xds_node.ebxml import rim
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.rim import MetadataParseError
from xds_node.registry.service import QueryOutcome, Registry
from xds_node.soap.envelope import SoapRequest, SoapResponse
from xds_node.transactions import blocking, expect_body

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
    expect_body(body, v.QUERY, "AdhocQueryRequest")
    try:
        query = rim.read_adhoc_query_request(body)
    except MetadataParseError as exc:
        from xds_node.ebxml.model import RegistryError

        return QueryOutcome(v.ResponseStatus.FAILURE,
                            errors=[RegistryError(code=v.ErrorCode.REGISTRY_ERROR, context=str(exc))])
    return registry.query(query)


def make_handler(registry: Registry):
    async def handle(req: SoapRequest) -> SoapResponse:
        outcome = await blocking(run_query, registry, req.body)
        return SoapResponse(action=v.response_action(ACTION), body=outcome_bytes(outcome))

    return handle
