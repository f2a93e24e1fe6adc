"""ITI-51 Multi-Patient Stored Query: AdhocQueryRequest in, AdhocQueryResponse out.

ITI TF-2b 3.51: ITI-18's message and rules with its own two queries (FindDocumentsForMultiplePatients,
FindFoldersForMultiplePatients), whose patient id parameter is an optional list, and whose LeafClass
answer may span patients. It is served at the registry endpoint for internal consumers only; the
gateway endpoints (``/xca/*``, ``/ig/*``) do not offer it, so no partner can list patients in bulk.
"""

from __future__ import annotations

from lxml import etree

from xds_node.ebxml import rim
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import RegistryError
from xds_node.ebxml.query import MULTI_PATIENT_QUERIES
from xds_node.registry.service import QueryOutcome, Registry
from xds_node.soap.envelope import SoapRequest, SoapResponse
from xds_node.transactions import blocking, expect_body, iti18

ACTION = v.Action.ITI51


def run_query(registry: Registry, body: etree._Element) -> QueryOutcome:
    expect_body(body, v.QUERY, "AdhocQueryRequest")
    try:
        query = rim.read_adhoc_query_request(body)
    except rim.MetadataParseError as exc:
        return QueryOutcome(v.ResponseStatus.FAILURE,
                            errors=[RegistryError(code=v.ErrorCode.REGISTRY_ERROR, context=str(exc))])
    return registry.query(query, MULTI_PATIENT_QUERIES)


def make_handler(registry: Registry):
    async def handle(req: SoapRequest) -> SoapResponse:
        outcome = await blocking(run_query, registry, req.body)
        return SoapResponse(action=v.response_action(ACTION), body=iti18.outcome_bytes(outcome))

    return handle
