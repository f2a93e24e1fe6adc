"""Partner health checks shared by ``xds-node partners check`` and the console's "check now".

* certificates: in date now, and a warning when one expires within :data:`EXPIRY_WARNING`;
* endpoints: the WSDL answers (``GET url?wsdl``);
* signed: a real signed call, ITI-38 FindDocuments through the initiating gateway's client (our key,
  a SAML assertion for the system user, WS-Security Timestamp) about a probe patient id in our own
  assigning authority that names nobody. Any ebXML answer (Success, or an error such as
  XDSUnknownPatientId) means the partner accepted our signature; a SOAP fault or no answer does not.
  The call is audited as an outbound ITI-38 (no patient) like any other.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from xds_node.security.trust import Partner

EXPIRY_WARNING = timedelta(days=30)
#: Patient id of the signed probe: under our own assigning authority, so it can match no partner's patient.
PROBE_EXTENSION = "xds-node-partner-check"


@dataclass
class Finding:
    partner: str
    what: str  # "certificate", "endpoint xca_query", "signed ITI-38"
    state: str  # "ok", "warning", "problem"
    detail: str
    seconds: float | None = None

    @property
    def ok(self) -> bool:
        return self.state == "ok"


def certificate_findings(partner: Partner, now: datetime | None = None) -> list[Finding]:
    now = now or datetime.now(UTC)
    out = []
    for cert in partner.certificates:
        subject = cert.subject.rfc4514_string()
        expires = cert.not_valid_after_utc
        if not (cert.not_valid_before_utc <= now < expires):
            out.append(Finding(partner.name, "certificate", "problem", f"{subject} is not valid now "
                               f"(valid {cert.not_valid_before_utc:%Y-%m-%d} to {expires:%Y-%m-%d})"))
        elif expires - now <= EXPIRY_WARNING:
            out.append(Finding(partner.name, "certificate", "warning",
                               f"{subject} expires {expires:%Y-%m-%d} (in {(expires - now).days} days)"))
        else:
            out.append(Finding(partner.name, "certificate", "ok", f"{subject} valid until {expires:%Y-%m-%d}"))
    return out


def wsdl_finding(partner: Partner, name: str, url: str, timeout: float) -> Finding:
    import httpx

    started = time.perf_counter()
    try:
        code = httpx.get(url + "?wsdl", timeout=timeout).status_code
        state, detail = ("ok", f"{url}: WSDL answers") if code == 200 else ("problem", f"{url}: HTTP {code}")
    except httpx.HTTPError as exc:
        state, detail = "problem", f"{url}: unreachable ({type(exc).__name__})"
    return Finding(partner.name, f"endpoint {name}", state, detail, time.perf_counter() - started)


async def signed_finding(node: Any, partner: Partner, *, timeout: float = 15.0) -> Finding:
    """A real signed ITI-38 to the partner (module docstring), audited as outbound."""
    from dataclasses import replace

    from lxml import etree

    from xds_node.audit.events import AuditEvent
    from xds_node.ebxml import rim
    from xds_node.ebxml import vocabulary as v
    from xds_node.ebxml.model import StoredQuery
    from xds_node.gateway.outbound import PartnerOptions, SoapTransportError, endpoint_url
    from xds_node.soap.fault import SoapFault
    from xds_node.transactions.ig import IgSettings, build_gateway

    url = endpoint_url(partner, "xca_query")
    if not url:
        return Finding(partner.name, "signed ITI-38", "warning", "no xca_query endpoint: no signed call to make")
    ig = IgSettings.from_settings(node.settings)
    ctx = replace(ig.requester(), subject_id=ig.subject_id + " (partner check)")
    probe = f"{PROBE_EXTENSION}^^^&{node.settings.home_oid}&ISO"
    body = rim.write_adhoc_query_request(StoredQuery(query_id=v.StoredQueryId.FIND_DOCUMENTS, slots={
        "$XDSDocumentEntryPatientId": [[f"'{probe}'"]],
        "$XDSDocumentEntryStatus": [["('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved')"]]}))
    gateway = build_gateway(node, ig)
    options = replace(PartnerOptions.of(partner), timeout=min(timeout, partner.timeout), retries=0)
    started = time.perf_counter()
    try:
        reply = await gateway.client.call(partner, url, v.Action.ITI38, body, ctx, options=options)
        if reply.body.tag != f"{{{v.QUERY}}}AdhocQueryResponse":
            raise ValueError(f"answered {etree.QName(reply.body).localname}, not AdhocQueryResponse")
        status = rim.read_registry_response(reply.body)
        codes = ", ".join(e.code for e in status.errors)
        finding = Finding(partner.name, "signed ITI-38", "ok", f"{url}: signed request accepted "
                          f"({status.status.rsplit(':', 1)[-1]}{': ' + codes if codes else ''})")
    except SoapFault as exc:
        finding = Finding(partner.name, "signed ITI-38", "problem", f"{url}: SOAP fault: {exc.reason}"[:400])
    except SoapTransportError as exc:
        finding = Finding(partner.name, "signed ITI-38", "problem", f"{url}: {exc}"[:400])
    except (ValueError, etree.XMLSyntaxError) as exc:
        finding = Finding(partner.name, "signed ITI-38", "problem", f"{url}: {exc}"[:400])
    finally:
        await gateway.client.aclose()
    finding.seconds = time.perf_counter() - started
    event = AuditEvent.from_principal(
        ctx, transaction="ITI-38", direction="outbound", outcome="success" if finding.ok else "failure",
        partner_community=partner.home_community_id, partner_organization=partner.name, partner_organization_id="",
        query_id=v.StoredQueryId.FIND_DOCUMENTS, endpoint=url, reason=f"partner check: {finding.detail}"[:500])
    await asyncio.to_thread(node.audit.record, event)
    return finding
