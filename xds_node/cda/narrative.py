"""The CDA narrative block (``section/text``) -> HTML of our own, element by element.

Each CDA narrative element this module knows (``urn:hl7-org:v3`` only: content, paragraph, list,
table and its parts, br, sub, sup, linkHtml, footnote, footnoteRef, renderMultiMedia, caption) is
*written anew* through :class:`Writer` as one of our tags with attributes computed here: a class
from :data:`STYLE_CLASSES`, integer spans, a rebuilt ``id``, an http(s) link. An unknown element
gives its content; a foreign-namespace element (XHTML, SVG, ...) or one nested deeper than
:data:`MAX_NARRATIVE_DEPTH` gives only its words. Nothing of the document is ever copied as markup.
:mod:`xds_node.cda.render` uses this for every section and writes the header itself.
"""

from __future__ import annotations

import html
import re
from urllib.parse import urlsplit

from lxml import etree

from xds_node.cda.metadata import CDA_NS

__all__ = ["MAX_NARRATIVE_DEPTH", "STYLE_CLASSES", "TooMuch", "Writer", "esc", "flow", "safe_link", "text_of"]

#: Narrative nesting deeper than this is flattened to its text (CDA narratives are shallow).
MAX_NARRATIVE_DEPTH = 48

_N = f"{{{CDA_NS}}}"

#: CDA styleCode -> our own CSS class (anything else is dropped).
STYLE_CLASSES = {
    "bold": "sc-bold", "underline": "sc-underline", "italics": "sc-italics", "emphasis": "sc-emphasis",
    "lrule": "sc-lrule", "rrule": "sc-rrule", "toprule": "sc-toprule", "botrule": "sc-botrule",
    "arabic": "sc-arabic", "littleroman": "sc-littleroman", "bigroman": "sc-bigroman",
    "littlealpha": "sc-littlealpha", "bigalpha": "sc-bigalpha", "disc": "sc-disc", "circle": "sc-circle",
    "square": "sc-square", "xcda-monospace": "sc-monospace",
}

_ALIGN = {"left", "center", "right", "justify", "char"}
_VALIGN = {"top", "middle", "bottom", "baseline"}
_SCOPE = {"row", "col", "rowgroup", "colgroup"}
_SAFE_ID = re.compile(r"[^A-Za-z0-9_.-]")
_CTRL = re.compile(r"[\x00-\x20\x7f-\x9f]")


def esc(value: object) -> str:
    """Escape for HTML text and double-quoted attribute values."""
    return html.escape("" if value is None else str(value), quote=True)


class TooMuch(Exception):
    """Raised inside the walk when the Writer's element limit is reached."""


# --- output -----------------------------------------------------------------------------------
class Writer:
    """The only producer of markup: tags are ours, attribute values and text always escaped."""

    def __init__(self, limit: int = 200_000) -> None:
        self.limit = limit
        self.parts: list[str] = []
        self.elements = 0
        self.truncated = False

    def raw(self, s: str) -> None:
        self.parts.append(s)

    def text(self, s: str | None) -> None:
        if s:
            self.parts.append(esc(s))

    def open(self, tag: str, **attrs: str | int | None) -> None:
        """Open one of OUR tags (never a name from the document) with computed attributes."""
        self.elements += 1
        if self.elements > self.limit:
            self.truncated = True
            raise TooMuch
        rendered = "".join(f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"' for k, v in attrs.items()
                           if v is not None and v != "")
        self.parts.append(f"<{tag}{rendered}>")

    def close(self, tag: str) -> None:
        self.parts.append(f"</{tag}>")

    def el(self, tag: str, text: str | None, **attrs: str | int | None) -> None:
        self.open(tag, **attrs)
        self.text(text)
        self.close(tag)



def text_of(el: etree._Element | None) -> str:
    """Whitespace-normalised text content (of any element, foreign ones included)."""
    if el is None:
        return ""
    return " ".join("".join(t for t in el.itertext() if isinstance(t, str)).split())


def _classes(el: etree._Element, *base: str) -> str | None:
    style, revised = el.get("styleCode"), el.get("revised")
    if not style and not revised:  # the common case
        return " ".join(base) or None
    names = list(base)
    for token in (style or "").split():
        cls = STYLE_CLASSES.get(token.lower())
        if cls and cls not in names:
            names.append(cls)
    revised = (revised or "").strip().lower()
    if revised in ("insert", "delete"):
        names.append(f"sc-revised-{revised}")
    return " ".join(names) or None


def _anchor(el: etree._Element) -> str | None:
    """The element's ID as an id of ours: ``n-`` + safe characters (never the raw value)."""
    raw = el.get("ID")
    if not raw:
        return None
    return "n-" + _SAFE_ID.sub("_", raw)[:100]


def _int_attr(el: etree._Element, name: str, upper: int = 1000) -> int | None:
    raw = (el.get(name) or "").strip()
    if not raw.isdigit():
        return None
    n = int(raw)
    return n if 1 <= n <= upper else None


def _choice(el: etree._Element, name: str, allowed: set[str]) -> str | None:
    raw = (el.get(name) or "").strip().lower()
    return raw if raw in allowed else None


def safe_link(href: str | None) -> str | None:
    """An absolute http(s) URL with a host and nothing that could be read otherwise, else None."""
    if not href:
        return None
    href = href.strip()
    if _CTRL.search(href) or "\\" in href or len(href) > 2000:
        return None
    try:
        parts = urlsplit(href)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return href


def flow(w: Writer, parent: etree._Element, depth: int) -> None:
    """Text and children of a narrative element, each child translated."""
    w.text(parent.text)
    for child in parent:
        _narrative(w, child, depth + 1)
        w.text(child.tail)


def _narrative(w: Writer, el: etree._Element, depth: int) -> None:
    tag = el.tag
    if not isinstance(tag, str):  # comments / PIs are removed by the parser; entities never expanded
        return
    if depth > MAX_NARRATIVE_DEPTH or not tag.startswith(_N):
        # Deep nesting, or a foreign namespace (an XHTML <script>, an SVG...): its words, escaped.
        w.text(text_of(el))
        return
    local = tag[len(_N):]
    handler = _HANDLERS.get(local)
    if handler is None:  # an unknown CDA element: its content, nothing of itself
        flow(w, el, depth)
        return
    handler(w, el, depth)


def _simple(html_tag: str, *base: str):
    def handle(w: Writer, el: etree._Element, depth: int) -> None:
        w.open(html_tag, id=_anchor(el), class_=_classes(el, *base))
        flow(w, el, depth)
        w.close(html_tag)
    return handle


def _caption_first(w: Writer, el: etree._Element, depth: int, caption_tag: str | None) -> list[etree._Element]:
    """Write ``el``'s caption (as ``caption_tag``), return the other children."""
    rest = []
    for child in el:
        if child.tag == _N + "caption" and caption_tag:
            w.open(caption_tag, class_="cda-caption")
            flow(w, child, depth)
            w.close(caption_tag)
        else:
            rest.append(child)
    return rest


def _paragraph(w: Writer, el: etree._Element, depth: int) -> None:
    w.open("p", id=_anchor(el), class_=_classes(el))
    _captioned_content(w, el, depth + 1)
    w.close("p")


def _captioned_content(w: Writer, el: etree._Element, depth: int) -> None:
    """``el``'s text and children at ``depth``, an inline caption shown as a lead-in (paragraphs
    and list items allow one among their content)."""
    w.text(el.text)
    for child in el:
        if child.tag == _N + "caption":
            w.open("span", class_="cda-caption")
            flow(w, child, depth)
            w.close("span")
            w.text(" ")
        else:
            _narrative(w, child, depth)
        w.text(child.tail)


def _list(w: Writer, el: etree._Element, depth: int) -> None:
    ordered = (el.get("listType") or "").strip().lower() == "ordered"
    tag = "ol" if ordered else "ul"
    rest = _caption_first(w, el, depth, "p")
    w.open(tag, id=_anchor(el), class_=_classes(el))
    for child in rest:
        if child.tag == _N + "item":
            w.open("li", id=_anchor(child), class_=_classes(child))
            _captioned_content(w, child, depth + 2)
            w.close("li")
        elif isinstance(child.tag, str):  # stray content in a list: keep its words in an item
            w.open("li")
            _narrative(w, child, depth + 1)
            w.close("li")
    w.close(tag)


_TABLE_PARTS = {"thead": "thead", "tbody": "tbody", "tfoot": "tfoot"}


def _cell_attrs(el: etree._Element) -> dict[str, str | int | None]:
    if not len(el.attrib):  # the common case: a plain cell
        return {}
    align, valign = _choice(el, "align", _ALIGN), _choice(el, "valign", _VALIGN)
    base = [f"al-{align}"] if align else []
    base += [f"va-{valign}"] if valign else []
    return {"id": _anchor(el), "class_": _classes(el, *base), "colspan": _int_attr(el, "colspan"),
            "rowspan": _int_attr(el, "rowspan"), "scope": _choice(el, "scope", _SCOPE)}


def _row(w: Writer, tr: etree._Element, depth: int) -> None:
    w.open("tr", id=_anchor(tr), class_=_classes(tr))
    for cell in tr:
        if cell.tag in (_N + "td", _N + "th"):
            tag = cell.tag[len(_N):]
            w.open(tag, **_cell_attrs(cell))
            flow(w, cell, depth + 1)
            w.close(tag)
        elif isinstance(cell.tag, str):  # not a cell: keep its words in one
            w.open("td")
            _narrative(w, cell, depth + 1)
            w.close("td")
    w.close("tr")


def _table(w: Writer, el: etree._Element, depth: int) -> None:
    w.open("div", class_="cda-table-wrap")
    w.open("table", id=_anchor(el), class_=_classes(el, "cda-table"))
    for child in el:
        tag = child.tag
        if tag == _N + "caption":
            w.open("caption")
            flow(w, child, depth + 1)
            w.close("caption")
        elif tag in (_N + "col", _N + "colgroup"):
            continue  # widths and alignment of columns: presentation we do not take from documents
        elif isinstance(tag, str) and tag.startswith(_N) and tag[len(_N):] in _TABLE_PARTS:
            part = _TABLE_PARTS[tag[len(_N):]]
            w.open(part, class_=_classes(child))
            for tr in child:
                if tr.tag == _N + "tr":
                    _row(w, tr, depth + 2)
                elif isinstance(tr.tag, str):
                    w.open("tr")
                    w.open("td")
                    _narrative(w, tr, depth + 2)
                    w.close("td")
                    w.close("tr")
            w.close(part)
        elif tag == _N + "tr":
            w.open("tbody")
            _row(w, child, depth + 1)
            w.close("tbody")
        elif isinstance(tag, str):
            w.open("tbody")
            w.open("tr")
            w.open("td")
            _narrative(w, child, depth + 1)
            w.close("td")
            w.close("tr")
            w.close("tbody")
    w.close("table")
    w.close("div")


def _br(w: Writer, el: etree._Element, depth: int) -> None:
    w.open("br")


def _link(w: Writer, el: etree._Element, depth: int) -> None:
    href = el.get("href")
    target = safe_link(href)
    if target is not None:
        w.open("a", href=target, target="_blank", rel="noopener noreferrer", referrerpolicy="no-referrer",
               class_=_classes(el))
        flow(w, el, depth)
        w.close("a")
        return
    if href and href.strip().startswith("#") and len(href.strip()) > 1:
        w.open("a", href="#n-" + _SAFE_ID.sub("_", href.strip()[1:])[:100], class_=_classes(el))
        flow(w, el, depth)
        w.close("a")
        return
    # anything else (javascript:, data:, relative, file:) is shown as what it is: words, inert
    w.open("span", class_=_classes(el, "cda-link-inert"), title=f"link not followed: {href}" if href else None)
    flow(w, el, depth)
    w.close("span")


def _footnote_ref(w: Writer, el: etree._Element, depth: int) -> None:
    ref = el.get("IDREF") or ""
    w.open("sup", class_="cda-footnote-ref")
    if ref:
        w.open("a", href="#n-" + _SAFE_ID.sub("_", ref)[:100])
        w.text(text_of(el) or "*")
        w.close("a")
    else:
        w.text(text_of(el) or "*")
    w.close("sup")


def _multimedia(w: Writer, el: etree._Element, depth: int) -> None:
    refs = (el.get("referencedObject") or "").split()
    caption = el.find(_N + "caption")
    w.open("span", class_="cda-media")
    w.text(f"[multimedia not shown: {' '.join(refs) or 'no reference'}")
    if caption is not None:
        w.text(" - ")
        flow(w, caption, depth)
    w.text("]")
    w.close("span")


_HANDLERS = {
    "content": _simple("span"),
    "paragraph": _paragraph,
    "list": _list,
    "table": _table,
    "br": _br,
    "sub": _simple("sub"),
    "sup": _simple("sup"),
    "linkHtml": _link,
    "footnote": _simple("span", "cda-footnote"),
    "footnoteRef": _footnote_ref,
    "renderMultiMedia": _multimedia,
    "caption": _simple("span", "cda-caption"),
    # structure met out of place: its content only
    "item": _simple("span"),
    "text": _simple("div"),
}
