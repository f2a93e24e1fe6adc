"""Shared pieces of the NIST testkit reader: namespaces, safe XML parsing, the reference error."""

from __future__ import annotations

import re
from pathlib import Path

from lxml import etree

from xds_node import safexml
from xds_node.ebxml import vocabulary as v

RIM21 = "urn:oasis:names:tc:ebxml-regrep:rim:xsd:2.1"
RS21 = "urn:oasis:names:tc:ebxml-regrep:registry:xsd:2.1"
XML_NS = "http://www.w3.org/XML/1998/namespace"
_R = f"{{{v.RIM}}}"

#: ExternalIdentifier schemes whose value is a uniqueId the runner must make fresh.
UNIQUE_ID_SCHEMES = frozenset({v.DOC_UNIQUE_ID, v.SS_UNIQUE_ID, v.FOLDER_UNIQUE_ID})
#: ExternalIdentifier schemes that carry the object's patient id.
PATIENT_ID_SCHEMES = frozenset({v.DOC_PATIENT_ID, v.SS_PATIENT_ID, v.FOLDER_PATIENT_ID})

_PLACEHOLDER = re.compile(r"\$[A-Za-z_][A-Za-z0-9_.\-]*\$")
_OBJECT_TAGS = ("ExtrinsicObject", "RegistryPackage", "Association", "Classification", "ExternalIdentifier")
_REFERENCE_ATTRS = ("classifiedObject", "sourceObject", "targetObject", "registryObject", "classificationNode")


class UnresolvedReference(LookupError):
    """A UseId/UseReport/placeholder points at a value no earlier step (or the seed) produced.

    ``test_key``/``step`` name the producing step (empty for a bare placeholder) and ``what`` the
    value, so a runner can say whether that test is absent, failed or was skipped.
    """

    def __init__(self, message: str, *, test_key: str = "", step: str = "", what: str = ""):
        super().__init__(message)
        self.test_key, self.step, self.what = test_key, step, what


# --------------------------------------------------------------------------------------------
# XML parsing
# --------------------------------------------------------------------------------------------
def _parser() -> etree.XMLParser:
    return safexml.parser()


def parse_xml(source: Path | bytes) -> etree._Element:
    """Parse a testkit file safely; testkits are third-party input, so no DTDs or entities."""
    data = source.read_bytes() if isinstance(source, Path) else source
    tree = etree.ElementTree(etree.fromstring(data, _parser()))
    if tree.docinfo.doctype:
        raise ValueError("DOCTYPE is not allowed in testkit files")
    return tree.getroot()


def _local(el: etree._Element) -> str:
    return etree.QName(el).localname if isinstance(el.tag, str) else ""


def _text(el: etree._Element | None) -> str:
    return " ".join((el.text or "").split()) if el is not None else ""
