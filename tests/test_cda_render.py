"""The C-CDA -> HTML renderer (xds_node.cda.render): every real example renders with each section's
title; hostile documents render as inert text, proven by parsing the output as a browser would
(html5 rules via lxml.html) and checking that only our own tags and attributes appear."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree
from lxml import html as lhtml

from tests.corpus import CORPUS
from xds_node.cda import render as r
from xds_node.cda.render import render, render_page

SAMPLES = Path(__file__).resolve().parents[1] / "sample_documents"
EXAMPLES = sorted((CORPUS / "04-ccda").rglob("*.xml")) if (CORPUS / "04-ccda").is_dir() else []
ALL = sorted(SAMPLES.rglob("*.xml")) + EXAMPLES
N = "urn:hl7-org:v3"

#: Everything the renderer may write: tag -> allowed attributes.
ALLOWED = {
    "article": {"class"}, "header": {"class"}, "section": {"class"}, "h1": set(), "h2": set(), "h3": set(),
    "h4": set(), "h5": set(), "h6": set(), "dl": {"class"}, "dt": set(), "dd": set(), "p": {"class", "id"},
    "div": {"class", "id"}, "span": {"class", "id", "title"}, "sub": {"class", "id"}, "sup": {"class", "id"},
    "ul": {"class", "id"}, "ol": {"class", "id"}, "li": {"class", "id"}, "table": {"class", "id"},
    "caption": set(), "thead": {"class"}, "tbody": {"class"}, "tfoot": {"class"}, "tr": {"class", "id"},
    "td": {"class", "id", "colspan", "rowspan", "scope"}, "th": {"class", "id", "colspan", "rowspan", "scope"},
    "br": set(), "a": {"href", "target", "rel", "referrerpolicy", "class"}, "pre": {"class"},
    # added by the html5 parser around a fragment
    "html": set(), "head": set(), "body": set(),
}


def assert_inert(fragment: str) -> lhtml.HtmlElement:
    """Parse like a browser and check every element and attribute is one of ours."""
    doc = lhtml.document_fromstring(f"<!DOCTYPE html><html><body>{fragment}</body></html>")
    for el in doc.iter():
        if not isinstance(el.tag, str):
            raise AssertionError(f"unexpected node {el!r}")
        assert el.tag in ALLOWED, f"element <{el.tag}> in output"
        for name, value in el.attrib.items():
            assert name in ALLOWED[el.tag], f"attribute {name}= on <{el.tag}>"
            if name == "href":
                assert re.match(r"^(https?://[^\s]+|#n-[A-Za-z0-9_.-]+)$", value), value
            if name == "id":
                assert re.fullmatch(r"n-[A-Za-z0-9_.-]+", value), value
            if name == "class":
                assert re.fullmatch(r"[a-z0-9 -]+", value), value
    return doc


def section_titles(data: bytes) -> list[str]:
    root = etree.fromstring(data)
    return [" ".join("".join(t.itertext()).split()) for t in root.iter(f"{{{N}}}title")
            if t.getparent().tag == f"{{{N}}}section"]


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_every_example_renders_with_each_section_title(path):
    data = path.read_bytes()
    out = render(data)
    assert out.error == "" and not out.truncated
    doc = assert_inert(out.html)
    text = " ".join(doc.text_content().split())
    for title in section_titles(data):
        assert title in text, title
    assert out.title and out.title in text
    # header: the patient's family name is shown
    family = etree.fromstring(data).find(f".//{{{N}}}patient/{{{N}}}name/{{{N}}}family")
    if family is not None and family.text:
        assert family.text.strip() in text


def test_examples_are_present():
    assert len(list(SAMPLES.rglob("*.xml"))) >= 10
    if CORPUS.is_dir():
        assert len(EXAMPLES) >= 10


def test_header_shows_patient_author_custodian_encounter_and_formats_dates():
    data = (SAMPLES / "alex-testpatient" / "discharge-summary-2022.xml").read_bytes()
    doc = assert_inert(render(data).html)
    facts = {dt.text_content(): [dd.text_content() for dd in dt.itersiblings("dd")]
             for dt in doc.iter("dt")}
    text = doc.text_content()
    assert "Alex" in text and "Testpatient" in text
    for key in ("Document type", "Date", "Name", "Birth date", "Gender", "Author", "Custodian"):
        assert key in facts, key
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", facts["Birth date"][0])
    root = etree.fromstring(data)
    if root.find(f"{{{N}}}componentOf/{{{N}}}encompassingEncounter") is not None:
        assert "Encounter" in [h.text_content() for h in doc.iter("h2")]


def cda(narrative: str, *, extra_ns: str = "", header: str = "") -> bytes:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3" {extra_ns}>
  <code code="34133-9" codeSystem="2.16.840.1.113883.6.1" displayName="Summary"/>
  <title>Hostile &lt;b&gt;title&lt;/b&gt;</title>
  <effectiveTime value="20240102030405-0500"/>
  {header}
  <recordTarget><patientRole><id root="1.2.3" extension="P1"/><patient>
    <name><given>Eve</given><family>Attacker&lt;script&gt;</family></name></patient></patientRole></recordTarget>
  <component><structuredBody><component><section>
    <code code="11450-4" codeSystem="2.16.840.1.113883.6.1"/>
    <title>Problems</title>
    <text>{narrative}</text>
  </section></component></structuredBody></component>
</ClinicalDocument>""".encode()


HOSTILE = {
    "script": "<script>document.title='pwned'</script><content>ok</content>",
    "xhtml script": '<x:script xmlns:x="http://www.w3.org/1999/xhtml">alert(1)</x:script>',
    "xhtml img": '<x:img xmlns:x="http://www.w3.org/1999/xhtml" src="x" onerror="alert(1)"/>',
    "default xhtml ns": '<div xmlns="http://www.w3.org/1999/xhtml"><img src="x" onerror="alert(1)"/></div>',
    "svg": '<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><script>alert(2)</script></svg>',
    "event handlers": '<content onmouseover="alert(1)" ID="a&quot; onclick=&quot;alert(1)" '
                      'styleCode="Bold&quot; onclick=&quot;x">hover</content>'
                      '<paragraph onclick="alert(1)" style="background:url(javascript:alert(1))">p</paragraph>',
    "javascript link": '<linkHtml href="javascript:alert(1)">click</linkHtml>'
                       '<linkHtml href=" JaVaScRiPt:alert(1)">click2</linkHtml>'
                       '<linkHtml href="java&#x09;script:alert(1)">click3</linkHtml>'
                       '<linkHtml href="data:text/html,&lt;script&gt;alert(1)&lt;/script&gt;">click4</linkHtml>'
                       '<linkHtml href="//evil.example/x">click5</linkHtml>'
                       '<linkHtml href="http://ok.example/&quot;&gt;&lt;script&gt;">click6</linkHtml>',
    "cdata": "<paragraph><![CDATA[<script>alert(1)</script>]]></paragraph>",
    "escaped markup": "<paragraph>&lt;img src=x onerror=alert(1)&gt;</paragraph>",
    "table attrs": '<table border="1" onload="alert(1)" width="&quot;&gt;&lt;script&gt;"><tbody>'
                   '<tr><td colspan="2&quot; onclick=&quot;x" rowspan="99999" align="left" valign="x">c</td></tr>'
                   "</tbody></table>",
    "multimedia": '<renderMultiMedia referencedObject="&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"/>',
    "footnote": '<footnoteRef IDREF="&quot;&gt;&lt;script&gt;"/><footnote ID="f1">note</footnote>',
    "closing tags in text": "<paragraph>&lt;/article&gt;&lt;/body&gt;&lt;script&gt;alert(1)&lt;/script&gt;</paragraph>",
    "iframe and object": "<iframe src='http://evil'/><object data='x'/><embed src='x'/><form action='x'/>"
                         "<meta http-equiv='refresh' content='0;url=javascript:alert(1)'/><base href='http://e/'/>",
    "style element": "<style>body{background:url(javascript:alert(1))}</style>",
    "list and caption": '<list listType="ordered" onclick="x"><caption onclick="y">cap</caption>'
                        '<item style="x">one</item><item><list><item>nested</item></list></item></list>',
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_narrative_is_translated_never_passed_through(name):
    out = render(cda(HOSTILE[name]))
    assert out.error == ""
    doc = assert_inert(out.html)
    low = out.html.lower()
    assert "<script" not in low and "<img" not in low and "<svg" not in low and "<iframe" not in low
    for tag in re.findall(r"<[^>]*>", low):  # (document text is escaped: no raw "<" outside our tags)
        assert "style=" not in tag and not re.search(r"\son[a-z]+\s*=", tag), tag
    for a in doc.iter("a"):
        assert a.get("href").startswith(("http://", "https://", "#n-"))
        if a.get("href").startswith("http"):
            assert a.get("rel") == "noopener noreferrer" and a.get("target") == "_blank"
    assert "Problems" in doc.text_content()


def test_safe_links_are_links_and_the_rest_inert_text():
    out = render(cda('<linkHtml href="https://www.va.gov/x?a=1&amp;b=2">VA</linkHtml>'
                     '<linkHtml href="javascript:alert(1)">bad</linkHtml>'))
    doc = assert_inert(out.html)
    links = [(a.get("href"), a.text_content()) for a in doc.iter("a")]
    assert links == [("https://www.va.gov/x?a=1&b=2", "VA")]
    inert = [s for s in doc.iter("span") if "cda-link-inert" in (s.get("class") or "")]
    assert [s.text_content() for s in inert] == ["bad"]


def test_style_codes_become_our_classes_and_unknown_ones_vanish():
    doc = assert_inert(render(cda('<content styleCode="Bold Italics Evil">x</content>')).html)
    span = next(s for s in doc.iter("span") if s.text_content() == "x")
    assert span.get("class") == "sc-bold sc-italics"


def test_title_and_values_are_escaped():
    out = render(cda("<paragraph>a &amp; b</paragraph>"))
    assert "Hostile &lt;b&gt;title&lt;/b&gt;" in out.html and out.title == "Hostile <b>title</b>"
    assert "Attacker&lt;script&gt;" in out.html and "a &amp; b" in out.html
    page = render_page(cda("<paragraph>x</paragraph>"), stylesheet='/s.css"><script>')
    assert '<link rel="stylesheet" href="/s.css&quot;&gt;&lt;script&gt;">' in page
    assert "<title>Hostile &lt;b&gt;title&lt;/b&gt;</title>" in page


@pytest.mark.parametrize(("data", "message"), [
    (b"", "empty"),
    (b"not xml at all", "not well-formed"),
    (b"<a><b></a>", "not well-formed"),
    (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><ClinicalDocument '
     b'xmlns="urn:hl7-org:v3"><title>&e;</title></ClinicalDocument>', "DOCTYPE"),
    (b"<Envelope xmlns='http://www.w3.org/2003/05/soap-envelope'/>", "not a CDA document"),
    (b"<ClinicalDocument/>", "not a CDA document"),  # no namespace
    (b"<html><script>alert(1)</script></html>", "not a CDA document"),
])
def test_not_a_renderable_cda_is_a_clear_message(data, message):
    out = render(data)
    assert message in out.error
    doc = assert_inert(out.html)
    assert message in doc.text_content()
    assert "passwd" not in out.html and "root:" not in out.html


def test_billion_laughs_is_not_expanded():
    data = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>'
            b'<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&lol2;</title></ClinicalDocument>')
    assert "DOCTYPE" in render(data).error


def test_deeply_nested_narrative_is_flattened_or_refused_never_a_crash():
    deep = "<content>" * 200 + "deep words" + "</content>" * 200
    out = render(cda(deep))
    assert out.error == "" and "deep words" in out.html
    assert out.html.count("<span") <= r.MAX_NARRATIVE_DEPTH + 5
    assert_inert(out.html)
    too_deep = "<content>" * 5000 + "x" + "</content>" * 5000  # past libxml2's own depth limit
    out = render(cda(too_deep))
    assert "not well-formed" in out.error


def test_huge_documents_are_bounded(monkeypatch):
    many = "<paragraph>p</paragraph>" * 5000
    monkeypatch.setattr(r, "MAX_ELEMENTS", 1000)
    out = render(cda(many))
    assert out.truncated and "too large to show in full" in out.html
    assert out.html.count("<p>") <= 1000
    assert_inert(out.html)
    monkeypatch.setattr(r, "MAX_BYTES", 1000)
    out = render(cda("<paragraph>x</paragraph>" * 100))
    assert "too large" in out.error


def test_non_xml_bodies_plain_text_shown_binary_described():
    base = (SAMPLES / "casey-fictitious" / "separation-exam-scanned.xml").read_bytes()
    out = render(base)
    assert out.error == "" and "not displayed here" in out.html and "application/pdf" in out.html
    import base64

    text = base64.b64encode(b"Surgical consult <script>alert(1)</script>").decode()
    doc = f"""<ClinicalDocument xmlns="urn:hl7-org:v3"><title>T</title><component><nonXMLBody>
      <text mediaType="text/plain" representation="B64">{text}</text></nonXMLBody></component></ClinicalDocument>"""
    out = render(doc.encode())
    assert "Surgical consult &lt;script&gt;" in out.html
    assert_inert(out.html)
    bad = doc.replace(text, "!!!notbase64")
    assert "not valid base64" in render(bad.encode()).html


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.recursive(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20),
    lambda children: st.tuples(
        st.sampled_from(["content", "paragraph", "list", "item", "table", "tbody", "tr", "td", "th", "linkHtml",
                         "br", "sub", "sup", "footnote", "footnoteRef", "renderMultiMedia", "caption", "script",
                         "img", "a", "div", "iframe"]),
        st.dictionaries(st.sampled_from(["href", "onclick", "style", "ID", "IDREF", "styleCode", "colspan",
                                         "src", "referencedObject", "listType", "align"]),
                        st.text(max_size=30).filter(lambda s: "\x00" not in s), max_size=3),
        st.lists(children, max_size=4)),
    max_leaves=30))
def test_any_narrative_tree_renders_inert(tree):
    def build(node, parent):
        if isinstance(node, str):
            clean = "".join(c for c in node if c in "\t\n\r" or (0x20 <= ord(c) <= 0xD7FF)
                            or 0xE000 <= ord(c) <= 0xFFFD)
            if len(parent):
                parent[-1].tail = (parent[-1].tail or "") + clean
            else:
                parent.text = (parent.text or "") + clean
            return
        tag, attrs, kids = node
        el = etree.SubElement(parent, f"{{{N}}}{tag}")
        for k, v in attrs.items():
            el.set(k, "".join(c for c in v if 0x20 <= ord(c) <= 0xD7FF))
        for k in kids:
            build(k, el)

    root = etree.fromstring(cda(""))
    build(tree, next(root.iter(f"{{{N}}}text")))
    out = render(etree.tostring(root, encoding="UTF-8"))
    assert out.error == ""
    assert_inert(out.html)
