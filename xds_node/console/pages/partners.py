"""Partners and internal clients: member communities, endpoints, certificates (expiry warned 30
days ahead), last success and last failure per transaction from the audit trail, "check now" (a
real signed call: :mod:`xds_node.gateway.check`), and add / replace / remove through the very
functions ``xds-node partners`` uses (:func:`xds_node.admin.add_partner` ...), so both validate alike.

partners.toml is read on every request: the file is the truth every worker follows.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import Response

from xds_node.console.web import Console, Page, roles, route
from xds_node.gateway.check import EXPIRY_WARNING, certificate_findings, signed_finding, wsdl_finding

PAGE = Page(key="partners", title="Partners", order=50, roles=roles("administrator", "operator"))
TRANSACTIONS = ("ITI-55", "ITI-38", "ITI-39", "ITI-41")
SUCCESS = ("success", "partial")
FAILURE = ("failure", "error", "denied")
MAX_CERT_BYTES = 256 * 1024


def last_seen(engine: Any, communities: list[str]) -> dict[str, dict[str, datetime | None]]:
    """transaction -> {"success": time, "failure": time} for calls to or from these communities, in one
    statement of index seeks (ix_audit_event_partner_tx_outcome_time), whatever the trail's size."""
    bare = {c.removeprefix("urn:oid:") for c in communities}
    forms = sorted(bare | {"urn:oid:" + b for b in bare})
    parts, params = [], {}
    combos = [(c, t, o) for c in forms for t in TRANSACTIONS for o in SUCCESS + FAILURE]
    for i, (community, tx, outcome) in enumerate(combos):
        params |= {f"c{i}": community, f"t{i}": tx, f"o{i}": outcome}
        parts.append(f"SELECT :t{i} AS tx, :o{i} AS outcome, (SELECT MAX(time) FROM audit_event WHERE "
                     f"partner_community = :c{i} AND \"transaction\" = :t{i} AND outcome = :o{i}) AS last")
    out: dict[str, dict[str, datetime | None]] = {t: {"success": None, "failure": None} for t in TRANSACTIONS}
    if not parts:
        return out
    with engine.connect() as conn:
        for tx, outcome, last in conn.execute(text(" UNION ALL ".join(parts)), params):
            if last is None:
                continue
            if isinstance(last, str):  # SQLite returns MAX() of a DateTime column as text
                last = datetime.fromisoformat(last)
            kind = "success" if outcome in SUCCESS else "failure"
            if out[tx][kind] is None or last > out[tx][kind]:
                out[tx][kind] = last
    return out


def _load(settings: Any):
    from xds_node.security.trust import TrustStore

    path = settings.partners_path
    return TrustStore.load(path) if path.exists() else TrustStore()


def _lines(value: Any) -> list[str]:
    return [x.strip() for x in str(value or "").replace("\r", "").split("\n") if x.strip()]


def routes(console: Console) -> list:
    from xds_node import admin

    settings = console.settings
    engine = console.audit_engine

    def index(request: Request, *, message: str = "", error: str = "", findings: list | None = None,
              status: int = 200) -> Response:
        try:
            partners = _load(settings).partners()
            problem = ""
        except (OSError, ValueError) as exc:
            partners, problem = [], f"partners file {settings.partners_path} is not valid: {exc}"
        now = datetime.now(UTC)
        rows = [{"p": p, "certs": certificate_findings(p, now),
                 "certificates": [{"subject": c.subject.rfc4514_string(), "expires": c.not_valid_after_utc,
                                   "warn": c.not_valid_after_utc - now <= EXPIRY_WARNING} for c in p.certificates],
                 "seen": last_seen(engine, p.communities)} for p in partners]
        try:
            clients = admin._client_store(settings).partners() if settings.clients_path.exists() else []
        except (OSError, ValueError) as exc:
            clients, problem = [], problem or f"clients file {settings.clients_path} is not valid: {exc}"
        can_change = request.state.user.role in CHANGERS
        return console.render(request, "partners/index.html", status_code=status, rows=rows, clients=clients,
                              transactions=TRANSACTIONS, message=message, error=error or problem,
                              findings=findings, can_change=can_change, path=settings.partners_path, now=now)

    async def check(request: Request) -> Response:
        import asyncio

        from starlette.concurrency import run_in_threadpool

        name = str(request.state.form.get("name") or "")
        partner = (await run_in_threadpool(_load, settings)).partner(name)
        if partner is None:
            return await run_in_threadpool(lambda: index(request, error=f"no partner named {name!r}", status=404))
        await run_in_threadpool(console.audit, request, "partners-check", reason=f"check now: {name}")
        findings = certificate_findings(partner)
        findings += await asyncio.gather(*(asyncio.to_thread(wsdl_finding, partner, k, u, 5.0)
                                           for k, u in partner.endpoints.items()))
        findings.append(await signed_finding(console.node, partner, timeout=15.0))
        return await run_in_threadpool(lambda: index(request, findings=findings))

    def _args(form: Any, folder: Path) -> SimpleNamespace:
        certs = []
        upload = form.get("cert")
        pasted = str(form.get("cert_pem") or "").strip()
        data = b""
        if upload is not None and not isinstance(upload, str) and upload.filename:
            data = upload.file.read(MAX_CERT_BYTES + 1)
        elif pasted:
            data = pasted.encode()
        if len(data) > MAX_CERT_BYTES:
            raise admin.PartnerEditError("the certificate file is too large")
        if data:
            path = folder / "cert.pem"
            path.write_bytes(data)
            certs.append(str(path))
        if not certs:
            raise admin.PartnerEditError("a certificate (PEM or DER) is required")
        def number(key: str, kind: type):
            raw = str(form.get(key) or "").strip()
            if not raw:
                return None
            try:
                return kind(raw)
            except ValueError:
                raise admin.PartnerEditError(f"{key}: {raw!r} is not a number") from None
        return SimpleNamespace(name=str(form.get("name") or "").strip(), name_opt=None, cert=certs,
                               community=_lines(form.get("communities")), home_community_id=None,
                               issuer=_lines(form.get("issuers")), endpoint=_lines(form.get("endpoints")),
                               allow_sha1=False, batch_size=number("batch_size", int), timeout=number("timeout", float))

    def change(request: Request) -> Response:
        form = request.state.form
        action = request.url.path.rsplit("/", 1)[-1]  # add | replace | remove
        name = str(form.get("name") or "").strip()
        if action == "remove" and form.get("confirmed") != "yes":
            return console.render(request, "partners/remove.html", name=name)
        console.audit(request, f"partners-{action}", outcome="attempt", reason=f"{action} partner {name!r}")
        try:
            with tempfile.TemporaryDirectory(prefix="xds-console-") as tmp:
                if action == "remove":
                    message = admin.remove_partner(settings, name)
                else:
                    args = _args(form, Path(tmp))
                    message = (admin.add_partner if action == "add" else admin.replace_partner)(settings, args)
        except admin.PartnerEditError as exc:
            console.audit(request, f"partners-{action}", outcome="failure", reason=str(exc))
            return index(request, error=str(exc), status=400)
        console.audit(request, f"partners-{action}", reason=message)
        return index(request, message=message)

    return [route("", index),
            route("/check", check, methods=["POST"]),
            route("/add", change, methods=["POST"], roles=CHANGERS),
            route("/replace", change, methods=["POST"], roles=CHANGERS),
            route("/remove", change, methods=["POST"], roles=CHANGERS)]


#: Who may add, replace and remove partners (everyone on the page may look and check).
CHANGERS = roles("administrator", "operator")
