"""ITI-42 Register Document Set-b: SubmitObjectsRequest in, RegistryResponse out."""

from __future__ import annotations

from lxml import etree

from xds_node.ebxml import rim
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import RegistryError, RegistryResponse
from xds_node.ebxml.rim import MetadataParseError
from xds_node.registry.service import Registry
from xds_node.soap.envelope import SoapRequest, SoapResponse
from xds_node.transactions import blocking, expect_body

ACTION = v.Action.ITI42


def register(registry: Registry, body: etree._Element, *, transaction: str = "ITI-42") -> RegistryResponse:
    expect_body(body, v.LCM, "SubmitObjectsRequest")
    try:
        submission = rim.read_submit_objects_request(body)
    except MetadataParseError as exc:
        return RegistryResponse.from_errors([RegistryError(code=v.ErrorCode.REGISTRY_METADATA_ERROR,
                                                           context=str(exc))])
    return registry.register(submission, transaction=transaction)


def make_handler(registry: Registry):
    async def handle(req: SoapRequest) -> SoapResponse:
        response = await blocking(register, registry, req.body)
        return SoapResponse(action=v.response_action(ACTION), body=rim.write_registry_response(response))

    return handle
