"""ITI-55 Cross Gateway Patient Discovery, responding side: PRPA_IN201305UV02 in, PRPA_IN201306UV02 out.

:func:`respond` is pure apart from the patient index reads (and an optional correlation write):
parse, match, apply consent, write the answer. A malformed request is answered with an HL7 AE
acknowledgement, not a SOAP fault, because XCPD partners read errors from the HL7 payload.

Consent: a patient who has not opted in is answered exactly like an unknown one (NF), so the
answer never reveals that we hold records for them. When several candidates are too close to
call we say AnswerNotAvailable only if at least one of them consented; otherwise NF.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lxml.etree import _Element

from xds_node.patients.hl7v3 import XcpdQuery, XcpdRequestError, build_prpa_in201306, parse_prpa_in201305
from xds_node.patients.index import PatientIndex, correlation_fits
from xds_node.patients.matching import CANDIDATE_THRESHOLD, CLOSE_MARGIN, match
from xds_node.security.trust import normalize_hcid
from xds_node.soap.envelope import SoapRequest, SoapResponse
from xds_node.transactions import audited, blocking

__all__ = ["ACTION", "RESPONSE_ACTION", "XcpdOutcome", "make_handler", "respond"]

log = logging.getLogger("xds_node.iti55")

ACTION = "urn:hl7-org:v3:PRPA_IN201305UV02:CrossGatewayPatientDiscovery"
RESPONSE_ACTION = "urn:hl7-org:v3:PRPA_IN201306UV02:CrossGatewayPatientDiscovery"


@dataclass
class XcpdOutcome:
    """What happened, for the audit trail and the caller (never sent to the partner as such)."""

    ack_code: str  # AA / AE
    query_response_code: str  # OK / NF / AE / QE
    patient_id: str | None = None
    score: float = 0.0
    query: XcpdQuery | None = None
    error: str | None = None
    withheld: bool = False  # a match was answered NF because the patient has not consented


def _hints(query: XcpdQuery) -> list[str]:
    """Attributes that would let us resolve an ambiguous query (IHE XCPD "...Requested" codes)."""
    d = query.demographics
    hints = []
    if not d.gender:
        hints.append("LivingSubjectAdministrativeGenderRequested")
    if not d.addresses:
        hints.append("PatientAddressRequested")
    if not d.telecoms:
        hints.append("PatientTelecomRequested")
    return hints


def respond(
    index: PatientIndex,
    body: _Element,
    *,
    home_community_id: str,
    device_oid: str,
    consent: Callable[[str], bool] = lambda pid: True,
    require_birth_date: bool = True,
    record_correlation: bool = True,
    caller_community: str | None = None,
) -> tuple[_Element, XcpdOutcome]:
    """Answer one XCPD query.

    With ``record_correlation``, a match in "query and feed" mode (the initiator names its own
    patient id via authorOrPerformer) is remembered as a correlation for the initiator's community.
    ``caller_community`` is the community the caller authenticated as (its assertion's verified
    homeCommunityId): the correlation is recorded only when the body's sender names that same
    community, so a partner can never plant an id for another community (our initiating gateway
    would then send this patient's queries there, under that id).
    """
    common: dict[str, Any] = {"home_community_id": home_community_id, "our_device_oid": device_oid}
    try:
        query = parse_prpa_in201305(body)
    except XcpdRequestError as exc:
        el = build_prpa_in201306(exc.query, outcome="error", error=exc.reason, error_code=exc.code,
                                 detail_code=exc.detail_code, **common)
        return el, XcpdOutcome("AE", exc.code, query=exc.query, error=exc.reason)

    result = match(query.demographics, index, require_birth_date=require_birth_date)
    if result.outcome == "match" and result.patient is not None:
        pid = result.patient.patient_id
        if not consent(pid):
            return (build_prpa_in201306(query, outcome="none", **common),
                    XcpdOutcome("AA", "NF", query=query, withheld=True))
        sender = normalize_hcid(query.sender_home_community_id or "")
        if record_correlation and query.sender_home_community_id and (
                caller_community is None or normalize_hcid(caller_community) == sender):
            remote = query.initiator_patient_id
            if remote is not None and correlation_fits(sender, remote.extension, remote.root):
                index.save_correlation(pid, sender, remote.extension, remote.root)
        el = build_prpa_in201306(query, outcome="match", patient=result.patient, score=result.score, **common)
        return el, XcpdOutcome("AA", "OK", patient_id=pid, score=result.score, query=query)

    if result.outcome == "ambiguous":
        floor = max(CANDIDATE_THRESHOLD, result.score - CLOSE_MARGIN) - 1e-9
        contested = [p for p, s in result.candidates if s >= floor]
        if any(consent(p.patient_id) for p in contested):
            el = build_prpa_in201306(query, outcome="ambiguous", issue_codes=_hints(query), **common)
            return el, XcpdOutcome("AE", "AE", score=result.score, query=query, error="ambiguous match")
        return (build_prpa_in201306(query, outcome="none", **common),
                XcpdOutcome("AA", "NF", query=query, withheld=True))

    hints = ["LivingSubjectBirthTimeRequested"] if result.reason == "birth_date_required" else []
    el = build_prpa_in201306(query, outcome="none", issue_codes=hints, **common)
    return el, XcpdOutcome("AA", "NF", score=result.score, query=query)


def make_handler(
    index: PatientIndex,
    settings: Any,
    *,
    consent: Callable[[str], bool] = lambda pid: True,
    audit: Callable[[SoapRequest, XcpdOutcome], Any] | None = None,
    require_birth_date: bool = True,
):
    """The SOAP handler. ``settings`` needs ``home_community_id``; the device OID comes from
    ``settings.device_oid`` or ``settings.extra["device_oid"]``, else the home community OID."""
    home = settings.home_community_id
    extra = getattr(settings, "extra", None) or {}
    device = getattr(settings, "device_oid", None) or extra.get("device_oid") or home.removeprefix("urn:oid:")

    async def handle(req: SoapRequest) -> SoapResponse:
        principal = getattr(req, "principal", None)
        # no principal only under insecure_no_gateway_security: nobody to bind the sender to
        caller = (getattr(principal, "home_community_id", "") or "-") if principal is not None else None
        element, outcome = await blocking(respond, index, req.body, home_community_id=home, device_oid=device,
                                          consent=consent, require_birth_date=require_birth_date,
                                          caller_community=caller)
        if audit is not None:  # the match leaves only once its audit row is committed
            await audited(audit, req, outcome, what="ITI-55")
        return SoapResponse(action=RESPONSE_ACTION, body=element)

    return handle
