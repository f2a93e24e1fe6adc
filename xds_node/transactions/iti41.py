"""ITI-41 Provide and Register Document Set-b: documents + metadata in, RegistryResponse out."""

from __future__ import annotations

from xds_node.ebxml import rim, xdsb
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import RegistryError, RegistryResponse
from xds_node.ebxml.rim import MetadataParseError
from xds_node.registry.service import Registry
from xds_node.repository.service import Repository
from xds_node.soap.envelope import SoapRequest, SoapResponse
from xds_node.soap.fault import SoapFault
from xds_node.transactions import blocking

ACTION = v.Action.ITI41


def make_handler(repository: Repository, registry: Registry):
    async def register(sub, also):
        return await blocking(registry.register, sub, transaction="ITI-41", also=also)

    async def handle(req: SoapRequest) -> SoapResponse:
        try:
            sub, doc_elements = xdsb.read_provide_request(req.body)
        except xdsb.RequestError as exc:
            raise SoapFault("Sender", str(exc)) from exc
        except MetadataParseError as exc:
            response = RegistryResponse.from_errors([RegistryError(v.ErrorCode.REGISTRY_METADATA_ERROR, str(exc))])
            return SoapResponse(action=v.response_action(ACTION), body=rim.write_registry_response(response))
        documents = {doc_id: req.binary(el) for doc_id, el in doc_elements.items()}  # Sender fault if broken
        response = await repository.provide_and_register(sub, documents, register)
        return SoapResponse(action=v.response_action(ACTION), body=rim.write_registry_response(response))

    return handle
