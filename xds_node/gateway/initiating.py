"""The initiating gateway: ask every partner community at once, merge what comes back.

* :meth:`InitiatingGateway.discover` sends XCPD (ITI-55) to every partner concurrently, re-checks
  each returned patient's demographics against ours (unless ``match_mode="trust"``) and stores
  the correlations (our patient <-> their id in their community).
* :meth:`InitiatingGateway.query` sends ITI-38 to every correlated community concurrently and
  splices the answers into one AdhocQueryResponse; every object keeps its ``home``.
* :meth:`InitiatingGateway.retrieve` sends ITI-39 grouped per community, in batches of the
  partner's ``retrieve_batch_size``; documents arrive spooled to disk.

Aggregation (ITI TF-2b 3.38.4.1.3 / 3.39): Success when every community answered, PartialSuccess
when some did not (or answered PartialSuccess), Failure when none did. Each failed community adds
one RegistryError whose ``location`` is its homeCommunityId: XDSUnavailableCommunity for a timeout,
a refused connection or a SOAP fault, or the partner's own errors when it answered Failure. A
partner answering XDSUnknownPatientId only does not know (or may not share) the patient: that is
an answer, not a failure of the whole. One partner's failure never fails the others: each call
is isolated and every exception becomes that partner's outcome.

Consent: a call that names one of our patients to partners (XCPD for our patient, ITI-38 keyed
by our patient id) reveals that patient, so it goes out only when :meth:`ConsentPolicy.decide
<xds_node.security.consent.ConsentPolicy.decide>` allows it for the requester's purpose of use, the
same decision the responding side makes. Otherwise nothing is sent: the result is a Failure whose
``refused`` says why, and the refusal is audited (``denied``). XCPD with demographics that our index
matches only ambiguously (or nearly) is refused unless every such candidate may be named. Queries
keyed by object ids and ITI-39 retrieves name a partner's own objects, not our patient, and are not
checked here (the patient query that found those ids was).

Everything here is async and network-agnostic: the :class:`~xds_node.gateway.outbound.OutboundClient`
takes an httpx transport, so tests drive it with ``httpx.MockTransport``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from lxml import etree
from lxml.etree import _Element

from xds_node.audit.events import AuditEvent
from xds_node.ebxml import rim, xdsb
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import RegistryError, StoredQuery
from xds_node.ebxml.query import PATIENT_PARAM, QUERIES
from xds_node.patients.index import correlation_fits
from xds_node.patients.matching import CANDIDATE_THRESHOLD, MATCH_THRESHOLD, score
from xds_node.patients.model import Demographics, Patient, parse_cx
from xds_node.security.consent import ConsentPolicy
from xds_node.security.saml import RequesterContext
from xds_node.security.trust import Partner, TrustStore, normalize_hcid
from xds_node.soap.client import SoapTransportError
from xds_node.soap.envelope import SoapRequest
from xds_node.soap.fault import SoapFault

from .outbound import OutboundClient, PartnerOptions, SpooledDocument, document_content, endpoint_url
from .xcpd import XcpdAnswer, add_requested, build_xcpd_query, read_xcpd_answer

__all__ = [
    "DiscoveryResult",
    "InitiatingGateway",
    "Match",
    "PartnerOutcome",
    "QueryResult",
    "RetrieveResult",
    "RetrievedDocument",
    "add_requested",
    "aggregate_status",
    "build_xcpd_query",
    "read_xcpd_answer",
]

log = logging.getLogger("xds_node.initiating")
E = v.ErrorCode
S = v.ResponseStatus
ITI55_ACTION = v.Action.ITI55

State = Literal["pending", "answered", "timeout", "failed"]
Progress = Callable[["PartnerOutcome"], None]


def aggregate_status(answered: int, failed: int, *, partial: bool = False) -> str:
    """Success when all answered, PartialSuccess when some failed (or one answered partially),
    Failure when none answered. No community to ask at all is an empty Success."""
    if answered == 0 and failed > 0:
        return S.FAILURE
    if failed or partial:
        return S.PARTIAL_SUCCESS
    return S.SUCCESS


@dataclass
class PartnerOutcome:
    """One community's part in a fan-out, for the progress display and the JSON output."""

    partner: str
    community: str
    state: State = "pending"
    seconds: float = 0.0
    calls: int = 0
    count: int = 0  # matches / objects / documents received
    detail: str = ""
    retry: str = ""  # XCPD: why a second query was sent (or why not), else empty

    def to_dict(self) -> dict[str, Any]:
        return {"partner": self.partner, "community": self.community, "state": self.state,
                "seconds": round(self.seconds, 3), "calls": self.calls, "count": self.count, "detail": self.detail,
                "retry": self.retry}


def _error_dict(e: RegistryError) -> dict[str, Any]:
    return {"code": e.code, "context": e.context, "location": e.location,
            "severity": e.severity.rsplit(":", 1)[-1]}


def _short(status: str) -> str:
    return status.rsplit(":", 1)[-1]


# --- results ------------------------------------------------------------------------------------
@dataclass
class Match:
    """A partner's patient for our query, and whether we trust it."""

    partner: str
    community: str
    remote_patient_id: str  # CX
    demographics: Demographics
    score: float
    trusted: bool
    stored: bool = False
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = self.demographics
        return {"partner": self.partner, "community": self.community, "remote_patient_id": self.remote_patient_id,
                "name": " ".join([*d.given, d.family or ""]).strip(), "birth_date": d.birth_date,
                "gender": d.gender, "score": round(self.score, 2), "trusted": self.trusted, "stored": self.stored,
                "reason": self.reason}


@dataclass
class DiscoveryResult:
    status: str
    local_patient_id: str | None
    matches: list[Match] = field(default_factory=list)
    errors: list[RegistryError] = field(default_factory=list)
    partners: list[PartnerOutcome] = field(default_factory=list)
    refused: str = ""  # why nothing was sent (consent), else empty

    def to_dict(self) -> dict[str, Any]:
        return {"status": _short(self.status), "local_patient_id": self.local_patient_id,
                "matches": [m.to_dict() for m in self.matches], "errors": [_error_dict(e) for e in self.errors],
                "partners": [p.to_dict() for p in self.partners], "refused": self.refused}


@dataclass
class QueryResult:
    status: str
    objects: list[_Element] = field(default_factory=list)
    errors: list[RegistryError] = field(default_factory=list)
    partners: list[PartnerOutcome] = field(default_factory=list)
    refused: str = ""  # why nothing was sent (consent), else empty

    def response_bytes(self) -> bytes:
        """One AdhocQueryResponse holding every partner's objects (each with its own ``home``)."""
        fragments = [etree.tostring(o, encoding="UTF-8", with_tail=False) for o in self.objects]
        return rim.adhoc_query_response_bytes(self.status, fragments=fragments, errors=self.errors)

    def documents(self) -> list[dict[str, Any]]:
        """A readable summary of the returned DocumentEntries."""
        return [_entry_summary(o) for o in self.objects if etree.QName(o).localname == "ExtrinsicObject"]

    def to_dict(self) -> dict[str, Any]:
        return {"status": _short(self.status), "documents": self.documents(),
                "object_count": len(self.objects), "errors": [_error_dict(e) for e in self.errors],
                "partners": [p.to_dict() for p in self.partners], "refused": self.refused}


@dataclass
class RetrievedDocument:
    home_community_id: str
    repository_unique_id: str
    document_unique_id: str
    mime_type: str
    path: Path | None = None
    data: bytes | None = None
    size: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"home": self.home_community_id, "repository_unique_id": self.repository_unique_id,
                "document_unique_id": self.document_unique_id, "mime_type": self.mime_type,
                "path": str(self.path) if self.path else None, "size": self.size}


@dataclass
class RetrieveResult:
    status: str
    documents: list[RetrievedDocument] = field(default_factory=list)
    errors: list[RegistryError] = field(default_factory=list)
    partners: list[PartnerOutcome] = field(default_factory=list)
    refused: str = ""  # why nothing was sent (consent), else empty

    def to_dict(self) -> dict[str, Any]:
        return {"status": _short(self.status), "documents": [d.to_dict() for d in self.documents],
                "errors": [_error_dict(e) for e in self.errors], "partners": [p.to_dict() for p in self.partners],
                "refused": self.refused}


_R = f"{{{v.RIM}}}"


def _entry_summary(o: _Element) -> dict[str, Any]:
    ids = {ei.get("identificationScheme"): ei.get("value") for ei in o.findall(_R + "ExternalIdentifier")}
    slots = {s.get("name"): [x.text or "" for x in s.iter(_R + "Value")] for s in o.findall(_R + "Slot")}
    title = o.find(f"{_R}Name/{_R}LocalizedString")
    type_code = next((c for c in o.findall(_R + "Classification")
                      if c.get("classificationScheme") == v.DOC_TYPE_CODE), None)
    type_name = type_code.find(f"{_R}Name/{_R}LocalizedString") if type_code is not None else None
    return {
        "home": o.get("home"),
        "entry_uuid": o.get("id"),
        "document_unique_id": ids.get(v.DOC_UNIQUE_ID),
        "patient_id": ids.get(v.DOC_PATIENT_ID),
        "repository_unique_id": (slots.get("repositoryUniqueId") or [None])[0],
        "title": title.get("value") if title is not None else None,
        "type": (type_name.get("value") if type_name is not None else None)
        or (type_code.get("nodeRepresentation") if type_code is not None else None),
        "creation_time": (slots.get("creationTime") or [None])[0],
        "mime_type": o.get("mimeType"),
        "size": (slots.get("size") or [None])[0],
    }


_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_file_name(uid: str, mime_type: str = "") -> str:
    ext = {"text/xml": ".xml", "application/xml": ".xml", "application/pdf": ".pdf",
           "text/plain": ".txt"}.get(mime_type.split(";")[0].strip().lower(), ".bin")
    return _SAFE.sub("_", uid)[:180] + ext


# --- the gateway --------------------------------------------------------------------------------
class InitiatingGateway:
    """Fan-out to partner communities. ``patients`` (a PatientIndex) holds the correlations;
    ``consent`` decides whether one of our patients may be named to partners (module docstring):
    it is required, so no gateway can be built that skips the check."""

    def __init__(self, client: OutboundClient, *, trust: TrustStore, home_community_id: str,
                 consent: ConsentPolicy, patients: Any = None, audit: Any = None,
                 match_mode: str = "verify") -> None:
        if match_mode not in ("verify", "trust"):
            raise ValueError("match_mode must be 'verify' or 'trust'")
        if consent is None:
            raise ValueError("an initiating gateway needs a consent policy")
        self.consent = consent
        self.client = client
        self.trust = trust
        self.home = normalize_hcid(home_community_id)
        self.patients = patients
        self.audit = audit
        self.match_mode = match_mode

    # -- helpers --
    def partners_with(self, kind: str) -> list[Partner]:
        """Partners (other than ourselves) with an endpoint for ``kind``."""
        return [p for p in self.trust.partners()
                if p.home_community_id != self.home and endpoint_url(p, kind)]

    async def _record(self, events: list[AuditEvent]) -> None:
        """One row per partner call, all in the worker's group commit (a fan-out to 200 partners is
        one transaction, not 200). The calls have been made: an audit failure is logged as an error
        and must not lose the partners' answers."""
        if self.audit is None or not events:
            return
        results = await asyncio.gather(*(self.audit.record_async(ev) for ev in events), return_exceptions=True)
        for ev, result in zip(events, results, strict=True):
            if isinstance(result, Exception):
                log.error("could not audit an outbound %s", ev.transaction, exc_info=result)

    def _event(self, ctx: RequesterContext | None, partner: Partner, transaction: str, outcome: str, *,
               url: str, reason: str = "", patient_id: str | None = None, documents: Sequence[str] = (),
               query_id: str | None = None) -> AuditEvent:
        return AuditEvent.from_principal(
            ctx, transaction=transaction, direction="outbound", outcome=outcome,  # type: ignore[arg-type]
            partner_community=partner.home_community_id, partner_organization=partner.name,
            partner_organization_id="", patient_id=patient_id, document_ids=list(documents),
            query_id=query_id, endpoint=url, reason=reason[:500])

    @staticmethod
    def _failure(exc: BaseException, outcome: PartnerOutcome, community: str) -> RegistryError:
        """What a failed call becomes: the outcome's state and one XDSUnavailableCommunity."""
        if isinstance(exc, SoapTransportError):
            outcome.state = "timeout" if exc.timeout else "failed"
            what = "did not answer in time" if exc.timeout else (
                f"answered HTTP {exc.status}" if exc.status else "could not be reached")
        elif isinstance(exc, SoapFault):
            outcome.state = "failed"
            what = f"answered with a SOAP fault: {exc.reason}"[:300]
        else:
            outcome.state = "failed"
            what = f"answered something unusable ({type(exc).__name__})"
            log.warning("partner %s: %r", outcome.partner, exc)
        outcome.detail = what
        return RegistryError(E.UNAVAILABLE_COMMUNITY, f"Community {community} {what}", location=community)

    def _refusal(self, patient_ids: Iterable[str], ctx: RequesterContext) -> str:
        """Why one of ``patient_ids`` (our patients) may not be named to partners; "" when all may."""
        purpose = ctx.purpose_of_use[0] if ctx.purpose_of_use else None
        for pid in dict.fromkeys(patient_ids):
            decision = self.consent.decide(pid, purpose=purpose)
            if not decision:
                return (f"patient {pid} may not be named to partner communities: {decision.reason}; "
                        "nothing was sent")
        return ""

    async def _refuse(self, ctx: RequesterContext, transaction: str, patient_id: str | None, reason: str,
                      query_id: str | None = None) -> RegistryError:
        """Audit an outbound call we did not make, and the error that says why."""
        await self._record([AuditEvent.from_principal(
            ctx, transaction=transaction, direction="outbound", outcome="denied", patient_id=patient_id,
            query_id=query_id, reason=reason[:500], partner_community="", partner_organization="",
            partner_organization_id="")])
        return RegistryError(E.REGISTRY_ERROR, reason[:500])

    async def _intent(self, ctx: RequesterContext, transaction: str, patient_id: str | None,
                      partners: Sequence[Partner], query_id: str | None = None) -> RegistryError | None:
        """Commit the audit row of an outbound disclosure *before* it is sent (fail closed): naming our
        patient to partners is itself the disclosure. An error when the audit store cannot write."""
        if self.audit is None or not partners:
            return None
        event = AuditEvent.from_principal(
            ctx, transaction=transaction, direction="outbound", outcome="attempt", patient_id=patient_id,
            query_id=query_id, reason="sending to " + ", ".join(sorted({p.name for p in partners}))[:900],
            partner_community="", partner_organization="", partner_organization_id="")
        try:
            await self.audit.record_async(event)  # the worker's group commit; returns once committed
        except Exception:
            log.error("audit trail unavailable: outbound %s for %s not sent", transaction, patient_id, exc_info=True)
            return RegistryError(E.REGISTRY_ERROR, "the audit trail cannot be written: nothing was sent")
        return None

    async def _fan_out(self, jobs: Iterable[Any]) -> None:
        # gather with return_exceptions=False is fine: every job catches its own exceptions
        await asyncio.gather(*jobs)

    # -- XCPD --
    async def discover(self, demographics: Demographics, ctx: RequesterContext, *,
                       local_patient_id: str | None = None, progress: Progress | None = None) -> DiscoveryResult:
        """ITI-55 to every partner; trusted matches become stored correlations of our patient.

        Refused (nothing sent) unless every patient of ours the query names may be named.

        A partner answering AE with "...Requested" codes (ITI TF-2b 3.55.4.4.2) is asked once more,
        with those attributes added from our stored demographics of the patient when the first
        query lacked them; with nothing to add it is not asked again (the same query would get the
        same answer). Never more than one retry per partner; ``PartnerOutcome.retry`` and the
        audit trail say why a second query went out (or did not)."""
        named = [local_patient_id] if local_patient_id else []
        if local_patient_id is None and self.patients is not None:
            local_patient_id, named = await asyncio.to_thread(self._local_match, demographics)
        refusal = await asyncio.to_thread(self._refusal, named, ctx)
        if refusal:
            error = await self._refuse(ctx, "ITI-55", local_patient_id or (named[0] if named else None), refusal)
            return DiscoveryResult(S.FAILURE, local_patient_id, errors=[error], refused=refusal)
        local_ii = parse_cx(local_patient_id) if local_patient_id else None
        result = DiscoveryResult(S.SUCCESS, local_patient_id)
        events: list[AuditEvent] = []
        answered = failed = 0
        held: Demographics | None = None  # what we know of our patient: the source of a retry's additions
        if local_patient_id and self.patients is not None:
            stored = await asyncio.to_thread(self.patients.get, local_patient_id)
            held = stored.demographics if stored is not None else None

        async def ask(partner: Partner, url: str, demo: Demographics, out: PartnerOutcome) -> XcpdAnswer:
            body = build_xcpd_query(demo, our_community=self.home, partner_community=partner.home_community_id,
                                    local_patient_id=local_ii)
            out.calls += 1
            reply = await self.client.call(partner, url, ITI55_ACTION, body, ctx)
            return read_xcpd_answer(reply.body)

        async def one(partner: Partner) -> None:
            nonlocal answered, failed
            url = endpoint_url(partner, "xcpd") or ""
            out = PartnerOutcome(partner.name, partner.home_community_id)
            result.partners.append(out)
            if progress:
                progress(out)
            started = time.perf_counter()
            sent = demographics
            try:
                answer = await ask(partner, url, sent, out)
                if "AE" in (answer.ack_code, answer.response_code) and answer.requested:
                    richer, added = add_requested(sent, held, answer.requested)
                    asked = ", ".join(answer.requested)
                    if added:
                        out.retry = f"second query with {', '.join(added)}: the partner requested {asked}"
                        events.append(self._event(
                            ctx, partner, "ITI-55", "failure", url=url, patient_id=local_patient_id,
                            reason=f"XCPD {answer.ack_code}/{answer.response_code}, requested {asked}; "
                                   f"asking again with {', '.join(added)}"))
                        sent = richer
                        answer = await ask(partner, url, sent, out)
                    else:
                        out.retry = f"not asked again: the partner requested {asked}, we hold nothing more to send"
            except Exception as exc:
                result.errors.append(self._failure(exc, out, partner.home_community_id))
                failed += 1
                events.append(self._event(ctx, partner, "ITI-55", "failure", url=url, reason=out.detail,
                                          patient_id=local_patient_id))
            else:
                if answer.response_code in ("OK", "NF"):
                    answered += 1
                    out.state = "answered"
                    for patient in answer.patients:  # judged against what this partner was asked
                        result.matches.append(self._judge(partner, patient, replace(sent, ids=[])))
                    out.count = len(answer.patients)
                    out.detail = "match" if answer.patients else "not found"
                    events.append(self._event(ctx, partner, "ITI-55", "success", url=url, reason=out.retry,
                                              patient_id=local_patient_id))
                else:
                    failed += 1
                    out.state = "failed"
                    out.detail = f"XCPD {answer.ack_code}/{answer.response_code}" + (
                        f": {answer.detail}" if answer.detail else "")
                    if answer.requested:
                        out.detail += f" (requested {', '.join(answer.requested)})"
                    result.errors.append(RegistryError(E.REGISTRY_ERROR, f"Community {partner.home_community_id} "
                                                       f"answered {out.detail}", location=partner.home_community_id))
                    events.append(self._event(ctx, partner, "ITI-55", "failure", url=url, patient_id=local_patient_id,
                                              reason="; ".join(x for x in (out.detail, out.retry) if x)))
            out.seconds = time.perf_counter() - started
            if progress:
                progress(out)

        partners = self.partners_with("xcpd")
        unaudited = await self._intent(ctx, "ITI-55", local_patient_id, partners)
        if unaudited is not None:
            return DiscoveryResult(S.FAILURE, local_patient_id, errors=[unaudited], refused=unaudited.context)
        await self._fan_out(one(p) for p in partners)
        result.status = aggregate_status(answered, failed)
        await self._store_correlations(result)
        await self._record(events)
        return result

    def _local_match(self, demographics: Demographics) -> tuple[str | None, list[str]]:
        """(our patient these demographics match, every patient of ours they could name).

        Without a sure match, each candidate scoring at least CANDIDATE_THRESHOLD could be the
        person the query describes, so each of them must be allowed to be named."""
        from xds_node.patients.matching import match

        m = match(demographics, self.patients)
        if m.outcome == "match" and m.patient is not None:
            return m.patient.patient_id, [m.patient.patient_id]
        return None, [p.patient_id for p, s in m.candidates if s >= CANDIDATE_THRESHOLD]

    def _judge(self, partner: Partner, patient: Patient, query_demo: Demographics) -> Match:
        """Re-check the partner's patient against what we asked for, on demographics alone."""
        candidate = Patient(patient.patient_id, replace(patient.demographics, ids=[]))
        s = score(query_demo, candidate)
        trusted = self.match_mode == "trust" or s >= MATCH_THRESHOLD
        reason = "" if s >= MATCH_THRESHOLD else (
            "accepted without re-check (trust mode)" if trusted else
            f"demographics do not match ours (score {s:.2f} < {MATCH_THRESHOLD})")
        return Match(partner.name, partner.home_community_id, patient.patient_id, patient.demographics, s,
                     trusted, reason=reason)

    async def _store_correlations(self, result: DiscoveryResult) -> None:
        if self.patients is None:
            for m in result.matches:
                m.reason = m.reason or "not stored: no patient index"
            return
        per_community: dict[str, list[Match]] = {}
        for m in result.matches:
            if m.trusted:
                per_community.setdefault(m.community, []).append(m)
        for community, found in per_community.items():
            if len(found) > 1:
                for m in found:
                    m.reason = "not stored: the community returned several patients"
                continue
            m = found[0]
            if not result.local_patient_id:
                m.reason = m.reason or "not stored: no local patient for these demographics"
                continue
            remote = parse_cx(m.remote_patient_id)
            if remote is None or not correlation_fits(community, remote.extension, remote.root):
                m.reason = "not stored: unusable patient id"
                continue
            await asyncio.to_thread(self.patients.save_correlation, result.local_patient_id, community,
                                    remote.extension, remote.root)
            m.stored = True

    # -- ITI-38 --
    def correlated(self, local_patient_id: str) -> list[tuple[Partner | None, str, str]]:
        """(partner or None, community, remote CX) for each stored correlation of our patient."""
        if self.patients is None:
            return []
        return [(self.trust.partner_for_community(c.community_id), normalize_hcid(c.community_id), c.remote_cx)
                for c in self.patients.correlations_for(local_patient_id)]

    async def query(self, local_patient_id: str | None, ctx: RequesterContext, *,
                    template: StoredQuery | None = None, progress: Progress | None = None) -> QueryResult:
        """ITI-38 to every community correlated with our patient (or, for a query keyed by object id,
        to the one community named in ``template.home``), merged."""
        template = template or StoredQuery(
            query_id=v.StoredQueryId.FIND_DOCUMENTS,
            slots={"$XDSDocumentEntryStatus": [["('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved')"]]})
        spec = QUERIES.get(template.query_id)
        param = PATIENT_PARAM.get(template.query_id)
        targets: list[tuple[Partner, StoredQuery]] = []
        result = QueryResult(S.SUCCESS)
        if param is not None:
            if not local_patient_id:
                raise ValueError("a patient id is required for this query")
            refusal = await asyncio.to_thread(self._refusal, [local_patient_id], ctx)
            if refusal:
                error = await self._refuse(ctx, "ITI-38", local_patient_id, refusal, template.query_id)
                return QueryResult(S.FAILURE, errors=[error], refused=refusal)
            for partner, community, remote in await asyncio.to_thread(self.correlated, local_patient_id):
                if partner is None or not endpoint_url(partner, "xca_query"):
                    result.errors.append(RegistryError(E.UNKNOWN_COMMUNITY, f"Community {community} is correlated "
                                                       "with the patient but is not a configured partner",
                                                       location=community, severity=v.SEVERITY_WARNING))
                    continue
                slots = dict(template.slots)
                slots[param] = [[f"'{remote}'"]]
                targets.append((partner, replace(template, slots=slots, home=None)))
        elif spec is not None or template.home:
            if not template.home:
                result.status = S.FAILURE
                result.errors.append(RegistryError(E.MISSING_HOME_COMMUNITY_ID,
                                                   "A query not keyed by patient id needs homeCommunityId"))
                return result
            partner = self.trust.partner_for_community(template.home)
            if partner is None or not endpoint_url(partner, "xca_query"):
                result.status = S.FAILURE
                result.errors.append(RegistryError(E.UNKNOWN_COMMUNITY,
                                                   f"homeCommunityId {template.home} is not a known partner"))
                return result
            targets.append((partner, template))
        else:
            result.status = S.FAILURE
            result.errors.append(RegistryError(E.UNKNOWN_STORED_QUERY, f"Unknown stored query {template.query_id}"))
            return result

        events: list[AuditEvent] = []
        answered = failed = 0
        partial = False

        async def one(partner: Partner, query: StoredQuery) -> None:
            nonlocal answered, failed, partial
            url = endpoint_url(partner, "xca_query") or ""
            community = partner.home_community_id
            out = PartnerOutcome(partner.name, community)
            result.partners.append(out)
            if progress:
                progress(out)
            started = time.perf_counter()
            remote_pid = (query.slots.get(param or "") or [[None]])[0][0] if param else None
            remote_pid = remote_pid.strip("'") if remote_pid else None
            outcome, reason = "failure", ""
            try:
                out.calls += 1
                reply = await self.client.call(partner, url, v.Action.ITI38, rim.write_adhoc_query_request(query), ctx)
                status, objects, errors = _read_query_answer(reply, community, partner)
            except Exception as exc:
                result.errors.append(self._failure(exc, out, community))
                failed += 1
                reason = out.detail
            else:
                real = [e for e in errors if e.code != E.UNKNOWN_PATIENT_ID]
                out.count = len(objects)
                result.objects.extend(objects)
                if status == S.FAILURE and not real:
                    answered += 1
                    out.state = "answered"
                    out.detail = "patient not known there"
                    outcome = "success"
                elif status == S.FAILURE:
                    failed += 1
                    out.state = "failed"
                    out.detail = ", ".join(sorted({e.code for e in real}))
                    result.errors.extend(real)
                    reason = out.detail
                else:
                    answered += 1
                    out.state = "answered"
                    out.detail = f"{len(objects)} object(s)"
                    result.errors.extend(real)
                    outcome = "success"
                    if status == S.PARTIAL_SUCCESS or any(e.is_error for e in real):
                        partial = True
                        outcome = "partial"
            out.seconds = time.perf_counter() - started
            events.append(self._event(ctx, partner, "ITI-38", outcome, url=url, reason=reason,  # type: ignore[arg-type]
                                      patient_id=remote_pid, query_id=query.query_id))
            if progress:
                progress(out)

        if param is not None:  # keyed by our patient: naming them to partners is the disclosure
            unaudited = await self._intent(ctx, "ITI-38", local_patient_id, [p for p, _ in targets],
                                           template.query_id)
            if unaudited is not None:
                return QueryResult(S.FAILURE, errors=[unaudited], refused=unaudited.context)
        await self._fan_out(one(p, q) for p, q in targets)
        result.status = aggregate_status(answered, failed, partial=partial)
        await self._record(events)
        return result

    # -- ITI-39 --
    async def retrieve(self, refs: Sequence[xdsb.DocumentRequest], ctx: RequesterContext, *,
                       dest: Path | None = None, spool_dir: Path | None = None,
                       progress: Progress | None = None) -> RetrieveResult:
        """ITI-39 per community in batches of the partner's ``retrieve_batch_size``.

        With ``dest`` each document is moved (or written) to ``dest/<uniqueId>.<ext>``; otherwise
        large documents stay in spool files whose paths the result names (the caller owns them).
        """
        result = RetrieveResult(S.SUCCESS)
        groups: dict[str, list[xdsb.DocumentRequest]] = {}
        bad = 0
        for ref in refs:
            if not ref.home_community_id:
                result.errors.append(RegistryError(E.MISSING_HOME_COMMUNITY_ID,
                                                   f"DocumentRequest {ref.document_unique_id} has no homeCommunityId"))
                bad += 1
                continue
            partner = self.trust.partner_for_community(ref.home_community_id)
            if partner is None or not endpoint_url(partner, "xca_retrieve"):
                result.errors.append(RegistryError(E.UNKNOWN_COMMUNITY, f"homeCommunityId {ref.home_community_id} "
                                                   f"of {ref.document_unique_id} is not a known partner",
                                                   location=ref.home_community_id))
                bad += 1
                continue
            groups.setdefault(partner.home_community_id, []).append(ref)
        if dest is not None:
            dest.mkdir(parents=True, exist_ok=True)
        spool = spool_dir or (dest / ".xds-spool" if dest is not None else None)
        events: list[AuditEvent] = []
        failed_communities: set[str] = set()

        async def batch(partner: Partner, out: PartnerOutcome, chunk: list[xdsb.DocumentRequest]) -> None:
            url = endpoint_url(partner, "xca_retrieve") or ""
            community = partner.home_community_id
            out.calls += 1
            ids = [r.document_unique_id for r in chunk]
            reply = None
            try:
                reply = await self.client.call(partner, url, v.Action.ITI39, xdsb.write_retrieve_request(chunk), ctx,
                                               mtom=True, spool_dir=spool)
                _, errors, docs = _read_retrieve_answer(reply, community, partner)
            except Exception as exc:
                if reply is not None:
                    _drop_unused(reply, set())
                err = self._failure(exc, out, community)
                if community not in failed_communities:  # one error per failed community
                    failed_communities.add(community)
                    result.errors.append(err)
                events.append(self._event(ctx, partner, "ITI-39", "failure", url=url, reason=out.detail,
                                          documents=ids))
                return
            wanted = set(ids)
            got: list[str] = []
            for doc, content in docs:
                if doc.document_unique_id not in wanted:
                    _discard(content)
                    continue
                wanted.discard(doc.document_unique_id)
                if dest is not None:
                    target = dest / safe_file_name(doc.document_unique_id, doc.mime_type)
                    if content.path is not None:
                        os.replace(content.path, target)
                    else:
                        await asyncio.to_thread(target.write_bytes, content.data or b"")
                    doc.path = target
                else:
                    doc.path, doc.data = content.path, content.data
                doc.size = content.size
                result.documents.append(doc)
                got.append(doc.document_unique_id)
            _drop_unused(reply, {d.path for d in result.documents if d.path is not None})
            result.errors.extend(errors)
            out.count += len(got)
            outcome = "success" if not wanted else ("partial" if got else "failure")
            events.append(self._event(ctx, partner, "ITI-39", outcome, url=url,  # type: ignore[arg-type]
                                      reason=", ".join(sorted({e.code for e in errors})), documents=got))

        async def community_job(community: str, chunk_refs: list[xdsb.DocumentRequest]) -> None:
            partner = self.trust.partner_for_community(community)
            assert partner is not None
            options = PartnerOptions.of(partner)
            out = PartnerOutcome(partner.name, community)
            result.partners.append(out)
            if progress:
                progress(out)
            started = time.perf_counter()
            size = options.retrieve_batch_size
            await asyncio.gather(*(batch(partner, out, chunk_refs[i:i + size])
                                   for i in range(0, len(chunk_refs), size)))
            if out.state == "pending":
                out.state = "answered"
                out.detail = f"{out.count} of {len(chunk_refs)} document(s)"
            out.seconds = time.perf_counter() - started
            if progress:
                progress(out)

        await self._fan_out(community_job(c, rs) for c, rs in groups.items())
        if spool is not None and spool_dir is None:
            with contextlib.suppress(OSError):
                spool.rmdir()  # only when empty: everything was moved to dest
        n_ok = len(result.documents)
        total = len(refs)
        if total and n_ok == total:
            result.status = S.SUCCESS
        elif n_ok:
            result.status = S.PARTIAL_SUCCESS
        else:
            result.status = S.FAILURE if (total or bad) else S.SUCCESS
        await self._record(events)
        return result


def _drop_unused(reply: SoapRequest, kept: set[Path]) -> None:
    """Remove spooled parts of ``reply`` that no returned document took over."""
    for att in reply.attachments.values():
        if att.path is not None and Path(att.path) not in kept:
            Path(att.path).unlink(missing_ok=True)


def _discard(content: SpooledDocument) -> None:
    if content.path is not None:
        content.path.unlink(missing_ok=True)


def _fix_errors(errors: list[RegistryError], community: str) -> list[RegistryError]:
    for e in errors:
        e.location = community  # XCA: the responder's community is the location
    return errors


def _own_community(claimed: str | None, community: str, partner: Partner | None) -> str:
    """Where an answered object comes from: the community the partner names, when it is one of that
    partner's member communities; otherwise the partner's own. A partner cannot label its answer
    as another partner's (our consumer would trust it as that community's, and retrieve from there)."""
    claimed = (claimed or "").strip()
    if claimed and (normalize_hcid(claimed) == normalize_hcid(community) or
                    (partner is not None and partner.accepts_community(claimed))):
        return claimed
    return community


def _read_query_answer(reply: SoapRequest, community: str,
                       partner: Partner | None = None) -> tuple[str, list[_Element], list[RegistryError]]:
    body = reply.body
    if body.tag != f"{{{v.QUERY}}}AdhocQueryResponse":
        raise ValueError(f"expected AdhocQueryResponse, got {etree.QName(body).localname}")
    resp = rim.read_registry_response(body)
    lst = body.find(_R + "RegistryObjectList")
    objects = [o for o in lst if isinstance(o.tag, str)] if lst is not None else []
    for o in objects:  # XCA requires home; a partner that forgets it, or names another's, is its own
        o.set("home", _own_community(o.get("home"), community, partner))
    return resp.status, objects, _fix_errors(resp.errors, community)


_X = f"{{{v.XDSB}}}"


def _read_retrieve_answer(reply: SoapRequest, community: str, partner: Partner | None = None
                          ) -> tuple[str, list[RegistryError], list[tuple[RetrievedDocument, SpooledDocument]]]:
    body = reply.body
    if body.tag != _X + "RetrieveDocumentSetResponse":
        raise ValueError(f"expected RetrieveDocumentSetResponse, got {etree.QName(body).localname}")
    rr = body.find(f"{{{v.RS}}}RegistryResponse")
    resp = rim.read_registry_response(rr) if rr is not None else None
    docs = []
    for dr in body.iterchildren(_X + "DocumentResponse"):
        el = dr.find(_X + "Document")
        if el is None:
            continue
        doc = RetrievedDocument(
            home_community_id=_own_community(dr.findtext(_X + "HomeCommunityId"), community, partner),
            repository_unique_id=(dr.findtext(_X + "RepositoryUniqueId") or "").strip(),
            document_unique_id=(dr.findtext(_X + "DocumentUniqueId") or "").strip(),
            mime_type=(dr.findtext(_X + "mimeType") or "application/octet-stream").strip(),
        )
        docs.append((doc, document_content(reply, el)))
    return (resp.status if resp else S.SUCCESS), _fix_errors(resp.errors if resp else [], community), docs
