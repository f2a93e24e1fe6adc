"""How the console shows a clinical document (Documents and Outside records pages): three walls.

1. :mod:`xds_node.cda.render` translates the document into HTML of our own (whitelist, escaped):
   nothing of the document can be markup.
2. The rendered page is shown in an ``<iframe sandbox>`` (no ``allow-scripts``, no
   ``allow-same-origin``: an opaque origin with no script, no forms, no cookies of ours). Links of
   the document open in a new tab (``allow-popups``; the tab escapes the sandbox, as any link would,
   with no opener and no referrer).
3. The frame's own answer carries ``Content-Security-Policy: default-src 'none'; style-src
   'sha256-...' ...; sandbox ...``: no script source at all, only our one stylesheet (inline, pinned
   by its hash), and the same sandbox even when the URL is opened on its own. A document shown
   inline (``srcdoc``, Outside records) inherits the console page's own strict policy instead.

The raw XML goes out as ``text/plain; charset=utf-8`` (or a download as
``application/octet-stream``) with ``nosniff`` and the sandbox policy: a browser never parses it as
HTML or XML that could run.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from pathlib import Path

from starlette.responses import HTMLResponse, Response

from xds_node.cda.render import esc, render

STATIC = Path(__file__).resolve().parent / "static"
#: The iframe's sandbox tokens: no scripts, no same-origin, no forms; links may open a new tab.
FRAME_SANDBOX = "allow-popups allow-popups-to-escape-sandbox"


@cache
def document_css() -> str:
    """The rendered document's stylesheet (``static/cda.css``), inlined and pinned by hash."""
    return (STATIC / "cda.css").read_text(encoding="utf-8")


@cache
def css_hash() -> str:
    digest = hashlib.sha256(document_css().encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def frame_csp() -> str:
    """The policy of a rendered document's own answer (wall 3)."""
    return (f"default-src 'none'; style-src {css_hash()}; img-src 'none'; font-src 'none'; "
            "connect-src 'none'; form-action 'none'; base-uri 'none'; frame-ancestors 'self'; "
            f"sandbox {FRAME_SANDBOX}")


def page_csp(base: str) -> str:
    """The console page's policy plus what a page showing a document needs: its frame (same origin)
    and the document stylesheet's hash (for a ``srcdoc`` frame, which inherits this policy)."""
    parts = []
    for directive in base.split(";"):
        directive = directive.strip()
        if directive.startswith("style-src "):
            directive += f" {css_hash()}"
        if directive:
            parts.append(directive)
    parts.append("frame-src 'self'")
    return "; ".join(parts)


def document_page(data: bytes) -> tuple[str, str]:
    """(complete HTML page of the rendered document with our stylesheet inlined, its title)."""
    r = render(data)
    html = ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="referrer" content="no-referrer">'
            f"<title>{esc(r.title or 'Document')}</title><style>{document_css()}</style></head>"
            f"<body>{r.html}</body></html>")
    return html, r.title


def frame_response(data: bytes) -> HTMLResponse:
    """A rendered document as the answer for its frame (walls 1 and 3)."""
    html, _ = document_page(data)
    return HTMLResponse(html, headers={"content-security-policy": frame_csp(), "x-frame-options": "SAMEORIGIN",
                                       "x-content-type-options": "nosniff", "referrer-policy": "no-referrer"})


def frame_message(text: str, status_code: int = 404) -> HTMLResponse:
    """A sentence instead of a document, fit for the frame (same policy as a document)."""
    html = ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>Document</title><style>{document_css()}</style></head>"
            f'<body><p class="cda-error">{esc(text)}</p></body></html>')
    return HTMLResponse(html, status_code=status_code,
                        headers={"content-security-policy": frame_csp(), "x-frame-options": "SAMEORIGIN"})


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def raw_response(data: bytes, name: str, *, download: bool = False) -> Response:
    """The document's bytes as plain text (or a download); never as something a browser runs."""
    filename = (_UNSAFE_NAME.sub("_", name)[:120] or "document") + ".xml"
    headers = {"x-content-type-options": "nosniff", "content-security-policy": "default-src 'none'; sandbox",
               "content-disposition": f'{"attachment" if download else "inline"}; filename="{filename}"'}
    media = "application/octet-stream" if download else "text/plain; charset=utf-8"
    return Response(data, media_type=media, headers=headers)


def xml_text(data: bytes, limit: int = 4 * 1024 * 1024) -> str:
    """The document as text for a ``<pre>`` (escaped by the template), cut at ``limit`` bytes."""
    text = data[:limit].decode("utf-8", errors="replace")
    return text + ("\n... (cut: use the download)" if len(data) > limit else "")
