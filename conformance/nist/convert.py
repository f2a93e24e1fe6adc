"""ebRS 2.1 (XDS.a) request files -> ebRS 3.0, as the NIST toolkit does for ``<XDSb/>`` steps."""

from __future__ import annotations

import uuid

from lxml import etree

from xds_node.ebxml import vocabulary as v

from .common import _R, RIM21, RS21, XML_NS, _local, _parser

#: ebRS 2.1 used short association types; 3.0 uses URNs (ITI TF-3 4.2.2).
ASSOCIATION_TYPES_V2 = {
    "HasMember": v.AssociationType.HAS_MEMBER.value,
    "RPLC": v.AssociationType.RPLC.value,
    "XFRM": v.AssociationType.XFRM.value,
    "APND": v.AssociationType.APND.value,
    "XFRM_RPLC": v.AssociationType.XFRM_RPLC.value,
    "signs": v.AssociationType.SIGNS.value,
    "IsSnapshotOf": v.AssociationType.IS_SNAPSHOT_OF.value,
}

def _new_id() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _convert_strings(src: etree._Element, dst: etree._Element, tag: str) -> None:
    """Name/Description: copy LocalizedStrings (empty 2.1 ``<Description/>`` is dropped by caller)."""
    out = etree.SubElement(dst, _R + tag)
    for ls in src:
        if _local(ls) != "LocalizedString":
            continue
        new = etree.SubElement(out, _R + "LocalizedString")
        for attr in ("charset", f"{{{XML_NS}}}lang"):
            if ls.get(attr) is not None:
                new.set(attr, ls.get(attr))
        new.set("value", ls.get("value", ""))


def _convert_slot(src: etree._Element, dst: etree._Element) -> None:
    slot = etree.SubElement(dst, _R + "Slot", name=src.get("name", ""))
    if src.get("slotType"):
        slot.set("slotType", src.get("slotType"))
    values = etree.SubElement(slot, _R + "ValueList")
    # by local name: some NIST files leave Slot/ValueList/Value unprefixed (no namespace)
    for value in src.iter():
        if _local(value) == "Value":
            etree.SubElement(values, _R + "Value").text = value.text or ""


_OBJECT_ATTRS = {
    "ExtrinsicObject": ("id", "home", "lid", "objectType", "status", "mimeType", "isOpaque"),
    "RegistryPackage": ("id", "home", "lid", "objectType", "status"),
    "Classification": ("id", "home", "lid", "objectType", "status", "classifiedObject",
                       "classificationScheme", "classificationNode", "nodeRepresentation"),
    "ExternalIdentifier": ("id", "home", "lid", "objectType", "status", "registryObject",
                           "identificationScheme", "value"),
    "Association": ("id", "home", "lid", "objectType", "status", "associationType", "sourceObject",
                    "targetObject"),
}  # fmt: skip


def _convert_object(src: etree._Element, parent_id: str | None = None) -> etree._Element:
    """One 2.1 RegistryObject -> 3.0: ids made explicit, children in the 3.0 sequence.

    3.0 wants Slot*, Name?, Description?, Classification*, ExternalIdentifier* (2.1 put Name
    first), every object to carry an ``id``, and ExternalIdentifier to name its ``registryObject``.
    """
    kind = _local(src)
    dst = etree.Element(_R + kind)
    for attr in _OBJECT_ATTRS.get(kind, ("id", "home", "lid", "objectType", "status")):
        if src.get(attr) is not None:
            dst.set(attr, src.get(attr))
    if kind == "Association":
        # older files spell the 2.0 attribute names; 3.0 uses sourceObject/targetObject
        for old, new in (("sourceObjectId", "sourceObject"), ("targetObjectId", "targetObject")):
            if src.get(old) is not None and dst.get(new) is None:
                dst.set(new, src.get(old))
        atype = src.get("associationType", "")
        if not atype.startswith("urn:"):
            atype = ASSOCIATION_TYPES_V2.get(atype, f"urn:oasis:names:tc:ebxml-regrep:AssociationType:{atype}")
        dst.set("associationType", atype)
    if kind == "ExternalIdentifier" and dst.get("registryObject") is None and parent_id:
        dst.set("registryObject", parent_id)
    if kind == "Classification" and dst.get("classifiedObject") is None and parent_id:
        dst.set("classifiedObject", parent_id)
    if dst.get("id") is None:
        dst.set("id", _new_id())
    # reorder attributes so id comes first (readability only)
    attrs = dict(dst.attrib)
    dst.attrib.clear()
    dst.set("id", attrs.pop("id"))
    for key, value in attrs.items():
        dst.set(key, value)

    children = [c for c in src if isinstance(c.tag, str)]
    for slot in (c for c in children if _local(c) == "Slot"):
        _convert_slot(slot, dst)
    for tag in ("Name", "Description"):
        for el in (c for c in children if _local(c) == tag):
            if any(_local(ls) == "LocalizedString" for ls in el):
                _convert_strings(el, dst, tag)
    for tag in ("Classification", "ExternalIdentifier"):
        for el in (c for c in children if _local(c) == tag):
            dst.append(_convert_object(el, dst.get("id")))
    return dst


def convert_v2_to_v3(elem: etree._Element, *, keep_object_refs: bool = False) -> etree._Element:
    """ebRS 2.1 SubmitObjectsRequest / LeafRegistryObjectList -> ebRS 3.0 equivalents.

    2.1 lists the classification schemes it uses as ObjectRefs; a 3.0 registry knows them, so
    they are dropped unless ``keep_object_refs``. 3.0 input is returned as a copy, unchanged.
    """
    ns = etree.QName(elem).namespace
    kind = _local(elem)
    if ns not in (RIM21, RS21):
        return etree.fromstring(etree.tostring(elem), _parser())
    if kind == "AdhocQueryRequest":
        raise ValueError("ebRS 2.1 AdhocQueryRequest is an SQL query; it has no 3.0 stored-query form")
    if kind == "SubmitObjectsRequest":
        root = etree.Element(f"{{{v.LCM}}}SubmitObjectsRequest", nsmap={"lcm": v.LCM, "rim": v.RIM})
        lists = [c for c in elem if _local(c) == "LeafRegistryObjectList"]
        out_list = etree.SubElement(root, _R + "RegistryObjectList")
        for lst in lists:
            _convert_list(lst, out_list, keep_object_refs)
        return root
    if kind in ("LeafRegistryObjectList", "RegistryObjectList"):
        out_list = etree.Element(_R + "RegistryObjectList", nsmap={"rim": v.RIM})
        _convert_list(elem, out_list, keep_object_refs)
        return out_list
    if kind in _OBJECT_ATTRS:
        return _convert_object(elem)
    raise ValueError(f"do not know how to convert ebRS 2.1 {kind}")


def _convert_list(src: etree._Element, dst: etree._Element, keep_object_refs: bool) -> None:
    for child in src:
        kind = _local(child)
        if not kind:
            continue
        if kind == "ObjectRef":
            if keep_object_refs:
                etree.SubElement(dst, _R + "ObjectRef", id=child.get("id", ""))
            continue
        dst.append(_convert_object(child))

