"""The one definition of how this project parses XML it did not write.

Every parser of untrusted input (SOAP envelopes, C-CDA documents, SAML, partner answers, NIST
files) is built from :data:`HARDENED`: no DTD loading or validation, no entity expansion, no
network access, no huge-tree mode. Callers still reject any DOCTYPE outright (see
``soap.envelope.parse_xml``); these options make sure nothing reaches out even before that.
"""

from __future__ import annotations

from typing import Any

from lxml import etree

HARDENED: dict[str, Any] = {
    "resolve_entities": False,
    "no_network": True,
    "load_dtd": False,
    "dtd_validation": False,
    "huge_tree": False,
    "collect_ids": False,
}


def parser(**extra: Any) -> etree.XMLParser:
    """A new hardened parser (lxml parsers are not thread-safe: keep one per thread)."""
    return etree.XMLParser(**HARDENED, **extra)


def pull_parser(**extra: Any) -> etree.XMLPullParser:
    """A hardened incremental parser, for reading only the start of large documents."""
    return etree.XMLPullParser(**HARDENED, **extra)
