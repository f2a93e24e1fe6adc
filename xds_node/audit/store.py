"""The node's own audit trail: one row per transaction, listed, exported and accounted for.

Writing happens on every request, so requests write by group commit (:meth:`AuditLog.record_async`):
each worker's event loop gathers the rows of the requests that are ready and commits them in one
transaction, and each request still waits for its own row to be committed before it answers.
Forwarding to an external Audit Record Repository is the sinks' business and can never break a
request: a sink that raises is logged and skipped. A failed INSERT, on the other hand, is raised
to the caller on purpose: a disclosure that cannot be audited should not happen.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TextIO

from sqlalchemy import Column, DateTime, Engine, Index, String, Table, Text, or_, select

from xds_node import metrics
from xds_node.audit.events import DISCLOSED, MAX_FIELD_CHARS, TRANSACTION_NAMES, AuditEvent
from xds_node.audit.text import csv_cell, printable
from xds_node.db import insert_rows, metadata
from xds_node.rounds import Db, GroupCommit

log = logging.getLogger("xds_node.audit")

#: Column width of every free-text field: it holds any value :func:`bound_text` leaves.
TEXT = String(MAX_FIELD_CHARS)

audit_events = Table(
    "audit_event",
    metadata,
    Column("event_id", String(64), primary_key=True),
    Column("time", DateTime, nullable=False),  # naive UTC
    Column("transaction", TEXT, nullable=False),
    Column("action_code", String(1), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("direction", String(8), nullable=False),
    Column("partner_community", TEXT, nullable=False, default=""),
    Column("partner_organization", TEXT, nullable=False, default=""),
    Column("partner_organization_id", TEXT, nullable=False, default=""),
    Column("user_subject_id", TEXT, nullable=False, default=""),
    Column("user_role_code", TEXT, nullable=False, default=""),
    Column("user_role_display", TEXT, nullable=False, default=""),
    Column("purpose_of_use", TEXT, nullable=False, default=""),
    Column("patient_id", TEXT),
    Column("document_ids", Text, nullable=False, default="[]"),  # JSON list, bounded by bound_ids
    Column("repository_unique_id", TEXT),
    Column("query_id", TEXT),
    Column("message_id", TEXT, nullable=False, default=""),
    Column("remote_address", TEXT, nullable=False, default=""),
    Column("endpoint", TEXT, nullable=False, default=""),
    Column("reason", TEXT, nullable=False, default=""),
    Column("partner", TEXT, nullable=False, default=""),  # trust-store partner / internal client name
    Column("caller_kind", String(16), nullable=False, default=""),  # partner | internal | anonymous
    Index("ix_audit_event_time", "time"),
    Index("ix_audit_event_patient_time", "patient_id", "time"),
    Index("ix_audit_event_partner_time", "partner_community", "time"),
    # the console: keyset pages of the whole trail (time, event_id), and each partner's last
    # success / failure per transaction as one index seek each (migration 0006)
    Index("ix_audit_event_time_id", "time", "event_id"),
    Index("ix_audit_event_caller_time", "partner", "time"),
    Index("ix_audit_event_partner_tx_outcome_time", "partner_community", "transaction", "outcome", "time"),
    # a transaction (and direction) filter, newest first, as one ordered range: it replaced
    # (transaction, time), with which a rare combination walked the whole trail (seconds at 1M rows)
    Index("ix_audit_event_tx_direction_time_id", "transaction", "direction", "time", "event_id"),
)

#: Columns of the CSV export, in order (the stored fields of an event).
EXPORT_FIELDS = (
    "event_id", "time", "transaction", "action_code", "outcome", "outcome_indicator", "direction",
    "partner_community", "partner_organization", "partner_organization_id", "user_subject_id",
    "user_role_code", "user_role_display", "purpose_of_use", "patient_id", "document_ids",
    "repository_unique_id", "query_id", "message_id", "remote_address", "endpoint", "reason",
    "partner", "caller_kind",
)  # fmt: skip


class AuditSink(Protocol):
    """Something that forwards events elsewhere (syslog ARR, a log file ...). Must not block."""

    def send(self, event: AuditEvent) -> None: ...


def _naive_utc(value: datetime) -> datetime:
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None)


def _community_forms(value: str) -> list[str]:
    """A homeCommunityId matches with or without its ``urn:oid:`` prefix."""
    bare = value.removeprefix("urn:oid:")
    return [bare, "urn:oid:" + bare]


class AuditWriteError(RuntimeError):
    """The audit row was not committed (its cause is chained): the request must fail closed."""


#: Set by :func:`deferring`: where :meth:`AuditLog.record` collects events instead of writing them.
_deferred: ContextVar[list[tuple[AuditLog, AuditEvent]] | None] = ContextVar("audit_deferred", default=None)


@contextmanager
def deferring() -> Iterator[list[tuple[AuditLog, AuditEvent]]]:
    """Collect the events :meth:`AuditLog.record` is asked to write in this context, unwritten,
    so the request path can commit them with :meth:`AuditLog.record_async` (group commit)."""
    pending: list[tuple[AuditLog, AuditEvent]] = []
    token = _deferred.set(pending)
    try:
        yield pending
    finally:
        _deferred.reset(token)


async def commit_all(pending: Iterable[tuple[AuditLog, AuditEvent]]) -> None:
    """Commit every collected event (each joins its log's next group commit); raises if any
    row is not committed, after all of them have been settled."""
    if len(pending) == 1:
        log_, event = pending[0]
        await log_.record_async(event)
        return
    results = await asyncio.gather(*(log_.record_async(e) for log_, e in pending), return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r


def _event_row(event: AuditEvent) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "time": _naive_utc(event.time),
        "transaction": event.transaction,
        "action_code": event.action_code,
        "outcome": event.outcome,
        "direction": event.direction,
        "partner_community": event.partner_community,
        "partner_organization": event.partner_organization,
        "partner_organization_id": event.partner_organization_id,
        "user_subject_id": event.user_subject_id,
        "user_role_code": event.user_role_code,
        "user_role_display": event.user_role_display,
        "purpose_of_use": event.purpose_of_use,
        "patient_id": event.patient_id,
        "document_ids": json.dumps(list(event.document_ids)),
        "repository_unique_id": event.repository_unique_id,
        "query_id": event.query_id,
        "message_id": event.message_id,
        "remote_address": event.remote_address,
        "endpoint": event.endpoint,
        "reason": event.reason,
        "partner": event.partner,
        "caller_kind": event.caller_kind,
    }


def _database_failure() -> None:
    metrics.audit_failure("database")


class _AuditRows:
    """The audit rows of a group-commit round (:mod:`xds_node.rounds`): one executemany."""

    relaxed = False  # an audit row is durable before its answer leaves

    def __init__(self, log: AuditLog) -> None:
        self.log = log

    def apply(self, db: Db, payloads: list[tuple[AuditEvent, dict[str, Any]]]) -> list[None]:
        insert_rows(db, audit_events, [row for _, row in payloads])
        return [None] * len(payloads)

    def failed(self, error: BaseException, size: int) -> BaseException:
        return AuditWriteError(f"audit row not committed ({size} in the transaction)")

    def committed(self, payloads: list[tuple[AuditEvent, dict[str, Any]]]) -> None:
        for event, _ in payloads:
            self.log._offer(event)


class AuditLog:
    """Stores audit events and hands each one to the configured sinks."""

    def __init__(self, engine: Engine, sinks: Iterable[AuditSink] = (), *, group: GroupCommit | None = None):
        """``group``: the group commit the rows join (the node shares its bookkeeping database's
        with replay admission, so one round can hold both); one of its own by default."""
        self.engine = engine
        self.sinks: list[AuditSink] = list(sinks)
        self.group = group or GroupCommit(engine, on_database_failure=_database_failure)
        self._rows = _AuditRows(self)

    def create_schema(self) -> None:
        metadata.create_all(self.engine, tables=[audit_events])
        self._check_schema()

    def _check_schema(self) -> None:
        """Say at start, not per request, when an older audit table would refuse bounded rows:
        every audited answer fails closed until the database is migrated."""
        from sqlalchemy import inspect

        found = {c["name"]: c["type"] for c in inspect(self.engine).get_columns(audit_events.name)}
        missing = [c.name for c in audit_events.columns if c.name not in found]
        narrow = [c.name for c in audit_events.columns if isinstance(c.type, String) and c.type.length
                  and c.name in found and (getattr(found[c.name], "length", None) or c.type.length) < c.type.length]
        if missing or narrow:
            log.error("the audit_event table predates this version (missing columns: %s; narrower columns: %s): "
                      "audited requests will be refused until the database is migrated",
                      ", ".join(missing) or "none", ", ".join(narrow) or "none")

    def record(self, event: AuditEvent) -> AuditEvent:
        """Insert the event (raises if the database refuses), then offer it to every sink.

        Inside :func:`deferring` the event is only collected: the caller commits it with
        :meth:`record_async` (the request path), so existing recorders need not change.
        """
        pending = _deferred.get()
        if pending is not None:
            pending.append((self, event))
            return event
        self._insert([_event_row(event)])
        self._offer(event)
        return event

    async def record_async(self, event: AuditEvent) -> AuditEvent:
        """Commit the event's row together with the other rows queued on this event loop, then
        offer it to every sink. Returns only once the row is committed; raises
        :class:`AuditWriteError` if it is not: every row of a failed transaction fails (whichever
        row the database refused), so each of those requests fails closed as with :meth:`record`.

        A round starts when the loop gets to it (no timer): requests that became ready together
        share it, and while one round commits, the rows of further requests gather for the next
        (see :mod:`xds_node.rounds`: on the loop for SQLite, a thread for PostgreSQL; the replay
        admissions of new requests may share the same round).
        """
        await self.group.submit(self._rows, (event, _event_row(event)))
        return event

    @property
    def rounds(self) -> int:
        """Group-commit transactions committed so far by this process (for tests and curiosity)."""
        return self.group.rounds

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows`` in one transaction (one driver-level executemany)."""
        try:
            with self.engine.begin() as conn:
                insert_rows(conn, audit_events, rows)
        except Exception:
            metrics.audit_failure("database")
            raise

    def _offer(self, event: AuditEvent) -> None:
        """Hand a committed event to every sink; a failing sink is logged, never raised."""
        for sink in self.sinks:
            try:
                sink.send(event)
            except Exception:
                metrics.audit_failure("sink")
                log.exception("audit sink %r failed for event %s; continuing", sink, event.event_id)

    def close(self) -> None:
        """Close sinks that can be closed (flushes queued syslog messages)."""
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("closing audit sink %r failed", sink)

    def list(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        patient_id: str | None = None,
        partner: str | None = None,
        transaction: str | None = None,
        outcome: str | None = None,
        limit: int = 1000,
    ) -> list[AuditEvent]:
        """Events matching every given filter, newest first. ``until`` is exclusive.

        ``partner`` matches the partner's homeCommunityId (with or without ``urn:oid:``), its
        organization id / name, or the caller's trust-store partner / internal client name.
        """
        t = audit_events
        stmt = select(t)
        if since is not None:
            stmt = stmt.where(t.c.time >= _naive_utc(since))
        if until is not None:
            stmt = stmt.where(t.c.time < _naive_utc(until))
        if patient_id is not None:
            stmt = stmt.where(t.c.patient_id == patient_id)
        if partner:
            stmt = stmt.where(
                or_(
                    t.c.partner_community.in_(_community_forms(partner)),
                    t.c.partner_organization_id.in_(_community_forms(partner)),
                    t.c.partner_organization == partner,
                    t.c.partner == partner,
                )
            )
        if transaction is not None:
            stmt = stmt.where(t.c.transaction == transaction)
        if outcome is not None:
            stmt = stmt.where(t.c.outcome == outcome)
        stmt = stmt.order_by(t.c.time.desc(), t.c.event_id).limit(limit)
        with self.engine.connect() as conn:
            return [_row_to_event(r) for r in conn.execute(stmt)]

    def accounting_of_disclosures(self, patient_id: str, since: datetime | None = None,
                                  until: datetime | None = None, *, aliases: Iterable[str] = (),
                                  limit: int | None = None) -> list[dict[str, Any]]:
        """One line per disclosure of the patient's information to another party, oldest first.

        Inbound: a request we answered with information (success or partial); denied and failed
        requests disclosed nothing and are left out. ITI-39/43 events count only if the transaction
        code recorded the patient the retrieved documents belong to.

        Outbound (``direction`` "outbound" in each line): we named the patient to a partner (XCPD
        discovery, a patient-keyed ITI-38) or pushed their documents (``xds-node send``, ITI-41).
        Every call that went out is listed with its outcome, a failed one too (the partner may have
        received the request before it failed); the "attempt" row written before sending and calls
        refused before sending ("denied") are not. Outbound queries name the patient by the id the
        partner knows them under: pass those ids (the patient's correlations) as ``aliases``.
        Console activity (``console:*`` rows) is use inside the organization, not a disclosure.
        """
        t = audit_events
        ids = [patient_id, *[a for a in aliases if a and a != patient_id]]
        stmt = select(t).where(
            t.c.patient_id.in_(ids),
            or_((t.c.direction == "inbound") & t.c.outcome.in_(DISCLOSED) & (t.c.patient_id == patient_id),
                (t.c.direction == "outbound") & t.c.outcome.in_(OUTBOUND_SENT)),
            ~t.c.transaction.like("console:%"),
        )
        if since is not None:
            stmt = stmt.where(t.c.time >= _naive_utc(since))
        if until is not None:
            stmt = stmt.where(t.c.time < _naive_utc(until))
        stmt = stmt.order_by(t.c.time, t.c.event_id)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.engine.connect() as conn:
            events = [_row_to_event(r) for r in conn.execute(stmt)]
        return [_accounting_line(e) for e in events]

    @staticmethod
    def export(events: Iterable[AuditEvent], fmt: Literal["json", "csv"], out: TextIO) -> int:
        """See :func:`export`."""
        return export(events, fmt, out)

    @staticmethod
    def format_accounting(rows: Sequence[dict[str, Any]], *, patient_id: str | None = None) -> str:
        """See :func:`format_accounting`."""
        return format_accounting(rows, patient_id=patient_id)


def _row_to_event(row) -> AuditEvent:
    return AuditEvent(
        event_id=row.event_id,
        time=row.time.replace(tzinfo=UTC),
        transaction=row.transaction,
        action_code=row.action_code,
        outcome=row.outcome,
        direction=row.direction,
        partner_community=row.partner_community or "",
        partner_organization=row.partner_organization or "",
        partner_organization_id=row.partner_organization_id or "",
        user_subject_id=row.user_subject_id or "",
        user_role_code=row.user_role_code or "",
        user_role_display=row.user_role_display or "",
        purpose_of_use=row.purpose_of_use or "",
        patient_id=row.patient_id,
        document_ids=json.loads(row.document_ids or "[]"),
        repository_unique_id=row.repository_unique_id,
        query_id=row.query_id,
        message_id=row.message_id or "",
        remote_address=row.remote_address or "",
        endpoint=row.endpoint or "",
        reason=row.reason or "",
        partner=row.partner or "",
        caller_kind=row.caller_kind or "",
    )


def _describe(e: AuditEvent) -> str:
    name = TRANSACTION_NAMES.get(e.transaction, e.transaction)
    if e.document_ids:
        n = len(e.document_ids)
        what = f"{n} document{'s' if n != 1 else ''}: " + ", ".join(e.document_ids)
    elif e.transaction == "ITI-55":
        what = "patient identity and demographics"
    elif e.transaction in ("ITI-38", "ITI-18"):
        what = "document list (metadata)"
    else:
        what = "information"
    if e.direction == "outbound":
        if e.transaction == "ITI-41":
            what = "pushed " + what
        elif e.transaction in ("ITI-55", "ITI-38"):
            what = "patient named in our request" + ("" if e.transaction == "ITI-55" else " for documents")
        return f"OUTBOUND {e.transaction} {name}: {what}" + ("" if e.outcome == "success" else f" ({e.outcome})")
    return f"{e.transaction} {name}: {what}" + (" (partial)" if e.outcome == "partial" else "")


#: Outbound outcomes in which the request left the node (``attempt`` is the row written before it).
OUTBOUND_SENT = ("success", "partial", "failure")


def _accounting_line(e: AuditEvent) -> dict[str, Any]:
    return {
        "date": e.time.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "direction": e.direction,
        "outcome": e.outcome,
        "patient_id": e.patient_id,
        "recipient_organization": e.partner_organization,
        "recipient_organization_id": e.partner_organization_id,
        "recipient_community": e.partner_community,
        "recipient_partner": e.partner,
        "purpose": e.purpose_of_use,
        "transaction": e.transaction,
        "documents": list(e.document_ids),
        "description": _describe(e),
        "user": e.user_subject_id,
        "user_role": e.user_role_display or e.user_role_code,
        "event_id": e.event_id,
    }


def export(events: Iterable[AuditEvent], fmt: Literal["json", "csv"], out: TextIO) -> int:
    """Write events as a JSON array or as CSV (document ids joined with ``;``); returns the count.

    JSON is exact. CSV cells that a spreadsheet would evaluate (``=``, ``+``, ``-``, ``@``, tab,
    CR, LF first) get a leading apostrophe (OWASP CSV injection), and every cell is quoted.
    """
    rows = [e.to_dict() for e in events]
    if fmt == "json":
        json.dump(rows, out, indent=2, ensure_ascii=False)
        out.write("\n")
    elif fmt == "csv":
        # every cell quoted: QUOTE_MINIMAL leaves a lone CR unquoted with "\n" rows (a forged row)
        writer = csv.DictWriter(out, fieldnames=list(EXPORT_FIELDS), lineterminator="\n", quoting=csv.QUOTE_ALL)
        writer.writeheader()
        for r in rows:
            r["document_ids"] = ";".join(r["document_ids"])
            writer.writerow({k: csv_cell(r[k]) for k in EXPORT_FIELDS})
    else:
        raise ValueError(f"unknown export format {fmt!r} (json or csv)")
    return len(rows)


def _text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(out)


def format_accounting(rows: Sequence[dict[str, Any]], *, patient_id: str | None = None) -> str:
    """The accounting of disclosures as a readable text table (for the CLI and for letters).

    Every cell is passed through :func:`printable`: a control character in a partner's claims
    cannot start a line of its own or drive the reader's terminal.
    """
    title = (f"Accounting of disclosures for patient {printable(patient_id)}" if patient_id
             else "Accounting of disclosures")
    if not rows:
        return f"{title}\nno disclosures recorded"
    table = _text_table(
        ["date (UTC)", "recipient", "community", "partner", "purpose", "disclosed", "requested by"],
        [
            [printable(c) for c in (
                r["date"].replace("T", " ")[:19],
                r["recipient_organization"] or r["recipient_organization_id"] or "-",
                r["recipient_community"] or "-",
                r.get("recipient_partner") or "-",
                r["purpose"] or "-",
                r["description"],
                r["user"] + (f" ({r['user_role']})" if r["user_role"] else "") if r["user"] else "-",
            )]
            for r in rows
        ],
    )
    return f"{title}\n{table}\n{len(rows)} disclosure{'s' if len(rows) != 1 else ''}"
