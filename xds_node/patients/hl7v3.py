"""HL7 V3 for XCPD: read PRPA_IN201305UV02 (the query), write PRPA_IN201306UV02 (the answer).

Pure functions over lxml elements. The response follows IHE ITI TF-2b 3.55.4.4 and validates
against the HL7 V3 NE2008 multicache schema:

==========  ===============  =================  =============================================
outcome     acknowledgement  queryResponseCode  content
==========  ===============  =================  =============================================
match       AA               OK                 one subject/registrationEvent with our patient
none        AA               NF                 no subject (optionally "...Requested" hints)
ambiguous   AE               AE                 reasonOf/detectedIssueEvent, AnswerNotAvailable
error       AE               AE (or QE)         acknowledgementDetail with the reason
==========  ===============  =================  =============================================
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from lxml import etree
from lxml.etree import _Element

from xds_node.patients.index import read_addr, read_name
from xds_node.patients.model import Demographics, Patient, PatientId, normalize_date, normalize_gender, parse_cx

__all__ = [
    "HL7",
    "II",
    "INTERACTION_ROOT",
    "XcpdQuery",
    "XcpdRequestError",
    "build_prpa_in201306",
    "parse_prpa_in201305",
    "read_issue_codes",
]

HL7 = "urn:hl7-org:v3"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
INTERACTION_ROOT = "2.16.840.1.113883.1.6"
#: IHE XCPD code system for detectedIssueManagement codes (AnswerNotAvailable, ...Requested).
XCPD_ISSUE_SYSTEM = "1.3.6.1.4.1.19376.1.2.27.1"
#: IHE XCPD code system of the custodian's Health Data Locator capability code.
XCPD_HDL_SYSTEM = "1.3.6.1.4.1.19376.1.2.27.2"
ACT_CODE_SYSTEM = "2.16.840.1.113883.5.4"

Outcome = Literal["match", "none", "ambiguous", "error"]

#: "...Requested" detectedIssueManagement codes (ITI TF-2b 3.55.4.4.2): the attribute a responding
#: gateway needs to resolve the query, as the :class:`Demographics` field that carries it (None: a
#: field we do not hold). LivingSubjectBirthTimeRequested is ours (our responder's NF hint).
REQUESTED_ATTRIBUTE: dict[str, str | None] = {
    "LivingSubjectAdministrativeGenderRequested": "gender",
    "PatientAddressRequested": "addresses",
    "PatientTelecomRequested": "telecoms",
    "LivingSubjectBirthPlaceNameRequested": None,
    "LivingSubjectBirthPlaceAddressRequested": None,
    "LivingSubjectBirthTimeRequested": "birth_date",
}


def _q(path: str) -> str:
    return "/".join(f"{{{HL7}}}{p}" for p in path.split("/"))


@dataclass(frozen=True)
class II:
    """An HL7 V3 instance identifier."""

    root: str
    extension: str | None = None


@dataclass
class XcpdQuery:
    """What we need from a PRPA_IN201305UV02, plus the queryByParameter to echo back."""

    message_id: II | None = None
    sender_oid: str | None = None
    receiver_oid: str | None = None
    sender_home_community_id: str | None = None  # sender/device/asAgent/representedOrganization/id
    query_id: II | None = None
    demographics: Demographics = field(default_factory=Demographics)
    living_subject_ids: list[PatientId] = field(default_factory=list)
    author_root: str | None = None  # authorOrPerformer/assignedDevice/id: the initiator's own id domain
    max_results: int | None = None  # queryByParameter/initialQuantity
    minimum_degree_match: int | None = None
    processing_code: str | None = None
    response_priority: str | None = None  # I (immediate) or D (deferred)
    query_by_parameter: _Element | None = field(default=None, repr=False)

    @property
    def initiator_patient_id(self) -> PatientId | None:
        """The livingSubjectId in the initiator's own domain (XCPD "query and feed" mode)."""
        if not self.author_root:
            return None
        return next((i for i in self.living_subject_ids if i.root == self.author_root), None)


class XcpdRequestError(ValueError):
    """A request we cannot run; answered with an AE acknowledgement, never a SOAP fault."""

    def __init__(self, reason: str, *, query: XcpdQuery | None = None, code: str = "AE",
                 detail_code: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.query = query or XcpdQuery()
        self.code = code  # queryResponseCode: AE (application error) or QE (query parameter error)
        self.detail_code = detail_code  # HL7 AcknowledgementDetailCode, e.g. NS250


# --- parsing -------------------------------------------------------------------------------------


def _ii(el: _Element | None) -> II | None:
    if el is None or not (el.get("root") or "").strip():
        return None
    ext = (el.get("extension") or "").strip()
    return II(el.get("root").strip(), ext or None)


def _attr(el: _Element | None, name: str) -> str | None:
    if el is None:
        return None
    v = (el.get(name) or "").strip()
    return v or None


def _int(el: _Element | None) -> int | None:
    v = _attr(el, "value")
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


#: Most values one XCPD parameter (ids, names, addresses, telecoms) may carry. A real query names a
#: person with a handful; thousands of ids became one SQL expression SQLite refuses (a 500), and
#: thousands of names cost seconds of matching on the event loop.
MAX_PARAMETER_VALUES = 50


def parse_prpa_in201305(el: _Element) -> XcpdQuery:
    """Read an XCPD query; raise :class:`XcpdRequestError` when it cannot be answered."""
    if el.tag != _q("PRPA_IN201305UV02"):
        raise XcpdRequestError(f"Expected PRPA_IN201305UV02, got {etree.QName(el).localname}",
                               detail_code="NS200")
    q = XcpdQuery(
        message_id=_ii(el.find(_q("id"))),
        sender_oid=_attr(el.find(_q("sender/device/id")), "root"),
        receiver_oid=_attr(el.find(_q("receiver/device/id")), "root"),
        sender_home_community_id=_attr(el.find(_q("sender/device/asAgent/representedOrganization/id")), "root"),
        processing_code=_attr(el.find(_q("processingCode")), "code"),
    )
    if q.message_id is None:
        raise XcpdRequestError("The message has no id", query=q)
    cap = el.find(_q("controlActProcess"))
    if cap is None:
        raise XcpdRequestError("controlActProcess is missing", query=q)
    q.author_root = _attr(cap.find(_q("authorOrPerformer/assignedDevice/id")), "root")
    qbp = cap.find(_q("queryByParameter"))
    if qbp is None:
        raise XcpdRequestError("controlActProcess/queryByParameter is missing", query=q)
    q.query_id = _ii(qbp.find(_q("queryId")))
    q.response_priority = _attr(qbp.find(_q("responsePriorityCode")), "code")
    q.max_results = _int(qbp.find(_q("initialQuantity")))  # informational: we return at most one subject
    q.minimum_degree_match = _int(qbp.find(_q("matchCriterionList/minimumDegreeMatch/value")))
    params = qbp.find(_q("parameterList"))
    if params is None:
        raise XcpdRequestError("queryByParameter/parameterList is missing", query=q, code="QE")
    q.query_by_parameter = qbp  # echoed in the answer; only once it is complete enough to be valid
    if q.response_priority == "D":
        raise XcpdRequestError("The Deferred Response Option is not supported", query=q, detail_code="NS250")

    for what in ("livingSubjectId", "livingSubjectName", "patientAddress", "patientTelecom"):
        n = len(params.findall(_q(f"{what}/value")))
        if n > MAX_PARAMETER_VALUES:  # each costs a lookup or a comparison: a huge list is an attack
            raise XcpdRequestError(f"parameterList has {n} {what} values; at most {MAX_PARAMETER_VALUES} "
                                   "are accepted", query=q, code="QE")
    d = q.demographics
    for v in params.findall(_q("livingSubjectId/value")):
        root, ext = _attr(v, "root"), _attr(v, "extension")
        if root and ext:
            q.living_subject_ids.append(PatientId(ext, root))
    d.ids = list(q.living_subject_ids)
    d.gender = normalize_gender(_attr(params.find(_q("livingSubjectAdministrativeGender/value")), "code"))
    d.birth_date = normalize_date(_attr(params.find(_q("livingSubjectBirthTime/value")), "value"))
    for name in params.findall(_q("livingSubjectName/value")):
        given, family = read_name(name)
        if family and not d.family:
            d.family = family
        d.given.extend(g for g in dict.fromkeys(given) if g not in d.given)
        if len(d.given) > MAX_PARAMETER_VALUES:
            raise XcpdRequestError(f"livingSubjectName has more than {MAX_PARAMETER_VALUES} given names",
                                   query=q, code="QE")
    mmn = params.find(_q("mothersMaidenName/value"))
    if mmn is not None:
        d.mothers_maiden_name = read_name(mmn)[1]
    for addr in params.findall(_q("patientAddress/value")):
        a = read_addr(addr)
        if not a.is_empty():
            d.addresses.append(a)
    for tel in params.findall(_q("patientTelecom/value")):
        if v := _attr(tel, "value"):
            d.telecoms.append(v)
    if not (d.ids or d.family or d.given or d.birth_date):
        raise XcpdRequestError("parameterList has neither livingSubjectId nor livingSubjectName nor birth time",
                               query=q, code="QE")
    return q


def read_issue_codes(el: _Element) -> list[str]:
    """The detectedIssueManagement codes of a PRPA_IN201306UV02 (AnswerNotAvailable, "...Requested"),
    in order, without repeats. A code naming another code system is not XCPD's and is skipped."""
    codes: list[str] = []
    for code in el.iterfind(_q("controlActProcess/reasonOf/detectedIssueEvent/mitigatedBy/"
                                "detectedIssueManagement/code")):
        value = _attr(code, "code")
        system = _attr(code, "codeSystem")
        if value and system in (None, XCPD_ISSUE_SYSTEM) and value not in codes:
            codes.append(value)
    return codes


# --- writing -------------------------------------------------------------------------------------


def hl7_child(parent: _Element, path: str, **attrs: str | None) -> _Element:
    """A new HL7 v3 child element with the given attributes (None ones left out)."""
    el = etree.SubElement(parent, f"{{{HL7}}}{path}")
    for k, v in attrs.items():
        if v is not None:
            el.set(k, v)
    return el


_sub = hl7_child


def _id(parent: _Element, tag: str, ii: II | None) -> _Element:
    if ii is None:
        return _sub(parent, tag, nullFlavor="UNK")
    return _sub(parent, tag, root=ii.root, extension=ii.extension)


def _device(parent: _Element, tag: str, type_code: str, device_oid: str | None, org_oid: str | None) -> None:
    party = _sub(parent, tag, typeCode=type_code)
    dev = _sub(party, "device", classCode="DEV", determinerCode="INSTANCE")
    _id(dev, "id", II(device_oid) if device_oid else None)
    if org_oid:
        org = _sub(_sub(dev, "asAgent", classCode="AGNT"), "representedOrganization", classCode="ORG",
                   determinerCode="INSTANCE")
        _sub(org, "id", root=org_oid)


def _text(parent: _Element, tag: str, value: str) -> _Element:
    el = _sub(parent, tag)
    el.text = value
    return el


def _person(parent: _Element, demo: Demographics) -> None:
    person = _sub(parent, "patientPerson", classCode="PSN", determinerCode="INSTANCE")
    if demo.given or demo.family:
        name = _sub(person, "name")
        for g in demo.given:
            _text(name, "given", g)
        if demo.family:
            _text(name, "family", demo.family)
    else:
        _sub(person, "name", nullFlavor="UNK")
    for tel in demo.telecoms:
        _sub(person, "telecom", value=tel)
    if demo.gender:
        _sub(person, "administrativeGenderCode", code=demo.gender, codeSystem="2.16.840.1.113883.5.1")
    if demo.birth_date:
        _sub(person, "birthTime", value=demo.birth_date)
    for a in demo.addresses:
        addr = _sub(person, "addr")
        for line in a.street:
            _text(addr, "streetAddressLine", line)
        for tag, val in (("city", a.city), ("state", a.state), ("postalCode", a.postal_code),
                         ("country", a.country)):
            if val:
                _text(addr, tag, val)


def _subject(cap: _Element, patient: Patient, score: float, home_oid: str) -> None:
    reg = _sub(_sub(cap, "subject", typeCode="SUBJ"), "registrationEvent", classCode="REG", moodCode="EVN")
    _sub(reg, "id", nullFlavor="NA")
    _sub(reg, "statusCode", code="active")
    pat = _sub(_sub(reg, "subject1", typeCode="SBJ"), "patient", classCode="PAT")
    pid = parse_cx(patient.patient_id)
    if pid is not None:
        _sub(pat, "id", root=pid.root, extension=pid.extension)
    else:
        _sub(pat, "id", root=home_oid, extension=patient.patient_id)
    _sub(pat, "statusCode", code="active")
    _person(pat, patient.demographics)
    obs = _sub(_sub(pat, "subjectOf1"), "queryMatchObservation", classCode="COND", moodCode="EVN")
    _sub(obs, "code", code="IHE_PDQ")
    value = _sub(obs, "value", value=str(round(score * 100)))
    value.set(f"{{{XSI}}}type", "INT")
    entity = _sub(_sub(reg, "custodian", typeCode="CST"), "assignedEntity", classCode="ASSIGNED")
    _sub(entity, "id", root=home_oid)
    _sub(entity, "code", code="NotHealthDataLocator", codeSystem=XCPD_HDL_SYSTEM)


def _issue(cap: _Element, management_codes: list[str]) -> None:
    event = _sub(_sub(cap, "reasonOf", typeCode="RSON"), "detectedIssueEvent", classCode="ALRT", moodCode="EVN")
    _sub(event, "code", code="ActAdministrativeDetectedIssueCode", codeSystem=ACT_CODE_SYSTEM)
    for code in management_codes:
        mgmt = _sub(_sub(event, "mitigatedBy", typeCode="MITGT"), "detectedIssueManagement", classCode="ACT",
                    moodCode="EVN")
        _sub(mgmt, "code", code=code, codeSystem=XCPD_ISSUE_SYSTEM)


def build_prpa_in201306(
    query: XcpdQuery,
    *,
    outcome: Outcome,
    patient: Patient | None = None,
    score: float = 1.0,
    home_community_id: str,
    our_device_oid: str,
    error: str | None = None,
    error_code: str = "AE",
    detail_code: str | None = None,
    issue_codes: list[str] | None = None,
    now: datetime | None = None,
) -> _Element:
    """Write the XCPD answer. ``issue_codes`` are detectedIssueManagement codes (AnswerNotAvailable
    is added for ``ambiguous``; "...Requested" hints may accompany ``none``)."""
    if outcome == "match" and patient is None:
        raise ValueError("outcome 'match' needs a patient")
    home_oid = home_community_id.removeprefix("urn:oid:")
    now = now or datetime.now(UTC)
    root = etree.Element(_q("PRPA_IN201306UV02"), nsmap={None: HL7, "xsi": XSI})
    root.set("ITSVersion", "XML_1.0")
    _sub(root, "id", root=str(uuid.uuid4()))
    _sub(root, "creationTime", value=now.strftime("%Y%m%d%H%M%S"))
    _sub(root, "interactionId", root=INTERACTION_ROOT, extension="PRPA_IN201306UV02")
    _sub(root, "processingCode", code="P")
    _sub(root, "processingModeCode", code="T")
    _sub(root, "acceptAckCode", code="NE")
    _device(root, "receiver", "RCV", query.sender_oid, query.sender_home_community_id)
    _device(root, "sender", "SND", our_device_oid, home_oid)

    ack_code = "AA" if outcome in ("match", "none") else "AE"
    ack = _sub(root, "acknowledgement")
    _sub(ack, "typeCode", code=ack_code)
    _id(_sub(ack, "targetMessage"), "id", query.message_id)
    if outcome == "error":
        detail = _sub(ack, "acknowledgementDetail", typeCode="E")
        if detail_code:
            _sub(detail, "code", code=detail_code, codeSystem="2.16.840.1.113883.5.1100")
        _text(detail, "text", error or "The request could not be processed")

    cap = _sub(root, "controlActProcess", classCode="CACT", moodCode="EVN")
    _sub(cap, "code", code="PRPA_TE201306UV02", codeSystem=INTERACTION_ROOT)
    if outcome == "match":
        assert patient is not None
        _subject(cap, patient, score, home_oid)
    codes = list(issue_codes or [])
    if outcome == "ambiguous" and "AnswerNotAvailable" not in codes:
        codes.insert(0, "AnswerNotAvailable")
    if codes and outcome in ("none", "ambiguous"):
        _issue(cap, codes)
    query_ack = _sub(cap, "queryAck")
    _id(query_ack, "queryId", query.query_id)
    _sub(query_ack, "statusCode", code="deliveredResponse")
    response_code = {"match": "OK", "none": "NF", "ambiguous": "AE"}.get(outcome, error_code)
    _sub(query_ack, "queryResponseCode", code=response_code)
    n = 1 if outcome == "match" else 0
    for tag in ("resultTotalQuantity", "resultCurrentQuantity"):
        _sub(query_ack, tag, value=str(n))
    _sub(query_ack, "resultRemainingQuantity", value="0")
    if query.query_by_parameter is not None:
        cap.append(copy.deepcopy(query.query_by_parameter))
    return root
