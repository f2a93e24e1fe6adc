"""Who may call which endpoint: one decision for every endpoint of the node.

Two kinds of authenticated callers, each with its own doors:

* **partners** (external communities, ``partners.toml``) call only the gateway endpoints (``/xcpd``,
  ``/xca/*``) with WS-Security and a SAML assertion signed by a pinned partner certificate;
* **internal clients** (our own EHR, document sources and consumers, ``clients.toml``) call only
  ``/xds/*`` and ``/ig/*``, with a pinned TLS client certificate (mutual TLS) or a SAML assertion
  signed by a pinned client certificate.

A partner's credentials are refused on the internal endpoints and a client's on the gateway
endpoints, so a partner can never reach around consent through the registry. An **anonymous**
caller is admitted only where an endpoint allows it (``/xds/*``), only from a loopback address and
only while ``anonymous_loopback`` is on; the initiating gateway never calls out for an anonymous
caller. :meth:`AccessPolicy.authenticate` returns the :class:`Principal` or raises
:class:`SecurityFault`; the endpoint hook (``SecurityGate``) turns that into an audited SOAP fault.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import replace

from cryptography import x509
from lxml.etree import _Element

from .principal import ANONYMOUS, INTERNAL, PARTNER, Principal
from .replay import ReplayUnavailable
from .saml import Checked, InboundVerifier
from .wss import WSSE, SecurityFault

log = logging.getLogger(__name__)

SAML2 = "urn:oasis:names:tc:SAML:2.0:assertion"
DS = "http://www.w3.org/2000/09/xmldsig#"

#: Who each kind of endpoint admits.
GATEWAY = frozenset({PARTNER})
INTERNAL_ONLY = frozenset({INTERNAL})
INTERNAL_OR_LOOPBACK = frozenset({INTERNAL, ANONYMOUS})


def peer_addresses(address: str | None) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The peer's IP address, and its IPv4 form when it is IPv4-mapped; nothing for anything
    unparsable (a Unix socket, ""), which therefore matches no network."""
    if not address:
        return []
    try:
        ip = ipaddress.ip_address(address.strip("[]").split("%", 1)[0])
    except ValueError:
        return []
    mapped = getattr(ip, "ipv4_mapped", None)
    return [ip] if mapped is None else [ip, mapped]


@functools.lru_cache(maxsize=1024)
def is_loopback(address: str | None) -> bool:
    """127.0.0.0/8, ::1 and IPv4-mapped loopback; anything unparsable is not. (A pure function of
    the address text, remembered: parsing it cost more than the rest of an anonymous admission.)"""
    return any(ip.is_loopback for ip in peer_addresses(address))


def signer_fingerprints(security: _Element) -> list[str]:
    """SHA-256 fingerprints of the certificates the assertion's signature names in its KeyInfo.

    Only a hint for choosing the right refusal: nothing is trusted from it.
    """
    out: list[str] = []
    for assertion in security.iterchildren(f"{{{SAML2}}}Assertion"):
        for el in assertion.iterfind(f"{{{DS}}}Signature/{{{DS}}}KeyInfo/{{{DS}}}X509Data/{{{DS}}}X509Certificate"):
            text = "".join((el.text or "").split())
            if not text or len(text) > 20_000:
                continue
            try:
                out.append(hashlib.sha256(base64.b64decode(text, validate=True)).hexdigest())
            except (binascii.Error, ValueError):
                continue
    return out


class AccessPolicy:
    """Authenticates the caller of one request against the caller kinds its endpoint admits."""

    def __init__(self, partners: InboundVerifier, clients: InboundVerifier, *, home_community_id: str,
                 organization: str, allowed_roles: Iterable[str] = (), anonymous_loopback: bool = True) -> None:
        self.partners = partners
        self.clients = clients
        self.home_community_id = home_community_id
        self.organization = organization
        self.allowed_roles = frozenset(allowed_roles)
        self.anonymous_loopback = anonymous_loopback

    def authenticate(self, req, kinds: frozenset[str]) -> Principal:
        """The verified caller of ``req`` (a SoapRequest), or :class:`SecurityFault`; a signed
        message's replay entries are recorded in a transaction of their own."""
        checked = self._checked(req, kinds)
        return checked.admit() if isinstance(checked, Checked) else checked

    async def authenticate_async(self, req, kinds: frozenset[str]) -> Principal:
        """:meth:`authenticate` for the request path: a signed message's replay entries join the
        worker's group commit (:mod:`xds_node.rounds`), recorded only once every other check passed."""
        checked = self._checked(req, kinds)
        return await checked.admit_async() if isinstance(checked, Checked) else checked

    def _checked(self, req, kinds: frozenset[str]) -> Principal | Checked:
        try:
            return self._authenticate(req, kinds)
        except (SecurityFault, ReplayUnavailable):
            raise
        except Exception:  # never let an internal error become a fault text, nor an admission
            log.exception("access policy failed unexpectedly")
            raise SecurityFault("wsse:InvalidSecurity", "security header not acceptable") from None

    def _authenticate(self, req, kinds: frozenset[str]) -> Principal | Checked:
        header = req.header_block(WSSE, "Security")
        if PARTNER in kinds:
            return self._partner(req, header)
        if INTERNAL in kinds:
            if header is not None:
                return self._client_by_assertion(req, header)
            if req.client_cert is not None:
                return self._client_by_certificate(req.client_cert, req.path)
        if ANONYMOUS in kinds and self.anonymous_loopback and is_loopback(req.remote_address) \
                and not getattr(req, "forwarded", False):  # a local proxy's peer address is not the caller's
            return Principal.anonymous(self.home_community_id)
        if ANONYMOUS in kinds and self.anonymous_loopback:
            raise SecurityFault("wsse:InvalidSecurity", "authentication required: anonymous requests are accepted "
                                "only from this host; present a pinned client certificate or a signed assertion")
        raise SecurityFault("wsse:InvalidSecurity", "authentication required: a pinned client certificate or "
                            "a WS-Security header with an assertion signed by a pinned internal client")

    # -- partners (gateway endpoints) --
    def _partner(self, req, header: _Element | None) -> Checked:
        if header is None:
            if req.client_cert is not None and self._is_client_cert(req.client_cert):
                raise _wrong_door("internal client", req.path)
            raise SecurityFault("wsse:InvalidSecurity", "WS-Security header required")
        try:
            checked = self.partners.check(header, req.envelope, request_digest=req.raw_digest)
        except SecurityFault:  # say why when it is a client at the wrong door (off the hot path)
            if any(self.clients.trust.partner_for_fingerprint(fp) for fp in signer_fingerprints(header)):
                raise _wrong_door("internal client", req.path) from None
            raise
        principal = checked.principal
        if self.allowed_roles and principal.role[0] not in self.allowed_roles:
            raise SecurityFault("wsse:FailedAuthentication", "role not permitted")
        if req.client_cert is not None:
            cert = x509.load_der_x509_certificate(req.client_cert)
            partner = self.partners.trust.partner_for_certificate(cert)
            if partner is None and self.clients.trust.partner_for_certificate(cert) is not None:
                raise _wrong_door("internal client", req.path)
            if partner is None or partner.name != principal.partner:
                raise SecurityFault("wsse:FailedAuthentication", "TLS client is not the SAML issuer")
        return checked

    # -- internal clients (/xds/*, /ig/*) --
    def _client_by_assertion(self, req, header: _Element) -> Checked:
        if any(self.partners.trust.partner_for_fingerprint(fp) for fp in signer_fingerprints(header)):
            raise _wrong_door("partner", req.path)
        checked = self.clients.check(header, req.envelope, request_digest=req.raw_digest)
        checked.principal = principal = replace(checked.principal, kind=INTERNAL)
        if req.client_cert is not None:
            cert = x509.load_der_x509_certificate(req.client_cert)
            if self.partners.trust.partner_for_certificate(cert) is not None:
                raise _wrong_door("partner", req.path)
            client = self.clients.trust.partner_for_certificate(cert)
            if client is None or client.name != principal.partner:
                raise SecurityFault("wsse:FailedAuthentication", "TLS client is not the SAML issuer")
        return checked

    def _client_by_certificate(self, der: bytes, path: str) -> Principal:
        cert = x509.load_der_x509_certificate(der)
        if self.partners.trust.partner_for_certificate(cert) is not None:
            raise _wrong_door("partner", path)
        client = self.clients.trust.partner_for_certificate(cert)
        if client is None:
            raise SecurityFault("wsse:FailedAuthentication", "TLS client certificate is not pinned for a client")
        return Principal.certificate_client(
            client.name, organization=self.organization, organization_id=self.home_community_id,
            home_community_id=self.home_community_id, issuer=cert.subject.rfc4514_string(),
            not_on_or_after=cert.not_valid_after_utc)

    def _is_client_cert(self, der: bytes) -> bool:
        return self.clients.trust.partner_for_certificate(x509.load_der_x509_certificate(der)) is not None


def _wrong_door(kind: str, path: str) -> SecurityFault:
    where = "the gateway endpoints" if kind == "internal client" else "internal endpoints"
    return SecurityFault("wsse:FailedAuthentication", f"{kind} credentials are not accepted on {where} ({path})")


def describe(kinds: frozenset[str] | None, *, anonymous_loopback: bool) -> str:
    """One line for the start-up table: who may call an endpoint admitting ``kinds``
    (``None``: no check at all, the insecure lab switch)."""
    if kinds is None:
        return "ANYONE (insecure_no_gateway_security: no WS-Security/SAML check)"
    parts = []
    if PARTNER in kinds:
        parts.append("partners (partners.toml): WS-Security + SAML signed by a pinned partner; consent enforced")
    if INTERNAL in kinds:
        parts.append("internal clients (clients.toml): pinned TLS client certificate or SAML signed by a pinned client")
    if ANONYMOUS in kinds:
        parts.append("anonymous from loopback" if anonymous_loopback
                     else "no anonymous callers (anonymous_loopback = false)")
    elif INTERNAL in kinds:
        parts.append("no anonymous callers")
    return "; ".join(parts)
