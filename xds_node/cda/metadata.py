"""C-CDA header -> XDS DocumentEntry metadata.

A Document Source that only has a CDA document still has to register correct XDS metadata.
Almost everything XDS wants is already in the CDA header (ITI TF-3 5.1 "Metadata-level
Content Profiles" and the HL7 C-CDA R2.1 companion guide describe the mapping); this module
reads it from there so that callers never hand-build patient ids, author XCNs or time stamps.

Only the header is parsed: it ends where ``ClinicalDocument/component`` (the body) starts, so
we feed the document to an incremental parser and stop as soon as the body element's start
tag is seen. That keeps extraction far below a millisecond for documents of any size and
means a multi-megabyte embedded PDF is never even tokenised. ``hash`` and ``size`` are not
set here: the repository computes them over the exact bytes it stores.
"""

from __future__ import annotations

import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from lxml import etree

from xds_node import safexml
from xds_node.ebxml.model import Author, Code, DocumentEntry, LocalizedString

__all__ = [
    "CDA_NS",
    "CLASS_BY_TYPE",
    "FORMAT_CODES",
    "LOINC",
    "CdaDefaults",
    "CdaError",
    "extract_metadata",
    "is_cda",
    "normalize_ts",
]

CDA_NS = "urn:hl7-org:v3"
LOINC = "2.16.840.1.113883.6.1"
CONFIDENTIALITY_SYSTEM = "2.16.840.1.113883.5.25"
FORMAT_CODE_SYSTEM = "1.3.6.1.4.1.19376.1.2.3"
SSN_ROOT = "2.16.840.1.113883.4.1"
ORDER_REF_TYPE = "urn:ihe:iti:xds:2013:order"
ENCOUNTER_REF_TYPE = "urn:ihe:iti:xds:2015:encounterId"

_CLINICAL_DOCUMENT = f"{{{CDA_NS}}}ClinicalDocument"
_COMPONENT = f"{{{CDA_NS}}}component"
_STRUCTURED_BODY = f"{{{CDA_NS}}}structuredBody"
_NON_XML_BODY = f"{{{CDA_NS}}}nonXMLBody"

_CCDA_DOC_TEMPLATE_PREFIX = "2.16.840.1.113883.10.20.22.1."
_CCDA_R21 = "2015-08-01"

#: HL7 C-CDA format codes (HL7 DocumentFormatCodes; used with the IHE format-code scheme OID).
FORMAT_CODES = {
    ("2.1", False): Code(
        "urn:hl7-org:sdwg:ccda-structuredBody:2.1", FORMAT_CODE_SYSTEM, "C-CDA R2.1 structured body"
    ),
    ("2.1", True): Code(
        "urn:hl7-org:sdwg:ccda-nonXMLBody:2.1", FORMAT_CODE_SYSTEM, "C-CDA R2.1 non-XML body"
    ),
    ("1.1", False): Code(
        "urn:hl7-org:sdwg:ccda-structuredBody:1.1", FORMAT_CODE_SYSTEM, "C-CDA R1.1 structured body"
    ),
    ("1.1", True): Code(
        "urn:hl7-org:sdwg:ccda-nonXMLBody:1.1", FORMAT_CODE_SYSTEM, "C-CDA R1.1 non-XML body"
    ),
}

#: Document type (LOINC) -> document class (LOINC), for the types C-CDA defines. A type not
#: listed is its own class: a consumer filtering by class still finds it by the type code.
CLASS_BY_TYPE: dict[str, tuple[str, str]] = {
    "34133-9": ("34133-9", "Summary of episode note"),
    "18842-5": ("18842-5", "Discharge summary"),
    "11490-0": ("18842-5", "Discharge summary"),
    "11506-3": ("11506-3", "Progress note"),
    "11488-4": ("11488-4", "Consult note"),
    "34847-4": ("11488-4", "Consult note"),
    "34117-2": ("34117-2", "History and physical note"),
    "11504-8": ("28570-0", "Procedure note"),
    "28570-0": ("28570-0", "Procedure note"),
    "18748-4": ("18726-0", "Radiology studies"),
    "18761-7": ("18761-7", "Transfer summary note"),
    "57133-1": ("57133-1", "Referral note"),
    "11502-2": ("26436-6", "Laboratory studies"),
    "18776-5": ("18776-5", "Plan of care note"),
    "52521-2": ("18776-5", "Plan of care note"),
}

_CONFIDENTIALITY_DISPLAY = {
    "U": "unrestricted",
    "L": "low",
    "M": "moderate",
    "N": "normal",
    "R": "restricted",
    "V": "very restricted",
}


class CdaError(ValueError):
    """The input is not a CDA document we can derive XDS metadata from (message names the file)."""


@dataclass
class CdaDefaults:
    """What a CDA header does not say (or may not say) but XDS metadata requires."""

    healthcare_facility_type_code: Code = field(
        default_factory=lambda: Code("394777002", "2.16.840.1.113883.6.96", "Health Encounter Site")
    )
    practice_setting_code: Code = field(
        default_factory=lambda: Code("408443003", "2.16.840.1.113883.6.96", "General medical practice")
    )
    #: When set, the recordTarget id with this root becomes the XDS patient id (affinity domain).
    patient_id_root: str | None = None
    repository_unique_id: str | None = None
    default_confidentiality: Code = field(
        default_factory=lambda: Code("N", CONFIDENTIALITY_SYSTEM, "normal")
    )
    default_language: str = "en-US"
    #: For CDA documents that claim no C-CDA template (the MIME type then says all there is).
    fallback_format_code: Code = field(
        default_factory=lambda: Code(
            "urn:ihe:iti:xds:2017:mimeTypeSufficient", FORMAT_CODE_SYSTEM, "mimeType Sufficient"
        )
    )


_DEFAULTS = CdaDefaults()

# --- hardened incremental parsing -----------------------------------------------------------

_FIRST_ELEMENT = re.compile(rb"<[A-Za-z_:\x80-\xff]")
_CHUNK = 8192


def _pull_parser() -> etree.XMLPullParser:
    return safexml.pull_parser(events=("start",), remove_pis=True, remove_comments=True)


def _has_doctype(data: bytes) -> bool:
    """A DOCTYPE can only precede the first element; check before any parser sees it."""
    m = _FIRST_ELEMENT.search(data)
    end = m.start() if m is not None else len(data)
    return data.find(b"<!DOCTYPE", 0, end) >= 0


def _first_chunk(data: bytes) -> int:
    """How much to feed first: up to just past the first ``...Body`` tag name, when there is one.

    Only a hint (the parser's events decide where the body starts); it lets a typical header be
    parsed in one feed without tokenising the body behind it.
    """
    i = data.find(b"Body")
    return i + 64 if i >= 0 else _CHUNK


#: The last header parsed on this thread, by the identity of its bytes: ingest reads a document's
#: header for its metadata and again for the patient index (two parses were 8 % of ingest).
_last_header = threading.local()


def _parse_header(data: bytes, name: str) -> tuple[etree._Element, bool]:
    """Parse up to the start of the body; return (root, has_non_xml_body). The same bytes object
    parsed again on the same thread gets the same (read-only) result."""
    last = getattr(_last_header, "value", None)
    if last is not None and last[0] is data:
        return last[1]
    result = _parse_header_once(data, name)
    _last_header.value = (data, result)
    return result


def _parse_header_once(data: bytes, name: str) -> tuple[etree._Element, bool]:
    if not data:
        raise CdaError(f"{name}: empty document")
    if _has_doctype(data):
        raise CdaError(f"{name}: DOCTYPE is not allowed in a CDA document")
    # A fresh parser per document: a pull parser abandoned mid-document cannot be reused.
    parser = _pull_parser()
    root: etree._Element | None = None
    non_xml = False
    done = False
    try:
        pos, step = 0, _first_chunk(data)
        while pos < len(data):
            parser.feed(data[pos : pos + step])
            pos, step = pos + step, _CHUNK
            for _event, el in parser.read_events():
                if root is None:
                    root = el
                    if el.tag != _CLINICAL_DOCUMENT:
                        raise CdaError(f"{name}: not a CDA document (root element is {el.tag})")
                    continue
                if el.tag in (_STRUCTURED_BODY, _NON_XML_BODY):
                    parent = el.getparent()
                    if parent is not None and parent.tag == _COMPONENT and parent.getparent() is root:
                        non_xml = el.tag == _NON_XML_BODY
                        done = True
                        break
            if done:
                break
        if not done:
            closed = parser.close()
            if root is None:
                root = closed
    except etree.XMLSyntaxError as exc:
        raise CdaError(f"{name}: not well-formed XML ({exc.msg})") from exc
    if root is None:
        raise CdaError(f"{name}: no root element")
    if root.tag != _CLINICAL_DOCUMENT:
        raise CdaError(f"{name}: not a CDA document (root element is {root.tag})")
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise CdaError(f"{name}: DOCTYPE is not allowed in a CDA document")
    return root, non_xml


def parse_header(data: bytes, *, source_name: str = "<document>") -> etree._Element:
    """The ClinicalDocument header (everything before the body), hardened; CdaError if not a CDA."""
    return _parse_header(data, source_name)[0]


def is_cda(data: bytes) -> bool:
    """Cheap check: is the root element ``{urn:hl7-org:v3}ClinicalDocument``? (no DTDs allowed)"""
    if not data or _has_doctype(data):
        return False
    parser = _pull_parser()
    try:
        for pos in range(0, min(len(data), 1 << 20), 4096):
            parser.feed(data[pos : pos + 4096])
            for _event, el in parser.read_events():
                docinfo = el.getroottree().docinfo
                if docinfo.doctype or docinfo.internalDTD is not None:
                    return False
                return el.tag == _CLINICAL_DOCUMENT
    except etree.XMLSyntaxError:
        return False
    return False


# --- small helpers --------------------------------------------------------------------------


def _q(path: str) -> str:
    """``a/b`` -> ``{urn:hl7-org:v3}a/{urn:hl7-org:v3}b`` (ElementPath caches compiled paths)."""
    return "/".join(f"{{{CDA_NS}}}{p}" for p in path.split("/"))


_P = {
    name: _q(path)
    for name, path in {
        "templateId": "templateId",
        "id": "id",
        "code": "code",
        "title": "title",
        "effectiveTime": "effectiveTime",
        "confidentialityCode": "confidentialityCode",
        "languageCode": "languageCode",
        "patientRole": "recordTarget/patientRole",
        "patient": "patient",
        "name": "name",
        "birthTime": "birthTime",
        "gender": "administrativeGenderCode",
        "addr": "addr",
        "author": "author",
        "functionCode": "functionCode",
        "assignedAuthor": "assignedAuthor",
        "assignedPerson": "assignedPerson",
        "device": "assignedAuthoringDevice",
        "softwareName": "softwareName",
        "modelName": "manufacturerModelName",
        "representedOrganization": "representedOrganization",
        "telecom": "telecom",
        "legalAuthenticator": "legalAuthenticator/assignedEntity",
        "serviceEvent": "documentationOf/serviceEvent",
        "low": "low",
        "high": "high",
        "translation": "translation",
        "orderId": "inFulfillmentOf/order/id",
        "encounter": "componentOf/encompassingEncounter",
        "facilityCode": "location/healthCareFacility/code",
    }.items()
}

_ESCAPES = str.maketrans({"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\"})


def _esc(value: str | None) -> str:
    """Escape HL7 v2 delimiters inside one component (ITI metadata values are HL7 v2 types)."""
    return value.translate(_ESCAPES) if value else ""


def _text(el: etree._Element | None) -> str:
    """Whitespace-normalised text content (leaf elements, the common case, skip itertext)."""
    if el is None:
        return ""
    if len(el) == 0:
        t = el.text
        return " ".join(t.split()) if t else ""
    return " ".join("".join(el.itertext()).split())


_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def _as_oid(root: str) -> str | None:
    """An II root as an OID: OIDs as they are, UUIDs as ``2.25.<int>`` (ITU-T X.667), else None."""
    if _OID.match(root):
        return root
    if _UUID.match(root):
        return f"2.25.{uuid.UUID(root).int}"
    return None


def _ids(parent: etree._Element, path: str) -> list[tuple[str, str | None]]:
    """(root, extension) of each usable ``id`` (no nullFlavor, has a root)."""
    out = []
    for el in parent.iterfind(path):
        root = (el.get("root") or "").strip()
        if root and el.get("nullFlavor") is None:
            ext = el.get("extension")
            out.append((root, ext.strip() if ext is not None and ext.strip() else None))
    return out


def _cx(ext: str, root: str) -> str | None:
    oid = _as_oid(root)
    return f"{_esc(ext)}^^^&{oid}&ISO" if oid else None


def _code(el: etree._Element | None) -> Code | None:
    if el is None:
        return None
    code, system = el.get("code"), el.get("codeSystem")
    if not code or not system:
        return None
    return Code(code.strip(), system.strip(), el.get("displayName") or None)


def _cwe(el: etree._Element | None) -> str | None:
    """A CD as the CWE string IHE uses for author role/specialty (``code^display^^&oid&ISO``)."""
    if el is None:
        return None
    code, system, display = el.get("code"), el.get("codeSystem"), el.get("displayName")
    if code and system and _as_oid(system):
        return f"{_esc(code)}^{_esc(display)}^^&{_as_oid(system)}&ISO".rstrip("^")
    text = display or _text(el.find(_q("originalText"))) or code
    return _esc(text) if text else None


# --- time stamps ----------------------------------------------------------------------------

_TS = re.compile(r"^(\d{4}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2})?)?)?)?)?)(?:\.\d+)?([+-]\d{2}(?:\d{2})?)?$")


def normalize_ts(value: str | None) -> str | None:
    """A CDA TS as an XDS DTM: UTC, same precision, no fraction; None when it is not a TS.

    Offsets only move values that carry an hour; a date alone is a calendar day and stays put.
    """
    if not value:
        return None
    m = _TS.match(value.strip())
    if m is None:
        return None
    digits, offset = m.group(1), m.group(2)
    precision = len(digits)
    if precision % 2:  # 5, 7, ... digits: not a TS precision
        return None
    padded = digits + "0101000000"[precision - 4 :] if precision < 14 else digits
    try:
        local = datetime(
            int(padded[0:4]),
            int(padded[4:6]),
            int(padded[6:8]),
            int(padded[8:10]),
            int(padded[10:12]),
            int(padded[12:14]),
        )
    except ValueError:  # month 13, 31 February, hour 24 ...
        return None
    if offset is None or precision < 10:
        return digits
    sign = -1 if offset[0] == "-" else 1
    off_h, off_m = int(offset[1:3]), int(offset[3:5] or 0)
    if off_m and precision == 10:
        precision = 12  # a half-hour offset needs minutes to say where the hour lands
    utc = local - sign * timedelta(hours=off_h, minutes=off_m)
    return utc.strftime("%Y%m%d%H%M%S")[:precision]


# --- people and organisations ---------------------------------------------------------------


_FAMILY, _GIVEN, _SUFFIX, _PREFIX = (f"{{{CDA_NS}}}{n}" for n in ("family", "given", "suffix", "prefix"))


def _name_parts(name: etree._Element | None) -> tuple[str, str, str, str, str]:
    """(family, given, middle, suffix, prefix); a name with only text goes into family."""
    if name is None:
        return "", "", "", "", ""
    if len(name) == 0:
        return _text(name), "", "", "", ""
    family, givens, suffix, prefix = "", [], "", ""
    for child in name:  # one pass over the children beats four path lookups
        tag = child.tag
        if tag == _FAMILY:
            family = family or _text(child)
        elif tag == _GIVEN:
            givens.append(_text(child))
        elif tag == _SUFFIX:
            suffix = suffix or _text(child)
        elif tag == _PREFIX:
            prefix = prefix or _text(child)
    return family, givens[0] if givens else "", " ".join(givens[1:]), suffix, prefix


def _pick_name(parent: etree._Element | None) -> etree._Element | None:
    if parent is None:
        return None
    names = list(parent.iterfind(_P["name"]))
    for n in names:
        if n.get("use") in (None, "L"):
            return n
    return names[0] if names else None


def _xcn(ids: list[tuple[str, str | None]], name: etree._Element | None) -> str | None:
    family, given, middle, suffix, prefix = _name_parts(name)
    ident, authority = "", ""
    for root, ext in ids:
        oid = _as_oid(root)
        if ext and oid:
            ident, authority = _esc(ext), f"&{oid}&ISO"
            break
    if not (ident or family or given):
        return None
    parts = [ident, _esc(family), _esc(given), _esc(middle), _esc(suffix), _esc(prefix), "", "", authority]
    return "^".join(parts).rstrip("^")


def _xon(org: etree._Element | None) -> str | None:
    if org is None:
        return None
    name = _text(_pick_name(org))
    if not name:
        return None
    for root, ext in _ids(org, _P["id"]):
        oid = _as_oid(root)
        if oid and ext:
            return f"{_esc(name)}^^^^^&{oid}&ISO^^^^{_esc(ext)}"
        if oid:
            return f"{_esc(name)}^^^^^^^^^{oid}"
    return _esc(name)


def _xtn(el: etree._Element) -> str | None:
    value = (el.get("value") or "").strip()
    scheme, _, rest = value.partition(":")
    scheme = scheme.lower()
    if not rest:
        return None
    if scheme == "mailto":
        return f"^^Internet^{_esc(rest)}"
    if scheme in ("tel", "fax"):
        kind = "PH" if scheme == "tel" else "FX"
        return f"^PRN^{kind}^^^^^^^^^{_esc(rest)}"
    return None


def _author(el: etree._Element) -> Author | None:
    assigned = el.find(_P["assignedAuthor"])
    if assigned is None:
        return None
    ids = _ids(assigned, _P["id"])
    person_el = assigned.find(_P["assignedPerson"])
    if person_el is not None:
        person = _xcn(ids, _pick_name(person_el))
    else:
        # A device author has no XCN of its own; its name in the family-name slot keeps it readable.
        device = assigned.find(_P["device"])
        label = ""
        if device is not None:
            label = _text(device.find(_P["softwareName"])) or _text(device.find(_P["modelName"]))
        person = f"^{_esc(label)}" if label else None
    author = Author(person=person)
    org = _xon(assigned.find(_P["representedOrganization"]))
    if org:
        author.institutions.append(org)
    specialty = _cwe(assigned.find(_P["code"]))
    role = _cwe(el.find(_P["functionCode"])) or specialty
    if role:
        author.roles.append(role)
    if specialty:
        author.specialties.append(specialty)
    for t in assigned.iterfind(_P["telecom"]):
        xtn = _xtn(t)
        if xtn:
            author.telecoms.append(xtn)
    if author.person is None and not author.institutions:
        return None
    return author


# --- the document ---------------------------------------------------------------------------


def _format_code(root: etree._Element, non_xml: bool, defaults: CdaDefaults) -> Code:
    """C-CDA release from the document-level templateIds.

    R2.1 templates carry extension 2015-08-01; R1.1 ones have no extension. HL7 defines no format
    code for R2.0 (2014-06-09), which R2.1 superseded with the same structure, so any other dated
    C-CDA template is reported as R2.1.
    """
    release = None
    for t in root.iterfind(_P["templateId"]):
        tid = t.get("root") or ""
        if not tid.startswith(_CCDA_DOC_TEMPLATE_PREFIX):
            continue
        ext = t.get("extension")
        if ext == _CCDA_R21:
            release = "2.1"
            break
        if ext:
            release = "2.1"
        elif release is None:
            release = "1.1"
    if release is None:
        return defaults.fallback_format_code
    c = FORMAT_CODES[(release, non_xml)]
    return Code(c.code, c.scheme, c.display)


#: Characters a DocumentEntry.uniqueId cannot carry in its extension part: whitespace and control
#: characters, and the HL7 v2 delimiters (``^`` separates root from extension).
_UID_EXT_BAD = re.compile(r"[\s\x00-\x1f^&~\\|]")


def _unique_id(root: etree._Element, name: str) -> str:
    """DocumentEntry.uniqueId of a CDA: ``root^extension`` of ClinicalDocument/id.

    ITI TF-3 4.2.3.2.26 bounds that form: the OID root at most 64 characters, the extension at most
    16 (UTF-8) characters, the whole at most 128 bytes. HL7 II allows far more in an extension
    (spaces, any length), and such an id is still the document's own: it is mapped, not refused,
    to ``2.25.<n>`` where n is the integer of the name-based UUID (RFC 4122 version 5, URL
    namespace) of the HL7 II URN ``urn:hl7ii:<root>:<extension>`` (ITU-T X.667 OID form) — the
    same id always maps to the same uniqueId, so replacements and resubmissions match.
    """
    ids = _ids(root, _P["id"])
    if not ids:
        raise CdaError(f"{name}: ClinicalDocument/id is missing")
    doc_root, ext = ids[0]
    oid = _as_oid(doc_root)
    if oid is None:
        raise CdaError(f"{name}: ClinicalDocument/id root {doc_root!r} is neither an OID nor a UUID")
    if len(oid) > 64:
        raise CdaError(f"{name}: ClinicalDocument/id root is longer than 64 characters")
    if ext is None:
        return oid
    unique_id = f"{oid}^{ext}"
    if len(ext) <= 16 and not _UID_EXT_BAD.search(ext) and len(unique_id.encode()) <= 128:
        return unique_id
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, f'urn:hl7ii:{doc_root}:{ext}').int}"


_STREET = f"{{{CDA_NS}}}streetAddressLine"
_ADDR_PARTS = tuple(f"{{{CDA_NS}}}{n}" for n in ("city", "state", "postalCode", "country"))


def _patient(
    root: etree._Element, name: str, defaults: CdaDefaults
) -> tuple[str, str, list[str]]:
    """(patientId, sourcePatientId, sourcePatientInfo)."""
    role = root.find(_P["patientRole"])
    if role is None:
        raise CdaError(f"{name}: recordTarget/patientRole is missing")
    ids = [(r, e) for r, e in _ids(role, _P["id"]) if e and _as_oid(r)]
    if not ids:
        raise CdaError(f"{name}: no usable patient id (root and extension) in recordTarget/patientRole")
    # SSNs identify the person everywhere: never the XDS patient id unless the affinity domain
    # really is the SSN (patient_id_root set to it), so they do not spread into registry metadata.
    non_ssn = [i for i in ids if i[0] != SSN_ROOT]
    local = non_ssn[0] if non_ssn else ids[0]
    if defaults.patient_id_root:
        chosen = next((i for i in ids if i[0] == defaults.patient_id_root), None)
        if chosen is None:
            raise CdaError(f"{name}: recordTarget/patientRole has no id with root {defaults.patient_id_root} "
                           f"(the configured patient_id_root)")
    elif non_ssn:
        chosen = non_ssn[0]
    else:
        raise CdaError(f"{name}: the only patient id is a Social Security Number; it is never used as the "
                       f"XDS patient id unless patient_id_root = \"{SSN_ROOT}\" says so")
    patient_id = _cx(chosen[1], chosen[0])
    source_id = _cx(local[1], local[0])
    assert patient_id and source_id  # ids were filtered on _as_oid above

    info = [f"PID-3|{_cx(e, r)}" for r, e in ids if r != SSN_ROOT or (r, e) in (chosen, local)]
    patient = role.find(_P["patient"])
    if patient is not None:
        family, given, middle, suffix, prefix = _name_parts(_pick_name(patient))
        if family or given:
            xpn = "^".join(_esc(p) for p in (family, given, middle, suffix, prefix))
            info.append(f"PID-5|{xpn}")
        birth = patient.find(_P["birthTime"])
        if birth is not None and (bt := normalize_ts((birth.get("value") or "")[:8])):
            info.append(f"PID-7|{bt}")
        gender = patient.find(_P["gender"])
        if gender is not None and gender.get("code"):
            g = gender.get("code", "").upper()
            info.append(f"PID-8|{'U' if g == 'UN' else g}")
    addr = role.find(_P["addr"])
    if addr is not None:
        streets: list[str] = []
        fields = dict.fromkeys(_ADDR_PARTS, "")
        for child in addr:
            if child.tag == _STREET:
                streets.append(_text(child))
            elif child.tag in fields and not fields[child.tag]:
                fields[child.tag] = _text(child)
        parts = [streets[0] if streets else "", " ".join(streets[1:]), *fields.values()]
        if any(parts):
            info.append("PID-11|" + "^".join(_esc(p) for p in parts).rstrip("^"))
    return patient_id, source_id, info


def _reference_ids(root: etree._Element) -> list[str]:
    out = []
    for r, e in _ids(root, _P["orderId"]):
        if e and (cx := _cx(e, r)):
            out.append(f"{cx}^{ORDER_REF_TYPE}")
    enc = root.find(_P["encounter"])
    if enc is not None:
        for r, e in _ids(enc, _P["id"]):
            if e and (cx := _cx(e, r)):
                out.append(f"{cx}^{ENCOUNTER_REF_TYPE}")
    return out


def extract_metadata(
    data: bytes,
    *,
    source_name: str = "<document>",
    defaults: CdaDefaults | None = None,
    entry_id: str | None = None,
) -> DocumentEntry:
    """Derive a stable DocumentEntry from a CDA document's header.

    Raises :class:`CdaError` (message starts with ``source_name``) when the bytes are not a
    well-formed CDA document or lack what XDS requires (ids, type, effective time).
    """
    d = defaults or _DEFAULTS
    name = source_name
    root, non_xml = _parse_header(data, name)

    type_code = _code(root.find(_P["code"]))
    if type_code is None:
        raise CdaError(f"{name}: ClinicalDocument/code has no code and codeSystem")
    creation = normalize_ts(_attr(root.find(_P["effectiveTime"]), "value"))
    if creation is None:
        raise CdaError(f"{name}: ClinicalDocument/effectiveTime is missing or not a valid time stamp")
    unique_id = _unique_id(root, name)
    patient_id, source_patient_id, patient_info = _patient(root, name, d)

    lang_el = root.find(_P["languageCode"])
    language = (lang_el.get("code") if lang_el is not None else None) or d.default_language
    title = _text(root.find(_P["title"])) or type_code.display

    cls = CLASS_BY_TYPE.get(type_code.code) if type_code.scheme == LOINC else None
    class_code = (
        Code(cls[0], LOINC, cls[1]) if cls else Code(type_code.code, type_code.scheme, type_code.display)
    )

    conf_codes = []
    for c in root.iterfind(_P["confidentialityCode"]):
        code = c.get("code")
        if code:
            system = c.get("codeSystem") or CONFIDENTIALITY_SYSTEM
            display = c.get("displayName") or _CONFIDENTIALITY_DISPLAY.get(code)
            conf_codes.append(Code(code, system, display))
    if not conf_codes:
        dc = d.default_confidentiality
        conf_codes.append(Code(dc.code, dc.scheme, dc.display))

    authors = [a for el in root.iterfind(_P["author"]) if (a := _author(el)) is not None]
    legal = root.find(_P["legalAuthenticator"])
    legal_xcn = None
    if legal is not None:
        legal_xcn = _xcn(_ids(legal, _P["id"]), _pick_name(legal.find(_P["assignedPerson"])))

    start = stop = None
    event_codes: list[Code] = []
    for se in root.iterfind(_P["serviceEvent"]):
        et = se.find(_P["effectiveTime"])
        if et is not None and start is None and stop is None:
            start = normalize_ts(_attr(et.find(_P["low"]), "value")) or normalize_ts(et.get("value"))
            stop = normalize_ts(_attr(et.find(_P["high"]), "value")) or (
                normalize_ts(et.get("value")) if et.get("value") else None
            )
        code_el = se.find(_P["code"])
        if code_el is not None:
            for c in (code_el, *code_el.iterfind(_P["translation"])):
                if (ec := _code(c)) and all(ec.key() != x.key() for x in event_codes):
                    event_codes.append(ec)

    facility = None
    enc = root.find(_P["encounter"])
    if enc is not None:
        facility = _code(enc.find(_P["facilityCode"]))
    if facility is None:
        fd = d.healthcare_facility_type_code
        facility = Code(fd.code, fd.scheme, fd.display)
    # No header element carries a practice setting (healthCareFacility/code is a facility type),
    # so it comes from the per-source configuration.
    ps = d.practice_setting_code

    return DocumentEntry(
        id=entry_id or f"urn:uuid:{uuid.uuid4()}",
        title=[LocalizedString(title, lang=language)] if title else [],
        mime_type="text/xml",
        unique_id=unique_id,
        patient_id=patient_id,
        source_patient_id=source_patient_id,
        source_patient_info=patient_info,
        creation_time=creation,
        language_code=language,
        legal_authenticator=legal_xcn,
        repository_unique_id=d.repository_unique_id,
        service_start_time=start,
        service_stop_time=stop,
        reference_ids=_reference_ids(root),
        authors=authors,
        class_code=class_code,
        type_code=type_code,
        format_code=_format_code(root, non_xml, d),
        healthcare_facility_type_code=facility,
        practice_setting_code=Code(ps.code, ps.scheme, ps.display),
        confidentiality_codes=conf_codes,
        event_codes=event_codes,
    )


def _attr(el: etree._Element | None, name: str) -> str | None:
    return el.get(name) if el is not None else None
