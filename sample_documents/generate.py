"""Generate the synthetic C-CDA R2.1 sample documents in this folder.

Everything here is fictional: the veterans, clinicians, facilities and identifiers exist only
in this script (identifiers live under the IHE test OID arc 1.3.6.1.4.1.21367.2026.1). The
documents exist so that the node can be demonstrated and tested with records that look like
what VA, DoD and community partners really exchange, without touching anyone's data.

The output is deterministic (ids are UUIDv5 of the file name and a counter), so running

    python sample_documents/generate.py

re-creates byte-identical files. Clinical codes are real SNOMED CT, ICD-10-CM, LOINC, RxNorm,
CVX and UCUM codes; the structure follows the C-CDA R2.1 templates (US Realm Header
2015-08-01 plus the document-type template), with narrative tables matching the entries.
"""

from __future__ import annotations

import base64
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

HERE = Path(__file__).resolve().parent

V3 = "urn:hl7-org:v3"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
NSMAP = {None: V3, "xsi": XSI}
XSI_TYPE = f"{{{XSI}}}type"

# --- fictional identifier arcs -------------------------------------------------------------
COMMUNITY = "1.3.6.1.4.1.21367.2026.1.1"
PATIENT_ROOT = "1.3.6.1.4.1.21367.2026.1.9"
DOD_PATIENT_ROOT = "1.3.6.1.4.1.21367.2026.1.8"
PROVIDER_ROOT = "1.3.6.1.4.1.21367.2026.1.3"
ORG_ROOT = "1.3.6.1.4.1.21367.2026.1.2"
ENCOUNTER_ROOT = "1.3.6.1.4.1.21367.2026.1.4"
ORDER_ROOT = "1.3.6.1.4.1.21367.2026.1.5"
ID_NAMESPACE = uuid.UUID("6d1b0f1e-4c1a-5b7e-9a55-0a6a2c0f2026")

# --- code systems ------------------------------------------------------------------------------
LOINC = "2.16.840.1.113883.6.1"
SNOMED = "2.16.840.1.113883.6.96"
ICD10CM = "2.16.840.1.113883.6.90"
RXNORM = "2.16.840.1.113883.6.88"
CVX = "2.16.840.1.113883.12.292"
NUCC = "2.16.840.1.113883.6.101"
ACT_CODE = "2.16.840.1.113883.5.4"
ACT_CLASS = "2.16.840.1.113883.5.6"
CONFIDENTIALITY = "2.16.840.1.113883.5.25"
GENDER = "2.16.840.1.113883.5.1"
OMB = "2.16.840.1.113883.6.238"
INTERPRETATION = "2.16.840.1.113883.5.83"
NCI = "2.16.840.1.113883.3.26.1.1"
ISO3166 = "1.0.3166.1.2.2"

US_REALM = "2.16.840.1.113883.10.20.22.1.1"
R21 = "2015-08-01"
R20 = "2014-06-09"


# =============================================================================================
# Fictional people and places
# =============================================================================================


@dataclass
class Org:
    key: str
    name: str
    oid: str
    street: str
    city: str
    state: str
    zip: str
    phone: str
    facility_code: tuple[str, str]  # SNOMED CT environment


@dataclass
class Clinician:
    ext: str
    given: str
    family: str
    suffix: str
    specialty: tuple[str, str]  # NUCC
    org: Org


@dataclass
class Patient:
    slug: str
    ext: str
    given: str
    middle: str
    family: str
    gender: str
    birth: str
    race: tuple[str, str]
    ethnicity: tuple[str, str]
    street: str
    city: str
    state: str
    zip: str
    phone: str
    branch: str
    dod_ext: str
    problems: list[dict] = field(default_factory=list)
    meds: list[dict] = field(default_factory=list)
    allergies: list[dict] = field(default_factory=list)
    immunizations: list[dict] = field(default_factory=list)
    smoking: tuple[str, str] = ("266919005", "Never smoked tobacco")
    deployments: list[dict] = field(default_factory=list)
    exposures: list[dict] = field(default_factory=list)


VA = Org(
    "va", "Testville VA Medical Center (fictional)", f"{ORG_ROOT}.1", "100 Liberty Loop", "Testville",
    "OH", "45999", "+1-555-010-0100", ("35971002", "Ambulatory care site"),
)
DOD = Org(
    "dod", "Fort Example Army Medical Center (fictional MTF)", f"{ORG_ROOT}.2", "1 Sentinel Road",
    "Fort Example", "TX", "76599", "+1-555-010-0200", ("22232009", "Hospital"),
)
COMMUNITY_HOSPITAL = Org(
    "community", "Sampletown Community Hospital (fictional)", f"{ORG_ROOT}.3", "42 Elm Street",
    "Sampletown", "OH", "45998", "+1-555-010-0300", ("22232009", "Hospital"),
)

DR_PRIMARY = Clinician("PRV1001", "Dana", "Exampledoc", "MD", ("207R00000X", "Internal Medicine"), VA)
DR_PULM = Clinician("PRV1002", "Lee", "Mockington", "MD", ("207RP1001X", "Pulmonary Disease"), VA)
DR_PATH = Clinician(
    "PRV1003", "Robin", "Labworth", "MD", ("207ZP0102X", "Anatomic Pathology & Clinical Pathology"), VA
)
DR_ARMY = Clinician("PRV2001", "Sam", "Placeholder", "MD", ("207Q00000X", "Family Medicine"), DOD)
DR_OCC = Clinician(
    "PRV2002", "Avery", "Dummyfield", "MD", ("2083X0100X", "Occupational Medicine"), DOD
)
DR_HOSP = Clinician("PRV3001", "Jamie", "Notreal", "MD", ("208M00000X", "Hospitalist"), COMMUNITY_HOSPITAL)
DR_PSY = Clinician("PRV1004", "Quinn", "Fakename", "MD", ("2084P0800X", "Psychiatry"), VA)


def problem(sct, sct_name, icd, icd_name, onset, status="active"):
    return {"sct": sct, "sct_name": sct_name, "icd": icd, "icd_name": icd_name, "onset": onset,
            "status": status}


def med(rx, name, sig, start, route=("C38288", "Oral Route of Administration"), period=24, dose="1"):
    return {"rx": rx, "name": name, "sig": sig, "start": start, "route": route, "period": period,
            "dose": dose}


def allergy(rx, substance, reaction, reaction_name, severity, severity_name, onset):
    return {"rx": rx, "substance": substance, "reaction": reaction, "reaction_name": reaction_name,
            "severity": severity, "severity_name": severity_name, "onset": onset}


def shot(cvx, name, date):
    return {"cvx": cvx, "name": name, "date": date}


def deployment(country, country_name, site, start, end, operation):
    return {"country": country, "country_name": country_name, "site": site, "start": start,
            "end": end, "operation": operation}


def exposure(icd, icd_name, agent, detail, start, end):
    return {"icd": icd, "icd_name": icd_name, "agent": agent, "detail": detail, "start": start,
            "end": end}


INHALED = ("C38216", "Respiratory (Inhalation)")

ALEX = Patient(
    "alex-testpatient", "VET0001", "Alex", "Q", "Testpatient", "M", "19780412",
    ("2106-3", "White"), ("2186-5", "Not Hispanic or Latino"),
    "12 Imaginary Lane", "Testville", "OH", "45999", "+1-555-010-1001", "U.S. Army", "DOD10001",
    problems=[
        problem("195967001", "Asthma", "J45.909", "Unspecified asthma, uncomplicated", "20110301"),
        problem("40055000", "Chronic sinusitis", "J32.9", "Chronic sinusitis, unspecified", "20100915"),
        problem("59621000", "Essential hypertension", "I10", "Essential (primary) hypertension",
                "20170610"),
        problem("60862001", "Tinnitus", "H93.13", "Tinnitus, bilateral", "20060120"),
    ],
    meds=[
        med("745679", "200 ACTUAT albuterol 0.09 MG/ACTUAT Metered Dose Inhaler",
            "2 puffs inhaled every 4 hours as needed for wheezing", "20110301", INHALED, 4, "2"),
        med("895994", "120 ACTUAT fluticasone propionate 0.044 MG/ACTUAT Metered Dose Inhaler",
            "2 puffs inhaled twice daily", "20120115", INHALED, 12, "2"),
        med("314076", "lisinopril 10 MG Oral Tablet", "1 tablet by mouth once daily", "20170610"),
    ],
    allergies=[allergy("70618", "Penicillin", "247472004", "Wheal", "6736007", "Moderate", "19950101")],
    immunizations=[
        shot("24", "anthrax vaccine", "20040105"),
        shot("75", "vaccinia (smallpox)", "20040105"),
        shot("115", "Tdap", "20180911"),
        shot("140", "Influenza, seasonal, injectable, preservative free", "20241004"),
        shot("208", "COVID-19, mRNA, LNP-S, PF, 30 mcg/0.3 mL dose", "20210402"),
    ],
    smoking=("8517006", "Ex-smoker"),
    deployments=[
        deployment("IQ", "Iraq", "Joint Base Balad", "20040210", "20050205", "Operation Iraqi Freedom"),
        deployment("AF", "Afghanistan", "Bagram Airfield", "20090601", "20100520",
                   "Operation Enduring Freedom"),
    ],
    exposures=[
        exposure("Z77.110", "Contact with and (suspected) exposure to air pollution",
                 "Open burn pit smoke", "Tent ~1 km downwind of the base burn pit; daily smoke",
                 "20040210", "20050205"),
        exposure("Z57.39", "Occupational exposure to other air contaminants",
                 "Airborne particulate matter (PM10/PM2.5, sand and dust)",
                 "Frequent dust storms; convoy security duty", "20040210", "20100520"),
        exposure("Z77.098",
                 "Contact with and (suspected) exposure to other hazardous, chiefly nonmedicinal, "
                 "chemicals", "JP-8 jet fuel (vapour and skin contact)",
                 "Refuelled generators and vehicles 2-3 times weekly", "20090601", "20100520"),
        exposure("Z57.0", "Occupational exposure to noise", "Blast and weapons noise",
                 "IED blast at 50 m, Nov 2004; no hearing protection", "20041115", "20041115"),
    ],
)

JORDAN = Patient(
    "jordan-samplecase", "VET0002", "Jordan", "R", "Samplecase", "F", "19850923",
    ("2054-5", "Black or African American"), ("2186-5", "Not Hispanic or Latino"),
    "7 Placeholder Court", "Sampletown", "OH", "45998", "+1-555-010-1002", "U.S. Air Force",
    "DOD10002",
    problems=[
        problem("37796009", "Migraine", "G43.909",
                "Migraine, unspecified, not intractable, without status migrainosus", "20150302"),
        problem("55822004", "Hyperlipidemia", "E78.5", "Hyperlipidemia, unspecified", "20200115"),
        problem("370143000", "Major depressive disorder", "F32.9",
                "Major depressive disorder, single episode, unspecified", "20160810"),
        problem("61582004", "Allergic rhinitis", "J30.9", "Allergic rhinitis, unspecified",
                "20120501"),
    ],
    meds=[
        med("259255", "atorvastatin 80 MG Oral Tablet", "1 tablet by mouth at bedtime", "20200115"),
        med("1014676", "cetirizine hydrochloride 5 MG Oral Tablet", "1 tablet by mouth daily",
            "20120501"),
        med("197806", "ibuprofen 600 MG Oral Tablet",
            "1 tablet by mouth every 8 hours as needed for headache", "20150302", period=8),
    ],
    allergies=[allergy("2670", "Codeine", "422587007", "Nausea", "255604002", "Mild", "20090612")],
    immunizations=[
        shot("101", "typhoid, ViCPs", "20110110"),
        shot("52", "Hep A, adult", "20110110"),
        shot("140", "Influenza, seasonal, injectable, preservative free", "20231012"),
        shot("208", "COVID-19, mRNA, LNP-S, PF, 30 mcg/0.3 mL dose", "20210315"),
    ],
    deployments=[
        deployment("KW", "Kuwait", "Ali Al Salem Air Base", "20110201", "20110815",
                   "Operation New Dawn"),
        deployment("DJ", "Djibouti", "Camp Lemonnier", "20140305", "20141010",
                   "Operation Enduring Freedom - Horn of Africa"),
    ],
    exposures=[
        exposure("Z57.39", "Occupational exposure to other air contaminants",
                 "Airborne particulate matter (PM10/PM2.5, sand and dust)",
                 "Flight-line maintenance; recurrent dust storms", "20110201", "20110815"),
        exposure("Z77.098",
                 "Contact with and (suspected) exposure to other hazardous, chiefly nonmedicinal, "
                 "chemicals", "JP-8 jet fuel (vapour and skin contact)",
                 "Aircraft fuel systems specialist; daily skin contact", "20110201", "20141010"),
        exposure("Z77.110", "Contact with and (suspected) exposure to air pollution",
                 "Open burn pit smoke", "Base burn pit within 2 km of quarters", "20140305",
                 "20141010"),
    ],
)

CASEY = Patient(
    "casey-fictitious", "VET0003", "Casey", "L", "Fictitious", "M", "19690705",
    ("2106-3", "White"), ("2135-2", "Hispanic or Latino"),
    "300 Nowhere Avenue", "Testville", "OH", "45999", "+1-555-010-1003", "U.S. Marine Corps",
    "DOD10003",
    problems=[
        problem("44054006", "Diabetes mellitus type 2", "E11.9",
                "Type 2 diabetes mellitus without complications", "20140820"),
        problem("59621000", "Essential hypertension", "I10", "Essential (primary) hypertension",
                "20120304"),
        problem("13645005", "Chronic obstructive lung disease", "J44.9",
                "Chronic obstructive pulmonary disease, unspecified", "20180111"),
        problem("78275009", "Obstructive sleep apnea syndrome", "G47.33", "Obstructive sleep apnea",
                "20190517"),
        problem("55822004", "Hyperlipidemia", "E78.5", "Hyperlipidemia, unspecified", "20140820"),
    ],
    meds=[
        med("860975", "24 HR metformin hydrochloride 500 MG Extended Release Oral Tablet",
            "2 tablets by mouth daily with evening meal", "20140820", dose="2"),
        med("197361", "amlodipine 5 MG Oral Tablet", "1 tablet by mouth daily", "20120304"),
        med("310798", "hydrochlorothiazide 25 MG Oral Tablet", "1 tablet by mouth daily", "20150601"),
        med("312961", "simvastatin 20 MG Oral Tablet", "1 tablet by mouth at bedtime", "20140820"),
        med("745679", "200 ACTUAT albuterol 0.09 MG/ACTUAT Metered Dose Inhaler",
            "2 puffs inhaled every 6 hours as needed for shortness of breath", "20180111", INHALED, 6,
            "2"),
        med("243670", "aspirin 81 MG Oral Tablet", "1 tablet by mouth daily", "20140820"),
    ],
    allergies=[
        allergy("70618", "Penicillin", "271807003", "Eruption of skin", "255604002", "Mild",
                "19880101"),
    ],
    immunizations=[
        shot("33", "pneumococcal polysaccharide vaccine, 23 valent", "20190220"),
        shot("187", "zoster recombinant", "20200115"),
        shot("43", "Hep B, adult", "19900601"),
        shot("140", "Influenza, seasonal, injectable, preservative free", "20251001"),
    ],
    smoking=("8517006", "Ex-smoker"),
    deployments=[
        deployment("SA", "Saudi Arabia", "Al Jubayl staging area", "19901001", "19910315",
                   "Operation Desert Shield/Desert Storm"),
        deployment("KW", "Kuwait", "Burgan oil field area", "19910224", "19910315",
                   "Operation Desert Storm"),
        deployment("IQ", "Iraq", "Camp Fallujah", "20030315", "20031020", "Operation Iraqi Freedom"),
    ],
    exposures=[
        exposure("Z77.110", "Contact with and (suspected) exposure to air pollution",
                 "Kuwait oil well fire smoke", "Operated for 3 weeks under oil fire smoke plumes",
                 "19910224", "19910315"),
        exposure("Z77.110", "Contact with and (suspected) exposure to air pollution",
                 "Open burn pit smoke", "Assigned to waste disposal detail twice weekly",
                 "20030315", "20031020"),
        exposure("Z57.39", "Occupational exposure to other air contaminants",
                 "Airborne particulate matter (PM10/PM2.5, sand and dust)",
                 "Vehicle operator; open vehicles", "19901001", "20031020"),
    ],
)

MORGAN = Patient(
    "morgan-exampleton", "VET0004", "Morgan", "T", "Exampleton", "F", "19911130",
    ("2028-9", "Asian"), ("2186-5", "Not Hispanic or Latino"),
    "55 Sample Road Apt 2", "Testville", "OH", "45999", "+1-555-010-1004", "U.S. Army National Guard",
    "DOD10004",
    problems=[
        problem("47505003", "Posttraumatic stress disorder", "F43.10",
                "Post-traumatic stress disorder, unspecified", "20140301"),
        problem("60862001", "Tinnitus", "H93.13", "Tinnitus, bilateral", "20130610"),
        problem("279039007", "Low back pain", "M54.50", "Low back pain, unspecified", "20220810"),
        problem("195967001", "Asthma", "J45.909", "Unspecified asthma, uncomplicated", "20150120"),
    ],
    meds=[
        med("849574", "naproxen sodium 220 MG Oral Tablet",
            "1 tablet by mouth twice daily as needed for back pain", "20220810", period=12),
        med("745679", "200 ACTUAT albuterol 0.09 MG/ACTUAT Metered Dose Inhaler",
            "2 puffs inhaled every 4 hours as needed for wheezing", "20150120", INHALED, 4, "2"),
    ],
    allergies=[allergy("1191", "Aspirin", "247472004", "Wheal", "255604002", "Mild", "20100101")],
    immunizations=[
        shot("24", "anthrax vaccine", "20120815"),
        shot("115", "Tdap", "20120815"),
        shot("208", "COVID-19, mRNA, LNP-S, PF, 30 mcg/0.3 mL dose", "20210505"),
        shot("140", "Influenza, seasonal, injectable, preservative free", "20251020"),
    ],
    smoking=("449868002", "Smokes tobacco daily"),
    deployments=[
        deployment("AF", "Afghanistan", "Kandahar Airfield", "20120901", "20130605",
                   "Operation Enduring Freedom"),
        deployment("QA", "Qatar", "Camp As Sayliyah", "20190110", "20190720",
                   "Operation Spartan Shield"),
    ],
    exposures=[
        exposure("Z77.110", "Contact with and (suspected) exposure to air pollution",
                 "Open burn pit smoke", "Airfield burn pit; night shifts downwind", "20120901",
                 "20130605"),
        exposure("Z57.39", "Occupational exposure to other air contaminants",
                 "Airborne particulate matter (PM10/PM2.5, sand and dust)",
                 "Airfield security; frequent dust storms", "20120901", "20130605"),
        exposure("Z57.0", "Occupational exposure to noise", "Rocket and mortar attacks",
                 "Repeated indirect-fire attacks; hearing protection intermittently",
                 "20120901", "20130605"),
    ],
)

PATIENTS = [ALEX, JORDAN, CASEY, MORGAN]


# =============================================================================================
# Building blocks
# =============================================================================================


class Builder:
    """One document being built: deterministic ids and narrative reference ids."""

    def __init__(self, name: str):
        self.name = name
        self._n = 0
        self._refs: dict[str, int] = {}

    def uid(self) -> str:
        self._n += 1
        return str(uuid.uuid5(ID_NAMESPACE, f"{self.name}#{self._n}"))

    def ref(self, prefix: str) -> str:
        self._refs[prefix] = self._refs.get(prefix, 0) + 1
        return f"{prefix}{self._refs[prefix]}"


def E(tag: str, attrib: dict | None = None, *children, text: str | None = None) -> etree._Element:
    el = etree.Element(f"{{{V3}}}{tag}", nsmap=NSMAP)
    for k, v in (attrib or {}).items():
        if v is not None:
            el.set(XSI_TYPE if k == "xsi:type" else k, v)
    for c in children:
        if c is not None:
            el.append(c)
    if text is not None:
        el.text = text
    return el


def tid(root: str, ext: str | None = None) -> etree._Element:
    return E("templateId", {"root": root, "extension": ext})


def code(tag: str, c: str, system: str, display: str | None = None, *translations, xsi=None):
    el = E(tag, {"xsi:type": xsi, "code": c, "codeSystem": system, "displayName": display})
    for t in translations:
        el.append(t)
    return el


def ts(tag: str, value: str) -> etree._Element:
    return E(tag, {"value": value})


def ivl(low: str | None, high: str | None = None, tag: str = "effectiveTime", xsi=None):
    el = E(tag, {"xsi:type": xsi})
    el.append(ts("low", low) if low else E("low", {"nullFlavor": "UNK"}))
    if high:
        el.append(ts("high", high))
    return el


def addr(street, city, state, zip_, use=None):
    return E("addr", {"use": use}, E("streetAddressLine", text=street), E("city", text=city),
             E("state", text=state), E("postalCode", text=zip_), E("country", text="US"))


def person_name(given, family, suffix=None, middle=None, use=None):
    el = E("name", {"use": use}, E("given", text=given))
    if middle:
        el.append(E("given", text=middle))
    el.append(E("family", text=family))
    if suffix:
        el.append(E("suffix", text=suffix))
    return el


def org_el(tag: str, org: Org):
    return E(tag, None, E("id", {"root": org.oid}), E("name", text=org.name),
             E("telecom", {"use": "WP", "value": f"tel:{org.phone}"}),
             addr(org.street, org.city, org.state, org.zip))


def clinician_entity(tag: str, c: Clinician, with_code=True):
    el = E(tag, None, E("id", {"root": PROVIDER_ROOT, "extension": c.ext}))
    if with_code:
        el.append(code("code", c.specialty[0], NUCC, c.specialty[1]))
    el.append(addr(c.org.street, c.org.city, c.org.state, c.org.zip))
    el.append(E("telecom", {"use": "WP", "value": f"tel:{c.org.phone}"}))
    el.append(E("assignedPerson", None, person_name(c.given, c.family, c.suffix)))
    return el


def fmt_date(v: str) -> str:
    """Narrative dates as a clinician reads them (no time zone maths in prose)."""
    months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    if len(v) >= 8:
        return f"{months[int(v[4:6]) - 1]} {int(v[6:8])}, {v[:4]}"
    if len(v) >= 6:
        return f"{months[int(v[4:6]) - 1]} {v[:4]}"
    return v


def table(headers: list[str], rows: list[list]) -> etree._Element:
    """A narrative table; a cell is text or (text, ID) so that entries can reference it."""
    thead = E("thead", None, E("tr", None, *[E("th", text=h) for h in headers]))
    tbody = E("tbody")
    for row in rows:
        tr = E("tr")
        for cell in row:
            if isinstance(cell, tuple):
                tr.append(E("td", None, E("content", {"ID": cell[1]}, text=cell[0])))
            else:
                tr.append(E("td", text=cell))
        tbody.append(tr)
    return E("table", {"border": "1", "width": "100%"}, thead, tbody)


def section(templates, sec_code, display, title, text_children, entries=()):
    sec = E("section")
    for t in templates:
        sec.append(tid(*t))
    sec.append(code("code", sec_code, LOINC, display))
    sec.append(E("title", text=title))
    text = E("text")
    for c in text_children:
        text.append(c)
    sec.append(text)
    for entry in entries:
        sec.append(entry)
    return E("component", None, sec)


def paragraph(s: str) -> etree._Element:
    return E("paragraph", text=s)


def text_ref(ref: str) -> etree._Element:
    return E("text", None, E("reference", {"value": f"#{ref}"}))


def author_participation(time: str, c: Clinician) -> etree._Element:
    return E("author", None, tid("2.16.840.1.113883.10.20.22.4.119"), ts("time", time),
             E("assignedAuthor", None, E("id", {"root": PROVIDER_ROOT, "extension": c.ext})))


# =============================================================================================
# Sections
# =============================================================================================


def problem_observation(b: Builder, p: dict, ref: str) -> etree._Element:
    status = p["status"]
    value = code("value", p["sct"], SNOMED, p["sct_name"],
                 code("translation", p["icd"], ICD10CM, p["icd_name"]), xsi="CD")
    obs = E("observation", {"classCode": "OBS", "moodCode": "EVN"},
            tid("2.16.840.1.113883.10.20.22.4.4", R21),
            E("id", {"root": b.uid()}),
            code("code", "55607006", SNOMED, "Problem", code("translation", "75326-9", LOINC, "Problem")),
            text_ref(ref), E("statusCode", {"code": "completed"}),
            ivl(p["onset"], p.get("resolved")), value)
    return E("act", {"classCode": "ACT", "moodCode": "EVN"},
             tid("2.16.840.1.113883.10.20.22.4.3", R21),
             E("id", {"root": b.uid()}), code("code", "CONC", ACT_CLASS, "Concern"),
             E("statusCode", {"code": "active" if status == "active" else "completed"}),
             ivl(p["onset"]), E("entryRelationship", {"typeCode": "SUBJ"}, obs))


def problems_section(b: Builder, problems: list[dict], title="Problems") -> etree._Element:
    rows, entries = [], []
    for p in problems:
        ref = b.ref("problem")
        rows.append([(p["sct_name"], ref), f"{p['icd']} {p['icd_name']}", fmt_date(p["onset"]),
                     p["status"].capitalize()])
        entries.append(E("entry", {"typeCode": "DRIV"}, problem_observation(b, p, ref)))
    return section([("2.16.840.1.113883.10.20.22.2.5.1",), ("2.16.840.1.113883.10.20.22.2.5.1", R21)],
                   "11450-4", "Problem list - Reported", title,
                   [table(["Problem", "ICD-10-CM", "Onset", "Status"], rows)], entries)


def diagnosis_section(b: Builder, templates, sec_code, display, title, act_tid, act_code, problems):
    rows, entries = [], []
    for p in problems:
        ref = b.ref("dx")
        rows.append([(p["sct_name"], ref), f"{p['icd']} {p['icd_name']}"])
        act = E("act", {"classCode": "ACT", "moodCode": "EVN"}, tid(*act_tid),
                code("code", act_code[0], LOINC, act_code[1]),
                E("entryRelationship", {"typeCode": "SUBJ"}, problem_observation(b, p, ref)))
        entries.append(E("entry", None, act))
    return section(templates, sec_code, display, title,
                   [table(["Diagnosis", "ICD-10-CM"], rows)], entries)


def medication_activity(b: Builder, m: dict, ref: str, mood="INT") -> etree._Element:
    sa = E("substanceAdministration", {"classCode": "SBADM", "moodCode": mood},
           tid("2.16.840.1.113883.10.20.22.4.16", R20),
           E("id", {"root": b.uid()}), text_ref(ref), E("statusCode", {"code": "active"}),
           ivl(m["start"], xsi="IVL_TS"),
           E("effectiveTime", {"xsi:type": "PIVL_TS", "institutionSpecified": "true", "operator": "A"},
             E("period", {"value": str(m["period"]), "unit": "h"})),
           code("routeCode", m["route"][0], NCI, m["route"][1]),
           E("doseQuantity", {"value": m["dose"]}),
           E("consumable", None, E("manufacturedProduct", {"classCode": "MANU"},
                                       tid("2.16.840.1.113883.10.20.22.4.23", R20),
                                   E("manufacturedMaterial", None,
                                     code("code", m["rx"], RXNORM, m["name"])))))
    return sa


def medications_section(b: Builder, meds: list[dict]) -> etree._Element:
    rows, entries = [], []
    for m in meds:
        ref = b.ref("med")
        rows.append([(m["name"], ref), m["rx"], m["sig"], fmt_date(m["start"]), "Active"])
        entries.append(E("entry", {"typeCode": "DRIV"}, medication_activity(b, m, ref)))
    return section([("2.16.840.1.113883.10.20.22.2.1.1",), ("2.16.840.1.113883.10.20.22.2.1.1", R20)],
                   "10160-0", "History of Medication use Narrative", "Medications",
                   [table(["Medication", "RxNorm", "Instructions", "Start", "Status"], rows)], entries)


def discharge_medications_section(b: Builder, meds: list[dict]) -> etree._Element:
    rows, entries = [], []
    for m in meds:
        ref = b.ref("dcmed")
        rows.append([(m["name"], ref), m["rx"], m["sig"]])
        act = E("act", {"classCode": "ACT", "moodCode": "EVN"},
                tid("2.16.840.1.113883.10.20.22.4.35", "2016-03-01"),
                code("code", "10183-2", LOINC, "Hospital discharge medication",
                     code("translation", "75311-1", LOINC, "Discharge medication")),
                E("statusCode", {"code": "active"}), ivl(m["start"]),
                E("entryRelationship", {"typeCode": "SUBJ"}, medication_activity(b, m, ref)))
        entries.append(E("entry", None, act))
    return section([("2.16.840.1.113883.10.20.22.2.11.1",), ("2.16.840.1.113883.10.20.22.2.11.1", R21)],
                   "10183-2", "Hospital discharge medication Narrative", "Discharge Medications",
                   [table(["Medication", "RxNorm", "Instructions"], rows)], entries)


def allergies_section(b: Builder, allergies: list[dict]) -> etree._Element:
    rows, entries = [], []
    for a in allergies:
        ref, rref = b.ref("allergy"), b.ref("reaction")
        rows.append([(a["substance"], ref), "Drug allergy", (a["reaction_name"], rref), a["severity_name"],
                     "Active"])
        severity = E("observation", {"classCode": "OBS", "moodCode": "EVN"},
                     tid("2.16.840.1.113883.10.20.22.4.8", R20),
                     code("code", "SEV", ACT_CODE, "Severity Observation"),
                     E("statusCode", {"code": "completed"}),
                     code("value", a["severity"], SNOMED, a["severity_name"], xsi="CD"))
        reaction = E("observation", {"classCode": "OBS", "moodCode": "EVN"},
                     tid("2.16.840.1.113883.10.20.22.4.9", R20),
                     E("id", {"root": b.uid()}), code("code", "ASSERTION", ACT_CODE), text_ref(rref),
                     E("statusCode", {"code": "completed"}), ivl(a["onset"]),
                     code("value", a["reaction"], SNOMED, a["reaction_name"], xsi="CD"),
                     E("entryRelationship", {"typeCode": "SUBJ", "inversionInd": "true"}, severity))
        obs = E("observation", {"classCode": "OBS", "moodCode": "EVN"},
                tid("2.16.840.1.113883.10.20.22.4.7", R20),
                E("id", {"root": b.uid()}), code("code", "ASSERTION", ACT_CODE), text_ref(ref),
                E("statusCode", {"code": "completed"}), ivl(a["onset"]),
                code("value", "419511003", SNOMED, "Propensity to adverse reactions to drug", xsi="CD"),
                E("participant", {"typeCode": "CSM"},
                  E("participantRole", {"classCode": "MANU"},
                    E("playingEntity", {"classCode": "MMAT"},
                      code("code", a["rx"], RXNORM, a["substance"])))),
                E("entryRelationship", {"typeCode": "MFST", "inversionInd": "true"}, reaction))
        act = E("act", {"classCode": "ACT", "moodCode": "EVN"},
                tid("2.16.840.1.113883.10.20.22.4.30", R21),
                E("id", {"root": b.uid()}),
                code("code", "CONC", ACT_CLASS, "Concern"), E("statusCode", {"code": "active"}),
                ivl(a["onset"]), E("entryRelationship", {"typeCode": "SUBJ"}, obs))
        entries.append(E("entry", {"typeCode": "DRIV"}, act))
    return section([("2.16.840.1.113883.10.20.22.2.6.1",), ("2.16.840.1.113883.10.20.22.2.6.1", R21)],
                   "48765-2", "Allergies and adverse reactions Document", "Allergies and Intolerances",
                   [table(["Substance", "Type", "Reaction", "Severity", "Status"], rows)], entries)


def immunizations_section(b: Builder, shots: list[dict]) -> etree._Element:
    rows, entries = [], []
    for s in sorted(shots, key=lambda s: s["date"], reverse=True):
        ref = b.ref("immun")
        rows.append([(s["name"], ref), s["cvx"], fmt_date(s["date"]), "Completed"])
        sa = E("substanceAdministration", {"classCode": "SBADM", "moodCode": "EVN", "negationInd": "false"},
               tid("2.16.840.1.113883.10.20.22.4.52", R21),
               E("id", {"root": b.uid()}), text_ref(ref), E("statusCode", {"code": "completed"}),
               ts("effectiveTime", s["date"]),
               E("consumable", None, E("manufacturedProduct", {"classCode": "MANU"},
                                       tid("2.16.840.1.113883.10.20.22.4.54", R20),
                                       E("manufacturedMaterial", None,
                                         code("code", s["cvx"], CVX, s["name"])))))
        entries.append(E("entry", {"typeCode": "DRIV"}, sa))
    return section([("2.16.840.1.113883.10.20.22.2.2.1",), ("2.16.840.1.113883.10.20.22.2.2.1", R21)],
                   "11369-6", "History of Immunization Narrative", "Immunizations",
                   [table(["Vaccine", "CVX", "Date", "Status"], rows)], entries)


@dataclass
class Result:
    loinc: str
    name: str
    value: float | str
    unit: str
    low: float | None = None
    high: float | None = None

    @property
    def flag(self) -> str:
        v = float(self.value)
        if self.high is not None and v > self.high:
            return "H"
        if self.low is not None and v < self.low:
            return "L"
        return "N"

    @property
    def range_text(self) -> str:
        if self.low is not None and self.high is not None:
            return f"{self.low:g}-{self.high:g} {self.unit}"
        if self.high is not None:
            return f"<{self.high:g} {self.unit}"
        return f">{self.low:g} {self.unit}"


FLAG_NAMES = {"N": "Normal", "H": "High", "L": "Low"}


def result_observation(b: Builder, r: Result, time: str, ref: str, vital: bool = False):
    t = ("2.16.840.1.113883.10.20.22.4.27", R20) if vital else ("2.16.840.1.113883.10.20.22.4.2", R21)
    obs = E("observation", {"classCode": "OBS", "moodCode": "EVN"}, tid(*t),
            E("id", {"root": b.uid()}), code("code", r.loinc, LOINC, r.name), text_ref(ref),
            E("statusCode", {"code": "completed"}), ts("effectiveTime", time),
            E("value", {"xsi:type": "PQ", "value": f"{r.value:g}" if isinstance(r.value, float) else
                        str(r.value), "unit": r.unit}))
    if not vital:
        obs.append(code("interpretationCode", r.flag, INTERPRETATION, FLAG_NAMES[r.flag]))
        rng = E("value", {"xsi:type": "IVL_PQ"})
        if r.low is not None:
            rng.append(E("low", {"value": f"{r.low:g}", "unit": r.unit}))
        if r.high is not None:
            rng.append(E("high", {"value": f"{r.high:g}", "unit": r.unit}))
        obs.append(E("referenceRange", None, E("observationRange", None, rng)))
    return obs


def results_section(b: Builder, panels: list[tuple[str, str, str, list[Result]]]) -> etree._Element:
    """``panels``: (panel LOINC, panel name, time, results)."""
    children, entries = [], []
    for panel_code, panel_name, time, results in panels:
        rows = []
        comps = []
        for r in results:
            ref = b.ref("result")
            rows.append([(r.name, ref), f"{r.value} {r.unit}", r.range_text, FLAG_NAMES[r.flag]])
            comps.append(E("component", None, result_observation(b, r, time, ref)))
        children.append(paragraph(f"{panel_name} (LOINC {panel_code}) - collected {fmt_date(time)}"))
        children.append(table(["Test", "Result", "Reference range", "Interpretation"], rows))
        org = E("organizer", {"classCode": "BATTERY", "moodCode": "EVN"},
                tid("2.16.840.1.113883.10.20.22.4.1", R21),
                E("id", {"root": b.uid()}), code("code", panel_code, LOINC, panel_name),
                E("statusCode", {"code": "completed"}), ivl(time, time), *comps)
        entries.append(E("entry", {"typeCode": "DRIV"}, org))
    return section([("2.16.840.1.113883.10.20.22.2.3.1",), ("2.16.840.1.113883.10.20.22.2.3.1", R21)],
                   "30954-2", "Relevant diagnostic tests/laboratory data Narrative", "Results",
                   children, entries)


def vitals(sbp, dbp, hr, rr, temp, height, weight, spo2) -> list[Result]:
    bmi = round(weight / (height / 100) ** 2, 1)
    return [
        Result("8480-6", "Systolic blood pressure", sbp, "mm[Hg]"),
        Result("8462-4", "Diastolic blood pressure", dbp, "mm[Hg]"),
        Result("8867-4", "Heart rate", hr, "/min"),
        Result("9279-1", "Respiratory rate", rr, "/min"),
        Result("8310-5", "Body temperature", temp, "Cel"),
        Result("8302-2", "Body height", height, "cm"),
        Result("29463-7", "Body weight", weight, "kg"),
        Result("39156-5", "Body mass index (BMI) [Ratio]", bmi, "kg/m2"),
        Result("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", spo2, "%"),
    ]


def vitals_section(b: Builder, time: str, values: list[Result]) -> etree._Element:
    rows, comps = [], []
    for r in values:
        ref = b.ref("vital")
        rows.append([(r.name, ref), f"{r.value} {r.unit}"])
        comps.append(E("component", None, result_observation(b, r, time, ref, vital=True)))
    org = E("organizer", {"classCode": "CLUSTER", "moodCode": "EVN"},
            tid("2.16.840.1.113883.10.20.22.4.26", R21),
            E("id", {"root": b.uid()}),
            code("code", "46680005", SNOMED, "Vital signs",
                 code("translation", "74728-7", LOINC, "Vital signs, weight, height, head circumference, "
                      "oximetry, BMI, and BSA panel - HL7.CCDAr1.1")),
            E("statusCode", {"code": "completed"}), ts("effectiveTime", time), *comps)
    return section([("2.16.840.1.113883.10.20.22.2.4.1",), ("2.16.840.1.113883.10.20.22.2.4.1", R21)],
                   "8716-3", "Vital signs", "Vital Signs",
                   [paragraph(f"Measured {fmt_date(time)}"), table(["Vital sign", "Value"], rows)],
                   [E("entry", {"typeCode": "DRIV"}, org)])


def social_history_section(b: Builder, p: Patient, time: str) -> etree._Element:
    ref = b.ref("social")
    obs = E("observation", {"classCode": "OBS", "moodCode": "EVN"},
            tid("2.16.840.1.113883.10.20.22.4.78", R20),
            E("id", {"root": b.uid()}), code("code", "72166-2", LOINC, "Tobacco smoking status"),
            text_ref(ref), E("statusCode", {"code": "completed"}), ts("effectiveTime", time),
            code("value", p.smoking[0], SNOMED, p.smoking[1], xsi="CD"))
    rows = [["Tobacco smoking status", (p.smoking[1], ref), fmt_date(time)],
            ["Military service", f"{p.branch} veteran", ""]]
    return section([("2.16.840.1.113883.10.20.22.2.17",), ("2.16.840.1.113883.10.20.22.2.17", R21)],
                   "29762-2", "Social history Narrative", "Social History",
                   [table(["Element", "Value", "Date"], rows)], [E("entry", {"typeCode": "DRIV"}, obs)])


def narrative_section(templates, sec_code, display, title, paragraphs: list[str]) -> etree._Element:
    return section(templates, sec_code, display, title, [paragraph(p) for p in paragraphs])


def assessment_and_plan(paragraphs):
    return narrative_section([("2.16.840.1.113883.10.20.22.2.9", R20)], "51847-2",
                             "Evaluation + Plan note", "Assessment and Plan", paragraphs)


def chief_complaint(text):
    return narrative_section([("2.16.840.1.113883.10.20.22.2.13",)], "46239-0",
                             "Chief complaint+Reason for visit Narrative", "Chief Complaint and Reason for Visit",
                             [text])


def hpi(paragraphs):
    return narrative_section([("1.3.6.1.4.1.19376.1.5.3.1.3.4",)], "10164-2",
                             "History of Present illness Narrative", "History of Present Illness", paragraphs)


def plan_of_treatment(paragraphs):
    return narrative_section([("2.16.840.1.113883.10.20.22.2.10",), ("2.16.840.1.113883.10.20.22.2.10", R20)],
                             "18776-5", "Plan of care note", "Plan of Treatment", paragraphs)


def deployments_section(b: Builder, p: Patient) -> etree._Element:
    rows, entries = [], []
    for d in p.deployments:
        ref = b.ref("deploy")
        rows.append([(f"{d['site']}, {d['country_name']}", ref), d["operation"], fmt_date(d["start"]),
                     fmt_date(d["end"])])
        obs = E("observation", {"classCode": "OBS", "moodCode": "EVN"},
                tid("2.16.840.1.113883.10.20.22.4.38", R21),
                E("id", {"root": b.uid()}),
                code("code", "Z91.82", ICD10CM, "Personal history of military deployment"),
                text_ref(ref), E("statusCode", {"code": "completed"}), ivl(d["start"], d["end"]),
                code("value", d["country"], ISO3166, d["country_name"], xsi="CD"),
                E("participant", {"typeCode": "LOC"},
                  E("participantRole", {"classCode": "SDLOC"},
                    E("playingEntity", {"classCode": "PLC"}, E("name", text=d["site"])))))
        entries.append(E("entry", {"typeCode": "DRIV"}, obs))
    return section([("2.16.840.1.113883.10.20.22.2.17",), ("2.16.840.1.113883.10.20.22.2.17", R21)],
                   "29762-2", "Social history Narrative", "Military Service and Deployment History",
                   [paragraph(f"Branch of service: {p.branch}. Deployment periods as recorded in the "
                              "service member's individual exposure record (fictional)."),
                    table(["Location", "Operation", "From", "To"], rows)], entries)


def exposures_section(b: Builder, p: Patient) -> etree._Element:
    rows, entries = [], []
    for x in p.exposures:
        ref = b.ref("exposure")
        rows.append([(x["agent"], ref), x["detail"], f"{fmt_date(x['start'])} - {fmt_date(x['end'])}",
                     x["icd"]])
        value = E("value", {"xsi:type": "CD", "nullFlavor": "OTH"}, E("originalText", text=x["agent"]),
                  code("translation", x["icd"], ICD10CM, x["icd_name"]))
        obs = E("observation", {"classCode": "OBS", "moodCode": "EVN"},
                tid("2.16.840.1.113883.10.20.22.4.4", R21),
                E("id", {"root": b.uid()}),
                code("code", "55607006", SNOMED, "Problem", code("translation", "75326-9", LOINC, "Problem")),
                text_ref(ref), E("statusCode", {"code": "completed"}), ivl(x["start"], x["end"]), value)
        act = E("act", {"classCode": "ACT", "moodCode": "EVN"},
                tid("2.16.840.1.113883.10.20.22.4.3", R21),
                E("id", {"root": b.uid()}), code("code", "CONC", ACT_CLASS, "Concern"),
                E("statusCode", {"code": "active"}), ivl(x["start"]),
                E("entryRelationship", {"typeCode": "SUBJ"}, obs))
        entries.append(E("entry", {"typeCode": "DRIV"}, act))
    return section([("2.16.840.1.113883.10.20.22.2.5.1",), ("2.16.840.1.113883.10.20.22.2.5.1", R21)],
                   "11450-4", "Problem list - Reported", "Exposure Concerns",
                   [paragraph("Potential airborne hazard and toxic exposures reported by the veteran and "
                              "corroborated by unit location data. Exposure concerns are not diagnoses."),
                    table(["Exposure", "Circumstances", "Period", "ICD-10-CM"], rows)], entries)


# =============================================================================================
# Documents
# =============================================================================================


@dataclass
class DocSpec:
    patient: Patient
    file: str
    type_code: tuple[str, str]
    title: str
    templates: list[tuple[str, ...]]
    time: str  # effectiveTime with offset
    author: Clinician
    legal: Clinician
    summary: str  # for the README
    confidentiality: str = "N"
    service: tuple[str, str] | None = None  # low, high
    service_code: tuple[str, str, str] | None = None  # code, system, display
    encounter: tuple[str, str, str, str] | None = None  # ext, actcode, low, high
    order: str | None = None
    recipient: Clinician | None = None
    sections: list = field(default_factory=list)
    pdf: bytes | None = None
    doc_ext: str = ""


def patient_role(p: Patient, include_dod: bool) -> etree._Element:
    role = E("patientRole", None, E("id", {"root": PATIENT_ROOT, "extension": p.ext}))
    if include_dod:
        role.append(E("id", {"root": DOD_PATIENT_ROOT, "extension": p.dod_ext}))
    role.append(addr(p.street, p.city, p.state, p.zip, use="HP"))
    role.append(E("telecom", {"use": "HP", "value": f"tel:{p.phone}"}))
    pat = E("patient", None, person_name(p.given, p.family, middle=p.middle, use="L"),
            E("administrativeGenderCode", {"code": p.gender, "codeSystem": GENDER,
                                           "displayName": "Male" if p.gender == "M" else "Female"}),
            ts("birthTime", p.birth),
            code("raceCode", p.race[0], OMB, p.race[1]),
            code("ethnicGroupCode", p.ethnicity[0], OMB, p.ethnicity[1]),
            E("languageCommunication", None, E("languageCode", {"code": "en"}),
              E("preferenceInd", {"value": "true"})))
    role.append(pat)
    return role


def build(spec: DocSpec) -> bytes:
    b = Builder(f"{spec.patient.slug}/{spec.file}")
    doc = etree.Element(f"{{{V3}}}ClinicalDocument", nsmap=NSMAP)
    doc.append(E("realmCode", {"code": "US"}))
    doc.append(E("typeId", {"root": "2.16.840.1.113883.1.3", "extension": "POCD_HD000040"}))
    doc.append(tid(US_REALM))
    doc.append(tid(US_REALM, R21))
    for t in spec.templates:
        doc.append(tid(*t))
    org = spec.author.org
    doc.append(E("id", {"root": f"{org.oid}.1", "extension": spec.doc_ext}))
    doc.append(code("code", spec.type_code[0], LOINC, spec.type_code[1]))
    doc.append(E("title", text=spec.title))
    doc.append(ts("effectiveTime", spec.time))
    conf_names = {"N": "normal", "R": "restricted"}
    doc.append(E("confidentialityCode", {"code": spec.confidentiality, "codeSystem": CONFIDENTIALITY,
                                         "displayName": conf_names[spec.confidentiality]}))
    doc.append(E("languageCode", {"code": "en-US"}))
    doc.append(E("setId", {"root": f"{org.oid}.2", "extension": spec.doc_ext}))
    doc.append(E("versionNumber", {"value": "1"}))
    doc.append(E("recordTarget", None, patient_role(spec.patient, include_dod=org is DOD)))
    doc.append(E("author", None, ts("time", spec.time),
                 clinician_entity("assignedAuthor", spec.author)))
    doc[-1][-1].append(org_el("representedOrganization", org))
    doc.append(E("custodian", None, E("assignedCustodian", None,
                                      org_el("representedCustodianOrganization", org))))
    if spec.recipient is not None:
        r = spec.recipient
        doc.append(E("informationRecipient", None,
                     E("intendedRecipient", None, E("id", {"root": PROVIDER_ROOT, "extension": r.ext}),
                       E("informationRecipient", None, person_name(r.given, r.family, r.suffix)),
                       E("receivedOrganization", None, E("name", text=r.org.name)))))
    doc.append(E("legalAuthenticator", None, ts("time", spec.time), E("signatureCode", {"code": "S"}),
                 clinician_entity("assignedEntity", spec.legal, with_code=False)))
    if spec.order:
        doc.append(E("inFulfillmentOf", None,
                     E("order", None, E("id", {"root": ORDER_ROOT, "extension": spec.order}))))
    if spec.service:
        se = E("serviceEvent", {"classCode": "PCPR"})
        if spec.service_code:
            c, system, display = spec.service_code
            se.append(code("code", c, system, display))
        se.append(ivl(*spec.service))
        se.append(E("performer", {"typeCode": "PRF"},
                    clinician_entity("assignedEntity", spec.author)))
        doc.append(E("documentationOf", None, se))
    if spec.encounter:
        ext, actcode, low, high = spec.encounter
        names = {"AMB": "ambulatory", "IMP": "inpatient encounter"}
        enc = E("encompassingEncounter", None, E("id", {"root": ENCOUNTER_ROOT, "extension": ext}),
                code("code", actcode, ACT_CODE, names[actcode]), ivl(low, high),
                E("location", None, E("healthCareFacility", None, E("id", {"root": org.oid}),
                                      code("code", org.facility_code[0], SNOMED, org.facility_code[1]),
                                      E("location", None, E("name", text=org.name),
                                        addr(org.street, org.city, org.state, org.zip)))))
        doc.append(E("componentOf", None, enc))
    if spec.pdf is not None:
        body = E("nonXMLBody", None,
                 E("text", {"mediaType": "application/pdf", "representation": "B64"},
                   text="\n" + base64.encodebytes(spec.pdf).decode("ascii")))
    else:
        body = E("structuredBody", None, *[s(b) if callable(s) else s for s in spec.sections])
    doc.append(E("component", None, body))
    etree.indent(doc, space="\t")
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + etree.tostring(doc, encoding="UTF-8") + b"\n"


# --- a minimal real PDF -----------------------------------------------------------------------


def minimal_pdf(lines: list[str]) -> bytes:
    """A one-page PDF 1.4 with Helvetica text and a correct cross-reference table."""

    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    ops = ["BT", "/F1 11 Tf", "14 TL", "72 740 Td"]
    for i, line in enumerate(lines):
        ops.append(f"({esc(line)}) Tj" if i == 0 else f"T* ({esc(line)}) Tj")
    ops.append("ET")
    stream = zlib.compress("\n".join(ops).encode("latin-1"), 9)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Title (Fictional sample document) /Producer (xds-node sample_documents/generate.py) >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for n, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info 6 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)
    return bytes(out)


# --- the document set -------------------------------------------------------------------------

CCD = ("34133-9", "Summary of episode note")
DISCHARGE = ("18842-5", "Discharge summary")
PROGRESS = ("11506-3", "Progress note")
REFERRAL = ("57133-1", "Referral note")
LAB = ("11502-2", "Laboratory report")
NOTE = ("34109-9", "Note")
T_CCD = [("2.16.840.1.113883.10.20.22.1.2",), ("2.16.840.1.113883.10.20.22.1.2", R21)]
T_DISCHARGE = [("2.16.840.1.113883.10.20.22.1.8",), ("2.16.840.1.113883.10.20.22.1.8", R21)]
T_PROGRESS = [("2.16.840.1.113883.10.20.22.1.9",), ("2.16.840.1.113883.10.20.22.1.9", R21)]
T_REFERRAL = [("2.16.840.1.113883.10.20.22.1.14",), ("2.16.840.1.113883.10.20.22.1.14", R21)]
T_UNSTRUCTURED = [("2.16.840.1.113883.10.20.22.1.10",), ("2.16.840.1.113883.10.20.22.1.10", R21)]


def cbc(wbc, hgb, hct, plt, sex) -> tuple[str, str, list[Result]]:
    hgb_range = (13.5, 17.5) if sex == "M" else (12.0, 15.5)
    hct_range = (41.0, 53.0) if sex == "M" else (36.0, 46.0)
    return ("58410-2", "CBC panel - Blood by Automated count", [
        Result("6690-2", "Leukocytes [#/volume] in Blood by Automated count", wbc, "10*3/uL", 4.5, 11.0),
        Result("718-7", "Hemoglobin [Mass/volume] in Blood", hgb, "g/dL", *hgb_range),
        Result("4544-3", "Hematocrit [Volume Fraction] of Blood by Automated count", hct, "%", *hct_range),
        Result("777-3", "Platelets [#/volume] in Blood by Automated count", plt, "10*3/uL", 150.0, 400.0),
    ])


def bmp(glu, na, k, cl, co2, bun, cr, ca) -> tuple[str, str, list[Result]]:
    return ("51990-0", "Basic metabolic panel - Blood", [
        Result("2345-7", "Glucose [Mass/volume] in Serum or Plasma", glu, "mg/dL", 70.0, 99.0),
        Result("2951-2", "Sodium [Moles/volume] in Serum or Plasma", na, "mmol/L", 136.0, 145.0),
        Result("2823-3", "Potassium [Moles/volume] in Serum or Plasma", k, "mmol/L", 3.5, 5.1),
        Result("2075-0", "Chloride [Moles/volume] in Serum or Plasma", cl, "mmol/L", 98.0, 107.0),
        Result("2028-9", "Carbon dioxide, total [Moles/volume] in Serum or Plasma", co2, "mmol/L", 22.0, 29.0),
        Result("3094-0", "Urea nitrogen [Mass/volume] in Serum or Plasma", bun, "mg/dL", 7.0, 20.0),
        Result("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", cr, "mg/dL", 0.6, 1.3),
        Result("17861-6", "Calcium [Mass/volume] in Serum or Plasma", ca, "mg/dL", 8.6, 10.3),
    ])


def lipids(chol, tg, hdl, ldl) -> tuple[str, str, list[Result]]:
    return ("57698-3", "Lipid panel with direct LDL - Serum or Plasma", [
        Result("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", chol, "mg/dL", None, 200.0),
        Result("2571-8", "Triglyceride [Mass/volume] in Serum or Plasma", tg, "mg/dL", None, 150.0),
        Result("2085-9", "Cholesterol in HDL [Mass/volume] in Serum or Plasma", hdl, "mg/dL", 40.0, None),
        Result("18262-6", "Cholesterol in LDL [Mass/volume] in Serum or Plasma by Direct assay", ldl,
               "mg/dL", None, 100.0),
    ])


def a1c(v) -> tuple[str, str, list[Result]]:
    return ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood",
            [Result("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", v, "%", 4.0, 5.6)])


def troponin(v) -> tuple[str, str, list[Result]]:
    return ("10839-9", "Troponin I.cardiac [Mass/volume] in Serum or Plasma",
            [Result("10839-9", "Troponin I.cardiac [Mass/volume] in Serum or Plasma", v, "ng/mL", None, 0.04)])


def panels(time: str, *ps) -> list[tuple[str, str, str, list[Result]]]:
    return [(c, n, time, rs) for c, n, rs in ps]


def ccd(p: Patient, file, time, author, ext, labs, vit, service_low, conf="N") -> DocSpec:
    day = time[:8]
    return DocSpec(
        p, file, CCD, "Continuity of Care Document", T_CCD, time, author, author,
        f"Summary of care: {len(p.problems)} problems, {len(p.meds)} medications, allergies, "
        "immunizations, recent labs, vital signs, smoking status",
        confidentiality=conf, service=(service_low, day), doc_ext=ext,
        sections=[
            lambda b: allergies_section(b, p.allergies),
            lambda b: medications_section(b, p.meds),
            lambda b: problems_section(b, p.problems),
            lambda b: immunizations_section(b, p.immunizations),
            lambda b: results_section(b, labs),
            lambda b: vitals_section(b, day, vit),
            lambda b: social_history_section(b, p, day),
        ],
    )


def exposure_summary(p: Patient, file, time, author, ext, related: list[dict]) -> DocSpec:
    day = time[:8]
    first = min(d["start"] for d in p.deployments)
    last = max(d["end"] for d in p.deployments)
    sites = "; ".join(f"{d['site']}, {d['country_name']}" for d in p.deployments)
    agents = "; ".join(dict.fromkeys(x["agent"] for x in p.exposures))
    return DocSpec(
        p, file, NOTE, "Deployment and Toxic Exposure Summary", [], time, author, author,
        f"ILER-style summary: deployments ({sites}); exposure concerns ({agents}); related conditions",
        service=(first, last), service_code=("Z91.82", ICD10CM, "Personal history of military deployment"),
        encounter=(f"{ext}-E", "AMB", day, day), doc_ext=ext,
        sections=[
            lambda b: deployments_section(b, p),
            lambda b: exposures_section(b, p),
            lambda b: problems_section(b, related, title="Conditions Evaluated for Exposure Relationship"),
            lambda b: assessment_and_plan([
                f"{p.given} {p.family} (fictional) served with the {p.branch} with "
                f"{len(p.deployments)} deployment periods between {fmt_date(first)} and {fmt_date(last)}.",
                "Reported airborne hazard exposures are consistent with unit location data. The veteran "
                "is eligible for the Airborne Hazards and Open Burn Pit Registry; registry questionnaire "
                "completed during this visit.",
                "Conditions listed above were reviewed for a possible relationship to deployment "
                "exposures. Follow-up with primary care and pulmonary as scheduled.",
            ]),
        ],
    )


def documents() -> list[DocSpec]:
    pdf = minimal_pdf([
        "FICTIONAL SAMPLE DOCUMENT - NOT A REAL PATIENT",
        "",
        "Fort Example Army Medical Center (fictional MTF)",
        "Separation History and Physical Examination - scanned copy",
        "",
        "Service member: Casey L. Fictitious (fictional)   DOB: 1969-07-05",
        "Branch: U.S. Marine Corps   Separation date: 2004-06-30",
        "",
        "Exam: normal except mild expiratory wheeze; hearing within limits.",
        "Reported exposures: oil well fire smoke (1991), burn pit smoke (2003).",
        "Examiner: S. Placeholder, MD (fictional)",
    ])
    out: list[DocSpec] = []

    # ---- Alex Testpatient (Army; asthma / sinusitis after Balad and Bagram) ----
    a = ALEX
    out.append(ccd(a, "ccd-2024", "20241104143000-0500", DR_PRIMARY, "VA-24-0001",
                   panels("20241028", cbc(7.1, 15.2, 45.1, 245.0, "M"),
                          bmp(94.0, 140.0, 4.2, 102.0, 25.0, 15.0, 1.0, 9.4)),
                   vitals(138, 86, 74, 16, 36.8, 178.0, 88.5, 97), "20190101"))
    out.append(DocSpec(
        a, "progress-note-pulmonary-2023", PROGRESS, "Pulmonary Clinic Progress Note", T_PROGRESS,
        "20230615101500-0400", DR_PULM, DR_PULM,
        "Pulmonary follow-up for post-deployment asthma; spirometry narrative, vitals, plan",
        service=("20230615", "20230615"), encounter=("ENC-A-230615", "AMB", "20230615", "20230615"),
        doc_ext="VA-23-0415",
        sections=[
            lambda b: chief_complaint("Follow-up of asthma; increased rescue inhaler use over 2 months."),
            lambda b: allergies_section(b, a.allergies),
            lambda b: medications_section(b, a.meds),
            lambda b: problems_section(b, a.problems[:2]),
            lambda b: vitals_section(b, "20230615", vitals(132, 84, 78, 18, 36.7, 178.0, 87.0, 96)),
            lambda b: assessment_and_plan([
                "Asthma, moderate persistent, with onset after deployment to Joint Base Balad (2004-2005) "
                "and Bagram Airfield (2009-2010). Spirometry today: FEV1 78% predicted, FEV1/FVC 0.68, "
                "12% improvement after bronchodilator.",
                "Plan: continue fluticasone; add spacer; review inhaler technique; recheck in 3 months. "
                "Discussed PACT Act presumptive condition eligibility.",
            ]),
        ],
    ))
    out.append(DocSpec(
        a, "discharge-summary-2022", DISCHARGE, "Discharge Summary", T_DISCHARGE,
        "20220318160000-0400", DR_HOSP, DR_HOSP,
        "Community hospital admission for chest pain; MI ruled out (serial troponins), discharged home",
        service=("20220316", "20220318"), encounter=("ENC-A-220316", "IMP", "20220316", "20220318"),
        doc_ext="SCH-22-1187",
        sections=[
            lambda b: allergies_section(b, a.allergies),
            lambda b: hpi(["43-year-old veteran presented to the emergency department with 2 hours of "
                           "substernal chest pressure after climbing stairs. No radiation, no diaphoresis."]),
            lambda b: narrative_section([("1.3.6.1.4.1.19376.1.5.3.1.3.5",)], "8648-8",
                                        "Hospital course Narrative", "Hospital Course", [
                "Admitted to telemetry. Serial troponin I below the reference limit x3. ECG without "
                "ischemic change. Exercise stress test on day 2: no inducible ischemia at 10.1 METs.",
                "Chest pain felt to be musculoskeletal. Discharged home in stable condition."]),
            lambda b: diagnosis_section(
                b, [("2.16.840.1.113883.10.20.22.2.24",), ("2.16.840.1.113883.10.20.22.2.24", R21)],
                "11535-2", "Hospital discharge Dx Narrative", "Discharge Diagnosis",
                ("2.16.840.1.113883.10.20.22.4.33", R21), ("11535-2", "Hospital discharge Dx Narrative"),
                [problem("29857009", "Chest pain", "R07.9", "Chest pain, unspecified", "20220316",
                         "resolved")]),
            lambda b: results_section(b, panels("20220317", troponin(0.01),
                                                cbc(6.8, 14.9, 44.0, 231.0, "M"))),
            lambda b: discharge_medications_section(b, a.meds),
            lambda b: plan_of_treatment(["Follow up with VA primary care within 2 weeks.",
                                         "Return for chest pain at rest, shortness of breath or syncope."]),
        ],
    ))
    out.append(exposure_summary(a, "deployment-exposure-summary", "20190923090000-0500", DR_OCC,
                                "DOD-19-0031", a.problems[:2] + a.problems[3:]))
    out.append(DocSpec(
        a, "lab-report-2025", LAB, "Laboratory Report", [], "20250212113000-0500", DR_PATH, DR_PATH,
        "CBC and basic metabolic panel with reference ranges and interpretation flags",
        service=("20250212", "20250212"), service_code=("58410-2", LOINC, "CBC panel - Blood by Automated count"),
        order="ORD-A-250210", doc_ext="VA-25-0102",
        sections=[lambda b: results_section(b, panels("20250212", cbc(7.4, 15.0, 44.6, 251.0, "M"),
                                                      bmp(101.0, 139.0, 4.4, 101.0, 26.0, 17.0, 1.1, 9.5)))],
    ))

    # ---- Jordan Samplecase (Air Force; Kuwait, Djibouti) ----
    j = JORDAN
    out.append(ccd(j, "ccd-2025", "20250707120000-0400", DR_PRIMARY, "VA-25-0777",
                   panels("20250630", lipids(212.0, 160.0, 52.0, 128.0)),
                   vitals(118, 76, 68, 14, 36.6, 165.0, 64.0, 99), "20200101"))
    out.append(DocSpec(
        j, "referral-note-neurology-2021", REFERRAL, "Referral to Neurology", T_REFERRAL,
        "20210819150000-0400", DR_PRIMARY, DR_PRIMARY,
        "Referral from VA primary care to community neurology for chronic migraine",
        service=("20210819", "20210819"), encounter=("ENC-J-210819", "AMB", "20210819", "20210819"),
        recipient=DR_HOSP, doc_ext="VA-21-0312",
        sections=[
            lambda b: narrative_section([("1.3.6.1.4.1.19376.1.5.3.1.3.1",),
                                         ("1.3.6.1.4.1.19376.1.5.3.1.3.1", R20)], "42349-1",
                                        "Reason for referral Narrative", "Reason for Referral", [
                "Migraine increasing to 10-12 headache days per month despite NSAIDs; please evaluate "
                "for preventive therapy. Headaches began after deployment to Camp Lemonnier (2014)."]),
            lambda b: allergies_section(b, j.allergies),
            lambda b: medications_section(b, j.meds),
            lambda b: problems_section(b, j.problems),
            lambda b: assessment_and_plan([
                "Chronic migraine without aura, worsening. Neurological exam normal. No red-flag "
                "features. Referred to neurology; headache diary provided."]),
        ],
    ))
    out.append(DocSpec(
        j, "progress-note-2024", PROGRESS, "Primary Care Progress Note", T_PROGRESS,
        "20240226093000-0500", DR_PRIMARY, DR_PRIMARY,
        "Primary care follow-up: hyperlipidemia, migraine; vitals and lipid results",
        service=("20240226", "20240226"), encounter=("ENC-J-240226", "AMB", "20240226", "20240226"),
        doc_ext="VA-24-0190",
        sections=[
            lambda b: chief_complaint("Routine follow-up of cholesterol and migraine."),
            lambda b: medications_section(b, j.meds),
            lambda b: problems_section(b, j.problems),
            lambda b: vitals_section(b, "20240226", vitals(121, 78, 70, 14, 36.5, 165.0, 65.2, 99)),
            lambda b: results_section(b, panels("20240220", lipids(198.0, 140.0, 55.0, 112.0))),
            lambda b: assessment_and_plan([
                "Hyperlipidemia improving on atorvastatin; LDL 112 mg/dL. Continue therapy.",
                "Migraine: 4 headache days per month since neurology started preventive therapy."]),
        ],
    ))
    out.append(exposure_summary(j, "deployment-exposure-summary", "20200611103000-0500", DR_OCC,
                                "DOD-20-0107", [j.problems[0], j.problems[3]]))
    out.append(DocSpec(
        j, "lab-report-2020", LAB, "Laboratory Report", [], "20200115083000-0500", DR_PATH, DR_PATH,
        "Fasting lipid panel at diagnosis of hyperlipidemia",
        service=("20200114", "20200114"), service_code=("57698-3", LOINC,
                                                        "Lipid panel with direct LDL - Serum or Plasma"),
        order="ORD-J-200110", doc_ext="VA-20-0021",
        sections=[lambda b: results_section(b, panels("20200114", lipids(248.0, 190.0, 47.0, 165.0)))],
    ))

    # ---- Casey Fictitious (Marine Corps; Gulf War and Iraq) ----
    c = CASEY
    out.append(ccd(c, "ccd-2026", "20260105160000-0500", DR_PRIMARY, "VA-26-0003",
                   panels("20251229", a1c(7.4), bmp(148.0, 138.0, 4.6, 100.0, 27.0, 22.0, 1.2, 9.3)),
                   vitals(142, 88, 80, 18, 36.9, 175.0, 102.0, 94), "20210101"))
    out.append(DocSpec(
        c, "discharge-summary-2023", DISCHARGE, "Discharge Summary", T_DISCHARGE,
        "20231208141500-0500", DR_HOSP, DR_HOSP,
        "Admission for community-acquired pneumonia with COPD exacerbation at a community hospital",
        service=("20231203", "20231208"), encounter=("ENC-C-231203", "IMP", "20231203", "20231208"),
        doc_ext="SCH-23-4410",
        sections=[
            lambda b: allergies_section(b, c.allergies),
            lambda b: hpi(["54-year-old veteran with COPD presenting with 4 days of productive cough, "
                           "fever to 38.9 C and worsening dyspnoea. SpO2 88% on room air at triage."]),
            lambda b: narrative_section([("1.3.6.1.4.1.19376.1.5.3.1.3.5",)], "8648-8",
                                        "Hospital course Narrative", "Hospital Course", [
                "Right lower lobe infiltrate on chest X-ray. Treated with ceftriaxone and azithromycin "
                "(penicillin allergy is a mild rash), nebulised bronchodilators and prednisone 40 mg "
                "daily x5 days. Oxygen weaned to room air on day 4.",
                "Glucose elevated on steroids and managed with correctional insulin."]),
            lambda b: diagnosis_section(
                b, [("2.16.840.1.113883.10.20.22.2.24",), ("2.16.840.1.113883.10.20.22.2.24", R21)],
                "11535-2", "Hospital discharge Dx Narrative", "Discharge Diagnosis",
                ("2.16.840.1.113883.10.20.22.4.33", R21), ("11535-2", "Hospital discharge Dx Narrative"),
                [problem("385093006", "Community acquired pneumonia", "J18.9",
                         "Pneumonia, unspecified organism", "20231203", "resolved"),
                 problem("195951007", "Acute exacerbation of chronic obstructive airways disease",
                         "J44.1", "Chronic obstructive pulmonary disease with (acute) exacerbation",
                         "20231203", "resolved")]),
            lambda b: results_section(b, panels("20231203", cbc(14.8, 14.1, 42.5, 310.0, "M"),
                                                bmp(212.0, 134.0, 4.1, 97.0, 30.0, 24.0, 1.3, 9.0))),
            lambda b: vitals_section(b, "20231208", vitals(136, 82, 88, 20, 37.1, 175.0, 100.5, 93)),
            lambda b: discharge_medications_section(b, c.meds),
            lambda b: plan_of_treatment(["Complete 5-day prednisone course.",
                                         "VA pulmonary follow-up in 1 week; repeat chest X-ray in 6 weeks."]),
        ],
    ))
    out.append(DocSpec(
        c, "referral-note-sleep-2019", REFERRAL, "Referral to Sleep Medicine", T_REFERRAL,
        "20190517110000-0400", DR_PRIMARY, DR_PRIMARY,
        "VA primary care referral for suspected obstructive sleep apnea",
        service=("20190517", "20190517"), encounter=("ENC-C-190517", "AMB", "20190517", "20190517"),
        recipient=DR_PULM, doc_ext="VA-19-0099",
        sections=[
            lambda b: narrative_section([("1.3.6.1.4.1.19376.1.5.3.1.3.1",),
                                         ("1.3.6.1.4.1.19376.1.5.3.1.3.1", R20)], "42349-1",
                                        "Reason for referral Narrative", "Reason for Referral", [
                "Loud snoring, witnessed apnoeas and daytime sleepiness (Epworth 15). Please evaluate "
                "for obstructive sleep apnea; polysomnography requested."]),
            lambda b: allergies_section(b, c.allergies),
            lambda b: medications_section(b, c.meds[:4]),
            lambda b: problems_section(b, c.problems[:3]),
            lambda b: vitals_section(b, "20190517", vitals(146, 92, 82, 16, 36.8, 175.0, 104.0, 95)),
            lambda b: assessment_and_plan(["Probable obstructive sleep apnea in a patient with obesity "
                                           "and hypertension. Referral placed; driving safety discussed."]),
        ],
    ))
    out.append(exposure_summary(c, "deployment-exposure-summary", "20221011134500-0500", DR_OCC,
                                "DOD-22-0244", [c.problems[2]]))
    out.append(DocSpec(
        c, "lab-report-2025", LAB, "Laboratory Report", [], "20250605081500-0400", DR_PATH, DR_PATH,
        "Diabetes monitoring: HbA1c, basic metabolic panel, lipid panel",
        service=("20250604", "20250604"), service_code=("4548-4", LOINC,
                                                        "Hemoglobin A1c/Hemoglobin.total in Blood"),
        order="ORD-C-250601", doc_ext="VA-25-0460",
        sections=[lambda b: results_section(b, panels("20250604", a1c(7.9),
                                                      bmp(163.0, 139.0, 4.5, 101.0, 26.0, 21.0, 1.2, 9.4),
                                                      lipids(181.0, 230.0, 36.0, 99.0)))],
    ))
    out.append(DocSpec(
        c, "separation-exam-scanned", ("34117-2", "History and physical note"),
        "Separation History and Physical (scanned)", T_UNSTRUCTURED, "20200302100000-0600", DR_ARMY,
        DR_ARMY, "Unstructured document: scanned separation H&P as an embedded PDF (nonXMLBody)",
        service=("20040630", "20040630"), doc_ext="DOD-20-0511", pdf=pdf,
    ))

    # ---- Morgan Exampleton (Army National Guard; Kandahar, Qatar) ----
    m = MORGAN
    out.append(ccd(m, "ccd-2025", "20251118153000-0500", DR_PRIMARY, "VA-25-0993",
                   panels("20251110", cbc(6.2, 13.1, 39.8, 280.0, "F")),
                   vitals(112, 72, 72, 14, 36.6, 163.0, 61.0, 98), "20220101"))
    out.append(DocSpec(
        m, "progress-note-mental-health-2024", PROGRESS, "Mental Health Progress Note", T_PROGRESS,
        "20240917140000-0400", DR_PSY, DR_PSY,
        "Restricted (R) mental health progress note: PTSD follow-up, PCL-5 score, safety plan",
        confidentiality="R", service=("20240917", "20240917"),
        encounter=("ENC-M-240917", "AMB", "20240917", "20240917"), doc_ext="VA-24-0666",
        sections=[
            lambda b: chief_complaint("PTSD follow-up; nightmares and sleep disruption."),
            lambda b: medications_section(b, m.meds),
            lambda b: problems_section(b, m.problems[:1]),
            lambda b: assessment_and_plan([
                "PTSD related to indirect-fire attacks at Kandahar Airfield (2012-2013). PCL-5 score 41 "
                "(previous 52). Sleep improving. Denies suicidal ideation; safety plan reviewed.",
                "Continue weekly prolonged-exposure therapy; follow up in 4 weeks."]),
        ],
    ))
    out.append(exposure_summary(m, "deployment-exposure-summary", "20230130091500-0600", DR_OCC,
                                "DOD-23-0018", [m.problems[3], m.problems[1]]))
    out.append(DocSpec(
        m, "lab-report-2023", LAB, "Laboratory Report", [], "20230308101000-0500", DR_PATH, DR_PATH,
        "CBC and basic metabolic panel (routine)",
        service=("20230307", "20230307"), service_code=("51990-0", LOINC, "Basic metabolic panel - Blood"),
        order="ORD-M-230301", doc_ext="VA-23-0201",
        sections=[lambda b: results_section(b, panels("20230307", cbc(5.9, 11.6, 35.2, 265.0, "F"),
                                                      bmp(88.0, 141.0, 3.9, 104.0, 24.0, 11.0, 0.8, 9.2)))],
    ))
    return out


def readme(specs: list[DocSpec]) -> str:
    lines = [
        "# Sample documents (synthetic, fictional)",
        "",
        "C-CDA R2.1 documents for four **fictional** US veterans, written by this project for demos and",
        "tests. No real person, clinician, facility or identifier appears in them.",
        "",
        f"- patient ids: `{PATIENT_ROOT}` (community `{COMMUNITY}`)",
        f"- DoD-issued ids (second id in documents from the fictional MTF): `{DOD_PATIENT_ROOT}`",
        f"- organizations `{ORG_ROOT}.*`, clinicians `{PROVIDER_ROOT}`, encounters `{ENCOUNTER_ROOT}`,",
        f"  orders `{ORDER_ROOT}`",
        "",
        "Clinical codes are real (SNOMED CT, ICD-10-CM, LOINC, RxNorm, CVX, UCUM) so that the documents",
        "look like real exchange.",
        "",
        "Re-create them with `python sample_documents/generate.py` (deterministic output).",
        "",
        "The *Deployment and Toxic Exposure Summary* is in the spirit of the VA/DoD Individual",
        "Longitudinal Exposure Record (ILER). We know of no LOINC document type made for it, so it uses the generic",
        "`34109-9` *Note* with the US Realm Header only; deployments are coded with ICD-10-CM `Z91.82`",
        "and ISO 3166 country codes, exposure concerns with ICD-10-CM Z codes (Z77.110, Z57.39, Z77.098,",
        "Z57.0) plus the agent as original text (burn pit smoke, particulate matter, JP-8).",
        "",
        "| file | patient | type | what is in it |",
        "|---|---|---|---|",
    ]
    for s in specs:
        who = f"{s.patient.given} {s.patient.family} ({s.patient.ext})"
        kind = f"{s.title} (LOINC {s.type_code[0]}{', conf. R' if s.confidentiality == 'R' else ''})"
        lines.append(f"| `{s.patient.slug}/{s.file}.xml` | {who} | {kind} | {s.summary} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    specs = documents()
    for s in specs:
        path = HERE / s.patient.slug / f"{s.file}.xml"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(build(s))
    (HERE / "README.md").write_text(readme(specs), encoding="utf-8")
    print(f"wrote {len(specs)} documents for {len({s.patient.slug for s in specs})} patients")


if __name__ == "__main__":
    main()
