"""Patients and consent: find a patient (name, birth date or identifier), see their identifiers,
demographic history and consent history, and record an opt-in or a revocation with a scanned form.

A change is two steps: the form is checked (and the scan stored, not yet linked) and shown back for
confirmation; only the confirmation writes the directive. Consent is read from the database on
every partner request (:mod:`xds_node.security.consent`), so the very next request sees it.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import delete, insert, or_, select, update
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from xds_node.console.tables import consent_forms
from xds_node.console.web import Console, Page, roles, route
from xds_node.patients import tables as pt
from xds_node.patients.model import normalize_date, normalize_name, parse_cx
from xds_node.security.consent import KNOWN_SOURCES, check_patient_id, status_from

PAGE = Page(key="patients", title="Patients and consent", order=20,
            roles=roles("administrator", "privacy-officer", "registrar", "clinician-support"))
#: Who may record consent and read the scanned forms (clinician support may look, not change).
CONSENT_WRITERS = roles("administrator", "privacy-officer", "registrar")
SEARCH_LIMIT = 50

#: Scanned forms: declared type -> the bytes such a file starts with (the declaration alone is not trusted).
FORM_TYPES: dict[str, tuple[bytes, ...]] = {
    "application/pdf": (b"%PDF-",),
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/tiff": (b"II*\x00", b"MM\x00*"),
}


# --- search -------------------------------------------------------------------------------------
def search(engine: Any, query: str, limit: int = SEARCH_LIMIT) -> list[dict]:
    """Patients matching a CX id, an identifier (extension), a birth date or a name
    (``family`` or ``family, given``, prefixes): all by index range scans."""
    q = query.strip()
    p = pt.patient.c
    cols = (p.patient_id, p.family, p.given, p.gender, p.birth_date, p.updated)
    if not q:
        return []
    conds = []
    if parse_cx(q) is not None:
        conds.append(p.patient_id == q)
    elif re.fullmatch(r"\d{4}-?\d{2}-?\d{2}", q):
        conds.append(p.birth_date == normalize_date(q))
    else:
        ids = select(pt.patient_identifier.c.patient_id).where(pt.patient_identifier.c.extension == q[:256])
        conds += [p.patient_id.in_(ids), p.patient_id.between(q + "^", q + "^\uffff")]
        family, _, given = q.partition(",") if "," in q else q.partition(" ")
        fam = normalize_name(family)
        if fam:
            name = p.family_norm.between(fam, fam + "\uffff")
            giv = normalize_name(given)
            conds.append(name & p.given_norm.like(giv + "%") if giv else name)
    stmt = select(*cols).where(or_(*conds)).order_by(p.family_norm, p.given_norm, p.patient_id).limit(limit)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(stmt)]


def _day(value: str, what: str) -> date:
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"{what}: {value!r} is not a date (YYYY-MM-DD)") from None


def _start_of(day: date) -> datetime:
    """A start date: today means now (in effect for the very next request), else 00:00 UTC."""
    if day == datetime.now(UTC).date():
        return datetime.now(UTC)
    return datetime.combine(day, time(0), tzinfo=UTC)


def check_form(content: bytes, declared: str, limit: int) -> str:
    """The content type of an acceptable scanned form, or ValueError saying why not."""
    if not content:
        raise ValueError("the scanned form is empty")
    if len(content) > limit:
        raise ValueError(f"the scanned form is larger than {limit // 1024} KiB")
    kind = (declared or "").split(";")[0].strip().lower()
    magic = FORM_TYPES.get(kind)
    if magic is None:
        raise ValueError(f"a scanned form must be PDF, PNG, JPEG or TIFF, not {kind or 'unknown'}")
    if not content.startswith(magic):
        raise ValueError(f"the file does not look like {kind} (its content does not match its type)")
    return kind


def _directive_request(form: Any, settings: Any) -> dict:
    """The consent change a form asks for, checked; ValueError with what is wrong."""
    kind = str(form.get("kind") or "")
    if kind not in ("opt-in", "revoke"):
        raise ValueError("choose opt-in or revocation")
    patient = check_patient_id(str(form.get("patient") or ""))
    source = str(form.get("source") or "").strip()
    if not source:
        raise ValueError("say how the directive reached us (e.g. paper form)")
    form_name = str(form.get("form_name") or "").strip()[:200]
    signed = str(form.get("signed") or "").strip()
    signed_day = _day(signed, "date signed") if signed else None
    if signed_day and signed_day > datetime.now(UTC).date():
        raise ValueError("the date signed is in the future")
    effective = _day(str(form.get("effective") or "") or datetime.now(UTC).date().isoformat(), "effective date")
    until_raw = str(form.get("until") or "").strip()
    until = _day(until_raw, "end date") if until_raw and kind == "opt-in" else None
    if until is not None and until <= effective:
        raise ValueError("the end date must be after the effective date")
    allowed = list(settings.allowed_purposes or ["TREATMENT"])
    purposes = [p for p in form.getlist("purposes") if isinstance(p, str)] if kind == "opt-in" else []
    unknown = [p for p in purposes if p not in allowed]
    if unknown:
        raise ValueError(f"unknown purpose of use {unknown[0]!r}")
    note = str(form.get("note") or "").strip()[:2000]
    return {"kind": kind, "patient": patient, "source": source[:128], "form_name": form_name,
            "signed": signed_day.isoformat() if signed_day else "", "effective": effective.isoformat(),
            "until": until.isoformat() if until else "", "purposes": purposes, "note": note}


def _note(req: dict) -> str:
    parts = []
    if req["form_name"]:
        parts.append(f"form: {req['form_name']}")
    if req["signed"]:
        parts.append(f"signed {req['signed']}")
    if req["note"]:
        parts.append(req["note"])
    return "; ".join(parts)


# --- views --------------------------------------------------------------------------------------
def routes(console: Console) -> list:
    engine = console.engine
    node = console.node

    def index(request: Request) -> Response:
        q = request.query_params.get("q", "")[:200]
        results = search(engine, q) if q.strip() else []
        return console.render(request, "patients/index.html", q=q, results=results, limit=SEARCH_LIMIT)

    def details(patient: str) -> dict:
        record = node.patients.get(patient)
        history = node.patients.history(patient)
        directives = node.consent_store.history(patient)
        now = datetime.now(UTC)
        with engine.connect() as conn:
            forms = [dict(r._mapping) for r in conn.execute(
                select(consent_forms.c.id, consent_forms.c.directive_id, consent_forms.c.file_name,
                       consent_forms.c.content_type, consent_forms.c.size, consent_forms.c.uploaded_by,
                       consent_forms.c.uploaded_at)
                .where(consent_forms.c.patient_id == patient, consent_forms.c.directive_id.is_not(None)))]
        return {"record": record, "versions": list(reversed(history)), "directives": list(reversed(directives)),
                "state": status_from(directives, now), "mode": console.settings.consent_mode,
                "forms": {f["directive_id"]: f for f in forms},
                "correlations": node.patients.correlations_for(patient)}

    def show(request: Request, *, error: str = "", values: dict | None = None, status: int = 200) -> Response:
        patient = (request.query_params.get("patient") or (values or {}).get("patient") or "").strip()
        if not patient:
            return RedirectResponse("/patients", status_code=303)
        user = request.state.user
        return console.render(request, "patients/show.html", status_code=status, patient=patient,
                              can_change=user.role in CONSENT_WRITERS, error=error,
                              sources=KNOWN_SOURCES, purposes=console.settings.allowed_purposes or ["TREATMENT"],
                              values=values or {"kind": "opt-in", "source": "paper form",
                                                "effective": datetime.now(UTC).date().isoformat()},
                              **details(patient))

    def prepare(request: Request) -> Response:
        """Step 1: check the change and keep the scan aside; show it back for confirmation."""
        form = request.state.form
        values = {k: form.get(k) for k in ("kind", "patient", "source", "form_name", "signed", "effective",
                                           "until", "note")}
        values["purposes"] = form.getlist("purposes")
        try:
            req = _directive_request(form, console.settings)
            upload = form.get("scan")
            scan = None
            if upload is not None and not isinstance(upload, str) and upload.filename:
                content = upload.file.read(console.settings.console_upload_max_bytes + 1)
                kind = check_form(content, upload.content_type or "", console.settings.console_upload_max_bytes)
                scan = (upload.filename[-200:], kind, content)
        except ValueError as exc:
            return show(request, error=str(exc), values=values, status=400)
        pending = None
        if scan is not None:
            now = datetime.now(UTC).replace(tzinfo=None)
            with engine.begin() as conn:
                # forms never confirmed are dropped after a day
                conn.execute(delete(consent_forms).where(consent_forms.c.directive_id.is_(None),
                                                         consent_forms.c.uploaded_at < now - timedelta(days=1)))
                pending = conn.execute(insert(consent_forms).values(
                    directive_id=None, patient_id=req["patient"], file_name=scan[0], content_type=scan[1],
                    size=len(scan[2]), sha256=hashlib.sha256(scan[2]).hexdigest(), content=scan[2],
                    uploaded_by=request.state.user.name, uploaded_at=now)).inserted_primary_key[0]
        in_index = node.patients.get(req["patient"]) is not None
        return console.render(request, "patients/confirm.html", req=req, scan=scan, pending=pending,
                              in_index=in_index, state=node.consent_store.status(req["patient"]))

    def confirm(request: Request) -> Response:
        """Step 2: write the directive (audited first: no audit row, no change)."""
        form = request.state.form
        try:
            req = _directive_request(form, console.settings)
        except ValueError as exc:
            return console.render(request, "patients/error.html", status_code=400, error=str(exc))
        pending = str(form.get("pending") or "")
        user = request.state.user
        what = "opt-in" if req["kind"] == "opt-in" else "revocation"
        console.audit(request, f"consent-{req['kind']}", outcome="attempt", patient_id=req["patient"],
                      reason=f"recording {what} effective {req['effective']}")
        start = _start_of(date.fromisoformat(req["effective"]))
        store = node.consent_store
        try:
            if req["kind"] == "opt-in":
                until = (datetime.combine(date.fromisoformat(req["until"]), time(0), tzinfo=UTC)
                         if req["until"] else None)
                directive = store.grant(req["patient"], source=req["source"], effective_from=start,
                                        effective_until=until, recorded_by=f"console:{user.name}", note=_note(req),
                                        purposes=req["purposes"] or None)
            else:
                directive = store.revoke(req["patient"], source=req["source"], effective_from=start,
                                         recorded_by=f"console:{user.name}", note=_note(req))
        except ValueError as exc:
            console.audit(request, f"consent-{req['kind']}", outcome="failure", patient_id=req["patient"],
                          reason=str(exc))
            return console.render(request, "patients/error.html", status_code=400, error=str(exc))
        if pending.isdigit():
            with engine.begin() as conn:
                conn.execute(update(consent_forms).where(
                    consent_forms.c.id == int(pending), consent_forms.c.directive_id.is_(None),
                    consent_forms.c.patient_id == req["patient"],
                    consent_forms.c.uploaded_by == user.name).values(directive_id=directive.id))
        console.audit(request, f"consent-{req['kind']}", patient_id=req["patient"],
                      reason=f"{what} recorded as directive #{directive.id}")
        from urllib.parse import quote

        return RedirectResponse(f"/patients/show?patient={quote(req['patient'])}&recorded={directive.id}",
                                status_code=303)

    def scan(request: Request) -> Response:
        raw = request.query_params.get("id", "")
        if not raw.isdigit():
            return Response("not found", status_code=404, media_type="text/plain")
        with engine.connect() as conn:
            row = conn.execute(select(consent_forms).where(consent_forms.c.id == int(raw),
                                                           consent_forms.c.directive_id.is_not(None))).first()
        if row is None:
            return Response("not found", status_code=404, media_type="text/plain")
        console.audit(request, "consent-form-download", patient_id=row.patient_id,
                      reason=f"scanned form #{row.id} of directive #{row.directive_id}")
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", row.file_name)[-100:] or "form"
        return Response(row.content, media_type=row.content_type, headers={
            "content-disposition": f'attachment; filename="{safe}"',
            "content-security-policy": "default-src 'none'; sandbox"})

    return [route("", index), route("/show", show),
            route("/consent", prepare, methods=["POST"], roles=CONSENT_WRITERS),
            route("/consent/confirm", confirm, methods=["POST"], roles=CONSENT_WRITERS),
            route("/form", scan, roles=CONSENT_WRITERS)]
