"""Audit search: filter the trail by time, partner, patient, transaction, outcome and direction;
pages by keyset (time, event id) so page 1,000 of a million rows costs what page 1 does; one event
in full."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy import and_, or_, select
from starlette.requests import Request
from starlette.responses import Response

from xds_node.audit.events import OUTCOME_INDICATOR
from xds_node.audit.store import _community_forms, _row_to_event, audit_events
from xds_node.console.web import Console, Page, roles, route

PAGE = Page(key="audit", title="Audit", order=40, roles=roles("administrator", "privacy-officer", "operator"))
PAGE_SIZE = 50
FILTERS = ("since", "until", "partner", "patient", "transaction", "outcome", "direction")


def _time(value: str) -> datetime | None:
    try:
        dt = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return dt.astimezone(UTC).replace(tzinfo=None) if dt.tzinfo else dt


def search(engine, filters: dict[str, str], after: str = "", size: int = PAGE_SIZE,
           partners: list | None = None) -> tuple[list, str]:
    """One page of events, newest first, and the cursor of the next page ("" when none).
    ``partners`` (the trust store's) lets a partner name match its member communities too."""
    t = audit_events
    stmt = select(t)
    if (since := _time(filters.get("since", ""))) is not None:
        stmt = stmt.where(t.c.time >= since)
    if (until := _time(filters.get("until", ""))) is not None:
        stmt = stmt.where(t.c.time < until)
    if partner := filters.get("partner", "").strip():
        # a partner by name (inbound rows carry it; outbound rows its communities) or by community id:
        # two indexed columns, so the planner can union two index ranges instead of reading the trail
        forms = list(_community_forms(partner))
        for p in partners or []:
            if p.name == partner:
                forms += [f for c in p.communities for f in _community_forms(c)]
        stmt = stmt.where(or_(t.c.partner == partner, t.c.partner_community.in_(sorted(set(forms)))))
    if patient := filters.get("patient", "").strip():
        stmt = stmt.where(t.c.patient_id == patient)
    if transaction := filters.get("transaction", "").strip():
        stmt = stmt.where(t.c.transaction == transaction)
    if (outcome := filters.get("outcome", "").strip()) in OUTCOME_INDICATOR:
        stmt = stmt.where(t.c.outcome == outcome)
    if (direction := filters.get("direction", "").strip()) in ("inbound", "outbound"):
        stmt = stmt.where(t.c.direction == direction)
    if after:
        when, _, event_id = after.partition("|")
        at = _time(when)
        if at is not None and event_id:
            stmt = stmt.where(or_(t.c.time < at, and_(t.c.time == at, t.c.event_id < event_id)))
    stmt = stmt.order_by(t.c.time.desc(), t.c.event_id.desc()).limit(size + 1)
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    events = [_row_to_event(r) for r in rows[:size]]
    cursor = ""
    if len(rows) > size:
        last = rows[size - 1]
        cursor = f"{last.time.isoformat()}|{last.event_id}"
    return events, cursor


def _partners(settings) -> list:
    from xds_node.security.trust import TrustStore

    try:
        return TrustStore.load(settings.partners_path).partners() if settings.partners_path.exists() else []
    except (OSError, ValueError):
        return []


def routes(console: Console) -> list:
    engine = console.audit_engine

    def index(request: Request) -> Response:
        filters = {k: request.query_params.get(k, "")[:1024] for k in FILTERS}
        after = request.query_params.get("after", "")[:200]
        events, cursor = search(engine, filters, after, partners=_partners(console.settings))
        return console.render(request, "audit/index.html", filters=filters, events=events, cursor=cursor,
                              after=after, outcomes=list(OUTCOME_INDICATOR), size=PAGE_SIZE,
                              active={k: v for k, v in filters.items() if v})

    def event(request: Request) -> Response:
        event_id = request.query_params.get("id", "")[:64]
        with engine.connect() as conn:
            row = conn.execute(select(audit_events).where(audit_events.c.event_id == event_id)).first()
        if row is None:
            return console.render(request, "audit/event.html", status_code=404, event=None, fields=[])
        e = _row_to_event(row)
        data = e.to_dict() | {"partner": e.partner, "caller_kind": e.caller_kind}
        fields = [(k, json.dumps(v, ensure_ascii=False) if isinstance(v, list) else v) for k, v in data.items()]
        return console.render(request, "audit/event.html", event=e, fields=fields)

    return [route("", index), route("/event", event)]
