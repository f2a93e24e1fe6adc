"""ITI-43 Retrieve Document Set: DocumentRequests in, MTOM DocumentResponses out."""

from __future__ import annotations

from xds_node.ebxml import vocabulary as v
from xds_node.ebxml import xdsb
from xds_node.repository.service import Repository, RetrieveOutcome
from xds_node.soap.envelope import SoapRequest, SoapResponse
from xds_node.soap.fault import SoapFault
from xds_node.transactions import blocking

ACTION = v.Action.ITI43


def read_requests(body) -> list[xdsb.DocumentRequest]:
    try:
        return xdsb.read_retrieve_request(body)
    except xdsb.RequestError as exc:
        raise SoapFault("Sender", str(exc)) from exc


def build_response(action: str, outcome: RetrieveOutcome, *, home: str | None = None) -> SoapResponse:
    """MTOM response streaming each found document from its file (never loaded into memory)."""
    response = SoapResponse(action=action, body=b"", mtom=True)
    found = {id(d): d for d in outcome.documents if d.error is None}
    docs = [xdsb.DocumentResponse(d.repository_unique_id, d.document_unique_id, d.mime_type or
                                  "application/octet-stream", home) for d in found.values()]
    paths = {(d.repository_unique_id, d.document_unique_id): d.located.path for d in found.values()}
    response.body = xdsb.write_retrieve_response(
        outcome.status, outcome.errors, docs,
        lambda d: response.attach(paths[(d.repository_unique_id, d.document_unique_id)], d.mime_type))
    return response


def make_handler(repository: Repository):
    async def handle(req: SoapRequest) -> SoapResponse:
        requests = read_requests(req.body)
        triples = [(r.repository_unique_id, r.document_unique_id, r.home_community_id) for r in requests]
        outcome = await blocking(repository.retrieve, triples)
        return build_response(v.response_action(ACTION), outcome)

    return handle
