"""The ebRIM codec reads and re-writes every ebRS 3.0 submission in the corpus without loss."""

from __future__ import annotations

import pytest
from lxml import etree

from tests.corpus import CORPUS, assert_valid, requires_corpus
from xds_node.ebxml import rim
from xds_node.ebxml import vocabulary as v

LCM_SOR = f"{{{v.LCM}}}SubmitObjectsRequest"


def _corpus_submissions():
    if not CORPUS.is_dir():
        return []
    found = []
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    for path in sorted(CORPUS.rglob("*.xml")):
        try:
            root = etree.parse(str(path), parser).getroot()
        except etree.XMLSyntaxError:
            continue
        if any(True for _ in root.iter(LCM_SOR)):
            found.append(path)
    return found


def _counts(el: etree._Element) -> dict[str, int]:
    names = ("ExtrinsicObject", "RegistryPackage", "Association", "Classification", "ExternalIdentifier",
             "Slot", "Value", "LocalizedString", "ObjectRef")
    return {n: sum(1 for _ in el.iter(f"{{{v.RIM}}}{n}")) for n in names}


@requires_corpus
@pytest.mark.parametrize("path", _corpus_submissions(), ids=lambda p: p.name)
def test_round_trip_is_lossless(path):
    root = etree.parse(str(path)).getroot()
    for original in root.iter(LCM_SOR):
        sub = rim.read_submit_objects_request(original)
        written = rim.write_submit_objects_request(sub)
        again = rim.read_submit_objects_request(written)
        assert again == sub
        before, after = _counts(original), _counts(written)
        # every object, slot and value survives; the writer may add the ids and names ebRIM requires
        for key in ("ExtrinsicObject", "RegistryPackage", "Association", "Slot", "Value", "ObjectRef"):
            assert after[key] == before[key], (key, before, after)
        assert after["Classification"] >= before["Classification"]
        assert after["ExternalIdentifier"] == before["ExternalIdentifier"]
        if not path.name.endswith("Bad.xml"):
            assert_valid(written)


def test_corpus_has_submissions():
    if CORPUS.is_dir():
        assert len(_corpus_submissions()) >= 10
