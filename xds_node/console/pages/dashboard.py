"""Dashboard: the last 24 hours at a glance, from the audit trail (every request is a row) and the
serving node's own /metrics (audit write failures, HTTP refusals, partner call times)."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, func, not_, select
from starlette.requests import Request
from starlette.responses import Response

from xds_node.audit.store import audit_events
from xds_node.console.web import Console, Page, roles, route

PAGE = Page(key="dashboard", title="Dashboard", order=10,
            roles=roles("administrator", "privacy-officer", "operator"))

FAILED = ("denied", "failure", "error")


def traffic(engine, since: datetime) -> dict:
    """Requests since ``since`` per transaction and partner, with refusals and errors."""
    t = audit_events
    who = func.coalesce(func.nullif(t.c.partner, ""), func.nullif(t.c.partner_organization, ""),
                        func.nullif(t.c.partner_community, ""), t.c.caller_kind)
    stmt = (select(t.c.transaction, t.c.direction, who.label("who"), t.c.outcome, func.count().label("n"))
            .where(and_(t.c.time >= since.replace(tzinfo=None), not_(t.c.transaction.like("console:%"))))
            .group_by(t.c.transaction, t.c.direction, who, t.c.outcome))
    rows: dict[tuple[str, str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    totals: dict[str, int] = defaultdict(int)
    with engine.connect() as conn:
        for r in conn.execute(stmt):
            key = (r.transaction, r.direction, r.who or "-")
            rows[key][r.outcome] += r.n
            rows[key]["total"] += r.n
            totals[r.outcome] += r.n
            totals["total"] += r.n
    table = [{"transaction": k[0], "direction": k[1], "who": k[2], **dict(v),
              "failed": sum(v.get(o, 0) for o in FAILED)} for k, v in rows.items()]
    table.sort(key=lambda r: (-r["total"], r["transaction"], r["who"]))
    return {"rows": table, "totals": dict(totals), "failed": sum(totals.get(o, 0) for o in FAILED)}


def routes(console: Console) -> list:
    def index(request: Request) -> Response:
        since = datetime.now(UTC) - timedelta(hours=24)
        return console.render(request, "dashboard/index.html", since=since, traffic=traffic(console.engine, since))

    return [route("", index)]
