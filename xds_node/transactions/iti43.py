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


#: Documents up to this size (all of a response's together) are read into the answer, which then
#: leaves as one body with a Content-Length; larger ones stream from their files (never held in
#: memory). A chunked stream cost more than the rest of a 10 KB retrieve (a send per chunk).
INLINE_BYTES = 256 * 1024


def build_response(action: str, outcome: RetrieveOutcome, *, home: str | None = None) -> SoapResponse:
    """MTOM response with each found document: small ones (all of them together up to
    ``INLINE_BYTES``) read into it, larger ones streamed from their file or the database store (a
    large document is never loaded into memory)."""
    response = SoapResponse(action=action, body=b"", mtom=True)
    found = {id(d): d for d in outcome.documents if d.error is None}
    docs = [xdsb.DocumentResponse(d.repository_unique_id, d.document_unique_id, d.mime_type or
                                  "application/octet-stream", home) for d in found.values()]
    located = {(d.repository_unique_id, d.document_unique_id): d.located for d in found.values()}
    inline = sum(loc.size for loc in located.values()) <= INLINE_BYTES

    def attach(d: xdsb.DocumentResponse):
        loc = located[(d.repository_unique_id, d.document_unique_id)]
        if inline and loc.data is None and loc.stream is None and loc.path is not None:
            data = _read(loc.path, loc.size)
            if data is not None:
                return response.attach(data, d.mime_type)
        return response.attach(loc.body(), d.mime_type)

    response.body = xdsb.write_retrieve_response(outcome.status, outcome.errors, docs, attach)
    return response


def _read(path, size: int) -> bytes | None:
    """The file's bytes if it still has the size just verified; else None (then it is streamed,
    and the stream's own checks apply)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(size + 1)
    except OSError:
        return None
    return data if len(data) == size else None


def audited(outcome: RetrieveOutcome, registry: Registry | None) -> Audited:
    """The documents that left and whose they are (from the co-located registry, when there is one:
    read with the index rows, see ``Repository.retrieve(owners=True)``)."""
    sent = [d.document_unique_id for d in outcome.documents if d.error is None]
    owners = outcome.owners if registry is not None else {}
    return Audited(outcome.status, patient_ids=sorted({owners[d] for d in sent if d in owners}), document_ids=sent,
                   errors=[e.code for e in outcome.errors])


def make_handler(repository: Repository, *, registry: Registry | None = None,
                 audit: Callable[[SoapRequest, str, Any], Any] | None = None):
    """``audit(req, "ITI-43", Audited)`` runs (through ``notify``) before any document leaves."""
    async def handle(req: SoapRequest) -> SoapResponse:
        requests = read_requests(req.body)
        triples = [(r.repository_unique_id, r.document_unique_id, r.home_community_id) for r in requests]
        outcome = await blocking(repository.retrieve, triples, owners=registry is not None)
        if audit is not None:
            await notify(audit, req, "ITI-43", audited(outcome, registry))
        return build_response(v.response_action(ACTION), outcome)

    return handle
