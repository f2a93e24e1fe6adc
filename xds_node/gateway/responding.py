"""What stands in front of the responding-gateway transactions (ITI-38, ITI-39, ITI-55).

* :class:`SecurityGate` is the endpoint's ``before`` hook: it verifies the WS-Security header
  (Timestamp + signed SAML assertion against pinned partner certificates) and puts the verified
  :class:`~xds_node.security.principal.Principal` on the request. Nothing below it parses SAML.
  A refusal is a SOAP Sender fault with the WS-Security subcode, and is audited as "denied".
* :class:`Auditor` turns each transaction's outcome into one audit event.
* :class:`ConsentCheck` answers "may this patient's information go to the current requester?",
  using the requester's purpose of use.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any

from xds_node.audit.events import AuditEvent
from xds_node.audit.store import AuditLog
from xds_node.ebxml import vocabulary as v
from xds_node.security.consent import ConsentPolicy
from xds_node.security.saml import InboundVerifier
from xds_node.security.wss import WSSE, SecurityFault
from xds_node.soap.envelope import SoapRequest
from xds_node.soap.fault import SoapFault

log = logging.getLogger(__name__)

#: The verified requester of the request being handled (set by SecurityGate; read by consent).
current_principal: ContextVar[Any] = ContextVar("current_principal", default=None)

TRANSACTION_OF_ACTION = {
    v.Action.ITI38: "ITI-38",
    v.Action.ITI39: "ITI-39",
    v.Action.ITI55: "ITI-55",
    v.Action.ITI18: "ITI-18",
    v.Action.ITI41: "ITI-41",
    v.Action.ITI42: "ITI-42",
    v.Action.ITI43: "ITI-43",
}


def _remote(req: SoapRequest) -> str:
    return req.remote_address or ""


class SecurityGate:
    def __init__(self, verifier: InboundVerifier, audit: AuditLog | None = None, *,
                 allowed_roles: frozenset[str] = frozenset()):
        self.verifier = verifier
        self.audit = audit
        self.allowed_roles = allowed_roles

    async def __call__(self, req: SoapRequest) -> None:
        header = req.header_block(WSSE, "Security")
        try:
            if header is None:
                raise SecurityFault("wsse:InvalidSecurity", "WS-Security header required")
            principal = self.verifier.verify(header, req.envelope, request_digest=req.raw_digest)
            if self.allowed_roles and principal.role[0] not in self.allowed_roles:
                raise SecurityFault("wsse:FailedAuthentication", "role not permitted")
            if req.client_cert is not None and not self._client_is_partner(req.client_cert, principal):
                raise SecurityFault("wsse:FailedAuthentication", "TLS client is not the SAML issuer")
        except SecurityFault as fault:
            self._denied(req, fault)
            raise SoapFault("Sender", fault.reason, subcodes=[fault.qname]) from None
        req.principal = principal
        current_principal.set(principal)

    def _client_is_partner(self, der: bytes, principal) -> bool:
        """Mutual TLS: the client certificate must be pinned for the partner the assertion names."""
        from cryptography import x509

        partner = self.verifier.trust.partner_for_certificate(x509.load_der_x509_certificate(der))
        return partner is not None and partner.name == principal.partner

    def _denied(self, req: SoapRequest, fault: SecurityFault) -> None:
        if self.audit is None:
            return
        try:
            self.audit.record(AuditEvent(
                transaction=TRANSACTION_OF_ACTION.get(req.action, req.action), outcome="denied",
                message_id=req.message_id or "", endpoint=req.path, remote_address=_remote(req),
                reason=f"{fault.code}: {fault.reason}"))
        except Exception:
            log.exception("could not audit a refused request")


class ConsentCheck:
    """``consent(patient_id) -> bool`` for the transaction modules, aware of the purpose of use."""

    def __init__(self, policy: ConsentPolicy):
        self.policy = policy

    def __call__(self, patient_id: str) -> bool:
        principal = current_principal.get()
        purpose = principal.purpose_of_use[0] if principal is not None else None
        return self.policy.allows(patient_id, purpose=purpose)


class Auditor:
    """Records one audit event per transaction from the handler's outcome object."""

    def __init__(self, audit: AuditLog):
        self.audit = audit

    def __call__(self, req: SoapRequest, transaction: str, result: Any) -> None:
        outcome, patient, documents, reason = _describe(result)
        if getattr(req.principal, "resend", False):  # a peer's byte-identical resend, answered again
            reason = "resend of an already answered message" + (f"; {reason}" if reason else "")
        event = AuditEvent.from_principal(
            req.principal, transaction=transaction, outcome=outcome, patient_id=patient,
            document_ids=documents, query_id=getattr(result, "query_id", None),
            message_id=req.message_id or "", endpoint=req.path, remote_address=_remote(req), reason=reason)
        self.audit.record(event)

    def iti55(self, req: SoapRequest, outcome: Any) -> None:
        """The XCPD handler's audit signature (request, XcpdOutcome)."""
        self(req, "ITI-55", outcome)


def _describe(result: Any) -> tuple[str, str | None, list[str], str]:
    """(outcome, patient, documents, reason) from an ITI-38/39 result or an XCPD outcome."""
    withheld = getattr(result, "withheld", False)
    reason = "withheld: patient has not consented" if withheld else ""
    if hasattr(result, "query_response_code"):  # XCPD
        code = result.query_response_code
        outcome = "success" if code == "OK" else ("failure" if code in ("AE", "QE") else "success")
        if code != "OK":
            reason = reason or f"XCPD {code}" + (f": {result.error}" if result.error else "")
        return outcome, result.patient_id, [], reason
    status = getattr(result, "status", "")
    outcome = {v.ResponseStatus.SUCCESS: "success", v.ResponseStatus.PARTIAL_SUCCESS: "partial"}.get(
        status, "failure")
    patients = getattr(result, "patient_ids", []) or []
    if outcome == "failure" and not reason:
        reason = ", ".join(getattr(result, "errors", []) or [])
    return outcome, (patients[0] if patients else None), list(getattr(result, "document_ids", []) or []), reason
