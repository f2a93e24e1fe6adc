"""``xds-node send --partner NAME FILE...``: push our C-CDA documents to a partner's XDR Document
Recipient (ITI-41 point to point; eHealth Exchange Document Submission).

Each file is one submission: metadata from the C-CDA header (:func:`xds_node.cda.extract_metadata`,
the same as ``xds-node load``), the document as an MTOM part, signed like every outbound call of the
initiating gateway (our SAML assertion + a WS-Security Timestamp; :class:`OutboundClient`). The
partner's URL is its ``xdr`` endpoint in partners.toml.

Sending a patient's documents to another organisation is a disclosure: each file goes out only when
:meth:`ConsentPolicy.decide <xds_node.security.consent.ConsentPolicy.decide>` allows it for the
requester's purpose of use (the decision every disclosure path makes); otherwise nothing is sent
and the refusal is audited as ``denied``. Every push is audited as an outbound ITI-41 with the
partner, patient and document. When we hold a correlation (XCPD) for the patient in the partner's
community, the submission names the patient by the partner's id; sourcePatientId stays ours.

Output: one line per file (``OK``, ``REFUSED`` or ``FAILED`` with the reason). Exit codes: 0 every
file accepted, 1 some, 2 none (or bad input).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lxml import etree

from xds_node.audit.events import AuditEvent
from xds_node.cda import CdaError, extract_metadata
from xds_node.ebxml import rim, xdsb
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import Submission
from xds_node.gateway.outbound import OutboundClient, SoapTransportError, endpoint_url
from xds_node.repository.ingest import submission_for
from xds_node.security.saml import RequesterContext
from xds_node.security.trust import Partner, normalize_hcid
from xds_node.soap.envelope import XOP
from xds_node.soap.fault import SoapFault
from xds_node.soap.mtom import Attachment, new_content_id

#: Names a partner's XDR endpoint goes by in partners.toml ``endpoints``.
XDR_ENDPOINT_NAMES = ("xdr", "document_submission", "ITI-41", "iti41")


@dataclass
class Sent:
    """What happened to one file."""

    file: str
    outcome: str  # "ok", "refused" (consent / not sent), "failed"
    detail: str = ""
    unique_id: str = ""
    patient_id: str = ""
    errors: list[str] = field(default_factory=list)

    def line(self) -> str:
        label = {"ok": "OK", "refused": "REFUSED", "failed": "FAILED"}[self.outcome]
        what = f" {self.unique_id}" if self.unique_id else ""
        return f"{self.file}: {label}{what}" + (f" ({self.detail})" if self.detail else "")


def xdr_url(partner: Partner) -> str | None:
    for name in XDR_ENDPOINT_NAMES:
        url = endpoint_url(partner, name)
        if url:
            return url
    return None


class DocumentSender:
    """Pushes C-CDA files to one partner. ``consent`` is required: no sender skips the check."""

    def __init__(self, client: OutboundClient, *, consent: Any, audit: Any, patients: Any = None,
                 source_id: str, defaults: Any = None) -> None:
        if consent is None:
            raise ValueError("a document sender needs a consent policy")
        self.client = client
        self.consent = consent
        self.audit = audit
        self.patients = patients
        self.source_id = source_id
        self.defaults = defaults

    async def send(self, partner: Partner, path: Path, ctx: RequesterContext) -> Sent:
        name = str(path)
        url = xdr_url(partner)
        if not url:
            return Sent(name, "failed", f"partner {partner.name} has no xdr endpoint in partners.toml")
        try:
            data = path.read_bytes()
            entry = extract_metadata(data, source_name=name, defaults=self.defaults, entry_id=rim.new_uuid())
        except (OSError, CdaError) as exc:
            return Sent(name, "failed", str(exc)[:300])
        pid = entry.patient_id or ""
        purpose = ctx.purpose_of_use[0] if ctx.purpose_of_use else None
        decision = self.consent.decide(pid, purpose=purpose)
        if not decision:
            reason = f"patient {pid} may not be disclosed to {partner.name}: {decision.reason}; nothing was sent"
            self._record(ctx, partner, url, "denied", pid, [], reason)
            return Sent(name, "refused", reason, entry.unique_id or "", pid)
        if not self._record(ctx, partner, url, "attempt", pid, [entry.unique_id or ""], "sending"):
            # the document leaves only once the trail can say so (fail closed, like every answer)
            return Sent(name, "failed", "the audit trail cannot be written: nothing was sent",
                        entry.unique_id or "", pid, ["audit"])
        sub = self._submission(entry, partner)
        cid = new_content_id()
        doc = etree.Element(f"{{{v.XDSB}}}Document", nsmap={"xdsb": v.XDSB})
        etree.SubElement(doc, f"{{{XOP}}}Include", nsmap={"xop": XOP}).set("href", f"cid:{cid}")
        body = xdsb.write_provide_request(sub, {entry.id: doc})
        uid = entry.unique_id or ""
        try:
            reply = await self.client.call(partner, url, v.Action.ITI41, body, ctx,
                                           attachments=[Attachment(cid, entry.mime_type or "text/xml", data=data)])
            answer = rim.read_registry_response(reply.body)
        except SoapFault as exc:
            result = Sent(name, "failed", f"partner answered with a SOAP fault: {exc.reason}"[:300], uid, pid)
        except SoapTransportError as exc:
            result = Sent(name, "failed", str(exc)[:300], uid, pid)
        except Exception as exc:  # an answer we cannot read: the partner may or may not have it
            result = Sent(name, "failed", f"unusable answer ({type(exc).__name__})", uid, pid)
        else:
            codes = [e.code for e in answer.errors]
            if answer.status == v.ResponseStatus.SUCCESS:
                result = Sent(name, "ok", "", uid, pid, codes)
            else:
                text = "; ".join(f"{e.code}: {e.context}" for e in answer.errors)[:300]
                result = Sent(name, "failed", f"{answer.status.rsplit(':', 1)[-1]}: {text}", uid, pid, codes)
        outcome = "success" if result.outcome == "ok" else "failure"
        if not self._record(ctx, partner, url, outcome, pid, [uid], result.detail):
            result.outcome = "failed" if result.outcome != "ok" else result.outcome
            result.detail = (result.detail + "; " if result.detail else "") + "AUDIT NOT WRITTEN (see the log)"
            result.errors.append("audit")
        return result

    def _submission(self, entry, partner: Partner) -> Submission:
        """One SubmissionSet per file; the patient under the partner's id when we hold one."""
        if self.patients is not None and entry.patient_id:
            home = normalize_hcid(partner.home_community_id)
            for c in self.patients.correlations_for(entry.patient_id):
                if normalize_hcid(c.community_id) == home:
                    entry.patient_id = c.remote_cx
                    break
        entry.repository_unique_id = None  # the recipient stores it: it names its own repository
        sub = submission_for(entry, source_id=self.source_id)
        sub.submission_set.intended_recipients = []
        return sub

    def _record(self, ctx: RequesterContext, partner: Partner, url: str, outcome: str, patient_id: str,
                documents: list[str], reason: str) -> bool:
        """One outbound audit row; False (logged) when it could not be written."""
        if self.audit is None:
            return True
        try:
            self.audit.record(AuditEvent.from_principal(
                ctx, transaction="ITI-41", direction="outbound", outcome=outcome,  # type: ignore[arg-type]
                partner_community=partner.home_community_id, partner_organization=partner.name,
                partner_organization_id="", patient_id=patient_id or None, document_ids=documents,
                endpoint=url, reason=reason[:500]))
        except Exception:
            import logging

            logging.getLogger("xds_node.send").error("could not audit an outbound XDR push", exc_info=True)
            return False
        return True


# --- command line ---------------------------------------------------------------------------------
def add_parser(sub: Any) -> None:
    p = sub.add_parser("send", help="push C-CDA files to a partner's XDR Document Recipient (ITI-41)")
    p.add_argument("files", nargs="+", metavar="FILE", type=Path, help="C-CDA documents (one submission each)")
    p.add_argument("--partner", required=True, help="partner name in partners.toml (needs an `xdr` endpoint)")
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--subject-id", help="XSPA subject-id of the person sending (default: the system user)")
    p.add_argument("--role", help="role as CODE^CODESYSTEM^DISPLAY (SNOMED CT by default)")
    p.add_argument("--purpose", help="purpose of use as CODE[^CODESYSTEM^DISPLAY] (default TREATMENT)")
    p.add_argument("--npi", help="National Provider Identifier of the person sending")
    p.set_defaults(func=cmd_send)


def cmd_send(args: argparse.Namespace) -> int:
    from xds_node.gateway.commands import _ctx, _settings
    from xds_node.node import Node, cda_defaults
    from xds_node.security.keys import load_key_and_cert
    from xds_node.transactions.ig import IgSettings

    from .outbound import AssertionCache, make_ssl_context

    settings = _settings(args)
    node = Node(settings)
    try:
        partner = node.trust.partner(args.partner)
        if partner is None:
            print(f"send: no partner named {args.partner!r} in {settings.partners_path}", file=sys.stderr)
            return 2
        if not xdr_url(partner):
            print(f"send: partner {partner.name} has no `xdr` endpoint in {settings.partners_path}", file=sys.stderr)
            return 2
        ig = IgSettings.from_settings(settings)
        ctx = _ctx(args, ig)
        try:
            key, cert = load_key_and_cert(ig.signing_key, ig.signing_cert)
        except (OSError, ValueError) as exc:
            print(f"send: no usable signing key ({exc}); run `xds-node keys init`", file=sys.stderr)
            return 2

        async def main() -> list[Sent]:
            client = OutboundClient(AssertionCache(key, cert, issuer=cert.subject.rfc4514_string()),
                                    verify=make_ssl_context(verify=ig.tls_verify, ca_file=ig.tls_ca_file,
                                                            client_cert=ig.tls_client_cert),
                                    spool_dir=ig.spool_dir, signing_threads=0)
            sender = DocumentSender(client, consent=node.consent, audit=node.audit, patients=node.patients,
                                    source_id=settings.registry_unique_id, defaults=cda_defaults(settings))
            try:
                return [await sender.send(partner, path, ctx) for path in args.files]
            finally:
                await client.aclose()

        results = asyncio.run(main())
    finally:
        node.close()
    for r in results:
        print(r.line(), file=sys.stdout if r.outcome == "ok" else sys.stderr)
    ok = sum(1 for r in results if r.outcome == "ok")
    return 0 if ok == len(results) else (1 if ok else 2)


__all__ = ["DocumentSender", "Sent", "add_parser", "cmd_send", "xdr_url"]
