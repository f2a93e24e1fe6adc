"""XDR Document Recipient at ``/xdr``: a partner's ITI-41 Provide and Register pushed to us
(eHealth Exchange Document Submission; IHE ITI TF-1 15, ITI-41 used point to point).

Only partners reach this handler (the endpoint's gate admits what ``/xca/*`` admits: WS-Security
with SAML signed by a pinned partner). What is accepted is decided by the XDR rule set
(:mod:`xds_node.ebxml.validation.xdr`): the ITI-41 rules, limited metadata allowed for flagged
objects, and no links into what is already registered. A push is delivered whole or not at all:

* ``xdr_destination = "repository"``: through the same Repository/Registry provide-and-register
  as ``/xds/repository``. Each SubmissionSet, DocumentEntry and Folder carries two slots we set
  (any the sender brought are dropped): :data:`RECEIVED_FROM` (the partner's homeCommunityId,
  partner name and SAML subject) and :data:`RECEIVED_TIME`. They travel with every query answer,
  so a consumer (and a privacy officer) sees the record came from another organisation, not from
  our clinicians; the audit trail holds the same facts. Received C-CDAs do not feed our patient
  index: a partner's demographics never become our identities.
* a folder path, or any limited-metadata push while the destination is the repository (an XDS
  registry cannot hold limited metadata, ITI TF-3 4.2.3.2.29): one directory per submission,
  ``metadata.xml`` (the SubmitObjectsRequest with our marks), ``received.json`` and the documents,
  written under a hidden name and renamed into place, so a reader never sees half a submission.

Every push is audited through :func:`~xds_node.transactions.notify` before the answer leaves; a
folder delivery whose audit cannot be written is removed again and the partner asked to retry.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from xds_node.ebxml import rim, xdsb
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import RegistryError, RegistryResponse, Slot, Submission
from xds_node.ebxml.rim import MetadataParseError
from xds_node.ebxml.validation.xdr import check_push, is_limited
from xds_node.registry.service import Registry, now_dtm
from xds_node.repository.service import Repository
from xds_node.soap.envelope import SoapRequest, SoapResponse
from xds_node.soap.fault import SoapFault
from xds_node.transactions import iti41, notify, submission_audit

log = logging.getLogger(__name__)
ACTION = v.Action.ITI41
#: The same push as CONNECT-based eHealth Exchange gateways send it (NhinXDR.wsdl); answered in kind.
CONNECT_ACTION = "urn:ihe:iti:xdr:2007:ProvideAndRegisterDocumentSet-b"
ACTIONS = (ACTION, CONNECT_ACTION)
XDR_PATH = "/xdr"
#: Slot naming who pushed an object to us: [homeCommunityId, partner name, SAML subject-id].
RECEIVED_FROM = "urn:xds-node:xdr:receivedFrom"
#: Slot with the DTM (UTC) at which we accepted it.
RECEIVED_TIME = "urn:xds-node:xdr:receivedTime"
_MARKS = (RECEIVED_FROM, RECEIVED_TIME)
E = v.ErrorCode


@dataclass(frozen=True)
class Destination:
    """Where accepted pushes go: ``folder`` (None: the repository) and the limited-metadata inbox."""

    folder: Path | None
    inbox: Path

    @classmethod
    def from_settings(cls, settings) -> Destination:
        return cls(settings.xdr_folder, settings.xdr_inbox_path)


def mark_received(sub: Submission, principal, now: str) -> None:
    """Replace any received-from marks with ours on every object the submission registers."""
    if principal is None:  # insecure_no_gateway_security: say so rather than name nobody
        sender = ["", "unauthenticated (insecure_no_gateway_security)", ""]
    else:
        sender = [principal.home_community_id or "", principal.partner or "", principal.subject_id or ""]
    sender = [s[:256] for s in sender]
    objects = [o for o in (sub.submission_set, *sub.documents, *sub.folders) if o is not None]
    for o in objects:
        o.extra_slots = [s for s in o.extra_slots if s.name not in _MARKS]
        o.extra_slots += [Slot(RECEIVED_FROM, list(sender)), Slot(RECEIVED_TIME, [now])]


def _failure(code: str, context: str) -> RegistryResponse:
    return RegistryResponse.from_errors([RegistryError(code, context)])


def write_submission(dest: Path, sub: Submission, documents: dict[str, bytes], received: dict) -> Path:
    """One directory per submission, renamed into place once complete; returns its final path.

    Files are flushed to disk before the rename, and the parent directory after it, so a crash
    leaves either nothing (a hidden ``.incoming-*`` directory, never read) or the whole submission.
    """
    from xds_node.gateway.initiating import safe_file_name

    dest.mkdir(parents=True, exist_ok=True)
    name = f"{received['time']}-{uuid.uuid4().hex[:12]}"
    tmp = dest / f".incoming-{name}"
    tmp.mkdir()
    try:
        files = []
        for i, de in enumerate(sub.documents, 1):
            data = documents.get(de.id)
            if data is None:  # On-Demand entries have no bytes
                continue
            fname = f"{i:03d}-{safe_file_name(de.unique_id or de.id, de.mime_type or '')}"
            _write(tmp / fname, data)
            files.append({"file": fname, "uniqueId": de.unique_id, "entryUUID": de.id, "mimeType": de.mime_type,
                          "size": len(data), "hash": de.hash})
        _write(tmp / "metadata.xml", etree.tostring(rim.write_submit_objects_request(sub), encoding="UTF-8",
                                                    xml_declaration=True))
        _write(tmp / "received.json", json.dumps({**received, "documents": files}, indent=2).encode())
        _fsync_dir(tmp)
        final = dest / name
        os.rename(tmp, final)
        _fsync_dir(dest)
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write(path: Path, data: bytes) -> None:
    with open(path, "xb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_handler(repository: Repository, registry: Registry, destination: Destination, *, audit=None,
                 limits=None, registry_url: str = "", client_factory=None):
    """The /xdr ITI-41 handler. ``audit(req, "ITI-41", Audited)`` runs (through ``notify``) before
    the answer leaves; ``limits`` are the storage bounds checked before a folder delivery; with
    ``registry_url`` the repository registers with that remote registry, as ITI-41 does."""
    register = iti41.registrar(registry, registry_url, client_factory)

    async def handle(req: SoapRequest) -> SoapResponse:
        try:
            sub, doc_elements = xdsb.read_provide_request(req.body)
        except xdsb.RequestError as exc:
            raise SoapFault("Sender", str(exc)) from exc
        except MetadataParseError as exc:
            response = _failure(E.REPOSITORY_METADATA_ERROR, str(exc))
            await notify(audit, req, "ITI-41", submission_audit(response.status, None, response.errors))
            return _answer(req, response)
        documents = {doc_id: req.binary(el) for doc_id, el in doc_elements.items()}  # Sender fault if broken
        delivered: Path | None = None
        problems = check_push(sub, limits=limits)
        if problems:
            response = RegistryResponse.from_errors([p.to_error() for p in problems])
        else:
            now = now_dtm()
            mark_received(sub, getattr(req, "principal", None), now)
            folder = destination.folder or (destination.inbox if is_limited(sub) else None)
            if folder is None:
                response = await repository.provide_and_register(sub, documents, register,
                                                                 co_located=not registry_url)
            else:  # file writes and fsyncs: never on the event loop
                response, delivered = await asyncio.to_thread(_to_folder, repository, folder, sub, documents, req,
                                                              now)
        try:
            await notify(audit, req, "ITI-41", submission_audit(response.status, sub, response.errors))
        except BaseException:
            if delivered is not None:  # nothing stays that the audit trail does not show
                shutil.rmtree(delivered, ignore_errors=True)
            raise
        return _answer(req, response)

    return handle


def _to_folder(repository: Repository, folder: Path, sub: Submission, documents: dict[str, bytes],
               req: SoapRequest, now: str) -> tuple[RegistryResponse, Path | None]:
    errors = repository.check_documents(sub, documents)  # pairs documents with entries, checks hash/size
    if errors:
        return RegistryResponse.from_errors(errors), None
    principal = getattr(req, "principal", None)
    received = {"time": now, "message_id": req.message_id or "", "limited_metadata": is_limited(sub),
                "partner": getattr(principal, "partner", None), "home_community_id":
                getattr(principal, "home_community_id", None), "subject_id": getattr(principal, "subject_id", None)}
    try:
        path = write_submission(folder, sub, documents, received)
    except OSError as exc:
        log.error("XDR: could not write a submission to %s: %s", folder, exc)
        return _failure(E.REPOSITORY_ERROR, "The recipient could not store the submission; nothing was kept"), None
    log.info("XDR: submission %s delivered to %s", sub.submission_set.unique_id if sub.submission_set else "?",
             path)
    return RegistryResponse.from_errors([]), path


def _answer(req: SoapRequest, response: RegistryResponse) -> SoapResponse:
    action = req.action if req.action in ACTIONS else ACTION
    return SoapResponse(action=v.response_action(action), body=rim.write_registry_response(response))
