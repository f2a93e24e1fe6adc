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


def node_metrics(settings) -> dict:
    """Counters of the serving node (every worker: multiprocess mode), read from its /metrics on
    loopback: audit write failures, HTTP refusals, the slowest partners by mean call time."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    scheme = "https" if settings.public_url.startswith("https") else "http"
    url = f"{scheme}://{'[' + host + ']' if ':' in host else host}:{settings.port}/metrics"
    out: dict = {"url": url, "error": "", "audit_failures": {}, "refusals": {}, "partners": []}
    try:
        reply = httpx.get(url, timeout=2.0, verify=False)  # our own node on loopback; only counters are read
        reply.raise_for_status()
    except httpx.HTTPError as exc:
        out["error"] = f"{url}: {type(exc).__name__}"
        return out
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            if sample.name == "xds_audit_write_failures_total":
                out["audit_failures"][sample.labels.get("target", "")] = int(sample.value)
            elif sample.name == "xds_http_refusals_total":
                out["refusals"][sample.labels.get("status", "")] = int(sample.value)
            elif sample.name == "xds_partner_call_duration_seconds_sum":
                sums[sample.labels.get("partner", "")] += sample.value
            elif sample.name == "xds_partner_call_duration_seconds_count":
                counts[sample.labels.get("partner", "")] += sample.value
    out["partners"] = sorted(({"partner": p, "calls": int(n), "mean": sums[p] / n} for p, n in counts.items() if n),
                             key=lambda r: -r["mean"])[:10]
    return out


def routes(console: Console) -> list:
    from xds_node.ops import for_node

    checks = for_node(console.node).checks  # database and content store, as /ready checks them

    def index(request: Request) -> Response:
        since = datetime.now(UTC) - timedelta(hours=24)
        problems = [p for p in (check() for check in checks) if p]
        return console.render(request, "dashboard/index.html", since=since,
                              traffic=traffic(console.audit_engine, since),
                              metrics=node_metrics(console.settings), problems=problems)

    return [route("", index)]
