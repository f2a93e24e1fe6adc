"""C-CDA -> readable HTML, by translation, never by pass-through.

A document from a partner is hostile until proven otherwise: its narrative block may carry a
``<script>``, an ``onload=``, a ``javascript:`` link, a ``style=``, or elements of the XHTML
namespace hoping to be copied into a page. This renderer therefore never copies an element or an
attribute from the document into its output. It walks the parsed tree and, for each CDA element it
knows (``urn:hl7-org:v3`` namespace only), *writes a new* HTML element from a short whitelist with
attributes it computes itself (a class from a fixed ``styleCode`` table, an integer ``colspan``, an
``id`` rebuilt from safe characters). Text and attribute values are always escaped. Anything else
(an unknown or foreign-namespace element) contributes its text, escaped, and nothing more.

What is shown: the header (title, type, date, ids, patient, authors, custodian, legal
authenticator, service event, encompassing encounter) and every section, nested sections included,
with its title, code and narrative block (``<text>``: paragraph, list, table, content with
styleCode, br, sub/sup, footnotes, linkHtml as a safe http(s) link with
``rel="noopener noreferrer"`` or as inert text, renderMultiMedia as a placeholder). Structured
entries are not rendered: the narrative is the attested human-readable content (CDA R2 1.2.3).
A nonXMLBody shows its media type and size; plain text is shown as text, nothing else is decoded.

Bad input is a page that says so, never an exception: not XML, a DOCTYPE, not a ClinicalDocument,
too large, nested too deeply (lxml stops at depth 256 without ``huge_tree``) -> :class:`Rendered`
with ``error`` set and an HTML message. Output is bounded (:data:`MAX_ELEMENTS` elements written).

The narrative block is translated by :mod:`xds_node.cda.narrative` (which also holds the one
:class:`~xds_node.cda.narrative.Writer` that produces markup); this module parses, bounds, and
writes the header and the section structure.

Pure function over bytes: no I/O, no network, no state; the console serves the result inside its
own strict Content-Security-Policy (and a sandboxed frame), which is a second wall, not the first.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass

from lxml import etree

from xds_node import safexml
from xds_node.cda.metadata import CDA_NS, _has_doctype
from xds_node.cda.narrative import (
    MAX_NARRATIVE_DEPTH,
    STYLE_CLASSES,
    TooMuch,
    Writer,
    esc,
    flow,
    safe_link,
    text_of,
)

__all__ = ["MAX_BYTES", "MAX_ELEMENTS", "MAX_NARRATIVE_DEPTH", "STYLE_CLASSES", "Rendered", "esc", "format_ts",
           "render", "render_html", "render_page", "safe_link"]

#: Documents larger than this are not rendered (the raw XML is still one click away).
MAX_BYTES = 32 * 1024 * 1024
#: Elements written to the output at most; past it the rest is left out and the page says so.
MAX_ELEMENTS = 200_000
#: Decoded text/plain nonXMLBody shown at most.
MAX_TEXT_BYTES = 2 * 1024 * 1024

_N = f"{{{CDA_NS}}}"



@dataclass(frozen=True)
class Rendered:
    """The HTML fragment (``<article class="cda">``), the document title, and why it could not be
    rendered (``error``; the fragment then says so too)."""

    html: str
    title: str = ""
    error: str = ""
    truncated: bool = False


def _message(text: str) -> Rendered:
    return Rendered(f'<article class="cda cda-unrenderable"><p class="cda-error">{esc(text)}</p></article>',
                    error=text)


def _parse(data: bytes) -> etree._Element | str:
    """The ClinicalDocument root, or a sentence saying why there is none."""
    if not data or not data.strip():
        return "The document is empty."
    if len(data) > MAX_BYTES:
        return f"The document is too large to show here ({len(data):,} bytes); use the raw XML."
    if _has_doctype(data):
        return "The document carries a DOCTYPE, which is not allowed; it is not shown."
    parser = safexml.parser(remove_pis=True, remove_comments=True)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        return f"The document is not well-formed XML ({exc.msg}); it is not shown."
    except ValueError as exc:  # e.g. unicode strings with an encoding declaration
        return f"The document cannot be read as XML ({exc}); it is not shown."
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        return "The document carries a DOCTYPE, which is not allowed; it is not shown."
    if root.tag != _N + "ClinicalDocument":
        name = etree.QName(root).localname if isinstance(root.tag, str) else "?"
        return f"This is not a CDA document (its root element is <{name}>, not <ClinicalDocument>); it is not shown."
    return root


def render(data: bytes) -> Rendered:
    """Render a C-CDA document (bytes as stored) as an HTML fragment; never raises on bad input."""
    root = _parse(data)
    if isinstance(root, str):
        return _message(root)
    w = Writer(MAX_ELEMENTS)
    title = _text(root.find(_N + "title")) or _code_display(root.find(_N + "code")) or "Clinical document"
    try:
        w.raw('<article class="cda">')
        _header(w, root, title)
        _body(w, root)
    except TooMuch:
        w.parts.append('<p class="cda-error">The document is too large to show in full: the rest is left out; '
                       "use the raw XML.</p>")
    w.parts.append("</article>")
    return Rendered("".join(w.parts), title=title, truncated=w.truncated)


def render_html(data: bytes) -> str:
    """Just the fragment of :func:`render`."""
    return render(data).html


def render_page(data: bytes, *, stylesheet: str | None = None) -> str:
    """A complete HTML document for a frame of its own. ``stylesheet`` is a same-origin URL (the
    frame's CSP should allow only ``style-src 'self'``); it is escaped like everything else."""
    r = render(data)
    link = f'<link rel="stylesheet" href="{esc(stylesheet)}">' if stylesheet else ""
    return ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="referrer" content="no-referrer">'
            f"<title>{esc(r.title or 'Document')}</title>{link}</head><body>{r.html}</body></html>")


# --- reading the header -----------------------------------------------------------------------
_text = text_of


def _attr(el: etree._Element | None, child: str, name: str = "value") -> str:
    """An attribute of ``el``'s first CDA child ``child`` ("" when either is missing)."""
    found = el.find(_N + child) if el is not None else None
    return (found.get(name) or "").strip() if found is not None else ""


def _code_display(el: etree._Element | None) -> str:
    if el is None:
        return ""
    return (el.get("displayName") or _text(el.find(_N + "originalText")) or el.get("code") or "").strip()


def _code_line(el: etree._Element | None) -> str:
    """``display (code, system)`` for a coded value."""
    if el is None:
        return ""
    display = _code_display(el)
    code = (el.get("code") or "").strip()
    system = (el.get("codeSystemName") or el.get("codeSystem") or "").strip()
    extra = ", ".join(x for x in (code if code != display else "", system) if x)
    return f"{display} ({extra})" if display and extra else display or extra


_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.\d+)?([+-]\d{4})?$")


def format_ts(value: str | None) -> str:
    """A CDA TS as people read it: ``2020-03-02 10:00 -0600``; anything else as written."""
    if not value:
        return ""
    m = _TS.match(value.strip())
    if not m:
        return value.strip()
    y, mo, d, h, mi, s, off = m.groups()
    out = "-".join(x for x in (y, mo, d) if x)
    if h:
        out += f" {h}:{mi or '00'}" + (f":{s}" if s and s != "00" else "")
    if off and h:
        out += f" {off}"
    return out


def _time(el: etree._Element | None) -> str:
    """An IVL_TS or TS: a value, or low - high."""
    if el is None:
        return ""
    if el.get("value"):
        return format_ts(el.get("value"))
    low, high = el.find(_N + "low"), el.find(_N + "high")
    lo = format_ts(low.get("value")) if low is not None else ""
    hi = format_ts(high.get("value")) if high is not None else ""
    if lo or hi:
        return f"{lo or '?'} to {hi or 'ongoing'}"
    return ""


def _name(el: etree._Element | None) -> str:
    """A PN/ON as one line: prefix given family suffix, or the text of a name without parts."""
    if el is None:
        return ""
    if el.get("nullFlavor") and not len(el):
        return ""
    parts = {"prefix": [], "given": [], "family": [], "suffix": []}
    for child in el:
        if isinstance(child.tag, str) and child.tag.startswith(_N):
            local = child.tag[len(_N):]
            if local in parts:
                t = _text(child)
                if t:
                    parts[local].append(t)
    if not any(parts.values()):
        return _text(el)
    return " ".join([*parts["prefix"], *parts["given"], *parts["family"]]) + (
        ", " + " ".join(parts["suffix"]) if parts["suffix"] else "")


def _ids(el: etree._Element) -> list[str]:
    out = []
    for i in el.findall(_N + "id"):
        root, ext = (i.get("root") or "").strip(), (i.get("extension") or "").strip()
        if root or ext:
            out.append(f"{ext} ({root})" if ext and root else ext or root)
    return out


def _addr(el: etree._Element) -> str:
    lines = [_text(x) for x in el.findall(_N + "streetAddressLine")]
    city = ", ".join(x for x in (_text(el.find(_N + "city")), _text(el.find(_N + "state"))) if x)
    tail = " ".join(x for x in (city, _text(el.find(_N + "postalCode")), _text(el.find(_N + "country"))) if x)
    out = ", ".join(x for x in [*lines, tail] if x)
    return out or _text(el)


def _telecoms(el: etree._Element) -> list[str]:
    out = []
    for t in el.findall(_N + "telecom"):
        value = (t.get("value") or "").strip()
        if value:
            out.append(value + (f" ({t.get('use')})" if t.get("use") else ""))
    return out


def _person_or_org(el: etree._Element | None) -> str:
    """Name of an assignedPerson / assignedAuthoringDevice / organization under ``el``."""
    if el is None:
        return ""
    for path in ("assignedPerson/name", "associatedPerson/name", "informationRecipient/name", "name"):
        n = el.find("/".join(_N + p for p in path.split("/")))
        if n is not None and _name(n):
            return _name(n)
    dev = el.find(_N + "assignedAuthoringDevice")
    if dev is not None:
        return " ".join(x for x in (_text(dev.find(_N + "manufacturerModelName")),
                                    _text(dev.find(_N + "softwareName"))) if x) or "a device"
    return ""


def _org(el: etree._Element | None, tag: str = "representedOrganization") -> str:
    if el is None:
        return ""
    org = el.find(_N + tag)
    return _name(org.find(_N + "name")) if org is not None else ""


def _dl(w: Writer, rows: Iterable[tuple[str, str | list[str]]]) -> None:
    rows = [(k, v) for k, v in rows if v]
    if not rows:
        return
    w.open("dl", class_="cda-facts")
    for key, value in rows:
        w.el("dt", key)
        for one in (value if isinstance(value, list) else [value]):
            w.el("dd", one)
    w.close("dl")


def _header(w: Writer, root: etree._Element, title: str) -> None:
    w.open("header", class_="cda-header")
    w.el("h1", title)
    code = root.find(_N + "code")
    _dl(w, [
        ("Document type", _code_line(code)),
        ("Date", format_ts(_attr(root, "effectiveTime"))),
        ("Document id", _ids(root)),
        ("Confidentiality", _code_line(root.find(_N + "confidentialityCode"))),
        ("Language", _attr(root, "languageCode", "code")),
        ("Version", _attr(root, "versionNumber", "value")),
    ])
    for rt in root.findall(_N + "recordTarget"):
        role = rt.find(_N + "patientRole")
        if role is None:
            continue
        patient = role.find(_N + "patient")
        names = [_name(n) for n in (patient.findall(_N + "name") if patient is not None else [])]
        w.open("section", class_="cda-party cda-patient")
        w.el("h2", "Patient")
        birth = patient.find(_N + "birthTime") if patient is not None else None
        _dl(w, [
            ("Name", [n for n in names if n]),
            ("Birth date", format_ts(birth.get("value")) if birth is not None else ""),
            ("Gender", _code_line(patient.find(_N + "administrativeGenderCode")) if patient is not None else ""),
            ("Identifiers", _ids(role)),
            ("Address", [_addr(a) for a in role.findall(_N + "addr")]),
            ("Contact", _telecoms(role)),
            ("Race", _code_line(patient.find(_N + "raceCode")) if patient is not None else ""),
            ("Ethnicity", _code_line(patient.find(_N + "ethnicGroupCode")) if patient is not None else ""),
        ])
        w.close("section")
    authors = []
    for a in root.findall(_N + "author"):
        aa = a.find(_N + "assignedAuthor")
        who = _person_or_org(aa)
        org = _org(aa)
        when = format_ts(_attr(a, "time"))
        line = ", ".join(x for x in (who, org) if x)
        if line:
            authors.append(line + (f" ({when})" if when else ""))
    custodian = root.find(f"{_N}custodian/{_N}assignedCustodian/{_N}representedCustodianOrganization")
    legal = root.find(f"{_N}legalAuthenticator")
    legal_line = ""
    if legal is not None:
        ae = legal.find(_N + "assignedEntity")
        who = ", ".join(x for x in (_person_or_org(ae), _org(ae)) if x)
        when = format_ts(_attr(legal, "time"))
        legal_line = who + (f" ({when})" if who and when else "")
    events = []
    for se in root.findall(f"{_N}documentationOf/{_N}serviceEvent"):
        what = _code_line(se.find(_N + "code"))
        span = _time(se.find(_N + "effectiveTime"))
        line = ", ".join(x for x in (what, span) if x)
        if line:
            events.append(line)
    w.open("section", class_="cda-party cda-provenance")
    w.el("h2", "Source")
    _dl(w, [
        ("Author", authors),
        ("Custodian", ", ".join(x for x in (_name(custodian.find(_N + "name")) if custodian is not None else "",
                                            *(_ids(custodian) if custodian is not None else [])) if x)),
        ("Legal authenticator", legal_line),
        ("Service event", events),
    ])
    w.close("section")
    enc = root.find(f"{_N}componentOf/{_N}encompassingEncounter")
    if enc is not None:
        loc = enc.find(f"{_N}location/{_N}healthCareFacility")
        place = ""
        if loc is not None:
            place = ", ".join(x for x in (
                _name(loc.find(f"{_N}location/{_N}name")),
                _name(loc.find(f"{_N}serviceProviderOrganization/{_N}name")),
                _code_line(loc.find(_N + "code"))) if x)
        responsible = _person_or_org(enc.find(f"{_N}responsibleParty/{_N}assignedEntity"))
        participants = [_person_or_org(p.find(_N + "assignedEntity")) for p in enc.findall(_N + "encounterParticipant")]
        w.open("section", class_="cda-party cda-encounter")
        w.el("h2", "Encounter")
        _dl(w, [
            ("Encounter", _code_line(enc.find(_N + "code"))),
            ("When", _time(enc.find(_N + "effectiveTime"))),
            ("Identifiers", _ids(enc)),
            ("Where", place),
            ("Discharge", _code_line(enc.find(_N + "dischargeDispositionCode"))),
            ("Responsible", responsible),
            ("Participants", [p for p in participants if p]),
        ])
        w.close("section")
    w.close("header")


# --- the body ---------------------------------------------------------------------------------
def _body(w: Writer, root: etree._Element) -> None:
    component = root.find(_N + "component")
    if component is None:
        w.el("p", "This document has no body.", class_="cda-note")
        return
    structured = component.find(_N + "structuredBody")
    if structured is not None:
        sections = [c.find(_N + "section") for c in structured.findall(_N + "component")]
        sections = [s for s in sections if s is not None]
        if not sections:
            w.el("p", "This document's body has no sections.", class_="cda-note")
        for s in sections:
            _section(w, s, 2)
        return
    non_xml = component.find(_N + "nonXMLBody")
    if non_xml is not None:
        _non_xml(w, non_xml)
        return
    w.el("p", "This document's body is of an unknown kind and is not shown.", class_="cda-note")


def _section(w: Writer, section: etree._Element, level: int) -> None:
    w.open("section", class_="cda-section")
    title = _text(section.find(_N + "title"))
    code = section.find(_N + "code")
    w.el(f"h{min(level, 6)}", title or _code_display(code) or "Untitled section")
    line = _code_line(code)
    if line:
        w.el("p", line, class_="cda-code")
    text = section.find(_N + "text")
    if text is not None and (len(text) or (text.text or "").strip()):
        w.open("div", class_="cda-narrative")
        flow(w, text, 0)
        w.close("div")
    elif not section.findall(f"{_N}component/{_N}section"):
        w.el("p", "No narrative.", class_="cda-note")
    for child in section.findall(f"{_N}component/{_N}section"):
        _section(w, child, level + 1)
    w.close("section")


def _non_xml(w: Writer, body: etree._Element) -> None:
    text = body.find(_N + "text")
    if text is None:
        w.el("p", "The body is a non-XML attachment with no content.", class_="cda-note")
        return
    media = (text.get("mediaType") or "text/plain").strip()
    ref = text.find(_N + "reference")
    w.open("section", class_="cda-section cda-nonxml")
    w.el("h2", "Attached document")
    if ref is not None and ref.get("value"):
        w.el("p", f"The body ({media}) is stored elsewhere, at {ref.get('value')}; it is not fetched.",
             class_="cda-note")
        w.close("section")
        return
    raw = "".join(t for t in text.itertext() if isinstance(t, str))
    data: bytes | None
    if (text.get("representation") or "TXT").upper() == "B64":
        try:
            data = base64.b64decode("".join(raw.split()), validate=True)
        except (binascii.Error, ValueError):
            data = None
    else:
        data = raw.encode("utf-8")
    if data is None:
        w.el("p", f"The attached {media} content is not valid base64; it is not shown.", class_="cda-note")
    elif media.split(";")[0].strip().lower() == "text/plain":
        shown = data[:MAX_TEXT_BYTES].decode("utf-8", errors="replace")
        w.el("pre", shown, class_="cda-plain")
        if len(data) > MAX_TEXT_BYTES:
            w.el("p", "The rest of the text is left out; use the raw XML.", class_="cda-note")
    else:
        w.el("p", f"The body is an attached {media} file of {len(data):,} bytes; it is not displayed here. "
             "Use the raw XML to obtain it.", class_="cda-note")
    w.close("section")
