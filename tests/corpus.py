"""Access to the read-only third-party corpus in ../shared/corpus, and schema validation against it."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from lxml import etree

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
SCHEMAS = CORPUS / "01-schemas" / "oasis-ebrs30"

requires_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus not present")


BUNDLED = Path(__file__).resolve().parents[1] / "wsdl" / "schema"


@functools.cache
def ebxml_schema() -> etree.XMLSchema:
    """One schema covering lcm, query, rs and the XDS.b repository messages (all of ebRS 3.0):
    the official OASIS/IHE schemas from the corpus, or, when the corpus is absent, the schemas we
    publish with our WSDLs (wsdl/schema, written for xds-node after ebRS 3.0), so a checkout
    without ../shared still checks every answer's shape instead of failing or skipping."""
    if not SCHEMAS.is_dir():
        from conformance.runner import published_schema

        return published_schema()
    wrapper = f"""<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" targetNamespace="urn:xds-node:all"
        elementFormDefault="qualified">
      <xs:import namespace="urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
                 schemaLocation="{(SCHEMAS / 'ebRS' / 'lcm.xsd').as_uri()}"/>
      <xs:import namespace="urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0"
                 schemaLocation="{(SCHEMAS / 'ebRS' / 'query.xsd').as_uri()}"/>
      <xs:import namespace="urn:ihe:iti:xds-b:2007"
                 schemaLocation="{(SCHEMAS / 'ihe' / 'XDS.b_DocumentRepository.xsd').as_uri()}"/>
    </xs:schema>"""
    doc = etree.fromstring(wrapper.encode(), base_url=SCHEMAS.as_uri() + "/")
    return etree.XMLSchema(doc)


def assert_valid(el: etree._Element) -> None:
    """Fail with the schema's own words when ``el`` is not valid ebRS 3.0 / XDS.b."""
    schema = ebxml_schema()
    # validate a copy as its own document so that ancestors (SOAP envelope) do not matter
    doc = etree.fromstring(etree.tostring(el))
    # an XOP package is validated as its infoset: each xop:Include stands for base64 content
    for inc in list(doc.iter("{http://www.w3.org/2004/08/xop/include}Include")):
        parent = inc.getparent()
        parent.remove(inc)
        parent.text = "AA=="
    if not schema.validate(doc):
        errors = "\n".join(f"  line {e.line}: {e.message}" for e in schema.error_log)
        raise AssertionError(f"{etree.QName(el).localname} is not schema-valid:\n{errors}")
