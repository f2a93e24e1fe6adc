"""The initiating gateway's outbound side, in three parts (imports flow one way, down this list):

* :mod:`xds_node.gateway.calls` -- one SOAP call to one partner (:class:`OutboundClient`): signed
  header, timeout, retries, concurrency, the answer parsed under caps;
* :mod:`xds_node.gateway.assertions` -- signed SAML assertions reused per requester and audience;
* :mod:`xds_node.gateway.http` -- HTTP (aiohttp): keep-alive pools, TLS, proxies, compressed
  answers, size caps.

The fan-out over many partners and the aggregation of their answers is
:mod:`xds_node.gateway.initiating`'s. This module only gathers the names callers import.
"""

from __future__ import annotations

from xds_node.soap.client import SoapTransportError

from .assertions import AssertionCache
from .calls import (
    _PLACEHOLDER,
    ENDPOINT_ALIASES,
    MtomStreamParser,
    OutboundClient,
    PartnerOptions,
    SpooledDocument,
    _splice,
    call_outcome,
    document_content,
    endpoint_url,
    retrying,
)
from .http import ProxySettings, make_ssl_context

__all__ = [
    "ENDPOINT_ALIASES",
    "_PLACEHOLDER",
    "AssertionCache",
    "MtomStreamParser",
    "OutboundClient",
    "PartnerOptions",
    "ProxySettings",
    "SoapTransportError",
    "SpooledDocument",
    "_splice",
    "call_outcome",
    "document_content",
    "endpoint_url",
    "make_ssl_context",
    "retrying",
]
