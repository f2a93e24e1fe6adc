"""XCPD (ITI-55) messages of the initiating gateway: the PRPA_IN201305UV02 query we send a partner
and reading its PRPA_IN201306UV02 answer (the matches it offers, the attributes it asks for). The
fan-out, re-checking and storing of matches are :mod:`xds_node.gateway.initiating`'s."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from lxml import etree
from lxml.etree import _Element

from xds_node.patients.hl7v3 import HL7, INTERACTION_ROOT, REQUESTED_ATTRIBUTE, read_issue_codes
from xds_node.patients.hl7v3 import hl7_child as _h
from xds_node.patients.index import read_addr, read_name
from xds_node.patients.model import Demographics, Patient, PatientId, normalize_date, normalize_gender


def _device(parent: _Element, tag: str, type_code: str, oid: str) -> None:
    dev = _h(_h(parent, tag, typeCode=type_code), "device", classCode="DEV", determinerCode="INSTANCE")
    _h(dev, "id", root=oid)
    org = _h(_h(dev, "asAgent", classCode="AGNT"), "representedOrganization", classCode="ORG",
             determinerCode="INSTANCE")
    _h(org, "id", root=oid)


def build_xcpd_query(demographics: Demographics, *, our_community: str, partner_community: str,
                     local_patient_id: PatientId | None = None, now: datetime | None = None) -> _Element:
    """PRPA_IN201305UV02 for one partner. With ``local_patient_id`` the query is in "query and feed"
    mode (authorOrPerformer names our id domain) so the partner can record the correlation too."""
    ours = our_community.removeprefix("urn:oid:")
    theirs = partner_community.removeprefix("urn:oid:")
    now = now or datetime.now(UTC)
    root = etree.Element(f"{{{HL7}}}PRPA_IN201305UV02", nsmap={None: HL7}, ITSVersion="XML_1.0")
    _h(root, "id", root=ours, extension=str(uuid.uuid4()))
    _h(root, "creationTime", value=now.strftime("%Y%m%d%H%M%S"))
    _h(root, "interactionId", root=INTERACTION_ROOT, extension="PRPA_IN201305UV02")
    _h(root, "processingCode", code="P")
    _h(root, "processingModeCode", code="T")
    _h(root, "acceptAckCode", code="AL")
    _device(root, "receiver", "RCV", theirs)
    _device(root, "sender", "SND", ours)
    cap = _h(root, "controlActProcess", classCode="CACT", moodCode="EVN")
    _h(cap, "code", code="PRPA_TE201305UV02", codeSystem=INTERACTION_ROOT)
    if local_patient_id is not None:
        dev = _h(_h(cap, "authorOrPerformer", typeCode="AUT"), "assignedDevice", classCode="ASSIGNED")
        _h(dev, "id", root=local_patient_id.root)
    qbp = _h(cap, "queryByParameter")
    _h(qbp, "queryId", root=ours, extension=str(uuid.uuid4()))
    _h(qbp, "statusCode", code="new")
    _h(qbp, "responseModalityCode", code="R")
    _h(qbp, "responsePriorityCode", code="I")
    params = _h(qbp, "parameterList")
    d = demographics

    def param(tag: str, semantics: str) -> _Element:
        p = _h(params, tag)
        value = _h(p, "value")
        _h(p, "semanticsText").text = semantics
        return value

    if d.gender:
        param("livingSubjectAdministrativeGender", "LivingSubject.administrativeGender").set("code", d.gender)
    if d.birth_date:
        param("livingSubjectBirthTime", "LivingSubject.birthTime").set("value", d.birth_date)
    ids = list(d.ids)
    if local_patient_id is not None and local_patient_id not in ids:
        ids.insert(0, local_patient_id)
    for pid in ids:
        value = param("livingSubjectId", "LivingSubject.id")
        value.set("root", pid.root)
        value.set("extension", pid.extension)
    if d.family or d.given:
        name = param("livingSubjectName", "LivingSubject.name")
        for g in d.given:
            _h(name, "given").text = g
        if d.family:
            _h(name, "family").text = d.family
    for a in d.addresses:
        addr = param("patientAddress", "Patient.addr")
        for line in a.street:
            _h(addr, "streetAddressLine").text = line
        for tag, val in (("city", a.city), ("state", a.state), ("postalCode", a.postal_code),
                         ("country", a.country)):
            if val:
                _h(addr, tag).text = val
    for tel in d.telecoms:
        param("patientTelecom", "Patient.telecom").set("value", tel)
    return root


@dataclass
class XcpdAnswer:
    ack_code: str
    response_code: str
    patients: list[Patient]
    detail: str = ""
    issue_codes: list[str] = field(default_factory=list)  # detectedIssueManagement codes

    @property
    def requested(self) -> list[str]:
        """The "...Requested" codes: attributes the partner needs to resolve the query."""
        return [c for c in self.issue_codes if c.endswith("Requested")]


def _hq(path: str) -> str:
    return "/".join(f"{{{HL7}}}{p}" for p in path.split("/"))


def read_xcpd_answer(el: _Element) -> XcpdAnswer:
    """PRPA_IN201306UV02 -> acknowledgement code, queryResponseCode and the matched patients."""
    if el.tag != f"{{{HL7}}}PRPA_IN201306UV02":
        raise ValueError(f"expected PRPA_IN201306UV02, got {etree.QName(el).localname}")
    ack = el.find(_hq("acknowledgement/typeCode"))
    code = el.find(_hq("controlActProcess/queryAck/queryResponseCode"))
    detail = " ".join(t.strip() for t in el.xpath(
        "h:acknowledgement/h:acknowledgementDetail/h:text/text()", namespaces={"h": HL7}) if t.strip())
    patients = []
    for pat in el.findall(_hq("controlActProcess/subject/registrationEvent/subject1/patient")):
        ids = [PatientId(i.get("extension", "").strip(), i.get("root", "").strip()) for i in pat.findall(_hq("id"))]
        ids = [i for i in ids if i.extension and i.root]
        if not ids:
            continue
        person = pat.find(_hq("patientPerson"))
        demo = Demographics(ids=ids)
        if person is not None:
            name = person.find(_hq("name"))
            if name is not None:
                demo.given, demo.family = read_name(name)
            g = person.find(_hq("administrativeGenderCode"))
            demo.gender = normalize_gender(g.get("code")) if g is not None else None
            b = person.find(_hq("birthTime"))
            demo.birth_date = normalize_date(b.get("value")) if b is not None else None
            demo.addresses = [a for a in (read_addr(x) for x in person.findall(_hq("addr"))) if not a.is_empty()]
            demo.telecoms = [t for t in (x.get("value", "").strip() for x in person.findall(_hq("telecom"))) if t]
        patients.append(Patient(ids[0].cx, demo))
    return XcpdAnswer(ack.get("code", "") if ack is not None else "",
                      code.get("code", "") if code is not None else "", patients, detail, read_issue_codes(el))


def add_requested(sent: Demographics, held: Demographics | None, requested: Sequence[str]
                  ) -> tuple[Demographics, list[str]]:
    """``sent`` plus each requested attribute that ``sent`` lacks and ``held`` (our stored
    demographics of the patient) has; and the names of the attributes added ([] = nothing to add:
    asking again would only repeat the question)."""
    if held is None:
        return sent, []
    changes: dict[str, Any] = {}
    for code in requested:
        attr = REQUESTED_ATTRIBUTE.get(code)
        if attr and attr not in changes and not getattr(sent, attr) and getattr(held, attr):
            value = getattr(held, attr)
            changes[attr] = list(value) if isinstance(value, list) else value
    return (replace(sent, **changes) if changes else sent), list(changes)


