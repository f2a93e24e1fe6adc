"""Outside records: for one of our patients, discover (XCPD, ITI-55), query (ITI-38) and retrieve
(ITI-39) across partner communities, with live per-partner progress, the merged list, and a
retrieved document shown as on the Documents page (our renderer, a sandboxed frame).

Live progress without a job store: the POST that starts an operation answers with one HTML page
streamed as the operation runs. The page head goes out first, then one table row per partner event
(:mod:`xds_node.gateway.progress`: started, answered with N results, failed why, timed out), then
the merged result. A browser shows the rows as they arrive, with no script at all (every event
stays listed); ``static/outside.js``, when it runs, keeps only each partner's newest row. Nothing
lives in a process cache, so it works whichever worker or host answers, and a reload simply shows
the form again.

The calls go out as the console user: subject-id = the user's name, with the node's organization,
our homeCommunityId and the purpose of use chosen on the form (like ``/ig/*`` names its internal
client); the gateway enforces consent (no consent: nothing is sent, the refusal is shown) and
audits every outbound call under that identity, and the console audits the action itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from xds_node.cda.render import MAX_BYTES, format_ts
from xds_node.console import docview
from xds_node.console.auth import ROLES
from xds_node.console.web import Console, Page, roles, route
from xds_node.ebxml.xdsb import DocumentRequest
from xds_node.gateway.progress import TRANSACTIONS, Finished, PartnerEvent, follow
from xds_node.security.consent import check_patient_id
from xds_node.security.saml import RequesterContext

PAGE = Page(key="outside", title="Outside records", order=70, roles=roles("administrator", "clinician-support"))

NHIN_PURPOSE = "2.16.840.1.113883.3.18.7.1"
#: Purposes of use a console user may state (NHIN PurposeOfUse codes).
PURPOSES = {"TREATMENT": "Treatment", "EMERGENCY": "Emergency treatment", "REQUEST": "Request of the patient",
            "COVERAGE": "Coverage under policy or program", "OPERATIONS": "Healthcare operations"}
STATE_LABEL = {"started": "waiting", "answered": "answered", "failed": "failed", "timeout": "timed out"}

_GATEWAYS: dict[tuple[int, int], Any] = {}


def gateway_for(console: Console) -> Any:
    """The node's initiating gateway for this event loop (its connection pool belongs to the loop)."""
    from xds_node.transactions.ig import IgSettings, build_gateway

    key = (id(console), id(asyncio.get_running_loop()))
    gw = _GATEWAYS.get(key)
    if gw is None:
        gw = _GATEWAYS[key] = build_gateway(console.node, IgSettings.from_settings(console.settings))
    return gw


def requester(console: Console, request: Request, purpose: str) -> RequesterContext:
    """The console user as the outbound requester (the ``ig_*`` settings give the organization)."""
    from xds_node.transactions.ig import IgSettings

    ig = IgSettings.from_settings(console.settings)
    user = request.state.user
    return replace(ig.requester(), subject_id=user.name, npi=None,
                   purpose_of_use=(purpose, NHIN_PURPOSE, PURPOSES[purpose]))


def _form(request: Request) -> tuple[str, str, str]:
    """(patient, purpose, problem) from the POSTed form."""
    form = request.state.form
    purpose = str(form.get("purpose") or "TREATMENT")
    try:
        patient = check_patient_id(str(form.get("patient") or ""))
    except ValueError as exc:
        return str(form.get("patient") or ""), purpose, str(exc)
    if purpose not in PURPOSES:
        return patient, "TREATMENT", f"unknown purpose of use {purpose[:40]!r}"
    return patient, purpose, ""


def correlations(console: Console, patient: str) -> list[dict[str, str]]:
    node = console.node
    out = []
    for c in node.patients.correlations_for(patient) if node.patients is not None else []:
        partner = node.trust.partner_for_community(c.community_id)
        out.append({"community": c.community_id, "remote": c.remote_cx, "partner": partner.name if partner else ""})
    return out


def listed_token(secret: bytes, patient: str, home: str, repository: str, document: str) -> str:
    """What a query's answer gives each document it lists for ``patient``: a retrieve must carry it,
    so a document is read (and audited, consent checked) only as the patient's whose query listed
    it, never as whichever patient a hand-made form names. Stateless, so any worker can check it."""
    text = "\x1f".join(("outside-retrieve", patient, home, repository, document))
    return hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()


def routes(console: Console) -> list:
    node = console.node
    templates = console.templates

    def context(request: Request, **values: Any) -> dict[str, Any]:
        """What console.render adds, for templates rendered to text (the streamed page)."""
        user = request.state.user
        return {"request": request, "user": user, "nav": console.visible_pages(user), "csrf": request.state.csrf,
                "page": PAGE, "roles": ROLES, "now": datetime.now(UTC), "purposes": PURPOSES, **values}

    def index(request: Request) -> Response:
        raw = (request.query_params.get("patient") or "").strip()
        values: dict[str, Any] = {"patient": raw, "error": "", "name": "", "known": False, "links": [],
                                  "consent": None, "purposes": PURPOSES}
        if raw:
            try:
                patient = check_patient_id(raw)
            except ValueError as exc:
                values["error"] = str(exc)
            else:
                stored = node.patients.get(patient) if node.patients is not None else None
                d = stored.demographics if stored is not None else None
                values.update(patient=patient, known=stored is not None, links=correlations(console, patient),
                              name=" ".join([*d.given, d.family or ""]).strip() if d else "",
                              consent=node.consent.decide(patient, purpose="TREATMENT"))
        return console.render(request, "outside/index.html", status_code=400 if values["error"] else 200, **values)

    def streamed(request: Request, transaction: str, patient: str, purpose: str,
                 run: Any, result_template: str, extra: dict[str, Any]) -> Response:
        """The streamed page: head, one row per partner event, the result, the tail."""
        rows_mark, result_mark = f"@@rows-{secrets.token_hex(8)}@@", f"@@result-{secrets.token_hex(8)}@@"
        shell = templates.get_template("outside/run.html").render(context(
            request, title=TRANSACTIONS[transaction], transaction=transaction, patient=patient, purpose=purpose,
            rows_mark=rows_mark, result_mark=result_mark))
        head, rest = shell.split(rows_mark, 1)
        middle, tail = rest.split(result_mark, 1)
        row = templates.get_template("outside/row.html")
        result_t = templates.get_template(result_template)
        user = request.state.user

        async def body() -> AsyncIterator[str]:
            yield head
            finished: Finished | None = None
            async for item in follow(transaction, run):
                if isinstance(item, PartnerEvent):
                    yield row.render(e=item, label=STATE_LABEL.get(item.kind, item.kind))
                else:
                    finished = item
            yield middle
            if finished is None or finished.error is not None:
                why = f"{type(finished.error).__name__}: {finished.error}" if finished and finished.error else "stopped"
                await run_in_threadpool(console.audit, request, f"outside:{transaction}", outcome="error",
                                        patient_id=patient, reason=why[:300])
                yield result_t.render(context(request, result=None, error=why[:300], patient=patient,
                                              purpose=purpose, **extra))
            else:
                result = finished.result
                values = await _finish(result)
                yield result_t.render(context(request, result=result, error="", patient=patient, purpose=purpose,
                                              **values, **extra))
            yield tail

        async def _finish(result: Any) -> dict[str, Any]:
            status = result.status.rsplit(":", 1)[-1]
            outcome = "denied" if result.refused else {"Success": "success", "PartialSuccess": "partial"}.get(
                status, "failure")
            values: dict[str, Any] = {"status": status}
            docs: list[str] = []
            if transaction == "ITI-38":
                values["documents"] = sorted(result.documents(), key=lambda d: d["creation_time"] or "",
                                             reverse=True)
                for d in values["documents"]:
                    d["created"] = format_ts(d["creation_time"])
                    d["listed"] = listed_token(console.secret, patient, d["home"] or "", d["repository_unique_id"]
                                               or "", d["document_unique_id"] or "")
                docs = [d["document_unique_id"] for d in values["documents"] if d["document_unique_id"]]
            elif transaction == "ITI-39":
                values["shown"] = await asyncio.to_thread(_shown, result.documents)
                docs = [d.document_unique_id for d in result.documents]
            await run_in_threadpool(console.audit, request, f"outside:{transaction}", outcome=outcome,
                                    patient_id=patient, documents=docs,
                                    reason=(result.refused or f"{status} as {user.name}")[:300])
            return values

        return StreamingResponse(body(), media_type="text/html; charset=utf-8",
                                 headers={"content-security-policy": docview.page_csp(_csp()),
                                          "x-accel-buffering": "no"})

    def refuse(request: Request, patient: str, problem: str) -> Response:
        return console.render(request, "outside/index.html", status_code=400, patient=patient, error=problem,
                              name="", known=False, links=[], consent=None, purposes=PURPOSES)

    async def discover(request: Request) -> Response:
        patient, purpose, problem = _form(request)
        if problem:
            return refuse(request, patient, problem)
        stored = await run_in_threadpool(node.patients.get, patient) if node.patients is not None else None
        if stored is None:
            return refuse(request, patient, f"{patient} is not in our patient index: nothing to send")
        try:
            gateway = gateway_for(console)
        except (OSError, ValueError) as exc:
            return refuse(request, patient, f"the initiating gateway is not configured: {exc}")
        ctx = requester(console, request, purpose)
        # the console action is on the trail before anything can go out (raises: nothing is sent)
        await run_in_threadpool(console.audit, request, "outside:ITI-55", outcome="attempt", patient_id=patient,
                                reason=f"purpose {purpose}")
        return streamed(request, "ITI-55", patient, purpose,
                        lambda progress: gateway.discover(stored.demographics, ctx, local_patient_id=patient,
                                                          progress=progress),
                        "outside/discovered.html", {})

    async def query(request: Request) -> Response:
        patient, purpose, problem = _form(request)
        if problem:
            return refuse(request, patient, problem)
        try:
            gateway = gateway_for(console)
        except (OSError, ValueError) as exc:
            return refuse(request, patient, f"the initiating gateway is not configured: {exc}")
        ctx = requester(console, request, purpose)
        links = await run_in_threadpool(correlations, console, patient)
        await run_in_threadpool(console.audit, request, "outside:ITI-38", outcome="attempt", patient_id=patient,
                                reason=f"purpose {purpose}")
        return streamed(request, "ITI-38", patient, purpose,
                        lambda progress: gateway.query(patient, ctx, progress=progress),
                        "outside/queried.html", {"correlated": bool(links)})

    async def retrieve(request: Request) -> Response:
        patient, purpose, problem = _form(request)
        form = request.state.form
        ref = DocumentRequest(str(form.get("repository") or "").strip()[:128],
                              str(form.get("document") or "").strip()[:160],
                              str(form.get("home") or "").strip()[:160] or None)
        if not problem and not (ref.repository_unique_id and ref.document_unique_id and ref.home_community_id):
            problem = "a document needs its homeCommunityId, repositoryUniqueId and uniqueId"
        if problem:
            return refuse(request, patient, problem)
        try:
            gateway = gateway_for(console)
        except (OSError, ValueError) as exc:
            return refuse(request, patient, f"the initiating gateway is not configured: {exc}")
        ctx = requester(console, request, purpose)
        # ITI-39 names the partner's document, not our patient, so the gateway does not check consent;
        # the console reads it for this patient, so a patient who may not be named gets nothing read either
        decision = await run_in_threadpool(node.consent.decide, patient, purpose=purpose)
        if not decision:
            await run_in_threadpool(console.audit, request, "outside:ITI-39", outcome="denied", patient_id=patient,
                                    documents=[ref.document_unique_id], reason=decision.reason[:300])
            return refuse(request, patient, f"refused: {decision.reason}; nothing was sent")
        if not hmac.compare_digest(listed_token(console.secret, patient, ref.home_community_id or "",
                                                ref.repository_unique_id, ref.document_unique_id),
                                   str(form.get("listed") or "")):
            await run_in_threadpool(console.audit, request, "outside:ITI-39", outcome="denied", patient_id=patient,
                                    documents=[ref.document_unique_id], reason="not listed for this patient")
            return refuse(request, patient, "refused: retrieve a document from the list a query for this patient "
                                            "gave; nothing was sent")
        await run_in_threadpool(console.audit, request, "outside:ITI-39", outcome="attempt", patient_id=patient,
                                documents=[ref.document_unique_id], reason=f"purpose {purpose}")
        return streamed(request, "ITI-39", patient, purpose,
                        lambda progress: gateway.retrieve([ref], ctx, progress=progress),
                        "outside/retrieved.html", {"ref": ref})

    return [route("", index), route("/discover", discover, methods=["POST"]),
            route("/query", query, methods=["POST"]), route("/retrieve", retrieve, methods=["POST"])]


def _csp() -> str:
    from xds_node.console.app import CSP  # (app finds the pages; imported here, not at module load)

    return CSP


def _shown(documents: list[Any]) -> list[dict[str, Any]]:
    """Each retrieved document rendered for the page (its spool file removed once read)."""
    out = []
    for d in documents:
        data: bytes | None = d.data
        if d.path is not None:
            path = Path(d.path)
            try:
                data = path.read_bytes() if path.stat().st_size <= MAX_BYTES else None
            finally:
                path.unlink(missing_ok=True)
        item: dict[str, Any] = {"doc": d, "size": d.size, "html": "", "title": "", "raw": "",
                                "why": "" if data is not None else "too large to show here"}
        if data is not None:
            item["html"], item["title"] = docview.document_page(data)
            if d.mime_type.split(";")[0].strip().lower() in ("text/xml", "application/xml", "text/plain"):
                item["raw"] = docview.xml_text(data)
        out.append(item)
    return out


__all__ = ["PAGE", "PURPOSES", "gateway_for", "requester", "routes"]
