"""The IHE XCA initiating-gateway actor for local document consumers: ITI-18 and ITI-43 in,
cross-community ITI-38 / ITI-39 out, one merged answer back. Existing XDS consumers point at
``/ig/registry`` and ``/ig/repository`` instead of a registry and work unchanged.

Requester identity. Partners require a SAML assertion naming a person, an organization, a role and
a purpose of use. A local XDS consumer sends none of that (ITI-18/43 carry no user), so these calls
go out as a configured *system user* (settings, TOML ``[node]`` table or ``XDS_IG_*`` variables):

=========================  ======================================================================
``ig_subject_id``          XSPA subject-id of the system user (default ``"xds-node system user"``)
``ig_organization``        organization name (default: ``organization_name``)
``ig_organization_id``     organization OID (default: our homeCommunityId)
``ig_role``                ``code^codeSystem^display`` (default SNOMED CT 224608005 Administrative
                           healthcare staff)
``ig_purpose_of_use``      ``code^codeSystem^display`` (default TREATMENT, NHIN purpose of use)
``ig_npi``                 optional National Provider Identifier
``ig_match_mode``          ``verify`` (default: re-check partners' XCPD matches against our
                           demographics) or ``trust``
``ig_signing_key/_cert``   PEM files (default ``<data_dir>/keys/node.key.pem`` / ``node.cert.pem``)
``ig_tls_verify``          verify partners' server certificates (default true; false is for labs)
``ig_tls_ca_file``         CA bundle for partners' server certificates (default: system store)
``ig_tls_client_cert/key`` our certificate and key for mutual TLS (optional)
``ig_spool_dir``           where retrieved documents are spooled (default ``<data_dir>/ig-spool``)
``ig_max_connections``     connection pool size for the fan-out (default 512)
=========================  ======================================================================

Only an authenticated internal client (``clients.toml``) may call these endpoints, and the
outbound assertion names it: a client that signs its own SAML appears with its subject-id,
organization, organization-id, role, purpose of use and NPI; a client known only by its TLS
certificate appears under its client name. The ``ig_*`` settings above only fill the fields a client
does not state (and identify the operator's own ``xds-node query`` calls); they never stand in for
an absent requester. An anonymous request is refused before anything goes out.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lxml import etree

from xds_node.ebxml import rim, xdsb
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import RegistryError
from xds_node.ebxml.query import PATIENT_PARAM
from xds_node.gateway.initiating import InitiatingGateway
from xds_node.gateway.outbound import AssertionCache, OutboundClient, make_ssl_context
from xds_node.security.principal import INTERNAL
from xds_node.security.saml import RequesterContext
from xds_node.security.wss import SecurityFault
from xds_node.soap.app import Endpoint
from xds_node.soap.envelope import SoapRequest, SoapResponse
from xds_node.soap.fault import SoapFault
from xds_node.transactions import Audited, expect_body, iti43, notify

log = logging.getLogger("xds_node.ig")

IG_REGISTRY_PATH = "/ig/registry"
IG_REPOSITORY_PATH = "/ig/repository"
NHIN_PURPOSE = "2.16.840.1.113883.3.18.7.1"
SNOMED = "2.16.840.1.113883.6.96"
_TRUE = {"1", "true", "yes", "on"}


@dataclass
class IgSettings:
    """Initiating-gateway settings read from ``settings.extra`` and ``XDS_IG_*`` (module docstring)."""

    subject_id: str
    organization: str
    organization_id: str
    home_community_id: str
    role: tuple[str, str, str]
    purpose_of_use: tuple[str, str, str]
    npi: str | None
    match_mode: str
    signing_key: Path
    signing_cert: Path
    tls_verify: bool
    tls_ca_file: str | None
    tls_client_cert: tuple[str, str] | None
    spool_dir: Path
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Any, env: dict[str, str] | None = None) -> IgSettings:
        env = dict(os.environ if env is None else env)
        extra = getattr(settings, "extra", None) or {}

        def get(name: str, default: Any = None) -> Any:
            raw = env.get("XDS_IG_" + name.upper())
            if raw is None:
                raw = extra.get("ig_" + name)
            return default if raw in (None, "") else raw

        def coded(raw: Any, default: tuple[str, str, str]) -> tuple[str, str, str]:
            if raw is None:
                return default
            parts = list(raw) if isinstance(raw, list | tuple) else str(raw).split("^")
            parts = [str(p).strip() for p in parts] + ["", "", ""]
            return parts[0], parts[1] or default[1], parts[2]

        keys = Path(settings.data_dir) / "keys"
        client_cert = get("tls_client_cert")
        client_key = get("tls_client_key")
        return cls(
            subject_id=str(get("subject_id", "xds-node system user")),
            organization=str(get("organization", settings.organization_name)),
            organization_id=str(get("organization_id", settings.home_community_id)),
            home_community_id=settings.home_community_id,
            role=coded(get("role"), ("224608005", SNOMED, "Administrative healthcare staff")),
            purpose_of_use=coded(get("purpose_of_use"), ("TREATMENT", NHIN_PURPOSE, "Treatment")),
            npi=get("npi"),
            match_mode=str(get("match_mode", "verify")),
            signing_key=Path(get("signing_key", keys / "node.key.pem")),
            signing_cert=Path(get("signing_cert", keys / "node.cert.pem")),
            tls_verify=str(get("tls_verify", "true")).strip().lower() in _TRUE,
            tls_ca_file=get("tls_ca_file"),
            tls_client_cert=(str(client_cert), str(client_key)) if client_cert and client_key else None,
            spool_dir=Path(get("spool_dir", Path(settings.data_dir) / "ig-spool")),
            max_connections=int(get("max_connections", 512)),
        )

    def for_client(self, principal: Any) -> RequesterContext:
        """The outbound requester for an internal client's call: its own claims, ``ig_*`` defaults
        only for what it leaves out. No internal client, no outbound call."""
        if principal is None or getattr(principal, "kind", None) != INTERNAL:
            raise SoapFault("Sender", "The initiating gateway acts only for an authenticated internal client "
                            "(clients.toml): anonymous requests are not sent to partner communities",
                            subcodes=[SecurityFault("wsse:FailedAuthentication", "").qname])
        role = tuple(principal.role) if principal.role and principal.role[0] else self.role
        purpose = tuple(principal.purpose_of_use) if principal.purpose_of_use and principal.purpose_of_use[0] \
            else self.purpose_of_use
        asserted = bool(principal.assertion_id)  # a certificate-only client states no organization either
        return RequesterContext(subject_id=principal.subject_id or principal.partner,
                                organization=(asserted and principal.organization) or self.organization,
                                organization_id=(asserted and principal.organization_id) or self.organization_id,
                                home_community_id=self.home_community_id, role=role, purpose_of_use=purpose,
                                npi=principal.npi or self.npi)

    def requester(self, principal: Any = None) -> RequesterContext:
        """The system user, or the verified local consumer when there is one."""
        ctx = RequesterContext(subject_id=self.subject_id, organization=self.organization,
                               organization_id=self.organization_id, home_community_id=self.home_community_id,
                               role=self.role, purpose_of_use=self.purpose_of_use, npi=self.npi)
        if principal is not None:
            ctx = replace(ctx, subject_id=principal.subject_id, role=tuple(principal.role),
                          purpose_of_use=tuple(principal.purpose_of_use), npi=principal.npi or self.npi)
        return ctx


def build_gateway(node: Any, ig: IgSettings | None = None, **client_kwargs: Any) -> InitiatingGateway:
    """An InitiatingGateway over the node's partners, patient index and audit log.

    Call inside the event loop that will use it (the httpx pool belongs to one loop).
    """
    from xds_node.security.keys import load_key_and_cert

    ig = ig or IgSettings.from_settings(node.settings)
    key, cert = load_key_and_cert(ig.signing_key, ig.signing_cert)
    subject = cert.subject.rfc4514_string()
    assertions = AssertionCache(key, cert, issuer=subject)
    if "transport" not in client_kwargs:
        client_kwargs["verify"] = make_ssl_context(verify=ig.tls_verify, ca_file=ig.tls_ca_file,
                                                   client_cert=ig.tls_client_cert)
    client = OutboundClient(assertions, spool_dir=ig.spool_dir, max_connections=ig.max_connections,
                            **client_kwargs)
    return InitiatingGateway(client, trust=node.trust, home_community_id=node.settings.home_community_id,
                             consent=node.consent, patients=node.patients, audit=node.audit,
                             match_mode=ig.match_mode)


class _PerLoop:
    """One gateway (and connection pool) per event loop, built on first use."""

    def __init__(self, node: Any, ig: IgSettings):
        from xds_node.gateway.responding import Auditor

        self.node = node
        self.ig = ig
        self.audit = Auditor(node.audit)
        self._gateways: dict[int, InitiatingGateway] = {}

    def get(self) -> InitiatingGateway:
        loop = id(asyncio.get_running_loop())
        gw = self._gateways.get(loop)
        if gw is None:
            try:
                gw = self._gateways[loop] = build_gateway(self.node, self.ig)
            except (OSError, ValueError) as exc:
                log.error("initiating gateway not configured: %s", exc)
                raise SoapFault("Receiver", "The initiating gateway has no usable signing key "
                                "(configure ig_signing_key/ig_signing_cert or run `xds-node keys init`)") from None
        return gw


def _patient_from_slot(values: list[list[str]] | None) -> str | None:
    """``'pid'`` or ``('pid')`` -> pid (one patient per query, as ITI-18 requires)."""
    if not values or not values[0]:
        return None
    raw = values[0][0].strip()
    if raw.startswith("(") and raw.endswith(")"):
        raw = raw[1:-1].strip()
    return raw.strip("'").strip() or None


def make_query_handler(gateways: _PerLoop):
    async def handle(req: SoapRequest) -> SoapResponse:
        expect_body(req.body, v.QUERY, "AdhocQueryRequest")
        action = v.response_action(v.Action.ITI18)
        try:
            query = rim.read_adhoc_query_request(req.body)
        except rim.MetadataParseError as exc:
            return SoapResponse(action, rim.adhoc_query_response_bytes(
                v.ResponseStatus.FAILURE, errors=[RegistryError(v.ErrorCode.REGISTRY_ERROR, str(exc))]))
        param = PATIENT_PARAM.get(query.query_id)
        pid = _patient_from_slot(query.slots.get(param)) if param else None
        if param and not pid:
            return SoapResponse(action, rim.adhoc_query_response_bytes(v.ResponseStatus.FAILURE, errors=[
                RegistryError(v.ErrorCode.STORED_QUERY_MISSING_PARAM, f"{param} is required")]))
        requester = gateways.ig.for_client(req.principal)
        result = await gateways.get().query(pid, requester, template=query)
        docs = [o.get("id", "") for o in result.objects if etree.QName(o).localname == "ExtrinsicObject"]
        await notify(gateways.audit, req, "ITI-18", Audited(result.status, query_id=query.query_id,
                                                            patient_ids=[pid] if pid else [], document_ids=docs,
                                                            errors=[e.code for e in result.errors]))
        return SoapResponse(action, result.response_bytes())

    return handle


def make_retrieve_handler(gateways: _PerLoop, *, keep_seconds: float = 600.0):
    spool = gateways.ig.spool_dir

    async def handle(req: SoapRequest) -> SoapResponse:
        requests = iti43.read_requests(req.body)
        requester = gateways.ig.for_client(req.principal)
        await asyncio.to_thread(_clean_spool, spool, keep_seconds)
        result = await gateways.get().retrieve(requests, requester, spool_dir=spool)
        response = SoapResponse(action=v.response_action(v.Action.ITI43), body=b"", mtom=True)
        found = {d.document_unique_id: d for d in result.documents}
        docs = [xdsb.DocumentResponse(d.repository_unique_id, d.document_unique_id, d.mime_type,
                                      d.home_community_id) for d in result.documents]

        def attach(d: xdsb.DocumentResponse):
            doc = found[d.document_unique_id]
            return response.attach(doc.path if doc.path is not None else (doc.data or b""), d.mime_type)

        response.body = xdsb.write_retrieve_response(result.status, result.errors, docs, attach)
        await notify(gateways.audit, req, "ITI-43", Audited(result.status,
                                                            document_ids=[d.document_unique_id for d in docs],
                                                            errors=[e.code for e in result.errors]))
        return response

    return handle


def _clean_spool(spool: Path, keep_seconds: float) -> None:
    """Spooled documents are streamed to the consumer after the handler returns, so they are
    removed on a later call once they are older than ``keep_seconds``."""
    if not spool.is_dir():
        return
    limit = time.time() - keep_seconds
    for f in spool.iterdir():
        try:
            if f.is_file() and f.stat().st_mtime < limit:
                f.unlink()
        except OSError:
            pass


def endpoints(node: Any, *, before: list | None = None) -> list[Endpoint]:
    """The initiating-gateway endpoints for :meth:`xds_node.node.Node.endpoints`.

    ``before`` defaults to the node's access policy admitting internal clients only.
    """
    from xds_node.paths import wsdl_dir
    from xds_node.security.policy import INTERNAL_ONLY

    ig = IgSettings.from_settings(node.settings)
    gateways = _PerLoop(node, ig)
    if before is None:
        before = [node.gate(INTERNAL_ONLY)]
    wsdl = wsdl_dir() / "initiating-gateway.wsdl"
    return [
        Endpoint(IG_REGISTRY_PATH, {v.Action.ITI18: make_query_handler(gateways)}, wsdl=wsdl, before=list(before)),
        Endpoint(IG_REPOSITORY_PATH, {v.Action.ITI43: make_retrieve_handler(gateways)}, wsdl=wsdl,
                 before=list(before)),
    ]
