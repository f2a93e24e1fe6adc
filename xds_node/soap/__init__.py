"""Our own thin SOAP 1.2 layer: sans-I/O envelope/MTOM functions plus an ASGI app and an httpx client."""

from .app import Endpoint, Handler, SoapApp
from .client import SoapClient, SoapTransportError
from .envelope import (
    SOAP_ENV,
    WSA,
    Attachment,
    SoapRequest,
    SoapResponse,
    fault_envelope,
    parse_envelope,
    parse_xml,
    safe_parser,
    serialize_response,
    xop_include,
)
from .fault import SoapFault

__all__ = [
    "SOAP_ENV",
    "WSA",
    "Attachment",
    "Endpoint",
    "Handler",
    "SoapApp",
    "SoapClient",
    "SoapFault",
    "SoapRequest",
    "SoapResponse",
    "SoapTransportError",
    "fault_envelope",
    "parse_envelope",
    "parse_xml",
    "safe_parser",
    "serialize_response",
    "xop_include",
]
