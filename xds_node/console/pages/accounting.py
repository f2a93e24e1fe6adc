"""Accounting of disclosures for one patient over a period (HIPAA 45 CFR 164.528): who received
what and when, inbound answers and our own outbound requests naming the patient; printable, and
as CSV (cells a spreadsheet would evaluate are neutralised)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, time, timedelta

from starlette.requests import Request
from starlette.responses import Response

from xds_node.audit.text import csv_cell
from xds_node.console.web import Console, Page, roles, route

PAGE = Page(key="accounting", title="Accounting of disclosures", order=30,
            roles=roles("administrator", "privacy-officer"))
#: An accounting covers up to six years (45 CFR 164.528(a)); the default period is that.
DEFAULT_YEARS = 6
MAX_LINES = 20_000
CSV_FIELDS = ("date", "direction", "outcome", "recipient_partner", "recipient_organization",
              "recipient_organization_id", "recipient_community", "user", "user_role", "purpose", "transaction",
              "description", "documents", "event_id")


def _period(request: Request) -> tuple[date, date]:
    today = datetime.now(UTC).date()
    def day(name: str, default: date) -> date:
        try:
            return date.fromisoformat(request.query_params.get(name, "").strip())
        except ValueError:
            return default
    since = day("since", today.replace(year=today.year - DEFAULT_YEARS))
    until = day("until", today)
    return since, until


def routes(console: Console) -> list:
    node = console.node

    def lines(patient: str, since: date, until: date) -> list[dict]:
        aliases = [c.remote_cx for c in node.patients.correlations_for(patient)]
        return node.audit.accounting_of_disclosures(
            patient, datetime.combine(since, time(0), tzinfo=UTC),
            datetime.combine(until + timedelta(days=1), time(0), tzinfo=UTC), aliases=aliases, limit=MAX_LINES)

    def index(request: Request) -> Response:
        patient = request.query_params.get("patient", "").strip()[:256]
        since, until = _period(request)
        rows = lines(patient, since, until) if patient else []
        record = node.patients.get(patient) if patient else None
        return console.render(request, "accounting/index.html", patient=patient, since=since, until=until,
                              rows=rows, record=record, limit=MAX_LINES)

    def as_csv(request: Request) -> Response:
        patient = request.query_params.get("patient", "").strip()[:256]
        since, until = _period(request)
        out = io.StringIO()
        writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")
        writer.writerow(CSV_FIELDS)
        for r in lines(patient, since, until) if patient else []:
            writer.writerow([csv_cell(";".join(r[f]) if f == "documents" else r.get(f, "")) for f in CSV_FIELDS])
        name = f"accounting-{since}-{until}.csv"
        return Response(out.getvalue(), media_type="text/csv; charset=utf-8",
                        headers={"content-disposition": f'attachment; filename="{name}"'})

    return [route("", index), route("/csv", as_csv)]
