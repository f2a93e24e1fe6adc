"""What stands in front of the responding-gateway transactions (ITI-38, ITI-39, ITI-55).

* :class:`SecurityGate` is the ``before`` hook of every endpoint: it asks the
  :class:`~xds_node.security.policy.AccessPolicy` who is calling (a partner's signed SAML on the
  gateway endpoints; an internal client's pinned certificate or signed SAML, or an admitted loopback
  caller, on ``/xds/*`` and ``/ig/*``) and puts the verified
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
from xds_node.security.policy import GATEWAY, AccessPolicy
from xds_node.security.replay import ReplayUnavailable
from xds_node.security.wss import SecurityFault
from xds_node.soap.envelope import SoapRequest
from xds_node.soap.fault import SoapFault
from xds_node.transactions import audit_unavailable

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
    v.Action.ITI51: "ITI-51",
}


def _remote(req: SoapRequest) -> str:
    return req.remote_address or ""


class SecurityGate:
    def __init__(self, policy: AccessPolicy, audit: AuditLog | None = None, *, kinds: frozenset[str] = GATEWAY):
        self.policy = policy
        self.audit = audit
        #: the caller kinds this endpoint admits (security.policy.GATEWAY, INTERNAL_ONLY, ...)
        self.kinds = kinds

    async def __call__(self, req: SoapRequest) -> None:
        try:
            principal = await self.policy.authenticate_async(req, self.kinds)
        except SecurityFault as fault:
            await self._denied(req, fault.code, fault.reason)
            raise SoapFault("Sender", fault.reason, subcodes=[fault.qname]) from None
        except ReplayUnavailable:
            # the message may be perfectly good: "retry later" (503), not "your security is wrong"
            await self._denied(req, "unavailable", "replay state could not be recorded")
            raise audit_unavailable() from None
        req.principal = principal
        current_principal.set(principal)

    async def _denied(self, req: SoapRequest, code: str, reason: str) -> None:
        """Audit a refusal (fields bounded by AuditEvent, so a stranger's 9 MB MessageID still
        leaves a row), in the worker's group commit: a flood of refused messages shares rounds
        instead of committing one by one on the event loop. A refusal discloses nothing, so if
        the row cannot be written the request is still refused with its own fault, and the
        failure is logged as an error."""
        if self.audit is None:
            return
        try:
            await self.audit.record_async(AuditEvent(
                transaction=TRANSACTION_OF_ACTION.get(req.action, req.action), outcome="denied",
                caller_kind="anonymous", message_id=req.message_id or "", endpoint=req.path,
                remote_address=_remote(req), reason=f"{code}: {reason}"))
        except Exception:
            log.error("could not audit a refused request (it is refused anyway)", exc_info=True)


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
        per_patient = getattr(result, "documents_by_patient", None) or {}
        # an answer spanning patients (ITI-51) is one row per patient: each accounting shows it
        rows = list(per_patient.items()) if len(per_patient) > 1 else [(patient, documents)]
        for pid, docs in rows:
            self.audit.record(AuditEvent.from_principal(
                req.principal, transaction=transaction, outcome=outcome, patient_id=pid,
                document_ids=docs, query_id=getattr(result, "query_id", None),
                message_id=req.message_id or "", endpoint=req.path, remote_address=_remote(req), reason=reason))

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
