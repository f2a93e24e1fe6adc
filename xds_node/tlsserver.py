"""HTTPS and mutual TLS for ``xds-node serve``.

uvicorn terminates TLS but does not hand the client's certificate to the application, and the
responding gateway needs it to check that the TLS client is the partner its SAML assertion names.
:class:`TlsHttpToolsProtocol` adds it to each request scope as the ASGI TLS extension
(``scope["extensions"]["tls"]["client_cert_chain"]``), which the SOAP app reads. The server
context has TLS 1.2 as its floor and ``settings.tls_ciphers`` (see ``httpserver.run``).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from xds_node.httpserver import LimitedHttpToolsProtocol


class TlsHttpToolsProtocol(LimitedHttpToolsProtocol):
    """The limited protocol plus the client certificate in each scope."""

    _peer_der: bytes | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        self._peer_der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._peer_der is not None:
            self.scope["extensions"] = {"tls": {"client_cert_chain": [self._peer_der], "client_cert_error": None}}


def partner_bundle(settings) -> Path:
    """All pinned partner and internal-client certificates as one PEM file: the CAs a mutual-TLS
    client may present. Read at start: a client added later connects after a restart (a removed one
    is refused at once, by the access policy, which checks the pin on every request)."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from xds_node.security.clients import ClientStore
    from xds_node.security.trust import TrustStore

    certs = [c for p in TrustStore.load(settings.partners_path).partners() for c in p.certificates]
    if settings.clients_path.exists():
        certs += [c for p in ClientStore.load(settings.clients_path, settings.home_community_id).partners()
                  for c in p.certificates]
    path = Path(settings.keys_dir) / "partner-client-bundle.pem"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in certs))
    return path


def uvicorn_tls_options(settings, cert: Path, key: Path, *, mtls: bool) -> dict:
    options = {"ssl_certfile": str(cert), "ssl_keyfile": str(key), "http": TlsHttpToolsProtocol}
    if mtls:
        options |= {"ssl_ca_certs": str(partner_bundle(settings)), "ssl_cert_reqs": ssl.CERT_REQUIRED}
    return options
