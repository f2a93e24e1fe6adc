"""Request bodies built by zeep from the target's own published WSDL (``GET <endpoint>?wsdl``).

This is the independent-client check: if a standard SOAP toolkit, given nothing but the WSDL the
endpoint publishes, builds requests the endpoint accepts, partners using other toolkits can too.

Why zeep only *builds* the body (``client.create_message``) and the harness sends it: the gateway
transactions need a WS-Security header with a signed SAML assertion and a holder-of-key signature
over the Timestamp, which zeep's WSSE plugins cannot produce, and ITI-39/43 answer with MTOM,
which zeep does not read reliably. So zeep owns everything the WSDL describes (operation, element
names and order, namespaces) and the harness adds the header and reads the answer. For ITI-18,
which needs neither, :func:`zeep_call` also lets zeep send the request and parse the response
itself, end to end.
"""

from __future__ import annotations

import copy
from typing import Any

from lxml import etree

from xds_node import safexml

__all__ = ["WsdlClient", "check_wsdl"]

SOAP12 = "http://www.w3.org/2003/05/soap-envelope"


def _parser() -> etree.XMLParser:
    return safexml.parser()


def check_wsdl(url: str, status: int, content: bytes) -> bytes:
    """The body of ``GET url?wsdl`` if it is a WSDL; ValueError with a plain reason otherwise."""
    if status != 200:
        raise ValueError(f"GET {url}?wsdl answered HTTP {status}")
    root = etree.fromstring(content, _parser())
    if root.getroottree().docinfo.doctype:
        raise ValueError("the WSDL has a DOCTYPE")
    if etree.QName(root).localname != "definitions":
        raise ValueError(f"GET {url}?wsdl did not return a WSDL (root element {etree.QName(root).localname})")
    return content


class WsdlClient:
    """A zeep client loaded from the published WSDL bytes, sending to ``endpoint_url``."""

    def __init__(self, wsdl: bytes, endpoint_url: str, *, verify: Any = True, cert: tuple[str, str] | None = None,
                 timeout: float = 30.0):
        import io

        import requests
        import zeep
        from zeep.transports import Transport

        class _NoNetwork(Transport):
            def _load_remote_data(self, url):  # loading only; posting requests still works
                raise ValueError(f"the WSDL asks zeep to fetch {url}; a published WSDL must be self-contained")

        session = requests.Session()
        session.verify = verify
        if cert:
            session.cert = cert
        transport = _NoNetwork(session=session, timeout=timeout, operation_timeout=timeout)
        from zeep.plugins import HistoryPlugin

        self.endpoint_url = endpoint_url
        self.history = HistoryPlugin()
        self.client = zeep.Client(io.BytesIO(wsdl), transport=transport, settings=zeep.Settings(strict=True),
                                  plugins=[self.history])

    def _service(self, operation: str):
        for service in self.client.wsdl.services.values():
            for port in service.ports.values():
                if operation in port.binding._operations:
                    return self.client.create_service(port.binding.name, self.endpoint_url)
        raise ValueError(f"the published WSDL has no operation {operation}")

    def build_body(self, operation: str, args: dict[str, Any]) -> etree._Element:
        """The request payload zeep builds for ``operation`` (the first child of soap:Body)."""
        envelope = self.client.create_message(self._service(operation), operation, **args)
        body = envelope.find(f"{{{SOAP12}}}Body")
        if body is None or not len(body):
            raise ValueError("zeep built no SOAP 1.2 body (is the binding SOAP 1.2?)")
        return copy.deepcopy(body[0])

    def call(self, operation: str, args: dict[str, Any]) -> tuple[Any, bytes, bytes]:
        """Let zeep send the request and parse the answer itself (unsecured, non-MTOM operations).

        Returns (zeep's parsed result, the envelope zeep sent, the envelope it received); zeep
        raises its own Fault / TransportError / XMLParseError when it cannot make sense of the answer.
        """
        result = getattr(self._service(operation), operation)(**args)
        sent = self.history.last_sent["envelope"] if self.history.last_sent else None
        received = self.history.last_received["envelope"] if self.history.last_received else None
        return (result, etree.tostring(sent) if sent is not None else b"",
                etree.tostring(received) if received is not None else b"")
