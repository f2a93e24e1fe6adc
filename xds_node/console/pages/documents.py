"""Documents: one patient's registry entries with their metadata; one entry's C-CDA as readable
HTML (:mod:`xds_node.console.docview`: our renderer, a sandboxed frame, its own CSP), the raw XML one
click away (plain text or a download, never markup), and deprecating an entry (administrators, with
a confirmation step; the same registry path ``xds-node load`` uses for a removed file).

Reading a document is a disclosure to a person: every view of its content (rendered or raw) commits
an audit row naming the user, the patient and the document before a byte of it is sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lxml import etree
from sqlalchemy import func, select
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from xds_node import safexml
from xds_node.cda.render import MAX_BYTES, format_ts
from xds_node.console import docview
from xds_node.console.web import Console, Page, roles, route
from xds_node.ebxml import rim
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import Code, DocumentEntry
from xds_node.registry import tables as t
from xds_node.security.consent import check_patient_id

#: A registrar and an operator cannot read documents; deprecating is for administrators.
PAGE = Page(key="documents", title="Documents", order=60,
            roles=roles("administrator", "privacy-officer", "clinician-support"))
DEPRECATE_ROLES = roles("administrator")
#: Entries listed at most for one patient (newest first); the page says when there are more.
MAX_ENTRIES = 500


@dataclass
class Entry:
    """What the pages show of one DocumentEntry (read from its stored ebRIM)."""

    entry_uuid: str
    unique_id: str
    patient_id: str
    status: str
    title: str
    type: str
    class_: str
    created: str
    service: str
    authors: list[str]
    confidentiality: str
    format: str
    facility: str
    practice: str
    language: str
    mime_type: str
    size: int | None
    hash: str
    repository_unique_id: str
    source_patient_id: str
    events: list[str]
    reference_ids: list[str]
    comments: str

    @property
    def deprecated(self) -> bool:
        return self.status == "Deprecated"


def _code(c: Code | None) -> str:
    if c is None:
        return ""
    return f"{c.display} ({c.code})" if c.display else c.code


def _xcn(value: str | None) -> str:
    """An author XCN / XON as a name: ``id^Family^Given^Middle^Suffix^Prefix`` -> ``Prefix Given Family``."""
    if not value:
        return ""
    parts = (value.split("^") + [""] * 7)[:7]
    if value.count("^") >= 2:
        name = " ".join(x for x in (parts[5], parts[2], parts[3], parts[1]) if x)
        name += f", {parts[4]}" if parts[4] else ""
        return name or parts[0]
    return parts[0]


def entry_of(row: Any) -> Entry:
    el = etree.fromstring(row.rim, safexml.parser())
    de: DocumentEntry = rim.read_document_entry(el)
    authors = []
    for a in de.authors:
        who = _xcn(a.person)
        where = ", ".join(x.split("^")[0] for x in a.institutions if x)
        role = ", ".join(r.split("^")[0] for r in a.roles if r)
        authors.append(" - ".join(x for x in (who, role, where) if x))
    service = " to ".join(x for x in (format_ts(de.service_start_time), format_ts(de.service_stop_time)) if x)
    return Entry(
        entry_uuid=row.id, unique_id=row.unique_id, patient_id=row.patient_id,
        status=(row.status or "").rsplit(":", 1)[-1], title=de.title_text or "", type=_code(de.type_code),
        class_=_code(de.class_code), created=format_ts(de.creation_time), service=service,
        authors=[a for a in authors if a], confidentiality=", ".join(_code(c) for c in de.confidentiality_codes),
        format=_code(de.format_code), facility=_code(de.healthcare_facility_type_code),
        practice=_code(de.practice_setting_code), language=de.language_code or "", mime_type=de.mime_type or "",
        size=de.size, hash=de.hash or "", repository_unique_id=de.repository_unique_id or "",
        source_patient_id=de.source_patient_id or "", events=[_code(c) for c in de.event_codes],
        reference_ids=list(de.reference_ids), comments=de.comments[0].value if de.comments else "")


def entries_for(engine: Any, patient_id: str, limit: int = MAX_ENTRIES) -> tuple[list[Entry], int]:
    """(newest entries of the patient, how many there are in all)."""
    d = t.documents
    with engine.connect() as conn:
        total = conn.scalar(select(func.count()).select_from(d).where(d.c.patient_id == patient_id)) or 0
        rows = conn.execute(select(d.c.id, d.c.unique_id, d.c.patient_id, d.c.status, d.c.rim)
                            .where(d.c.patient_id == patient_id)
                            .order_by(d.c.creation_time.desc(), d.c.id).limit(limit)).all()
    return [entry_of(r) for r in rows], total


def entry_by_uuid(engine: Any, entry_uuid: str) -> Entry | None:
    d = t.documents
    with engine.connect() as conn:
        row = conn.execute(select(d.c.id, d.c.unique_id, d.c.patient_id, d.c.status, d.c.rim)
                           .where(d.c.id == entry_uuid[:80])).first()
    return entry_of(row) if row is not None else None


def local_bytes(node: Any, entry: Entry) -> tuple[bytes | None, str]:
    """(the document's bytes from this node's repository, or None and why not)."""
    repository = node.repository
    if entry.repository_unique_id and entry.repository_unique_id != repository.unique_id:
        return None, (f"This document is held by repository {entry.repository_unique_id}, not by this node's "
                      f"repository ({repository.unique_id}); it cannot be shown here.")
    outcome = repository.retrieve([(repository.unique_id, entry.unique_id, None)])
    item = outcome.documents[0]
    if item.error is not None or item.located is None:
        return None, f"The document's content is not available: {item.error.context if item.error else 'unknown'}"
    if item.located.size > MAX_BYTES:
        return None, f"The document is too large to show here ({item.located.size:,} bytes)."
    return item.located.path.read_bytes(), ""


def patient_name(node: Any, patient_id: str) -> str:
    patient = node.patients.get(patient_id) if node.patients is not None else None
    if patient is None:
        return ""
    d = patient.demographics
    return " ".join([*d.given, d.family or ""]).strip()


def routes(console: Console) -> list:
    node = console.node

    def index(request: Request) -> Response:
        raw = (request.query_params.get("patient") or "").strip()
        if not raw:
            return console.render(request, "documents/index.html", patient="", error="", entries=[], total=0,
                                  name="")
        try:
            patient = check_patient_id(raw)
        except ValueError as exc:
            return console.render(request, "documents/index.html", patient=raw, error=str(exc), entries=[],
                                  total=0, name="", status_code=400)
        entries, total = entries_for(console.engine, patient)
        return console.render(request, "documents/index.html", patient=patient, error="", entries=entries,
                              total=total, name=patient_name(node, patient))

    def _entry_or_404(request: Request) -> Entry | Response:
        entry = entry_by_uuid(console.engine, request.path_params["entry"])
        if entry is None:
            return console.render(request, "documents/missing.html", status_code=404,
                                  entry_uuid=request.path_params["entry"][:80])
        return entry

    def show(request: Request) -> Response:
        from xds_node.console.app import CSP  # (app finds the pages; imported here, not at module load)

        entry = _entry_or_404(request)
        if isinstance(entry, Response):
            return entry
        console.audit(request, "documents:metadata", patient_id=entry.patient_id, documents=[entry.unique_id])
        response = console.render(request, "documents/entry.html", entry=entry,
                                  name=patient_name(node, entry.patient_id),
                                  may_deprecate=request.state.user.role in DEPRECATE_ROLES,
                                  notice=request.query_params.get("done", ""), sandbox=docview.FRAME_SANDBOX)
        response.headers["content-security-policy"] = docview.page_csp(CSP)
        return response

    def _read(request: Request, what: str, *, framed: bool = False) -> tuple[Entry, bytes] | Response:
        entry = entry_by_uuid(console.engine, request.path_params["entry"])
        if entry is None:
            return docview.frame_message("There is no such registry entry.") if framed else _entry_or_404(request)
        data, why = local_bytes(node, entry)
        if data is None:
            if framed:
                return docview.frame_message(why)
            return console.render(request, "documents/unavailable.html", entry=entry, why=why, status_code=404)
        # the disclosure to this user is on the trail before the content leaves (raises: nothing sent)
        console.audit(request, f"documents:{what}", patient_id=entry.patient_id, documents=[entry.unique_id])
        return entry, data

    def view(request: Request) -> Response:
        got = _read(request, "read", framed=True)
        if isinstance(got, Response):
            return got
        return docview.frame_response(got[1])

    def raw(request: Request) -> Response:
        download = request.query_params.get("download") == "1"
        got = _read(request, "download" if download else "raw")
        if isinstance(got, Response):
            return got
        entry, data = got
        return docview.raw_response(data, entry.unique_id, download=download)

    def confirm(request: Request) -> Response:
        entry = _entry_or_404(request)
        if isinstance(entry, Response):
            return entry
        return console.render(request, "documents/deprecate.html", entry=entry,
                              name=patient_name(node, entry.patient_id))

    def deprecate(request: Request) -> Response:
        entry = _entry_or_404(request)
        if isinstance(entry, Response):
            return entry
        if request.state.form.get("confirm") != "yes":
            return console.render(request, "documents/deprecate.html", entry=entry, status_code=400,
                                  name=patient_name(node, entry.patient_id))
        url = f"{PAGE.url}/entry/{entry.entry_uuid}"
        if entry.deprecated:
            return RedirectResponse(url + "?done=already", status_code=303)
        reason = str(request.state.form.get("reason") or "").strip()[:300]
        console.audit(request, "documents:deprecate", outcome="attempt", patient_id=entry.patient_id,
                      documents=[entry.unique_id], reason=reason)
        try:
            changed = node.registry.store.set_document_status(entry.entry_uuid, v.Status.DEPRECATED)
        except Exception as exc:
            console.audit(request, "documents:deprecate", outcome="error", patient_id=entry.patient_id,
                          documents=[entry.unique_id], reason=f"{type(exc).__name__}: {exc}"[:300])
            raise
        console.audit(request, "documents:deprecate", outcome="success" if changed else "failure",
                      patient_id=entry.patient_id, documents=[entry.unique_id], reason=reason)
        return RedirectResponse(url + ("?done=deprecated" if changed else ""), status_code=303)

    return [
        route("", index),
        route("/entry/{entry}", show),
        route("/entry/{entry}/view", view),
        route("/entry/{entry}/raw", raw),
        route("/entry/{entry}/deprecate", confirm, roles=DEPRECATE_ROLES),
        route("/entry/{entry}/deprecate", deprecate, methods=["POST"], roles=DEPRECATE_ROLES),
    ]
