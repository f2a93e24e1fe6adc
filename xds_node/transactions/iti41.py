"""ITI-41 Provide and Register Document Set-b: documents + metadata in, RegistryResponse out."""

from __future__ import annotations

import logging

from xds_node.cda import is_cda
from xds_node.ebxml import rim, xdsb
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import RegistryError, RegistryResponse
from xds_node.ebxml.rim import MetadataParseError
from xds_node.ebxml.validation import ITI41, ValidationContext, check_storage_limits
from xds_node.registry.service import Registry
from xds_node.repository import limits as repository_limits
from xds_node.repository.service import Repository
from xds_node.soap.envelope import SoapRequest, SoapResponse
from xds_node.soap.fault import SoapFault
from xds_node.transactions import blocking, notify, submission_audit

log = logging.getLogger(__name__)
ACTION = v.Action.ITI41


def remote_register(url: str, client_factory=None):
    """Register through a remote Document Registry: ITI-42 over SOAP, its RegistryResponse as ours."""
    from xds_node.soap.client import SoapClient, SoapTransportError
    from xds_node.soap.fault import SoapFault

    async def register(sub, _also) -> RegistryResponse:
        # our own index must hold what the remote registry accepts: check its bounds first
        ctx = ValidationContext(transaction=ITI41, actor="repository", limits=repository_limits.LIMITS)
        if problems := check_storage_limits(sub, ctx):
            return RegistryResponse.from_errors([p.to_error() for p in problems])
        try:
            async with (client_factory() if client_factory else SoapClient()) as client:
                reply = await client.call(url, v.Action.ITI42, rim.write_submit_objects_request(sub))
        except (SoapTransportError, SoapFault) as exc:
            log.error("remote registry %s failed: %s", url, exc)
            return RegistryResponse.from_errors([RegistryError(
                v.ErrorCode.REGISTRY_ERROR, "The document registry could not be reached; nothing was registered")])
        return rim.read_registry_response(reply.body)

    return register


def registrar(registry, registry_url: str = "", client_factory=None):
    """How a provided submission is registered: with the remote registry at ``registry_url``
    (ITI-42 over SOAP), else with the co-located one (also what /xdr delivers through)."""
    if registry_url:
        return remote_register(registry_url, client_factory)

    async def register(sub, also):
        return await blocking(registry.register, sub, transaction="ITI-41", also=also)

    return register


def make_handler(repository: Repository, registry: Registry | None, *, on_registered=None,
                 registry_url: str = "", client_factory=None, audit=None):
    """``on_registered(bytes, entry, source=...)`` runs for each accepted C-CDA from an internal
    client (the XCPD patient index; an anonymous caller's documents never feed it).
    With ``registry_url`` the metadata goes to that remote registry instead of the co-located one.
    ``audit(req, "ITI-41", Audited)`` runs (through ``notify``) before the answer leaves."""
    register = registrar(registry, registry_url, client_factory)

    async def handle(req: SoapRequest) -> SoapResponse:
        try:
            sub, doc_elements = xdsb.read_provide_request(req.body)
        except xdsb.RequestError as exc:
            raise SoapFault("Sender", str(exc)) from exc
        except MetadataParseError as exc:
            response = RegistryResponse.from_errors([RegistryError(v.ErrorCode.REGISTRY_METADATA_ERROR, str(exc))])
            await notify(audit, req, "ITI-41", submission_audit(response.status, None, response.errors))
            return SoapResponse(action=v.response_action(ACTION), body=rim.write_registry_response(response))
        documents = {doc_id: req.binary(el) for doc_id, el in doc_elements.items()}  # Sender fault if broken
        sent_as = {id(de): de.id for de in sub.documents}  # each entry's id before the registry assigns UUIDs
        response = await repository.provide_and_register(sub, documents, register, co_located=not registry_url)
        # Only an authenticated internal client's documents may feed the patient index (named as
        # its source); an anonymous loopback caller's are registered but never shape XCPD matching
        principal = req.principal
        feeds_index = principal is None or getattr(principal, "kind", "") == "internal"
        if on_registered is not None and feeds_index and response.status == v.ResponseStatus.SUCCESS:
            source = f"cda:{principal.partner}" if principal is not None and principal.partner else "cda"
            for de in sub.documents:
                data = documents.get(sent_as[id(de)])
                if data is not None and is_cda(data):
                    try:
                        on_registered(data, de, source=source)
                    except Exception as exc:  # registered already; the side index must not undo it
                        log.warning("ITI-41: document %s registered, post-processing failed: %s", de.unique_id, exc)
        await notify(audit, req, "ITI-41", submission_audit(response.status, sub, response.errors))
        return SoapResponse(action=v.response_action(ACTION), body=rim.write_registry_response(response))

    return handle
