"""ITI-42 Register Document Set-b: SubmitObjectsRequest in, RegistryResponse out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lxml import etree

from xds_node.ebxml import rim
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import RegistryError, RegistryResponse
from xds_node.ebxml.rim import MetadataParseError
from xds_node.registry.service import Registry
from xds_node.soap.envelope import SoapRequest, SoapResponse
from xds_node.transactions import Audited, blocking, expect_body, notify, submission_audit

ACTION = v.Action.ITI42


def register(registry: Registry, body: etree._Element, *, transaction: str = "ITI-42") -> RegistryResponse:
    return register_audited(registry, body, transaction=transaction)[0]


def register_audited(registry: Registry, body: etree._Element, *,
                     transaction: str = "ITI-42") -> tuple[RegistryResponse, Audited]:
    expect_body(body, v.LCM, "SubmitObjectsRequest")
    try:
        submission = rim.read_submit_objects_request(body)
    except MetadataParseError as exc:
        response = RegistryResponse.from_errors([RegistryError(code=v.ErrorCode.REGISTRY_METADATA_ERROR,
                                                               context=str(exc))])
        return response, submission_audit(response.status, None, response.errors)
    response = registry.register(submission, transaction=transaction)
    return response, submission_audit(response.status, submission, response.errors)


def make_handler(registry: Registry, *, audit: Callable[[SoapRequest, str, Any], Any] | None = None):
    """``audit(req, "ITI-42", Audited)`` runs (through ``notify``) before the answer leaves."""
    async def handle(req: SoapRequest) -> SoapResponse:
        response, audited = await blocking(register_audited, registry, req.body)
        await notify(audit, req, "ITI-42", audited)
        return SoapResponse(action=v.response_action(ACTION), body=rim.write_registry_response(response))

    return handle
