"""ITI-43 Retrieve Document Set: DocumentRequests in, MTOM DocumentResponses out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from xds_node.ebxml import vocabulary as v
from xds_node.ebxml import xdsb
from xds_node.registry.service import Registry
from xds_node.repository.service import Repository, RetrieveOutcome
from xds_node.soap.envelope import SoapRequest, SoapResponse
from xds_node.soap.fault import SoapFault
from xds_node.transactions import Audited, blocking, notify

ACTION = v.Action.ITI43


def read_requests(body) -> list[xdsb.DocumentRequest]:
    try:
        return xdsb.read_retrieve_request(body)
    except xdsb.RequestError as exc:
        raise SoapFault("Sender", str(exc)) from exc


def build_response(action: str, outcome: RetrieveOutcome, *, home: str | None = None) -> SoapResponse:
    """MTOM response streaming each found document from its file or the database store (a large
    document is never loaded into memory)."""
    response = SoapResponse(action=action, body=b"", mtom=True)
    found = {id(d): d for d in outcome.documents if d.error is None}
    docs = [xdsb.DocumentResponse(d.repository_unique_id, d.document_unique_id, d.mime_type or
                                  "application/octet-stream", home) for d in found.values()]
    bodies = {(d.repository_unique_id, d.document_unique_id): d.located.body() for d in found.values()}
    response.body = xdsb.write_retrieve_response(
        outcome.status, outcome.errors, docs,
        lambda d: response.attach(bodies[(d.repository_unique_id, d.document_unique_id)], d.mime_type))
    return response


def audited(outcome: RetrieveOutcome, registry: Registry | None) -> Audited:
    """The documents that left and whose they are (from the co-located registry, when there is one)."""
    sent = [d.document_unique_id for d in outcome.documents if d.error is None]
    owners = registry.store.patients_of_documents(sent) if registry is not None and sent else {}
    return Audited(outcome.status, patient_ids=sorted({owners[d] for d in sent if d in owners}), document_ids=sent,
                   errors=[e.code for e in outcome.errors])


def make_handler(repository: Repository, *, registry: Registry | None = None,
                 audit: Callable[[SoapRequest, str, Any], Any] | None = None):
    """``audit(req, "ITI-43", Audited)`` runs (through ``notify``) before any document leaves."""
    async def handle(req: SoapRequest) -> SoapResponse:
        requests = read_requests(req.body)
        triples = [(r.repository_unique_id, r.document_unique_id, r.home_community_id) for r in requests]
        outcome = await blocking(repository.retrieve, triples)
        if audit is not None:
            await notify(audit, req, "ITI-43", await blocking(audited, outcome, registry))
        return build_response(v.response_action(ACTION), outcome)

    return handle
