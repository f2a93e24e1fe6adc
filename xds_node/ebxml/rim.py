"""ebRIM 3.0 <-> domain model: the one place that reads and writes registry XML.

Reading is tolerant (what real Document Sources send varies: classifications declared inside or
beside a RegistryPackage, missing ids, extra slots) and lossless: what the model has no field for
is kept in its ``extra_*`` lists. Writing is strict and deterministic, in the element order the
ebRIM 3.0 schema requires.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence

from lxml import etree

from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import (
    Association,
    Author,
    Classification,
    Code,
    DocumentEntry,
    ExternalIdentifier,
    Folder,
    LocalizedString,
    ObjectRef,
    RegistryError,
    RegistryObject,
    RegistryResponse,
    Slot,
    StoredQuery,
    Submission,
    SubmissionSet,
)

_Element = etree._Element

R = f"{{{v.RIM}}}"
RS_ = f"{{{v.RS}}}"
Q = f"{{{v.QUERY}}}"
LCM_ = f"{{{v.LCM}}}"

T_SLOT = R + "Slot"
T_VALUELIST = R + "ValueList"
T_VALUE = R + "Value"
T_NAME = R + "Name"
T_DESCRIPTION = R + "Description"
T_LOCALIZED = R + "LocalizedString"
T_VERSIONINFO = R + "VersionInfo"
T_CLASSIFICATION = R + "Classification"
T_EXTID = R + "ExternalIdentifier"
T_EXTRINSIC = R + "ExtrinsicObject"
T_PACKAGE = R + "RegistryPackage"
T_ASSOCIATION = R + "Association"
T_OBJECTREF = R + "ObjectRef"
T_OBJECTLIST = R + "RegistryObjectList"

RIM_NSMAP = {"rim": v.RIM}


class MetadataParseError(ValueError):
    """The XML is well formed but is not ebRIM 3.0 metadata we can read."""


def new_uuid() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

# Single-valued DocumentEntry slots and the model attribute each fills.
_DE_SLOTS = {
    "creationTime": "creation_time",
    "hash": "hash",
    "size": "size",
    "languageCode": "language_code",
    "legalAuthenticator": "legal_authenticator",
    "repositoryUniqueId": "repository_unique_id",
    "serviceStartTime": "service_start_time",
    "serviceStopTime": "service_stop_time",
    "sourcePatientId": "source_patient_id",
    "URI": "uri",
    "documentAvailability": "document_availability",
}
_DE_MULTI_SLOTS = {
    "sourcePatientInfo": "source_patient_info",
    "urn:ihe:iti:xds:2013:referenceIdList": "reference_ids",
}
_DE_CODES = {
    v.DOC_CLASS_CODE: "class_code",
    v.DOC_TYPE_CODE: "type_code",
    v.DOC_FORMAT_CODE: "format_code",
    v.DOC_HEALTHCARE_FACILITY_TYPE_CODE: "healthcare_facility_type_code",
    v.DOC_PRACTICE_SETTING_CODE: "practice_setting_code",
}
_DE_CODE_LISTS = {
    v.DOC_CONFIDENTIALITY_CODE: "confidentiality_codes",
    v.DOC_EVENT_CODE: "event_codes",
}
_AUTHOR_SLOTS = {
    "authorPerson": "person",
    "authorInstitution": "institutions",
    "authorRole": "roles",
    "authorSpecialty": "specialties",
    "authorSpeciality": "specialties",  # a common misspelling seen in real traffic
    "authorTelecommunication": "telecoms",
}


def _text(el: _Element | None) -> str:
    return (el.text or "").strip() if el is not None else ""


def _localized(el: _Element | None) -> list[LocalizedString]:
    if el is None:
        return []
    out = []
    for ls in el.iterchildren(T_LOCALIZED):
        out.append(
            LocalizedString(
                value=ls.get("value", ""),
                lang=ls.get("{http://www.w3.org/XML/1998/namespace}lang"),
                charset=ls.get("charset"),
            )
        )
    return out


def _read_slot(el: _Element) -> Slot:
    values = [(val.text or "") for vl in el.iterchildren(T_VALUELIST) for val in vl.iterchildren(T_VALUE)]
    return Slot(name=el.get("name", ""), values=values, slot_type=el.get("slotType"))


def _read_slots(el: _Element) -> list[Slot]:
    return [_read_slot(s) for s in el.iterchildren(T_SLOT)]


def _read_code(el: _Element) -> Code:
    scheme = ""
    for s in el.iterchildren(T_SLOT):
        if s.get("name") == "codingScheme":
            vals = _read_slot(s).values
            scheme = vals[0] if vals else ""
    names = _localized(el.find(T_NAME))
    return Code(
        code=el.get("nodeRepresentation", ""),
        scheme=scheme,
        display=names[0].value if names else None,
        id=el.get("id"),
    )


def _read_author(el: _Element) -> Author:
    author = Author(id=el.get("id"))
    for slot in _read_slots(el):
        attr = _AUTHOR_SLOTS.get(slot.name)
        if attr == "person":
            author.person = slot.values[0] if slot.values else None
            if len(slot.values) > 1:
                author.extra_slots.append(Slot(slot.name, slot.values[1:], slot.slot_type))
        elif attr is not None:
            getattr(author, attr).extend(slot.values)
        else:
            author.extra_slots.append(slot)
    return author


def _read_classification(el: _Element) -> Classification:
    return Classification(
        scheme=el.get("classificationScheme"),
        node=el.get("classificationNode"),
        node_representation=el.get("nodeRepresentation"),
        classified_object=el.get("classifiedObject"),
        id=el.get("id"),
        name=_localized(el.find(T_NAME)),
        slots=_read_slots(el),
    )


def _read_common(el: _Element, obj: RegistryObject) -> None:
    obj.lid = el.get("lid")
    obj.home = el.get("home")
    obj.status = el.get("status")
    obj.title = _localized(el.find(T_NAME))
    obj.comments = _localized(el.find(T_DESCRIPTION))
    vi = el.find(T_VERSIONINFO)
    if vi is not None:
        obj.version_name = vi.get("versionName")


_XS_INTEGER = re.compile(r"[+-]?[0-9]+")


def _apply_single_slots(obj: RegistryObject, slots: Iterable[Slot], single: dict[str, str],
                        multi: dict[str, str]) -> None:
    """Fill named fields from slots; repeated or multi-valued single slots keep their surplus as extras."""
    for slot in slots:
        if slot.name in single:
            attr = single[slot.name]
            if getattr(obj, attr) is None and slot.values:
                raw = slot.values[0]
                if attr == "size":
                    # xs:integer only: int() alone would also take "1_000" and non-ASCII digits
                    digits = raw.strip()
                    try:
                        if not _XS_INTEGER.fullmatch(digits):
                            raise ValueError(digits)
                        setattr(obj, attr, int(digits))  # past 4300 digits int() refuses too
                    except ValueError:
                        obj.extra_slots.append(slot)  # validation reports the bad size
                        continue
                else:
                    setattr(obj, attr, raw)
                if len(slot.values) > 1:
                    obj.extra_slots.append(Slot(slot.name, slot.values[1:], slot.slot_type))
            else:
                obj.extra_slots.append(slot)
        elif slot.name in multi:
            getattr(obj, multi[slot.name]).extend(slot.values)
        else:
            obj.extra_slots.append(slot)


def read_document_entry(el: _Element) -> DocumentEntry:
    de = DocumentEntry(id=el.get("id", ""), object_type=el.get("objectType"), mime_type=el.get("mimeType"))
    _read_common(el, de)
    _apply_single_slots(de, _read_slots(el), _DE_SLOTS, _DE_MULTI_SLOTS)
    for c in el.iterchildren(T_CLASSIFICATION):
        scheme = c.get("classificationScheme")
        if scheme == v.DOC_AUTHOR:
            de.authors.append(_read_author(c))
        elif scheme in _DE_CODES and getattr(de, _DE_CODES[scheme]) is None:
            setattr(de, _DE_CODES[scheme], _read_code(c))
        elif scheme in _DE_CODE_LISTS:
            getattr(de, _DE_CODE_LISTS[scheme]).append(_read_code(c))
        elif c.get("classificationNode") == v.DOC_LIMITED_METADATA:
            de.limited_metadata = True
            de.extra_classifications.append(_read_classification(c))
        else:
            de.extra_classifications.append(_read_classification(c))
    for ei in el.iterchildren(T_EXTID):
        scheme, value = ei.get("identificationScheme"), ei.get("value", "")
        if scheme == v.DOC_PATIENT_ID and de.patient_id is None:
            de.patient_id, de.patient_id_ident_id = value, ei.get("id")
        elif scheme == v.DOC_UNIQUE_ID and de.unique_id is None:
            de.unique_id, de.unique_id_ident_id = value, ei.get("id")
        else:
            de.extra_identifiers.append(_read_extid(ei))
    return de


def _read_extid(ei: _Element) -> ExternalIdentifier:
    return ExternalIdentifier(
        scheme=ei.get("identificationScheme", ""),
        value=ei.get("value", ""),
        id=ei.get("id"),
        registry_object=ei.get("registryObject"),
        name=_localized(ei.find(T_NAME)),
    )


def _package_kind(el: _Element, outer_nodes: dict[str, str]) -> str:
    """'ss' or 'folder', from the classification node inside or beside the package."""
    for c in el.iterchildren(T_CLASSIFICATION):
        node = c.get("classificationNode")
        if node == v.SUBMISSION_SET_NODE:
            return "ss"
        if node == v.FOLDER_NODE:
            return "folder"
    node = outer_nodes.get(el.get("id", ""))
    if node == v.SUBMISSION_SET_NODE:
        return "ss"
    if node == v.FOLDER_NODE:
        return "folder"
    schemes = {ei.get("identificationScheme") for ei in el.iterchildren(T_EXTID)}
    if v.SS_UNIQUE_ID in schemes or v.SS_SOURCE_ID in schemes:
        return "ss"
    if v.FOLDER_UNIQUE_ID in schemes:
        return "folder"
    raise MetadataParseError(f"RegistryPackage {el.get('id')!r} is neither a SubmissionSet nor a Folder")


def read_submission_set(el: _Element) -> SubmissionSet:
    ss = SubmissionSet(id=el.get("id", ""), object_type=el.get("objectType"))
    _read_common(el, ss)
    _apply_single_slots(ss, _read_slots(el), {"submissionTime": "submission_time"},
                        {"intendedRecipient": "intended_recipients"})
    for c in el.iterchildren(T_CLASSIFICATION):
        scheme, node = c.get("classificationScheme"), c.get("classificationNode")
        if scheme == v.SS_AUTHOR:
            ss.authors.append(_read_author(c))
        elif scheme == v.SS_CONTENT_TYPE_CODE and ss.content_type_code is None:
            ss.content_type_code = _read_code(c)
        elif node == v.SUBMISSION_SET_NODE:
            ss.node_classification_id = c.get("id") or ss.node_classification_id or new_uuid()
        elif node == v.SS_LIMITED_METADATA:
            ss.limited_metadata = True
            ss.extra_classifications.append(_read_classification(c))
        else:
            ss.extra_classifications.append(_read_classification(c))
    for ei in el.iterchildren(T_EXTID):
        scheme, value = ei.get("identificationScheme"), ei.get("value", "")
        if scheme == v.SS_UNIQUE_ID and ss.unique_id is None:
            ss.unique_id, ss.unique_id_ident_id = value, ei.get("id")
        elif scheme == v.SS_SOURCE_ID and ss.source_id is None:
            ss.source_id, ss.source_id_ident_id = value, ei.get("id")
        elif scheme == v.SS_PATIENT_ID and ss.patient_id is None:
            ss.patient_id, ss.patient_id_ident_id = value, ei.get("id")
        else:
            ss.extra_identifiers.append(_read_extid(ei))
    return ss


def read_folder(el: _Element) -> Folder:
    fd = Folder(id=el.get("id", ""), object_type=el.get("objectType"))
    _read_common(el, fd)
    _apply_single_slots(fd, _read_slots(el), {"lastUpdateTime": "last_update_time"}, {})
    for c in el.iterchildren(T_CLASSIFICATION):
        scheme, node = c.get("classificationScheme"), c.get("classificationNode")
        if scheme == v.FOLDER_CODE_LIST:
            fd.codes.append(_read_code(c))
        elif node == v.FOLDER_NODE:
            fd.node_classification_id = c.get("id") or fd.node_classification_id or new_uuid()
        elif node == v.FOLDER_LIMITED_METADATA:
            fd.limited_metadata = True
            fd.extra_classifications.append(_read_classification(c))
        else:
            fd.extra_classifications.append(_read_classification(c))
    for ei in el.iterchildren(T_EXTID):
        scheme, value = ei.get("identificationScheme"), ei.get("value", "")
        if scheme == v.FOLDER_UNIQUE_ID and fd.unique_id is None:
            fd.unique_id, fd.unique_id_ident_id = value, ei.get("id")
        elif scheme == v.FOLDER_PATIENT_ID and fd.patient_id is None:
            fd.patient_id, fd.patient_id_ident_id = value, ei.get("id")
        else:
            fd.extra_identifiers.append(_read_extid(ei))
    return fd


def read_association(el: _Element) -> Association:
    assoc = Association(
        id=el.get("id", ""),
        object_type=el.get("objectType"),
        association_type=el.get("associationType", ""),
        source=el.get("sourceObject", ""),
        target=el.get("targetObject", ""),
    )
    _read_common(el, assoc)
    _apply_single_slots(
        assoc,
        _read_slots(el),
        {"SubmissionSetStatus": "submission_set_status", "OriginalStatus": "original_status",
         "NewStatus": "new_status"},
        {},
    )
    for c in el.iterchildren(T_CLASSIFICATION):
        assoc.extra_classifications.append(_read_classification(c))
    for ei in el.iterchildren(T_EXTID):
        assoc.extra_identifiers.append(_read_extid(ei))
    return assoc


def read_object(el: _Element, outer_nodes: dict[str, str] | None = None):
    """Read one registry object element into its model object (ObjectRef included)."""
    tag = el.tag
    if tag == T_EXTRINSIC:
        return read_document_entry(el)
    if tag == T_PACKAGE:
        kind = _package_kind(el, outer_nodes or {})
        return read_submission_set(el) if kind == "ss" else read_folder(el)
    if tag == T_ASSOCIATION:
        return read_association(el)
    if tag == T_OBJECTREF:
        return ObjectRef(id=el.get("id", ""), home=el.get("home"))
    raise MetadataParseError(f"unsupported registry object {etree.QName(tag).localname}")


def read_object_list(objects: _Element | None) -> Submission:
    """Read a rim:RegistryObjectList into a Submission (classifications beside packages included)."""
    sub = Submission()
    if objects is None:
        return sub
    outer_nodes: dict[str, str] = {}
    node_ids: dict[str, str] = {}
    outer_classifications: list[_Element] = []
    for el in objects.iterchildren(T_CLASSIFICATION):
        node = el.get("classificationNode")
        target = el.get("classifiedObject", "")
        if node in (v.SUBMISSION_SET_NODE, v.FOLDER_NODE) and target:
            outer_nodes[target] = node
            node_ids[target] = el.get("id") or new_uuid()
        else:
            outer_classifications.append(el)
    for el in objects:
        if not isinstance(el.tag, str) or el.tag == T_CLASSIFICATION:
            continue
        obj = read_object(el, outer_nodes)
        if isinstance(obj, DocumentEntry):
            sub.documents.append(obj)
        elif isinstance(obj, SubmissionSet):
            if obj.node_classification_id is None:
                obj.node_classification_id = node_ids.get(obj.id)
            if sub.submission_set is None:
                sub.submission_set = obj
            else:
                raise MetadataParseError("more than one SubmissionSet in the submission")
        elif isinstance(obj, Folder):
            if obj.node_classification_id is None:
                obj.node_classification_id = node_ids.get(obj.id)
            sub.folders.append(obj)
        elif isinstance(obj, Association):
            sub.associations.append(obj)
        elif isinstance(obj, ObjectRef):
            sub.object_refs.append(obj)
    sub.extra_objects = [_read_classification(c) for c in outer_classifications]
    return sub


def read_submit_objects_request(el: _Element) -> Submission:
    """lcm:SubmitObjectsRequest -> Submission."""
    if el.tag != LCM_ + "SubmitObjectsRequest":
        raise MetadataParseError(f"expected lcm:SubmitObjectsRequest, got {etree.QName(el.tag).localname}")
    return read_object_list(el.find(T_OBJECTLIST))


def read_adhoc_query_request(el: _Element) -> StoredQuery:
    """query:AdhocQueryRequest -> StoredQuery with raw slot values (parsed later by ebxml.query)."""
    if el.tag != Q + "AdhocQueryRequest":
        raise MetadataParseError(f"expected query:AdhocQueryRequest, got {etree.QName(el.tag).localname}")
    option = el.find(Q + "ResponseOption")
    query = el.find(R + "AdhocQuery")
    if query is None:
        raise MetadataParseError("AdhocQueryRequest has no rim:AdhocQuery")
    slots: dict[str, list[list[str]]] = {}
    for s in query.iterchildren(T_SLOT):
        slot = _read_slot(s)
        slots.setdefault(slot.name, []).append(slot.values)
    return StoredQuery(
        query_id=query.get("id", ""),
        return_type=(option.get("returnType") if option is not None else None) or "LeafClass",
        return_composed_objects=(option.get("returnComposedObjects", "true") if option is not None
                                 else "true").lower() == "true",
        home=query.get("home"),
        slots=slots,
        request_id=el.get("id"),
    )


def read_registry_response(el: _Element) -> RegistryResponse:
    """rs:RegistryResponse (or anything with status + RegistryErrorList) -> RegistryResponse."""
    resp = RegistryResponse(status=v.normalize_status(el.get("status", "")), request_id=el.get("requestId"))
    errs = el.find(RS_ + "RegistryErrorList")
    if errs is not None:
        for e in errs.iterchildren(RS_ + "RegistryError"):
            resp.errors.append(
                RegistryError(
                    code=e.get("errorCode", ""),
                    context=e.get("codeContext", "") or (e.text or ""),
                    severity=e.get("severity", v.SEVERITY_ERROR),
                    location=e.get("location"),
                )
            )
    return resp


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

# Objects are written straight to text (values escaped here), not through lxml element building:
# on registration this is the hot path, and building a tree element by element costs ~10x more.
# Functions returning elements parse that text, which lxml does in C.

_NS_DECL = f' xmlns:rim="{v.RIM}"'
_ATTR_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\n": "&#10;",
                               "\r": "&#13;", "\t": "&#9;"})
_TEXT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})


def _ea(value: object) -> str:
    return str(value).translate(_ATTR_ESCAPES)


def _et(value: str) -> str:
    return value.translate(_TEXT_ESCAPES)


def _open(p: list[str], local: str, attrs: Sequence[tuple[str, str | None]], *, root: bool = False,
          empty: bool = False) -> None:
    p.append("<rim:" + local)
    if root:
        p.append(_NS_DECL)
    for key, value in attrs:
        if value is not None:
            p.append(f' {key}="{_ea(value)}"')
    p.append("/>" if empty else ">")


def _slot(p: list[str], name: str, values: Sequence[str], slot_type: str | None = None) -> None:
    p.append(f'<rim:Slot name="{_ea(name)}"')
    if slot_type:
        p.append(f' slotType="{_ea(slot_type)}"')
    p.append("><rim:ValueList>")
    for value in values:
        p.append(f"<rim:Value>{_et(value)}</rim:Value>")
    p.append("</rim:ValueList></rim:Slot>")


def _w_localized(p: list[str], local: str, strings: Sequence[LocalizedString]) -> None:
    if not strings:
        return
    p.append(f"<rim:{local}>")
    for ls in strings:
        p.append("<rim:LocalizedString")
        if ls.charset:
            p.append(f' charset="{_ea(ls.charset)}"')
        p.append(f' value="{_ea(ls.value)}"')
        if ls.lang:
            p.append(f' xml:lang="{_ea(ls.lang)}"')
        p.append("/>")
    p.append(f"</rim:{local}>")


def _common_attrs(obj: RegistryObject) -> list[tuple[str, str | None]]:
    return [("id", obj.id), ("home", obj.home), ("lid", obj.lid), ("objectType", obj.object_type),
            ("status", obj.status)]


def _names(p: list[str], obj: RegistryObject) -> None:
    _w_localized(p, "Name", obj.title)
    _w_localized(p, "Description", obj.comments)
    if obj.version_name:
        p.append(f'<rim:VersionInfo versionName="{_ea(obj.version_name)}"/>')


def _code(p: list[str], scheme: str, owner: str, code: Code) -> None:
    _open(p, "Classification", [("id", code.id or new_uuid()), ("classificationScheme", scheme),
                                ("classifiedObject", owner), ("nodeRepresentation", code.code)])
    _slot(p, "codingScheme", [code.scheme])
    _w_localized(p, "Name", [LocalizedString(code.display if code.display is not None else code.code)])
    p.append("</rim:Classification>")


def _author(p: list[str], scheme: str, owner: str, author: Author) -> None:
    _open(p, "Classification", [("id", author.id or new_uuid()), ("classificationScheme", scheme),
                                ("classifiedObject", owner), ("nodeRepresentation", "")])
    if author.person:
        _slot(p, "authorPerson", [author.person])
    for name, values in (("authorInstitution", author.institutions), ("authorRole", author.roles),
                         ("authorSpecialty", author.specialties), ("authorTelecommunication", author.telecoms)):
        if values:
            _slot(p, name, values)
    for s in author.extra_slots:
        _slot(p, s.name, s.values, s.slot_type)
    p.append("</rim:Classification>")


def _classification(p: list[str], owner: str, cl: Classification) -> None:
    _open(p, "Classification", [("id", cl.id or new_uuid()), ("classificationScheme", cl.scheme),
                                ("classifiedObject", cl.classified_object or owner),
                                ("classificationNode", cl.node), ("nodeRepresentation", cl.node_representation)])
    for s in cl.slots:
        _slot(p, s.name, s.values, s.slot_type)
    _w_localized(p, "Name", cl.name)
    p.append("</rim:Classification>")


def _node_classification(p: list[str], owner: str, node: str, cl_id: str | None) -> None:
    _open(p, "Classification", [("id", cl_id or new_uuid()), ("classifiedObject", owner),
                                ("classificationNode", node)], empty=True)


def _extid(p: list[str], owner: str, scheme: str, value: str, ident_id: str | None,
           name: Sequence[LocalizedString] | None = None) -> None:
    _open(p, "ExternalIdentifier", [("id", ident_id or new_uuid()), ("registryObject", owner),
                                    ("identificationScheme", scheme), ("value", value)])
    if name is None:
        label = v.IDENTIFIER_NAMES.get(scheme)
        name = [LocalizedString(label)] if label else []
    _w_localized(p, "Name", name)
    p.append("</rim:ExternalIdentifier>")


def _limited_flag(p: list[str], obj: RegistryObject, node: str) -> None:
    """The limitedMetadata flag of an object built in code (a parsed one keeps it among its extras)."""
    if getattr(obj, "limited_metadata", False) and not any(c.node == node for c in obj.extra_classifications):
        _node_classification(p, obj.id, node, None)


def _extras(p: list[str], obj: RegistryObject) -> None:
    for cl in obj.extra_classifications:
        _classification(p, obj.id, cl)


def _extra_ids(p: list[str], obj: RegistryObject) -> None:
    for ei in obj.extra_identifiers:
        _extid(p, ei.registry_object or obj.id, ei.scheme, ei.value, ei.id, ei.name)


def _document_entry(p: list[str], de: DocumentEntry, root: bool) -> None:
    _open(p, "ExtrinsicObject", [*_common_attrs(de), ("mimeType", de.mime_type)], root=root)
    for slot_name, attr in _DE_SLOTS.items():
        value = getattr(de, attr)
        if value is not None:
            _slot(p, slot_name, [str(value)])
    for slot_name, attr in _DE_MULTI_SLOTS.items():
        values = getattr(de, attr)
        if values:
            _slot(p, slot_name, values)
    for s in de.extra_slots:
        _slot(p, s.name, s.values, s.slot_type)
    _names(p, de)
    for author in de.authors:
        _author(p, v.DOC_AUTHOR, de.id, author)
    for scheme, attr in _DE_CODES.items():
        code = getattr(de, attr)
        if code is not None:
            _code(p, scheme, de.id, code)
    for scheme, attr in _DE_CODE_LISTS.items():
        for code in getattr(de, attr):
            _code(p, scheme, de.id, code)
    _limited_flag(p, de, v.DOC_LIMITED_METADATA)
    _extras(p, de)
    if de.patient_id is not None:
        _extid(p, de.id, v.DOC_PATIENT_ID, de.patient_id, de.patient_id_ident_id)
    if de.unique_id is not None:
        _extid(p, de.id, v.DOC_UNIQUE_ID, de.unique_id, de.unique_id_ident_id)
    _extra_ids(p, de)
    p.append("</rim:ExtrinsicObject>")


def _submission_set(p: list[str], ss: SubmissionSet, root: bool) -> None:
    _open(p, "RegistryPackage", _common_attrs(ss), root=root)
    if ss.submission_time is not None:
        _slot(p, "submissionTime", [ss.submission_time])
    if ss.intended_recipients:
        _slot(p, "intendedRecipient", ss.intended_recipients)
    for s in ss.extra_slots:
        _slot(p, s.name, s.values, s.slot_type)
    _names(p, ss)
    for author in ss.authors:
        _author(p, v.SS_AUTHOR, ss.id, author)
    if ss.content_type_code is not None:
        _code(p, v.SS_CONTENT_TYPE_CODE, ss.id, ss.content_type_code)
    _node_classification(p, ss.id, v.SUBMISSION_SET_NODE, ss.node_classification_id)
    _limited_flag(p, ss, v.SS_LIMITED_METADATA)
    _extras(p, ss)
    for scheme, value, ident in ((v.SS_UNIQUE_ID, ss.unique_id, ss.unique_id_ident_id),
                                 (v.SS_SOURCE_ID, ss.source_id, ss.source_id_ident_id),
                                 (v.SS_PATIENT_ID, ss.patient_id, ss.patient_id_ident_id)):
        if value is not None:
            _extid(p, ss.id, scheme, value, ident)
    _extra_ids(p, ss)
    p.append("</rim:RegistryPackage>")


def _folder(p: list[str], fd: Folder, root: bool) -> None:
    _open(p, "RegistryPackage", _common_attrs(fd), root=root)
    if fd.last_update_time is not None:
        _slot(p, "lastUpdateTime", [fd.last_update_time])
    for s in fd.extra_slots:
        _slot(p, s.name, s.values, s.slot_type)
    _names(p, fd)
    for code in fd.codes:
        _code(p, v.FOLDER_CODE_LIST, fd.id, code)
    _node_classification(p, fd.id, v.FOLDER_NODE, fd.node_classification_id)
    _limited_flag(p, fd, v.FOLDER_LIMITED_METADATA)
    _extras(p, fd)
    if fd.unique_id is not None:
        _extid(p, fd.id, v.FOLDER_UNIQUE_ID, fd.unique_id, fd.unique_id_ident_id)
    if fd.patient_id is not None:
        _extid(p, fd.id, v.FOLDER_PATIENT_ID, fd.patient_id, fd.patient_id_ident_id)
    _extra_ids(p, fd)
    p.append("</rim:RegistryPackage>")


def _association(p: list[str], assoc: Association, root: bool) -> None:
    _open(p, "Association", [*_common_attrs(assoc), ("associationType", assoc.association_type),
                             ("sourceObject", assoc.source), ("targetObject", assoc.target)], root=root)
    for name, value in (("SubmissionSetStatus", assoc.submission_set_status),
                        ("OriginalStatus", assoc.original_status), ("NewStatus", assoc.new_status)):
        if value is not None:
            _slot(p, name, [value])
    for s in assoc.extra_slots:
        _slot(p, s.name, s.values, s.slot_type)
    _names(p, assoc)
    _extras(p, assoc)
    _extra_ids(p, assoc)
    p.append("</rim:Association>")


def _object_ref(p: list[str], ref: ObjectRef, root: bool) -> None:
    _open(p, "ObjectRef", [("id", ref.id), ("home", ref.home)], root=root, empty=True)


_RENDERERS = {DocumentEntry: _document_entry, SubmissionSet: _submission_set, Folder: _folder,
              Association: _association, ObjectRef: _object_ref}


def _render_into(p: list[str], obj, root: bool) -> None:
    renderer = _RENDERERS.get(type(obj))
    if renderer is None:
        raise TypeError(f"cannot write {type(obj).__name__}")
    renderer(p, obj, root)


def render(obj) -> bytes:
    """One registry object as a standalone ebRIM element (UTF-8, declares the rim namespace)."""
    p: list[str] = []
    _render_into(p, obj, True)
    return "".join(p).encode("utf-8")


def _object_list_text(sub: Submission, p: list[str], root: bool) -> None:
    p.append("<rim:RegistryObjectList" + (_NS_DECL if root else "") + ">")
    for ref in sub.object_refs:
        _object_ref(p, ref, False)
    if sub.submission_set is not None:
        _submission_set(p, sub.submission_set, False)
    for de in sub.documents:
        _document_entry(p, de, False)
    for fd in sub.folders:
        _folder(p, fd, False)
    for assoc in sub.associations:
        _association(p, assoc, False)
    for cl in sub.extra_objects:
        _classification(p, cl.classified_object or "", cl)
    p.append("</rim:RegistryObjectList>")


def _element(text: str | bytes, parent: _Element | None) -> _Element:
    el = etree.fromstring(text.encode("utf-8") if isinstance(text, str) else text)
    if parent is not None:
        parent.append(el)
    return el


def write_object(obj, parent: _Element | None = None) -> _Element:
    return _element(render(obj), parent)


write_document_entry = write_submission_set = write_folder = write_association = write_object_ref = write_object


def write_object_list(sub: Submission, parent: _Element | None = None) -> _Element:
    p: list[str] = []
    _object_list_text(sub, p, True)
    return _element("".join(p), parent)


def submit_objects_request_bytes(sub: Submission) -> bytes:
    p = [f'<lcm:SubmitObjectsRequest xmlns:lcm="{v.LCM}"{_NS_DECL}>']
    _object_list_text(sub, p, False)
    p.append("</lcm:SubmitObjectsRequest>")
    return "".join(p).encode("utf-8")


def write_submit_objects_request(sub: Submission) -> _Element:
    return _element(submit_objects_request_bytes(sub), None)


def _sub(parent: _Element, tag: str, attrib: dict[str, str] | None = None) -> _Element:
    return etree.SubElement(parent, tag, attrib or {})


def _write_slot(parent: _Element, name: str, values: Sequence[str]) -> None:
    s = _sub(parent, T_SLOT, {"name": name})
    vl = _sub(s, T_VALUELIST)
    for value in values:
        _sub(vl, T_VALUE).text = value


def write_adhoc_query_request(query: StoredQuery) -> _Element:
    root = etree.Element(Q + "AdhocQueryRequest", nsmap={"query": v.QUERY, "rim": v.RIM})
    _sub(root, Q + "ResponseOption", {
        "returnType": query.return_type,
        "returnComposedObjects": "true" if query.return_composed_objects else "false",
    })
    aq = _sub(root, R + "AdhocQuery", {"id": query.query_id})
    if query.home:
        aq.set("home", query.home)
    for name, occurrences in query.slots.items():
        for values in occurrences:
            _write_slot(aq, name, values)
    return root


def write_error_list(parent: _Element, errors: Sequence[RegistryError]) -> None:
    if not errors:
        return
    lst = _sub(parent, RS_ + "RegistryErrorList")
    highest = v.SEVERITY_ERROR if any(e.is_error for e in errors) else v.SEVERITY_WARNING
    lst.set("highestSeverity", highest)
    for e in errors:
        attrib = {
            "codeContext": e.code_context or e.context,
            "errorCode": e.code,
            "severity": e.severity,
        }
        if e.location:
            attrib["location"] = e.location
        _sub(lst, RS_ + "RegistryError", attrib)


def write_registry_response(resp: RegistryResponse) -> _Element:
    root = etree.Element(RS_ + "RegistryResponse", {"status": resp.status}, nsmap={"rs": v.RS})
    if resp.request_id:
        root.set("requestId", resp.request_id)
    write_error_list(root, resp.errors)
    return root


def write_adhoc_query_response(status: str, objects: Sequence = (), errors: Sequence[RegistryError] = (),
                               *, request_id: str | None = None) -> _Element:
    """AdhocQueryResponse from model objects (the registry's fast path splices stored XML instead)."""
    root = etree.Element(Q + "AdhocQueryResponse", {"status": status},
                         nsmap={"query": v.QUERY, "rim": v.RIM, "rs": v.RS})
    if request_id:
        root.set("requestId", request_id)
    write_error_list(root, errors)
    lst = _sub(root, T_OBJECTLIST)
    for obj in objects:
        write_object(obj, lst)
    return root


def to_bytes(el: _Element) -> bytes:
    return etree.tostring(el, encoding="UTF-8", xml_declaration=False)


# --------------------------------------------------------------------------------------------
# Fast path: responses spliced from stored fragments
# --------------------------------------------------------------------------------------------

_AQR_OPEN = (
    b'<query:AdhocQueryResponse xmlns:query="' + v.QUERY.encode() + b'" xmlns:rim="' + v.RIM.encode()
    + b'" xmlns:rs="' + v.RS.encode() + b'" status="'
)


def _attr(value: str) -> bytes:
    return (value.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")).encode()


def with_home(fragment: bytes, home: str) -> bytes:
    """Add ``home="..."`` to a stored object's root element (XCA: every object names its community)."""
    space = fragment.index(b" ")
    return fragment[:space] + b' home="' + _attr(home) + b'"' + fragment[space:]


def adhoc_query_response_bytes(status: str, *, fragments: Sequence[bytes] = (), refs: Sequence[str] = (),
                               errors: Sequence[RegistryError] = (), home: str | None = None) -> bytes:
    """AdhocQueryResponse as bytes: stored LeafClass fragments or ObjectRefs, without re-parsing them.

    The fragments are the registry's stored ``rim`` column, each a complete element with its own
    namespace declaration, so concatenating them yields well-formed, schema-valid XML.
    """
    parts = [_AQR_OPEN, _attr(status), b'">']
    if errors:
        holder = etree.Element("x", nsmap={"rs": v.RS})
        write_error_list(holder, errors)
        parts.append(etree.tostring(holder[0], encoding="UTF-8").replace(b' xmlns:rs="' + v.RS.encode() + b'"', b""))
    parts.append(b"<rim:RegistryObjectList>")
    home_attr = b' home="' + _attr(home) + b'"' if home else b""
    for ref in refs:
        parts.append(b'<rim:ObjectRef id="' + _attr(ref) + b'"' + home_attr + b"/>")
    if home:
        parts.extend(with_home(f, home) for f in fragments)
    else:
        parts.extend(fragments)
    parts.append(b"</rim:RegistryObjectList></query:AdhocQueryResponse>")
    return b"".join(parts)
