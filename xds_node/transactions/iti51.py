"""ITI-51 Multi-Patient Stored Query: AdhocQueryRequest in, AdhocQueryResponse out.

ITI TF-2b 3.51: ITI-18's message and rules with its own two queries (FindDocumentsForMultiplePatients,
FindFoldersForMultiplePatients), whose patient id parameter is an optional list, and whose LeafClass
answer may span patients. It is served at the registry endpoint for internal consumers only; the
gateway endpoints (``/xca/*``, ``/ig/*``) do not offer it, so no partner can list patients in bulk.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lxml import etree

from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.query import MULTI_PATIENT_QUERIES
from xds_node.registry.service import QueryOutcome, Registry
from xds_node.soap.envelope import SoapRequest, SoapResponse
from xds_node.transactions import blocking, iti18, notify

ACTION = v.Action.ITI51


def run_query(registry: Registry, body: etree._Element) -> QueryOutcome:
    return iti18.run_query_audited(registry, body, MULTI_PATIENT_QUERIES)[0]


def make_handler(registry: Registry, *, audit: Callable[[SoapRequest, str, Any], Any] | None = None):
    """Audited like ITI-18 (before the answer leaves), one row per patient the answer discloses."""
    async def handle(req: SoapRequest) -> SoapResponse:
        outcome, audited = await blocking(iti18.run_query_audited, registry, req.body, MULTI_PATIENT_QUERIES)
        await notify(audit, req, "ITI-51", audited)
        return SoapResponse(action=v.response_action(ACTION), body=iti18.outcome_bytes(outcome))

    return handle
